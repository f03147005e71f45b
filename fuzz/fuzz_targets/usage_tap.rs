//! The usage tap (`src/usage/tap.rs`, `src/usage/scan.rs`): an answer read in frames cut
//! anywhere gives the same tokens and model as the same answer in one frame. The first
//! byte picks the provider, JSON or SSE, and whether the model is wanted; the second, where
//! the frames are cut; the rest is the answer.
//!
//! A JSON answer in one frame is read from its end, in frames from its start: the two
//! agree on valid JSON, which is what this checks for JSON. On malformed JSON either may
//! read a usage the other does not (a break before the usage stops only the forward
//! reader); both must still not panic.
#![no_main]

use api_key_rotator::fuzzing::{ApiFormat, Tap};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
use libfuzzer_sys::fuzz_target;

fn tap(
    format: ApiFormat,
    sse: bool,
    want_model: bool,
    frames: &mut dyn Iterator<Item = &[u8]>,
) -> Tap {
    let mut headers = HeaderMap::new();
    let ct = if sse {
        "text/event-stream"
    } else {
        "application/json"
    };
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    let mut tap = Tap::new(format, &headers, want_model);
    for frame in frames {
        tap.frame(&Bytes::copy_from_slice(frame));
    }
    tap
}

fuzz_target!(|data: &[u8]| {
    let [pick, cut, body @ ..] = data else {
        return;
    };
    let format = match pick % 3 {
        0 => ApiFormat::OpenAi,
        1 => ApiFormat::Anthropic,
        _ => ApiFormat::Gemini,
    };
    let (sse, want_model) = (pick & 4 != 0, pick & 8 != 0);
    let whole = tap(format, sse, want_model, &mut std::iter::once(body)).finish();
    let step = usize::from(*cut).max(1);
    let pieces = tap(format, sse, want_model, &mut body.chunks(step)).finish();
    if sse || serde_json::from_slice::<serde_json::Value>(body).is_ok() {
        assert_eq!(whole, pieces, "cut every {step} bytes");
    }
});
