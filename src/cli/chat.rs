//! `chat`: a terminal client of a running `serve`'s chat API; `mcp`: a stdio MCP server
//! proxying to a running `serve`'s MCP gateway.

use std::io::Write;

use anyhow::bail;

use super::Global;
use crate::client::ApiClient;

/// The API's base URL: `--server`, else the local `serve` on `$PORT`.
fn base_url(g: &Global) -> String {
    g.server.clone().unwrap_or_else(|| {
        let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
        format!("http://127.0.0.1:{port}")
    })
}

/// Serve `name`'s sandbox tools on stdio, through the gateway of the API at [`base_url`].
pub async fn mcp(g: &Global, name: &str) -> anyhow::Result<()> {
    let base = base_url(g);
    let mut url = reqwest::Url::parse(&base)
        .map_err(|e| anyhow::anyhow!("--server {base:?} is not a URL: {e}"))?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("--server {base:?} cannot have a path"))?
        .pop_if_empty()
        .extend(["api", "v1", "sessions", name, "mcp"]);
    let token = std::env::var("ORCHESTRATOR_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    crate::mcp::stdio::serve(name, url.to_string(), token).await?;
    Ok(())
}

/// Send `message` (or, without one, each line of stdin) as a chat turn and print the
/// answer's events as they stream.
pub async fn chat(g: &Global, name: &str, message: Option<String>) -> anyhow::Result<()> {
    let url = base_url(g);
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
