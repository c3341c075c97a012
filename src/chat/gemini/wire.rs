//! The REST wire types of `generateContent` and `streamGenerateContent`, in the API's
//! lowerCamelCase JSON. Each keeps the fields it does not name in a flattened `extra` map, so a
//! value deserialised from the API serialises back to the same JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Unknown JSON fields, kept so that a value round-trips unchanged.
pub type Extra = Map<String, Value>;

/// The body of `generateContent` and `streamGenerateContent`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentRequest {
    /// The conversation so far, oldest first, ending with the newest user turn.
    pub contents: Vec<Content>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    /// How the model may call them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_config: Option<ToolConfig>,
    /// System instruction (text parts; its role is ignored by the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_instruction: Option<Content>,
    /// Sampling and output options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_config: Option<GenerationConfig>,
    /// Other request fields (`safetySettings`, `cachedContent`, ...), sent as given.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One turn: a role and its ordered parts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Content {
    /// `user` or `model` (empty when the API left it out; then it is not sent back).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// The parts, in order.
    #[serde(default)]
    pub parts: Vec<Part>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The role of user turns (and of function responses).
pub const ROLE_USER: &str = "user";
/// The role of model turns.
pub const ROLE_MODEL: &str = "model";

impl Content {
    /// A user turn with one text part.
    pub fn user_text(text: impl Into<String>) -> Content {
        Content {
            role: ROLE_USER.into(),
            parts: vec![Part::text(text)],
            extra: Extra::new(),
        }
    }

    /// A content with this role and these parts.
    pub fn new(role: impl Into<String>, parts: Vec<Part>) -> Content {
        Content {
            role: role.into(),
            parts,
            extra: Extra::new(),
        }
    }

    /// The user turn answering function calls: one `functionResponse` part per response, in
    /// the order of the calls (the REST function-calling guide sends them with role `user`).
    pub fn function_responses(responses: Vec<FunctionResponse>) -> Content {
        Content::new(
            ROLE_USER,
            responses.into_iter().map(Part::function_response).collect(),
        )
    }

    /// A system instruction made of one text part.
    pub fn system(text: impl Into<String>) -> Content {
        Content::new("", vec![Part::text(text)])
    }

    /// The visible text: every non-thought text part, concatenated.
    pub fn text(&self) -> String {
        self.parts
            .iter()
            .filter(|p| !p.is_thought())
            .filter_map(|p| p.text.as_deref())
            .collect()
    }

    /// The function calls, in order.
    pub fn function_calls(&self) -> Vec<&FunctionCall> {
        self.parts
            .iter()
            .filter_map(|p| p.function_call.as_ref())
            .collect()
    }
}

/// One part of a turn. Exactly one data field is normally set (`text`, `functionCall`,
/// `functionResponse`, or another kind kept in `extra`), plus optional `thought` and
/// `thoughtSignature`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    /// Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A call the model asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_call: Option<FunctionCall>,
    /// The result of a call, sent by us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_response: Option<FunctionResponse>,
    /// Whether this part is the model's thinking (not part of the answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought: Option<bool>,
    /// Opaque signature of the model's reasoning; must be sent back exactly as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought_signature: Option<String>,
    /// Fields this type does not name (`inlineData`, `executableCode`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

impl Part {
    /// A text part.
    pub fn text(text: impl Into<String>) -> Part {
        Part {
            text: Some(text.into()),
            ..Part::default()
        }
    }

    /// A function-call part.
    pub fn function_call(call: FunctionCall) -> Part {
        Part {
            function_call: Some(call),
            ..Part::default()
        }
    }

    /// A function-response part.
    pub fn function_response(response: FunctionResponse) -> Part {
        Part {
            function_response: Some(response),
            ..Part::default()
        }
    }

    /// Whether the part is marked as thought.
    pub fn is_thought(&self) -> bool {
        self.thought == Some(true)
    }
}

/// A call the model asks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCall {
    /// The call's id, when the API gives one; echo it in the matching response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The declared function name (a Gemini-side name; see `schema::NameMap`).
    pub name: String,
    /// The arguments, a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Map<String, Value>>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The result of a call, sent back in a user turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionResponse {
    /// The id of the call this answers (copy [`FunctionCall::id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The function name, as in the call.
    pub name: String,
    /// The result, a JSON object; by convention `{"output": ...}` or `{"error": ...}`.
    pub response: Map<String, Value>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

impl FunctionResponse {
    /// The response to `call` carrying `response`, with the call's id and name.
    pub fn to_call(call: &FunctionCall, response: Map<String, Value>) -> FunctionResponse {
        FunctionResponse {
            id: call.id.clone(),
            name: call.name.clone(),
            response,
            extra: Extra::new(),
        }
    }
}

/// A tool: here, function declarations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tool {
    /// The functions the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub function_declarations: Vec<FunctionDeclaration>,
    /// Other tool kinds (`googleSearch`, `codeExecution`, ...), sent as given.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A function the model may call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeclaration {
    /// Name: letters, digits, `_ . : -`, starting with a letter or `_`, at most 64 characters.
    pub name: String,
    /// What the function does; the model uses it to decide when to call it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The parameters as a JSON Schema describing an object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_json_schema: Option<Value>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `toolConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolConfig {
    /// Function-calling behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_calling_config: Option<FunctionCallingConfig>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `toolConfig.functionCallingConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCallingConfig {
    /// `AUTO` (default), `ANY`, `NONE` or `VALIDATED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// With `ANY`: the functions the model may choose from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_function_names: Vec<String>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `generationConfig` (the common fields; others go in `extra`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationConfig {
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Top-k sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Output token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_sequences: Vec<String>,
    /// Fields this type does not name (`thinkingConfig`, `responseMimeType`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// A `generateContent` answer, or one chunk of a stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentResponse {
    /// Candidate answers (one unless `candidateCount` was raised; none if the prompt was blocked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Candidate>,
    /// Why the prompt was blocked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_feedback: Option<PromptFeedback>,
    /// Token counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_metadata: Option<UsageMetadata>,
    /// The model version that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// The response id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

impl GenerateContentResponse {
    /// The first candidate's content.
    pub fn content(&self) -> Option<&Content> {
        self.candidates.first().and_then(|c| c.content.as_ref())
    }

    /// The first candidate's visible text (thought parts excluded).
    pub fn text(&self) -> String {
        self.content().map(Content::text).unwrap_or_default()
    }

    /// The first candidate's function calls, in order.
    pub fn function_calls(&self) -> Vec<&FunctionCall> {
        self.content()
            .map(Content::function_calls)
            .unwrap_or_default()
    }

    /// The first candidate's finish reason (`STOP`, `MAX_TOKENS`, `SAFETY`, ...).
    pub fn finish_reason(&self) -> Option<&str> {
        self.candidates
            .first()
            .and_then(|c| c.finish_reason.as_deref())
    }

    /// `promptFeedback.blockReason`, when the prompt was blocked.
    pub fn block_reason(&self) -> Option<&str> {
        self.prompt_feedback
            .as_ref()
            .and_then(|f| f.block_reason.as_deref())
    }
}

/// One candidate answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// The model turn (absent when nothing was generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    /// Why generation stopped; absent on intermediate stream chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// The candidate's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Fields this type does not name (`safetyRatings`, `finishMessage`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `promptFeedback`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptFeedback {
    /// Why the prompt was blocked (`SAFETY`, `OTHER`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_reason: Option<String>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `usageMetadata`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    /// Prompt tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_token_count: Option<u64>,
    /// Generated tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates_token_count: Option<u64>,
    /// Thinking tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thoughts_token_count: Option<u64>,
    /// All tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_token_count: Option<u64>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chunk(v: Value) -> GenerateContentResponse {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let turn = json!({
            "role": "model",
            "parts": [
                {"text": "thinking...", "thought": true, "thoughtSignature": "c2lnMQ=="},
                {"functionCall": {"id": "fc1", "name": "get", "args": {"q": 1}, "future": [1]},
                 "thoughtSignature": "c2lnMg==", "partMetadata": {"x": 1}},
                {"inlineData": {"mimeType": "image/png", "data": "AAA="}},
                {"executableCode": {"language": "PYTHON", "code": "print(1)"}}
            ],
            "newContentField": true
        });
        let content: Content = serde_json::from_value(turn.clone()).unwrap();
        assert_eq!(serde_json::to_value(&content).unwrap(), turn);
        let response = json!({
            "candidates": [{"content": turn, "finishReason": "STOP", "index": 0,
                            "safetyRatings": [], "avgLogprobs": -0.1}],
            "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 9, "trafficType": "ON_DEMAND"},
            "modelVersion": "gemini-x", "responseId": "r1", "createTime": "2026-01-01T00:00:00Z"
        });
        let parsed = chunk(response.clone());
        assert_eq!(serde_json::to_value(&parsed).unwrap(), response);
        assert_eq!(parsed.function_calls().len(), 1);
        assert_eq!(parsed.text(), "", "thought text is not answer text");
    }

    #[test]
    fn request_uses_camel_case() {
        let req = GenerateContentRequest {
            contents: vec![Content::user_text("hi")],
            tools: vec![Tool {
                function_declarations: vec![FunctionDeclaration {
                    name: "f".into(),
                    description: "d".into(),
                    parameters_json_schema: Some(json!({"type": "object"})),
                    extra: Extra::new(),
                }],
                extra: Extra::new(),
            }],
            tool_config: Some(ToolConfig {
                function_calling_config: Some(FunctionCallingConfig {
                    mode: Some("AUTO".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            system_instruction: Some(Content::system("be brief")),
            generation_config: Some(GenerationConfig {
                max_output_tokens: Some(10),
                ..Default::default()
            }),
            extra: Extra::new(),
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({
                "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                "tools": [{"functionDeclarations": [{"name": "f", "description": "d",
                            "parametersJsonSchema": {"type": "object"}}]}],
                "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
                "systemInstruction": {"parts": [{"text": "be brief"}]},
                "generationConfig": {"maxOutputTokens": 10}
            })
        );
    }
}
