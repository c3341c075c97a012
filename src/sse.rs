//! Server-Sent Events: the crate's one SSE parser, `eventsource-stream`, behind a lossy UTF-8
//! decoder. Used by the API client ([`crate::client`]: watches and chat turns) and by the
//! Gemini client ([`crate::chat::gemini`]: streamed answers).
//!
//! [`events`] turns a byte stream (e.g. reqwest's `bytes_stream()`) into the events of the
//! `text/event-stream` format (WHATWG HTML, "Server-sent events"): lines end with `\n`, `\r\n`
//! or `\r`, chunks may split anywhere (inside a line end or a UTF-8 sequence), comments are
//! skipped, several `data:` lines are joined with `\n`, and an event is dispatched at a blank
//! line (an unterminated last event is dropped, as the specification says).
//!
//! Bytes that are not UTF-8 become U+FFFD, as the specification's decoder does, before they
//! reach the parser: eventsource-stream 0.2 on its own keeps an invalid byte buffered with
//! everything after it, so no later event would be parsed and the stream would end in an error.
//!
//! Neither a line nor an event is bounded in size here (nor was it by the hand-written parsers
//! this module replaced); callers that need a bound must count the bytes they feed in.

use std::pin::Pin;
use std::task::{Context, Poll};

use eventsource_stream::{EventStreamError, Eventsource};
use futures::stream::{BoxStream, Stream, StreamExt};

pub use eventsource_stream::Event;

/// Why reading an event stream failed.
#[derive(Debug, thiserror::Error)]
pub enum SseError<E> {
    /// The byte stream under the parser failed (its error, unchanged).
    #[error(transparent)]
    Transport(E),
    /// The parser rejected the stream.
    #[error("malformed event stream: {0}")]
    Malformed(String),
}

impl<E> From<EventStreamError<E>> for SseError<E> {
    fn from(e: EventStreamError<E>) -> Self {
        match e {
            EventStreamError::Transport(e) => SseError::Transport(e),
            EventStreamError::Utf8(e) => SseError::Malformed(e.to_string()),
            EventStreamError::Parser(e) => SseError::Malformed(e.to_string()),
        }
    }
}

/// The events of `bytes`, in order; a failure of `bytes` is passed on as
/// [`SseError::Transport`]. The stream ends when `bytes` ends.
pub fn events<S, B, E>(bytes: S) -> BoxStream<'static, Result<Event, SseError<E>>>
where
    S: Stream<Item = Result<B, E>> + Send + 'static,
    B: AsRef<[u8]> + Send + 'static,
    E: Send + 'static,
{
    LossyUtf8 {
        bytes: bytes.boxed(),
        carry: Vec::new(),
        done: false,
    }
    .eventsource()
    .map(|item| item.map_err(SseError::from))
    .boxed()
}

/// A byte stream decoded to text chunk by chunk; invalid sequences become U+FFFD, and a
/// sequence split between two chunks is carried over to the next one.
struct LossyUtf8<S> {
    bytes: S,
    /// The start of a UTF-8 sequence that the last chunk cut off.
    carry: Vec<u8>,
    done: bool,
}

impl<B, E> Stream for LossyUtf8<BoxStream<'static, Result<B, E>>>
where
    B: AsRef<[u8]>,
{
    type Item = Result<String, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        Poll::Ready(match futures::ready!(this.bytes.poll_next_unpin(cx)) {
            Some(Ok(bytes)) => Some(Ok(decode(&mut this.carry, bytes.as_ref()))),
            Some(Err(e)) => Some(Err(e)),
            None => {
                this.done = true;
                let rest = std::mem::take(&mut this.carry);
                (!rest.is_empty()).then(|| Ok(String::from_utf8_lossy(&rest).into_owned()))
            }
        })
    }
}

/// `carry` followed by `bytes` as text, except an incomplete sequence at the end, which is
/// left in `carry`.
fn decode(carry: &mut Vec<u8>, bytes: &[u8]) -> String {
    carry.extend_from_slice(bytes);
    let mut text = String::with_capacity(carry.len());
    let mut rest = carry.as_slice();
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                text.push_str(valid);
                rest = &[];
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    Some(invalid) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[invalid..];
                    }
                    None => {
                        // An incomplete sequence: its end is in the next chunk.
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let used = carry.len() - rest.len();
    carry.drain(..used);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// The `data` of every event parsed from `chunks`, and the error that ended them, if any.
    async fn data_of(chunks: &[&[u8]]) -> Vec<String> {
        let chunks: Vec<Result<Bytes, std::io::Error>> = chunks
            .iter()
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        events(futures::stream::iter(chunks))
            .map(|e| e.expect("no error").data)
            .collect()
            .await
    }

    #[tokio::test]
    async fn crlf_split_chunks_multiline_and_comments() {
        let got = data_of(&[
            b": keep-alive\r\ndata: {\"a\"",
            b":1}\r",
            b"\n\r\ndata: x\ndata: y\n\nevent: e\nid: 3\ndata:z\r\r",
            b"data: tail",
        ])
        .await;
        assert_eq!(
            got,
            vec!["{\"a\":1}", "x\ny", "z"],
            "an unterminated event is dropped"
        );
    }

    #[tokio::test]
    async fn utf8_split_across_chunks_and_invalid_bytes() {
        let bytes = "data: héllo\n\n".as_bytes();
        let (a, b) = bytes.split_at(8); // inside 'é'
        assert_eq!(data_of(&[a, b]).await, vec!["héllo"]);
        assert_eq!(
            data_of(&[b"data: a\xffb\n\n", b"data: after\n\n"]).await,
            vec!["a\u{fffd}b", "after"],
            "an invalid byte does not stop the stream"
        );
        assert_eq!(
            data_of(&[b"data: \xe2\x82", b"\n\ndata: x\n\n", b"data: \xe2"]).await,
            vec!["\u{fffd}", "x"],
            "a cut sequence followed by something else is invalid"
        );
    }

    #[tokio::test]
    async fn event_fields_and_transport_errors() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"event: ADDED\nid: 7\ndata: {}\n\n")),
            Err(std::io::Error::other("reset")),
        ];
        let got: Vec<_> = events(futures::stream::iter(chunks)).collect().await;
        let first = got[0].as_ref().unwrap();
        assert_eq!((first.event.as_str(), first.id.as_str()), ("ADDED", "7"));
        assert!(matches!(&got[1], Err(SseError::Transport(e)) if e.to_string() == "reset"));
        assert_eq!(got.len(), 2);
    }
}
