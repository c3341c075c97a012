//! Splitting one long-lived stdin/stdout pair into successive MCP sessions.
//!
//! The process reads stdin itself, one newline-delimited JSON-RPC message at a
//! time, and feeds every line to the *current* session: an rmcp server served
//! over one end of an in-memory [`tokio::io::duplex`] pipe, whose output is
//! copied to stdout line by line. A new session (a fresh [`SandboxServer`] and
//! a fresh rmcp service) is started:
//!
//! * for the first line to deliver when there is no session;
//! * when a line is an `initialize` request while a session is running: the
//!   old session is cancelled (its in-flight requests are dropped and any
//!   response it has not yet written is discarded) before the new one sees the
//!   request, so a re-attached client never receives a stale reply;
//! * when the previous session has ended on its own.
//!
//! rmcp ends a session whose first message is a notification or a response
//! (`ExpectedInitializeRequest`), so such messages are dropped (and logged)
//! until the current session has received a request; a stray
//! `notifications/initialized` or a late response from a departed client can
//! therefore not kill the next session. rmcp keeps the JSON-RPC semantics:
//! unparsable lines are logged and ignored, protocol errors get an error
//! reply. Lines longer than [`MAX_LINE_LEN`] are dropped here.
//!
//! On stdin EOF the current session's input is closed, its pending responses
//! are flushed, and [`run`] returns.
//!
//! A client that dies in the middle of writing a line leaves a fragment that
//! is glued to the next client's first line; that line is then unparsable and
//! ignored, so the next client's `initialize` times out and must be retried.
//! A line boundary cannot be recovered from the stream itself.

use std::{io, time::Duration};

use rmcp::{ServiceExt, service::ServerInitializeError};
use serde::Deserialize;
use tokio::{
    io::{
        AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader,
        DuplexStream, WriteHalf,
    },
    sync::Mutex,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::tools::SandboxServer;

/// Largest accepted JSON-RPC message (one line), like rmcp's own default.
pub(crate) const MAX_LINE_LEN: usize = 16 * 1024 * 1024;
/// Capacity of the in-memory pipe between the stdin reader and a session.
const PIPE_CAPACITY: usize = 256 * 1024;
/// How long to wait for a session to flush its replies after stdin EOF.
/// (rmcp itself waits up to 5 s for in-flight handlers.)
const DRAIN_TIMEOUT: Duration = Duration::from_secs(6);

/// Shared, line-atomic access to the process's output.
type SharedOutput<W> = std::sync::Arc<Mutex<W>>;

/// One running MCP session.
struct Session {
    /// Where client lines are written (read by rmcp).
    input: WriteHalf<DuplexStream>,
    /// Cancels both the rmcp service and the output forwarder.
    cancel: CancellationToken,
    /// The rmcp service task; finished once the session is over.
    server: JoinHandle<()>,
    /// Copies the session's replies to the shared output.
    forwarder: JoinHandle<()>,
    /// Session number, for logs.
    number: u64,
    /// Whether a request has been fed (before that, rmcp would end the
    /// session on a notification or a response).
    opened: bool,
}

impl Session {
    fn start<W>(number: u64, server: SandboxServer, output: SharedOutput<W>) -> Self
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (ours, theirs) = tokio::io::duplex(PIPE_CAPACITY);
        let (replies, input) = tokio::io::split(ours);
        let cancel = CancellationToken::new();
        let server_ct = cancel.clone();
        let server = tokio::spawn(async move {
            match server.serve_with_ct(theirs, server_ct).await {
                Ok(running) => match running.waiting().await {
                    Ok(reason) => tracing::info!(session = number, ?reason, "session ended"),
                    Err(e) => tracing::error!(session = number, "session task failed: {e}"),
                },
                Err(ServerInitializeError::Cancelled) => {
                    tracing::info!(session = number, "session closed before its handshake")
                }
                Err(e) => tracing::warn!(session = number, "session did not start: {e}"),
            }
        });
        let forwarder = tokio::spawn(forward_lines(replies, output, cancel.clone()));
        tracing::info!(session = number, "session started");
        Self {
            input,
            cancel,
            server,
            forwarder,
            number,
            opened: false,
        }
    }

    /// Hand one line (with its newline) to the session. Fails when the session
    /// is over and no longer reads its input.
    async fn feed(&mut self, line: &[u8]) -> io::Result<()> {
        self.input.write_all(line).await
    }

    /// End the session at once, discarding replies not yet written.
    ///
    /// Only the forwarder is awaited (it stops between two lines, never in the
    /// middle of one), so nothing of the old session reaches the output after
    /// this returns. The rmcp task is left to wind down in the background: on
    /// cancellation it may wait up to 2 s for handlers still running, and
    /// whatever it writes then fails on the closed pipe.
    async fn abort(self) {
        self.cancel.cancel();
        drop(self.input);
        let _ = self.forwarder.await;
        tracing::info!(session = self.number, "session closed");
    }

    /// Close the session's input and let it flush its replies.
    async fn finish(mut self) {
        let _ = self.input.shutdown().await;
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            let _ = (&mut self.server).await;
            let _ = (&mut self.forwarder).await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(session = self.number, "session did not drain in time");
            self.cancel.cancel();
            let _ = self.forwarder.await;
        }
    }
}

/// Copy complete lines from a session to the output until the session ends
/// or is cancelled. Each line is written whole while holding the output lock.
async fn forward_lines<R, W>(replies: R, output: SharedOutput<W>, cancel: CancellationToken)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut replies = BufReader::new(replies);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            read = replies.read_until(b'\n', &mut line) => read,
        };
        match read {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!("reading a session's replies failed: {e}");
                return;
            }
        }
        if cancel.is_cancelled() {
            return;
        }
        let mut out = output.lock().await;
        if let Err(e) = async {
            out.write_all(&line).await?;
            out.flush().await
        }
        .await
        {
            tracing::error!("writing to stdout failed: {e}");
            return;
        }
    }
}

/// The only parts of a message looked at here.
#[derive(Deserialize)]
struct Probe {
    method: Option<String>,
    id: Option<serde::de::IgnoredAny>,
}

/// What a line is, as far as session switching is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An `initialize` request: starts a new session.
    Initialize,
    /// Any other request.
    Request,
    /// A notification or a response.
    NotRequest,
    /// Not a JSON-RPC object; rmcp ignores it or answers with an error.
    Unparsable,
}

/// Classify one input line.
fn classify(line: &[u8]) -> Kind {
    match serde_json::from_slice::<Probe>(line) {
        Ok(Probe {
            method: Some(method),
            id: Some(_),
        }) if method == "initialize" => Kind::Initialize,
        Ok(Probe {
            method: Some(_),
            id: Some(_),
        }) => Kind::Request,
        Ok(_) => Kind::NotRequest,
        Err(_) => Kind::Unparsable,
    }
}

/// Outcome of reading one line.
enum Line {
    /// A complete line is in the buffer (with its `\n`, unless it ended at EOF).
    Complete,
    /// The line was longer than the limit and has been skipped.
    TooLong,
    /// End of input.
    Eof,
}

/// Read one `\n`-terminated line into `buf` (cleared first), never buffering
/// more than `max` bytes of it.
async fn read_line<R>(reader: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<Line>
where
    R: AsyncBufRead + Unpin,
{
    buf.clear();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (too_long, buf.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::Eof,
                (false, false) => Line::Complete,
            });
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let used = chunk.len();
        if !too_long {
            if buf.len() + used > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        reader.consume(used);
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

/// The current session, and how to start the next one.
struct Sessions<W, F> {
    current: Option<Session>,
    started: u64,
    output: SharedOutput<W>,
    make_server: F,
}

impl<W, F> Sessions<W, F>
where
    W: AsyncWrite + Unpin + Send + 'static,
    F: Fn() -> SandboxServer,
{
    /// Route one line (ending with `\n`) to the right session.
    async fn deliver(&mut self, line: &[u8], kind: Kind) -> io::Result<()> {
        if kind == Kind::Initialize
            && let Some(old) = self.current.take()
        {
            tracing::info!(session = old.number, "initialize received: new session");
            old.abort().await;
        }
        for attempt in 0..2 {
            if let Some(old) = self.current.take_if(|s| s.server.is_finished()) {
                tracing::info!(session = old.number, "session is over: new session");
                old.abort().await;
            }
            let opened = self.current.as_ref().is_some_and(|s| s.opened);
            if !opened && kind == Kind::NotRequest {
                // rmcp ends a session whose first message is not a request.
                tracing::warn!("dropped a notification or response sent before any request");
                return Ok(());
            }
            let session = self.current.get_or_insert_with(|| {
                self.started += 1;
                Session::start(self.started, (self.make_server)(), self.output.clone())
            });
            session.opened |= matches!(kind, Kind::Initialize | Kind::Request);
            let Err(e) = session.feed(line).await else {
                return Ok(());
            };
            // The session ended before reading this line: retry once with a new one.
            tracing::info!(session = session.number, "session input closed: {e}");
            if let Some(old) = self.current.take() {
                old.abort().await;
            }
            if attempt > 0 {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Serve MCP sessions on `input`/`output` until `input` ends.
///
/// `make_server` builds the handler of each new session.
pub(crate) async fn run<R, W>(
    input: R,
    output: W,
    make_server: impl Fn() -> SandboxServer,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut sessions = Sessions {
        current: None,
        started: 0,
        output: std::sync::Arc::new(Mutex::new(output)),
        make_server,
    };
    let mut input = BufReader::with_capacity(64 * 1024, input);
    let mut line = Vec::new();
    loop {
        match read_line(&mut input, &mut line, MAX_LINE_LEN).await? {
            Line::Eof => break,
            Line::TooLong => {
                tracing::warn!("dropped an input line longer than {MAX_LINE_LEN} bytes");
                continue;
            }
            Line::Complete => {}
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        sessions.deliver(&line, classify(&line)).await?;
    }
    tracing::info!("stdin closed");
    if let Some(session) = sessions.current.take() {
        session.finish().await;
    }
    let mut out = sessions.output.lock().await;
    out.flush().await
}

#[cfg(test)]
mod tests {
    use super::{Kind, Line, classify, read_line};

    #[tokio::test]
    async fn lines_are_bounded() {
        let data: &[u8] = b"short\nthis one is too long\nok\nlast";
        let mut reader = tokio::io::BufReader::with_capacity(4, data);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            match read_line(&mut reader, &mut buf, 8).await.unwrap() {
                Line::Eof => break,
                Line::TooLong => got.push("<too long>".to_owned()),
                Line::Complete => got.push(String::from_utf8(buf.clone()).unwrap()),
            }
        }
        assert_eq!(got, ["short\n", "<too long>", "ok\n", "last"]);
    }

    #[test]
    fn classifies_lines() {
        let cases: [(&[u8], Kind); 7] = [
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
                Kind::Initialize,
            ),
            (
                br#"{"jsonrpc":"2.0","id":"a","method":"tools/list"}"#,
                Kind::Request,
            ),
            (
                br#"{"jsonrpc":"2.0","method":"initialize"}"#,
                Kind::NotRequest,
            ),
            (
                br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                Kind::NotRequest,
            ),
            (br#"{"jsonrpc":"2.0","id":3,"result":{}}"#, Kind::NotRequest),
            (b"not json", Kind::Unparsable),
            (br#"[{"method":"initialize","id":1}]"#, Kind::Unparsable),
        ];
        for (line, kind) in cases {
            assert_eq!(classify(line), kind, "{}", String::from_utf8_lossy(line));
        }
    }
}
