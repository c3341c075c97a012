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
//! An event is bounded: more than [`MAX_EVENT_BYTES`] without a blank line ends the stream
//! with [`SseError::Malformed`], so a peer cannot make us buffer without limit.

use std::pin::Pin;
use std::task::{Context, Poll};

use eventsource_stream::{EventStreamError, Eventsource};
use futures::stream::{BoxStream, Stream, StreamExt};

pub use eventsource_stream::Event;

/// The most bytes one event may take (from one blank line to the next).
pub const MAX_EVENT_BYTES: usize = crate::domain::limits::MAX_SSE_EVENT_BYTES;

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

impl<E> From<EventStreamError<SseError<E>>> for SseError<E> {
    fn from(e: EventStreamError<SseError<E>>) -> Self {
        match e {
            EventStreamError::Transport(e) => e,
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
        pending: 0,
        prev: 0,
        limit: MAX_EVENT_BYTES,
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
    /// Bytes since the last blank line (the current event's size so far).
    pending: usize,
    /// The last byte seen, to find blank lines across chunks.
    prev: u8,
    /// The most bytes `pending` may reach.
    limit: usize,
}

impl<S> LossyUtf8<S> {
    /// Count `text` into the current event; false when the event grew over the limit.
    fn within_limit(&mut self, text: &str) -> bool {
        for &b in text.as_bytes() {
            let eol = b == b'\n' || b == b'\r';
            // `\r\n` is one line end; any other line end right after one is a blank line.
            let same_eol = b == b'\n' && self.prev == b'\r';
            if eol && !same_eol && (self.prev == b'\n' || self.prev == b'\r') {
                self.pending = 0;
            } else {
                self.pending += 1;
                if self.pending > self.limit {
                    return false;
                }
            }
            self.prev = b;
        }
        true
    }
}

impl<B, E> Stream for LossyUtf8<BoxStream<'static, Result<B, E>>>
where
    B: AsRef<[u8]>,
{
    type Item = Result<String, SseError<E>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        Poll::Ready(match futures::ready!(this.bytes.poll_next_unpin(cx)) {
            Some(Ok(bytes)) => {
                let text = decode(&mut this.carry, bytes.as_ref());
                if this.within_limit(&text) {
                    Some(Ok(text))
                } else {
                    this.done = true;
                    Some(Err(SseError::Malformed(format!(
                        "an event is larger than {} bytes",
                        this.limit
                    ))))
                }
            }
            Some(Err(e)) => Some(Err(SseError::Transport(e))),
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
    async fn an_event_over_the_limit_ends_the_stream() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"data: small\r\n\r\n")),
            Ok(Bytes::from_static(b"data: 0123456789")),
            Ok(Bytes::from_static(b"0123456789\n\n")),
        ];
        let stream = LossyUtf8 {
            bytes: futures::stream::iter(chunks).boxed(),
            carry: Vec::new(),
            done: false,
            pending: 0,
            prev: 0,
            limit: 20,
        };
        let got: Vec<_> = stream.collect().await;
        assert!(got[0].is_ok() && got[1].is_ok(), "{got:?}");
        assert!(
            matches!(&got[2], Err(SseError::Malformed(m)) if m.contains("larger than 20")),
            "{got:?}"
        );
        assert_eq!(got.len(), 3, "nothing after the error");
        // Blank lines reset the count, whatever the line ends.
        let mut s = LossyUtf8 {
            bytes: futures::stream::empty::<Result<Bytes, std::io::Error>>().boxed(),
            carry: Vec::new(),
            done: false,
            pending: 0,
            prev: 0,
            limit: 12,
        };
        for text in [
            "data: abcd\n\n",
            "data: efgh\r\r",
            "data: ij\r\n",
            "\r\ndata: k\n\n",
        ] {
            assert!(s.within_limit(text), "{text:?}");
        }
        assert!(!s.within_limit("data: 0123456789"));
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
