//! [`StreamMerger`]: the chunks of a streamed answer folded into the one model turn that is
//! stored and replayed.

use super::wire::{Candidate, Content, GenerateContentResponse, Part, ROLE_MODEL};

/// Folds the chunks of a stream into one response with one candidate whose content is the
/// whole model turn, ready to be stored and replayed.
///
/// Adjacent plain text parts (same `thought` flag, no signature, nothing else) are
/// concatenated; every other part — function calls, parts carrying a `thoughtSignature`
/// (including the empty-text part a stream may end with), other kinds — is kept exactly as
/// received and in order. Only the first candidate is followed. The finish reason, usage,
/// model version and response id are the last ones seen; the prompt feedback the first one.
#[derive(Debug, Clone, Default)]
pub struct StreamMerger {
    content: Content,
    candidate: Candidate,
    response: GenerateContentResponse,
    chunks: usize,
}

impl StreamMerger {
    /// An empty merger.
    pub fn new() -> StreamMerger {
        StreamMerger::default()
    }

    /// Add one chunk.
    pub fn push(&mut self, chunk: &GenerateContentResponse) {
        self.chunks += 1;
        if let Some(c) = chunk.candidates.first() {
            if let Some(content) = &c.content {
                if self.content.role.is_empty() {
                    self.content.role = content.role.clone();
                }
                self.content
                    .extra
                    .extend(content.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
                for part in &content.parts {
                    push_part(&mut self.content.parts, part.clone());
                }
            }
            if c.finish_reason.is_some() {
                self.candidate.finish_reason = c.finish_reason.clone();
            }
            if c.index.is_some() {
                self.candidate.index = c.index;
            }
            self.candidate
                .extra
                .extend(c.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let r = &mut self.response;
        if r.prompt_feedback.is_none() {
            r.prompt_feedback = chunk.prompt_feedback.clone();
        }
        if chunk.usage_metadata.is_some() {
            r.usage_metadata = chunk.usage_metadata.clone();
        }
        if chunk.model_version.is_some() {
            r.model_version = chunk.model_version.clone();
        }
        if chunk.response_id.is_some() {
            r.response_id = chunk.response_id.clone();
        }
        r.extra
            .extend(chunk.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// How many chunks were pushed.
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// The model turn merged so far (role defaults to `model`).
    pub fn content(&self) -> Content {
        let mut content = self.content.clone();
        if content.role.is_empty() {
            content.role = ROLE_MODEL.into();
        }
        content
    }

    /// The merged response: one candidate holding [`StreamMerger::content`].
    pub fn finish(self) -> GenerateContentResponse {
        let content = self.content();
        let mut response = self.response;
        let mut candidate = self.candidate;
        if !content.parts.is_empty() || candidate.finish_reason.is_some() || self.chunks > 0 {
            candidate.content = Some(content);
            response.candidates = vec![candidate];
        }
        response
    }
}

/// Merge a whole list of chunks (see [`StreamMerger`]).
pub fn merge_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a GenerateContentResponse>,
) -> GenerateContentResponse {
    let mut merger = StreamMerger::new();
    for chunk in chunks {
        merger.push(chunk);
    }
    merger.finish()
}

fn plain_text(p: &Part) -> bool {
    p.text.is_some()
        && p.function_call.is_none()
        && p.function_response.is_none()
        && p.thought_signature.is_none()
        && p.extra.is_empty()
}

fn push_part(parts: &mut Vec<Part>, part: Part) {
    if let Some(last) = parts.last_mut()
        && plain_text(last)
        && plain_text(&part)
        && last.is_thought() == part.is_thought()
    {
        if let (Some(text), Some(more)) = (last.text.as_mut(), part.text.as_deref()) {
            text.push_str(more);
        }
        return;
    }
    parts.push(part);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn chunk(v: Value) -> GenerateContentResponse {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn merge_concatenates_text_and_keeps_signatures_and_calls() {
        let chunks = [
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "I think", "thought": true}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": " hard", "thought": true}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}],
                   "modelVersion": "m1"}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}, {"text": " world"}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "a", "args": {}}, "thoughtSignature": "S1"},
                {"functionCall": {"name": "b", "args": {"x": 1}}}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "after"}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "", "thoughtSignature": "S2"}]},
                   "finishReason": "STOP"}],
                   "usageMetadata": {"totalTokenCount": 5}}),
        ]
        .map(chunk);
        let merged = merge_chunks(&chunks);
        let content = serde_json::to_value(merged.content().unwrap()).unwrap();
        assert_eq!(
            content,
            json!({"role": "model", "parts": [
                {"text": "I think hard", "thought": true},
                {"text": "Hello world"},
                {"functionCall": {"name": "a", "args": {}}, "thoughtSignature": "S1"},
                {"functionCall": {"name": "b", "args": {"x": 1}}},
                {"text": "after"},
                {"text": "", "thoughtSignature": "S2"}
            ]})
        );
        assert_eq!(merged.finish_reason(), Some("STOP"));
        assert_eq!(merged.model_version.as_deref(), Some("m1"));
        assert_eq!(
            merged.usage_metadata.and_then(|u| u.total_token_count),
            Some(5)
        );
        assert_eq!(merged.candidates.len(), 1);
    }

    #[test]
    fn merge_never_folds_text_into_a_signed_part() {
        let chunks = [
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "a", "thoughtSignature": "S"}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "b"}]}}]}),
            json!({"candidates": [{"content": {"parts": [{"text": "c", "thought": true}]}}]}),
        ]
        .map(chunk);
        let merged = merge_chunks(&chunks);
        let parts = &merged.content().unwrap().parts;
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].thought_signature.as_deref(), Some("S"));
        assert_eq!(parts[0].text.as_deref(), Some("a"));
        assert_eq!(merged.text(), "ab");
        assert_eq!(merge_chunks([]).candidates.len(), 0);
    }
}
