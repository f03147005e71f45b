//! The usage tap: watches an LLM answer's frames as they pass (it never holds or changes
//! them) and reads the tokens and the model out of them, per provider:
//!
//! | provider | JSON answer | SSE stream |
//! |---|---|---|
//! | OpenAI-compatible | top-level `usage`, `model` | the chunk whose `usage` is not null (Chat Completions); `response.completed`'s `response.usage` (Responses API) |
//! | Anthropic | top-level `usage`, `model` | `message_start`'s `message.usage` and `model`, then each `message_delta`'s `usage` |
//! | Gemini | `usageMetadata`, `modelVersion` | each event's `usageMetadata` (the last one wins) |
//!
//! Tokens are counted as: **in** = every prompt token, cached ones included (Anthropic:
//! `input_tokens` + `cache_creation_input_tokens` + `cache_read_input_tokens`); **out** =
//! generated tokens (Gemini: candidates + thoughts); **cached** = prompt tokens read from a
//! cache. A compressed answer, one that is neither JSON nor SSE, and one whose usage
//! cannot be read give no reading (unknown).

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use memchr::memmem;
use serde_json::Value;
use std::sync::LazyLock;

use super::fields::UsageFields;
use super::scan::{JsonMembers, Lines, MAX_WANTED, json_string, members_from_end};
use crate::service::ApiFormat;

/// Tokens of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cached: u64,
}

/// The top-level members read from a JSON answer or an SSE chunk: the usage, and the
/// model only while it is wanted (the request named none). Of each pair the first wins.
fn members(want_model: bool) -> &'static [&'static str] {
    match want_model {
        true => &["usage", "usageMetadata", "model", "modelVersion"],
        false => &["usage", "usageMetadata"],
    }
}

/// Where `usage` and `model` are in [`members`].
const USAGE_AT: usize = 0;
const MODEL_AT: usize = 2;

/// The tokens and model of a JSON answer whose members' raw text `get` gives, by their
/// place in [`members`].
fn json_answer<'a>(
    format: ApiFormat,
    want_model: bool,
    get: impl Fn(usize) -> Option<&'a [u8]>,
) -> (Option<Tokens>, Option<String>) {
    let usage = get(USAGE_AT).or_else(|| get(USAGE_AT + 1));
    let tokens = usage.and_then(|u| tokens_in(format, u));
    let model = want_model
        .then(|| get(MODEL_AT).or_else(|| get(MODEL_AT + 1)))
        .flatten()
        .and_then(json_string);
    (tokens, model)
}

enum Mode {
    /// A JSON answer. Its first frame is held (a count on the same buffer) until another
    /// comes: an answer in one frame, the usual case, is then read from its end and its
    /// generated text skipped ([`members_from_end`]).
    Json {
        scan: JsonMembers,
        first: First,
    },
    Sse(Lines),
    Off,
}

/// A JSON answer's first frame.
enum First {
    /// Not come yet.
    Awaited,
    /// Came, and no other after it yet: not read.
    Held(Bytes),
    /// Read forward, with what came after it.
    Fed,
}

/// Reads one answer's usage as its frames pass.
pub struct Tap {
    format: ApiFormat,
    mode: Mode,
    tokens: Option<Tokens>,
    model: Option<String>,
    /// The model is wanted from the answer (the request named none).
    want_model: bool,
}

impl Tap {
    /// A tap for an answer with these headers (compressed or neither JSON nor SSE: off);
    /// `want_model` when the request named no model, so the answer's is read.
    pub fn new(format: ApiFormat, headers: &HeaderMap, want_model: bool) -> Tap {
        let compressed = headers
            .get(CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let ct = headers.get(CONTENT_TYPE).map_or(&b""[..], |v| v.as_bytes());
        let mode = if compressed {
            Mode::Off
        } else if starts_with_ignore_case(ct, b"text/event-stream") {
            Mode::Sse(Lines::default())
        } else if ct.windows(4).any(|w| w.eq_ignore_ascii_case(b"json")) {
            Mode::Json {
                scan: JsonMembers::new(members(want_model)),
                first: First::Awaited,
            }
        } else {
            Mode::Off
        };
        Tap {
            format,
            mode,
            tokens: None,
            model: None,
            want_model,
        }
    }

    /// Whether this tap reads anything at all.
    pub fn is_on(&self) -> bool {
        !matches!(self.mode, Mode::Off)
    }

    /// Reads one frame.
    pub fn frame(&mut self, bytes: &Bytes) {
        match &mut self.mode {
            Mode::Json { scan, first } => {
                if bytes.is_empty() {
                    return;
                }
                match std::mem::replace(first, First::Fed) {
                    First::Awaited => *first = First::Held(bytes.clone()),
                    First::Held(held) => {
                        scan.feed(&held);
                        scan.feed(bytes);
                    }
                    First::Fed => scan.feed(bytes),
                }
            }
            Mode::Sse(lines) => {
                // A line of interest has `"usage` in it (usage, `response.completed`,
                // Anthropic's `message_start` and `message_delta`) unless a model is still
                // wanted: a frame without it is searched once, not line by line.
                let model_wanted = self.want_model && self.model.is_none();
                if !model_wanted && lines.is_clean() && USAGE.find(bytes).is_none() {
                    lines.pass(bytes);
                    return;
                }
                let (format, tokens, model) = (self.format, &mut self.tokens, &mut self.model);
                let want_model = self.want_model;
                lines.feed(bytes, |line| {
                    sse_line(format, line, tokens, model, want_model)
                });
            }
            Mode::Off => {}
        }
    }

    /// The tokens (when the answer said) and the model it named (only when wanted).
    pub fn finish(self) -> (Option<Tokens>, Option<String>) {
        let (format, want_model) = (self.format, self.want_model);
        match self.mode {
            Mode::Json { mut scan, first } => {
                if let First::Held(doc) = first {
                    // The whole answer: the usage (and the model, when wanted) is enough.
                    let enough = |f: &[Option<&[u8]>; MAX_WANTED]| {
                        f[USAGE_AT].is_some() && (!want_model || f[MODEL_AT].is_some())
                    };
                    if let Some(found) = members_from_end(&doc, members(want_model), enough) {
                        return json_answer(format, want_model, |i| found[i]);
                    }
                    scan.feed(&doc);
                }
                json_answer(format, want_model, |i| scan.get(members(want_model)[i]))
            }
            Mode::Sse(_) => (self.tokens, self.model),
            Mode::Off => (None, None),
        }
    }
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

/// The searches run on each SSE line, built once (`memmem::find` builds its searcher on
/// every call, which cost more than the search on a short line: 14,000 instructions per
/// stream of 20 events).
type Search = LazyLock<memmem::Finder<'static>>;
static RESPONSE_COMPLETED: Search = LazyLock::new(|| memmem::Finder::new(b"response.completed"));
static USAGE: Search = LazyLock::new(|| memmem::Finder::new(b"\"usage"));
static MESSAGE_START: Search = LazyLock::new(|| memmem::Finder::new(b"\"message_start\""));
static MESSAGE_DELTA: Search = LazyLock::new(|| memmem::Finder::new(b"\"message_delta\""));

/// One SSE line: a `data:` payload may carry usage.
fn sse_line(
    format: ApiFormat,
    line: &[u8],
    tokens: &mut Option<Tokens>,
    model: &mut Option<String>,
    want_model: bool,
) {
    let Some(data) = line.strip_prefix(b"data:") else {
        return;
    };
    let data = data.trim_ascii();
    if data.first() != Some(&b'{') {
        return; // `[DONE]`, keep-alives
    }
    // Most chunks carry neither usage nor a model still wanted: not read (a top-level
    // `"usage…` member, a Responses API `response.completed` with its usage, and
    // Anthropic's `message_start` and `message_delta` cannot be there without these
    // bytes). One search per chunk, the first thing done on each; [`Tap::frame`] makes the
    // same one over a whole frame, so a frame and its lines are read alike.
    let model_wanted = want_model && model.is_none();
    if USAGE.find(data).is_none() && !model_wanted {
        return;
    }
    if format == ApiFormat::Anthropic {
        return anthropic_event(data, tokens, model_wanted.then_some(model));
    }
    if format == ApiFormat::OpenAi && RESPONSE_COMPLETED.find(data).is_some() {
        // Responses API: the whole response, usage inside (once per stream).
        if let Ok(v) = serde_json::from_slice::<Value>(data) {
            if v["type"] == "response.completed" {
                set(tokens, tokens_at(format, &v["response"]["usage"]));
                if model_wanted {
                    set_model(model, &v["response"]["model"]);
                }
            }
        }
        return;
    }
    let mut chunk = JsonMembers::new(members(model_wanted));
    chunk.feed(data);
    let usage = chunk.get("usage").or(chunk.get("usageMetadata"));
    if let Some(u) = usage.filter(|u| *u != b"null") {
        set(tokens, tokens_in(format, u));
    }
    if model_wanted {
        if let Some(m) = chunk.get("model").or(chunk.get("modelVersion")) {
            *model = json_string(m);
        }
    }
}

/// Anthropic: `message_start` has the input (and a first output count) and the model;
/// each `message_delta` has the output so far (and, in newer answers, the input again).
/// `model`: where the model goes, while it is wanted.
fn anthropic_event(data: &[u8], tokens: &mut Option<Tokens>, model: Option<&mut Option<String>>) {
    let start = MESSAGE_START.find(data).is_some();
    let delta = MESSAGE_DELTA.find(data).is_some();
    if !start && !delta {
        return;
    }
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    match v["type"].as_str() {
        Some("message_start") => {
            set(
                tokens,
                tokens_at(ApiFormat::Anthropic, &v["message"]["usage"]),
            );
            if let Some(model) = model {
                set_model(model, &v["message"]["model"]);
            }
        }
        Some("message_delta") => {
            // Without a usage object it says nothing of tokens.
            let u = &v["usage"];
            if !u.is_object() {
                return;
            }
            let t = tokens.get_or_insert_with(Tokens::default);
            if let Some(out) = u["output_tokens"].as_u64() {
                t.output = out;
            }
            if u.get("input_tokens").is_some() {
                if let Some(fresh) = tokens_at(ApiFormat::Anthropic, u) {
                    t.input = fresh.input.max(t.input);
                    t.cached = fresh.cached.max(t.cached);
                }
            }
        }
        _ => {}
    }
}

fn set(slot: &mut Option<Tokens>, found: Option<Tokens>) {
    if found.is_some() {
        *slot = found;
    }
}

fn set_model(slot: &mut Option<String>, v: &Value) {
    if let Some(m) = v.as_str() {
        *slot = Some(m.to_string());
    }
}

/// The tokens of a provider's usage object, from its JSON text; `None` when it is not one.
fn tokens_in(format: ApiFormat, text: &[u8]) -> Option<Tokens> {
    tokens_of(format, &UsageFields::read(text)?)
}

/// The same, from an already parsed value.
fn tokens_at(format: ApiFormat, v: &Value) -> Option<Tokens> {
    tokens_of(format, &UsageFields::from_value(v)?)
}

/// The tokens of a provider's usage fields; `None` when they are not its usage.
fn tokens_of(format: ApiFormat, u: &UsageFields) -> Option<Tokens> {
    match format {
        ApiFormat::OpenAi => {
            // Chat Completions, or the Responses API's names.
            let input = u.prompt_tokens.0.or(u.input_tokens.0)?;
            let output = u.completion_tokens.0.or(u.output_tokens.0).unwrap_or(0);
            let cached = (u.prompt_tokens_details.0)
                .0
                .or((u.input_tokens_details.0).0)
                .unwrap_or(0);
            Some(Tokens {
                input,
                output,
                cached,
            })
        }
        ApiFormat::Anthropic => {
            let fresh = u.input_tokens.0?;
            let created = u.cache_creation_input_tokens.0.unwrap_or(0);
            let read = u.cache_read_input_tokens.0.unwrap_or(0);
            Some(Tokens {
                input: fresh + created + read,
                output: u.output_tokens.0.unwrap_or(0),
                cached: read,
            })
        }
        ApiFormat::Gemini => {
            let input = u.prompt_token_count.0?;
            let output =
                u.candidates_token_count.0.unwrap_or(0) + u.thoughts_token_count.0.unwrap_or(0);
            Some(Tokens {
                input,
                output,
                cached: u.cached_content_token_count.0.unwrap_or(0),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(ct: &'static str, encoding: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        if let Some(e) = encoding {
            h.insert(CONTENT_ENCODING, HeaderValue::from_static(e));
        }
        h
    }

    /// Runs `body` through a tap, cut into pieces of `step` bytes.
    fn read(
        format: ApiFormat,
        ct: &'static str,
        body: &str,
        step: usize,
    ) -> (Option<Tokens>, Option<String>) {
        read_as(format, ct, body, step, true)
    }

    /// The same, the model wanted or not.
    fn read_as(
        format: ApiFormat,
        ct: &'static str,
        body: &str,
        step: usize,
        want_model: bool,
    ) -> (Option<Tokens>, Option<String>) {
        let mut tap = Tap::new(format, &headers(ct, None), want_model);
        for piece in body.as_bytes().chunks(step.max(1)) {
            tap.frame(&Bytes::copy_from_slice(piece));
        }
        tap.finish()
    }

    fn t(input: u64, output: u64, cached: u64) -> Option<Tokens> {
        Some(Tokens {
            input,
            output,
            cached,
        })
    }

    #[test]
    fn openai_json_and_streams() {
        let json = r#"{"id":"c","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        let sse = "data: {\"model\":\"gpt-4o-mini\",\"choices\":[{\"delta\":{\"content\":\"usage\"}}],\"usage\":null}\n\ndata: {\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":9}}\n\ndata: [DONE]\n\n";
        let responses = "event: response.created\ndata: {\"type\":\"response.created\"}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-4.1\",\"usage\":{\"input_tokens\":20,\"output_tokens\":30,\"input_tokens_details\":{\"cached_tokens\":2}}}}\n\n";
        for step in [1, 3, 7, 64, 10_000] {
            assert_eq!(
                read(ApiFormat::OpenAi, "application/json", json, step),
                (t(11, 7, 4), Some("gpt-4o-mini".into())),
                "{step}"
            );
            assert_eq!(
                read(ApiFormat::OpenAi, "text/event-stream", sse, step),
                (t(5, 9, 0), Some("gpt-4o-mini".into()))
            );
            assert_eq!(
                read(
                    ApiFormat::OpenAi,
                    "text/event-stream; charset=utf-8",
                    responses,
                    step
                ),
                (t(20, 30, 2), Some("gpt-4.1".into()))
            );
        }
    }

    #[test]
    fn anthropic_start_and_deltas() {
        let json = r#"{"id":"m","model":"claude-sonnet-4-6","usage":{"input_tokens":10,"cache_creation_input_tokens":2,"cache_read_input_tokens":3,"output_tokens":4}}"#;
        let sse = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-6\",\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"\\\"message_delta\\\"\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n",
        );
        for step in [1, 5, 10_000] {
            assert_eq!(
                read(ApiFormat::Anthropic, "application/json", json, step),
                (t(15, 4, 3), Some("claude-sonnet-4-6".into()))
            );
            assert_eq!(
                read(ApiFormat::Anthropic, "text/event-stream", sse, step),
                (t(15, 42, 5), Some("claude-sonnet-4-6".into()))
            );
        }
    }

    #[test]
    fn gemini_last_event_wins() {
        let json = r#"{"candidates":[],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":2,"thoughtsTokenCount":3,"cachedContentTokenCount":1},"modelVersion":"gemini-2.5-flash"}"#;
        let sse = "data: {\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":1},\"modelVersion\":\"gemini-2.5-flash\"}\r\n\r\ndata: {\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":6}}\r\n\r\n";
        for step in [1, 4, 10_000] {
            assert_eq!(
                read(ApiFormat::Gemini, "application/json", json, step),
                (t(8, 5, 1), Some("gemini-2.5-flash".into()))
            );
            assert_eq!(
                read(ApiFormat::Gemini, "text/event-stream", sse, step),
                (t(8, 6, 0), Some("gemini-2.5-flash".into()))
            );
        }
    }

    #[test]
    fn unreadable_answers_are_unknown() {
        // Compressed, plain text, malformed usage, no usage at all.
        let mut gz = Tap::new(
            ApiFormat::OpenAi,
            &headers("application/json", Some("gzip")),
            true,
        );
        assert!(!gz.is_on());
        gz.frame(&Bytes::from_static(b"\x1f\x8b..."));
        assert_eq!(gz.finish(), (None, None));
        assert_eq!(
            read(ApiFormat::OpenAi, "text/plain", "usage: 5", 3),
            (None, None)
        );
        assert_eq!(
            read(
                ApiFormat::OpenAi,
                "application/json",
                r#"{"usage":{"prompt_tokens":"many"}}"#,
                2
            )
            .0,
            None
        );
        assert_eq!(
            read(ApiFormat::OpenAi, "application/json", r#"{"usage":"#, 2).0,
            None
        );
        assert_eq!(
            read(
                ApiFormat::OpenAi,
                "application/json",
                r#"{"error":{"message":"bad"}}"#,
                2
            ),
            (None, None)
        );
    }

    #[test]
    fn a_count_of_another_type_reads_as_absent_and_the_rest_still_counts() {
        let json = r#"{"usage":{"prompt_tokens":7,"completion_tokens":"x","total_tokens":1.5,"prompt_tokens_details":null,"extra":{"a":[1,{"b":2}]}}}"#;
        assert_eq!(
            read(ApiFormat::OpenAi, "application/json", json, 5).0,
            t(7, 0, 0)
        );
        let no_input = r#"{"usage":{"prompt_tokens":-1,"completion_tokens":3}}"#;
        assert_eq!(
            read(ApiFormat::OpenAi, "application/json", no_input, 64).0,
            None
        );
    }

    /// Every cut of an SSE `body`, the model not wanted: (step, what was read).
    fn cuts(
        format: ApiFormat,
        body: &str,
    ) -> impl Iterator<Item = (usize, (Option<Tokens>, Option<String>))> + '_ {
        (1..=body.len()).map(move |step| {
            let read = read_as(format, "text/event-stream", body, step, false);
            (step, read)
        })
    }

    #[test]
    fn frames_without_usage_are_passed_whole_wherever_they_are_cut() {
        // The request named the model: frames without `"usage` are searched once and
        // passed; the usage line may be cut anywhere, `"usage` itself too.
        let chunk = r#"data: {"id":"c","object":"chat.completion.chunk","choices":[{"delta":{"content":"x"}}]}"#;
        let last = r#"data: {"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":20,"total_tokens":29}}"#;
        let sse = format!("{chunk}\n\n{chunk}\r\n\r\n{last}\n\ndata: [DONE]\n\n");
        let anthropic = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":6}}\n\n",
        );
        for (step, read) in cuts(ApiFormat::OpenAi, &sse) {
            assert_eq!(read, (t(9, 20, 0), None), "openai, step {step}");
        }
        for (step, read) in cuts(ApiFormat::Anthropic, anthropic) {
            assert_eq!(read.0, t(5, 6, 0), "anthropic, step {step}");
        }
        // Found by the `usage_tap` fuzz target: an event without usage named a model that
        // was not wanted, but only when its frame also held the start of another line.
        let no_usage = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\"}}\n\n";
        for (step, read) in cuts(ApiFormat::Anthropic, no_usage) {
            assert_eq!(read, (None, None), "step {step}");
        }
    }

    #[test]
    fn the_answer_model_is_read_only_when_the_request_named_none() {
        let json = r#"{"model":"gpt-4o","usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
        let sse = "data: {\"model\":\"gpt-4o\",\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
        for (ct, body) in [("application/json", json), ("text/event-stream", sse)] {
            let mut tap = Tap::new(ApiFormat::OpenAi, &headers(ct, None), false);
            tap.frame(&Bytes::copy_from_slice(body.as_bytes()));
            assert_eq!(tap.finish(), (t(1, 2, 0), None), "{ct}");
        }
    }
}
