//! `chat`: a terminal client of a running `serve`'s chat API.

use std::io::Write;

use anyhow::bail;

use super::Global;
use crate::client::ApiClient;

/// Send `message` (or, without one, each line of stdin) as a chat turn and print the
/// answer's events as they stream.
pub async fn chat(g: &Global, name: &str, message: Option<String>) -> anyhow::Result<()> {
    let url = g.server.clone().unwrap_or_else(|| {
        let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
        format!("http://127.0.0.1:{port}")
    });
    let client = ApiClient::new(&url, std::env::var("ORCHESTRATOR_TOKEN").ok());
    let show = |e: &serde_json::Value| -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        match e["type"].as_str().unwrap_or_default() {
            "text" => write!(out, "{}", e["text"].as_str().unwrap_or_default())?,
            "tool_call" => writeln!(
                out,
                "\n→ {}({})",
                e["name"].as_str().unwrap_or_default(),
                e["args"]
            )?,
            "tool_result" => {
                let text = e["output"].as_str().unwrap_or_default();
                let short: String = text.chars().take(200).collect();
                let mark = if e["isError"] == true { "✗" } else { "←" };
                writeln!(out, "{mark} {short}")?;
            }
            "done" => writeln!(out)?,
            _ => {}
        }
        out.flush()?;
        Ok(())
    };
    let turn = |msg: String| {
        let client = client.clone();
        async move {
            let mut stream = client.chat(name, &msg).await?;
            while let Some(e) = stream.next_event().await? {
                if e["type"] == "error" {
                    bail!("{}", e["message"].as_str().unwrap_or("the chat failed"));
                }
                show(&e)?;
                if e["type"] == "done" {
                    break;
                }
            }
            anyhow::Ok(())
        }
    };
    match message {
        Some(m) => turn(m).await,
        None => {
            let stdin = std::io::stdin();
            loop {
                eprint!("> ");
                let mut line = String::new();
                if stdin.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                let line = line.trim().to_string();
                if line.is_empty() {
                    continue;
                }
                if let Err(e) = turn(line).await {
                    eprintln!("error: {e}");
                }
            }
        }
    }
}
