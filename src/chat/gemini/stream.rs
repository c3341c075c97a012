//! The chunks of a `streamGenerateContent?alt=sse` answer: Server-Sent Events read with the
//! crate's one SSE parser ([`crate::sse`]), one `GenerateContentResponse` per event's `data`,
//! with an idle timeout between chunks of bytes.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use serde_json::Value;

use super::error::{GeminiError, stream_error};
use super::wire::GenerateContentResponse;
use crate::sse::{self, SseError};

/// One SSE `data` payload → a chunk, or the error object Google sends inside a stream.
/// `None` for payloads that carry nothing (empty, `[DONE]`).
fn parse_chunk(data: &str) -> Option<Result<GenerateContentResponse, GeminiError>> {
    let data = data.trim();
    if data.is_empty() || data == "[DONE]" {
        return None;
    }
    let value: Value = match serde_json::from_str(data) {
        Ok(v) => v,
        Err(e) => return Some(Err(GeminiError::Decode(format!("stream chunk: {e}")))),
    };
    if let Some(error) = value.get("error") {
        return Some(Err(stream_error(error)));
    }
    Some(
        serde_json::from_value(value)
            .map_err(|e| GeminiError::Decode(format!("stream chunk: {e}"))),
    )
}

/// The chunks of one streamed answer. Ends after the last chunk or after the first error.
pub struct ResponseStream {
    inner: BoxStream<'static, Result<GenerateContentResponse, GeminiError>>,
}

impl ResponseStream {
    /// A stream that yields nothing (the answer had no chunk).
    pub(super) fn empty() -> ResponseStream {
        ResponseStream {
            inner: futures::stream::empty().boxed(),
        }
    }
}

impl fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseStream")
    }
}

impl Stream for ResponseStream {
    type Item = Result<GenerateContentResponse, GeminiError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// Reads the chunks off a response body. After an error it yields nothing more.
pub(super) struct SseBody {
    events: BoxStream<'static, Result<sse::Event, SseError<GeminiError>>>,
    done: bool,
}

impl SseBody {
    /// The chunks carried by `body` (a response's `bytes_stream()`). Each wait for the next
    /// bytes is bounded by `idle` ([`GeminiError::StreamStalled`]); a failure of `body` is a
    /// [`GeminiError::Transport`] naming `base_url`. At the end of `body` a last event that no
    /// blank line closed is still read.
    pub(super) fn new<S>(body: S, idle: Duration, base_url: String) -> SseBody
    where
        S: Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    {
        let bytes =
            futures::stream::unfold(Some((body.boxed(), base_url)), move |state| async move {
                let (mut body, base_url) = state?;
                match tokio::time::timeout(idle, body.next()).await {
                    Err(_) => Some((Err(GeminiError::StreamStalled { idle }), None)),
                    Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some((body, base_url)))),
                    Ok(Some(Err(source))) => Some((
                        Err(GeminiError::Transport {
                            base_url,
                            attempts: 1,
                            source,
                        }),
                        None,
                    )),
                    // The end: a blank line dispatches an event the body left unterminated.
                    Ok(None) => Some((Ok(Bytes::from_static(b"\n\n")), None)),
                }
            });
        SseBody {
            events: sse::events(bytes),
            done: false,
        }
    }

    /// The next chunk, `None` at the end. After an error the body yields nothing more.
    pub(super) async fn next(&mut self) -> Option<Result<GenerateContentResponse, GeminiError>> {
        while !self.done {
            let item = match self.events.next().await {
                None => {
                    self.done = true;
                    return None;
                }
                Some(Ok(event)) => match parse_chunk(&event.data) {
                    None => continue,
                    Some(item) => item,
                },
                Some(Err(SseError::Transport(e))) => Err(e),
                Some(Err(SseError::Malformed(m))) => {
                    Err(GeminiError::Decode(format!("stream: {m}")))
                }
            };
            self.done = item.is_err();
            return Some(item);
        }
        None
    }

    /// `first`, then the rest of the body's chunks.
    pub(super) fn into_stream(self, first: GenerateContentResponse) -> ResponseStream {
        let rest = futures::stream::unfold(self, |mut body| async move {
            body.next().await.map(|item| (item, body))
        });
        ResponseStream {
            inner: futures::stream::once(async move { Ok(first) })
                .chain(rest)
                .boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(chunks: Vec<Vec<u8>>) -> SseBody {
        let chunks: Vec<reqwest::Result<Bytes>> =
            chunks.into_iter().map(|c| Ok(c.into())).collect();
        SseBody::new(
            futures::stream::iter(chunks),
            Duration::from_secs(5),
            "http://h".into(),
        )
    }

    async fn texts(mut body: SseBody) -> Vec<Result<String, String>> {
        let mut out = Vec::new();
        while let Some(item) = body.next().await {
            out.push(item.map(|c| c.text()).map_err(|e| e.to_string()));
        }
        out
    }

    fn text_chunk(text: &str) -> String {
        serde_json::json!({"candidates": [{"content": {"parts": [{"text": text}]}}]}).to_string()
    }

    #[tokio::test]
    async fn sse_crlf_split_chunks_multiline_comments_and_an_unterminated_last_event() {
        let first = format!(": keep-alive\r\ndata: {}\r", text_chunk("a"));
        let (a, b) = first.split_at(30);
        let chunks = vec![
            a.into(),
            b.into(),
            b"\n\r\n".to_vec(),
            b"data: {\"candidates\": [{\"content\":\ndata: {\"parts\": [{\"text\": \"b\"}]}}]}\r\r"
                .to_vec(),
            format!("event: e\nid: 3\ndata:{}", text_chunk("c")).into(),
        ];
        assert_eq!(
            texts(body(chunks)).await,
            vec![Ok("a".into()), Ok("b".into()), Ok("c".into())],
            "\\r\\n split across chunks, data lines joined with \\n, the last event read at the end"
        );
    }

    #[tokio::test]
    async fn sse_keeps_utf8_split_across_chunks_and_skips_done() {
        let event = format!("data: {}\n\ndata: [DONE]\n\n", text_chunk("héllo")).into_bytes();
        let at = event.iter().position(|&b| b == 0xc3).unwrap() + 1; // inside 'é'
        let (a, b) = event.split_at(at);
        assert_eq!(
            texts(body(vec![a.to_vec(), b.to_vec()])).await,
            vec![Ok("héllo".into())]
        );
    }

    #[tokio::test]
    async fn an_error_ends_the_body() {
        let got = texts(body(vec![
            b"data: {nope\n\n".to_vec(),
            b"data: {\"candidates\": []}\n\n".to_vec(),
        ]))
        .await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].as_ref().unwrap_err().contains("stream chunk"),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn a_silent_body_stalls_after_the_idle_timeout() {
        let silent = futures::stream::iter([Ok(Bytes::from_static(b": hello\n"))])
            .chain(futures::stream::pending());
        let idle = Duration::from_millis(200);
        let mut body = SseBody::new(silent, idle, "http://h".into());
        let started = std::time::Instant::now();
        let Some(Err(GeminiError::StreamStalled { idle: reported })) = body.next().await else {
            panic!("expected a stall")
        };
        assert_eq!(reported, idle);
        assert!(started.elapsed() >= idle, "{:?}", started.elapsed());
        assert!(body.next().await.is_none(), "nothing after an error");
    }

    #[test]
    fn stream_error_object_becomes_api_error() {
        let e =
            parse_chunk(r#"{"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}"#)
                .unwrap()
                .unwrap_err();
        assert!(matches!(e, GeminiError::Api { status: 503, .. }), "{e:?}");
        assert!(e.to_string().contains("overloaded"));
        assert!(parse_chunk("[DONE]").is_none());
        assert!(matches!(
            parse_chunk("{nope").unwrap(),
            Err(GeminiError::Decode(_))
        ));
    }
}
