//! A provider's usage object, read into the few counts the tap needs. Answers usually
//! send a small flat object of whole numbers, so [`UsageFields::read`] first reads it by
//! hand (a tenth of what serde costs); anything it does not expect (arrays, escapes,
//! fractions, a repeated field, deeper nesting) goes to serde, which gives the answer.
//! Either way a field that is not a whole number reads as absent.

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// The usage fields of every provider, read without building a map (an answer's usage is
/// read on every request). Other members are skipped; a field that is not a whole number
/// reads as absent.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct UsageFields {
    // OpenAI Chat Completions, then the Responses API's and Anthropic's names.
    pub(super) prompt_tokens: Count,
    pub(super) completion_tokens: Count,
    pub(super) prompt_tokens_details: Details,
    pub(super) input_tokens: Count,
    pub(super) output_tokens: Count,
    pub(super) input_tokens_details: Details,
    pub(super) cache_creation_input_tokens: Count,
    pub(super) cache_read_input_tokens: Count,
    // Gemini.
    #[serde(rename = "promptTokenCount")]
    pub(super) prompt_token_count: Count,
    #[serde(rename = "candidatesTokenCount")]
    pub(super) candidates_token_count: Count,
    #[serde(rename = "thoughtsTokenCount")]
    pub(super) thoughts_token_count: Count,
    #[serde(rename = "cachedContentTokenCount")]
    pub(super) cached_content_token_count: Count,
}

/// A token count: a whole number, or absent (null, or any other value).
#[derive(Default, Clone, Copy)]
pub(super) struct Count(pub(super) Option<u64>);

/// `{"cached_tokens": n}`, or absent.
#[derive(Default)]
pub(super) struct Details(pub(super) Count);

#[derive(Deserialize)]
struct DetailsFields {
    #[serde(default)]
    cached_tokens: Count,
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
        d.deserialize_any(Lenient).map(|got| Count(got.number))
    }
}

impl<'de> Deserialize<'de> for Details {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Details, D::Error> {
        d.deserialize_any(Lenient)
            .map(|got| Details(Count(got.cached)))
    }
}

/// What a lenient read found: a number, or the cached count of a details object.
#[derive(Default)]
struct Found {
    number: Option<u64>,
    cached: Option<u64>,
}

/// A visitor that accepts any JSON value and keeps only what [`Found`] holds.
struct Lenient;

impl<'de> Visitor<'de> for Lenient {
    type Value = Found;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_u64<E>(self, n: u64) -> Result<Found, E> {
        Ok(Found {
            number: Some(n),
            cached: None,
        })
    }
    fn visit_i64<E>(self, n: i64) -> Result<Found, E> {
        Ok(Found {
            number: u64::try_from(n).ok(),
            cached: None,
        })
    }
    fn visit_f64<E>(self, _: f64) -> Result<Found, E> {
        Ok(Found::default())
    }
    fn visit_bool<E>(self, _: bool) -> Result<Found, E> {
        Ok(Found::default())
    }
    fn visit_str<E>(self, _: &str) -> Result<Found, E> {
        Ok(Found::default())
    }
    fn visit_unit<E>(self) -> Result<Found, E> {
        Ok(Found::default())
    }
    fn visit_none<E>(self) -> Result<Found, E> {
        Ok(Found::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Found::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Found, A::Error> {
        let fields = DetailsFields::deserialize(MapAccessDeserializer::new(map))?;
        Ok(Found {
            number: None,
            cached: fields.cached_tokens.0,
        })
    }
}

impl UsageFields {
    /// The fields of a usage object's JSON text; `None` when it is not a JSON object.
    pub(super) fn read(text: &[u8]) -> Option<UsageFields> {
        match quick(text) {
            Some(fields) => Some(fields),
            None => serde_json::from_slice(text).ok(),
        }
    }

    /// The same, from an already parsed value.
    pub(super) fn from_value(v: &Value) -> Option<UsageFields> {
        UsageFields::deserialize(v).ok()
    }
}

/// Where a member of the usage object goes: its JSON name, whether it is a details object
/// (its `cached_tokens` is kept) or a count, and the field.
type Slot = (&'static [u8], bool, fn(&mut UsageFields) -> &mut Count);

/// Every field of [`UsageFields`], for the hand reader.
const SLOTS: [Slot; 12] = [
    (b"prompt_tokens", false, |u| &mut u.prompt_tokens),
    (b"completion_tokens", false, |u| &mut u.completion_tokens),
    (b"input_tokens", false, |u| &mut u.input_tokens),
    (b"output_tokens", false, |u| &mut u.output_tokens),
    (b"cache_creation_input_tokens", false, |u| {
        &mut u.cache_creation_input_tokens
    }),
    (b"cache_read_input_tokens", false, |u| {
        &mut u.cache_read_input_tokens
    }),
    (b"promptTokenCount", false, |u| &mut u.prompt_token_count),
    (b"candidatesTokenCount", false, |u| {
        &mut u.candidates_token_count
    }),
    (b"thoughtsTokenCount", false, |u| {
        &mut u.thoughts_token_count
    }),
    (b"cachedContentTokenCount", false, |u| {
        &mut u.cached_content_token_count
    }),
    (b"prompt_tokens_details", true, |u| {
        &mut u.prompt_tokens_details.0
    }),
    (b"input_tokens_details", true, |u| {
        &mut u.input_tokens_details.0
    }),
];

/// A member value as the hand reader sees it.
enum Quick {
    /// A whole number that fits in a `u64`.
    Number(u64),
    /// An object of plain values; its `cached_tokens`, when a whole number.
    Object(Option<u64>),
    /// `null`, a boolean or a plain string.
    Other,
}

/// Reads the usual shape of a usage object by hand: an object whose values are whole
/// numbers, `null`, booleans, ASCII strings without escapes, or objects of those. `None`
/// for anything else, which serde reads instead (with the same result, only slower).
fn quick(text: &[u8]) -> Option<UsageFields> {
    let mut r = Reader { b: text, i: 0 };
    let mut fields = UsageFields::default();
    // Which fields were seen: serde refuses a repeated one, so this hands it over.
    let mut seen = 0u16;
    r.object(|r, name| {
        let value = r.value(true)?;
        if let Some(i) = SLOTS.iter().position(|(n, ..)| *n == name) {
            if seen & (1 << i) != 0 {
                return None;
            }
            seen |= 1 << i;
            let (_, details, field) = SLOTS[i];
            *field(&mut fields) = Count(match (details, value) {
                (false, Quick::Number(n)) => Some(n),
                (true, Quick::Object(cached)) => cached,
                _ => None,
            });
        }
        Some(())
    })?;
    r.ws();
    (r.i == text.len()).then_some(fields)
}

/// A cursor over JSON text for [`quick`].
struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&byte)).then(|| self.i += 1)
    }

    fn word(&mut self, word: &[u8]) -> Option<Quick> {
        self.b[self.i..].starts_with(word).then(|| {
            self.i += word.len();
            Quick::Other
        })
    }

    /// An object, calling `member` with each name (the cursor then at its value).
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            let name = self.string()?;
            self.eat(b':')?;
            self.ws();
            member(self, name)?;
            self.ws();
            match self.b.get(self.i)? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string of printable ASCII without escapes: its content.
    fn string(&mut self) -> Option<&'a [u8]> {
        let rest = self.b.get(self.i..)?.strip_prefix(b"\"")?;
        let mut end = 0;
        loop {
            match *rest.get(end)? {
                b'"' => break,
                b'\\' => return None,
                0x20..0x7f => end += 1,
                _ => return None,
            }
        }
        self.i += end + 2;
        Some(&rest[..end])
    }

    /// A whole number without sign, fraction or exponent, as JSON writes it.
    fn number(&mut self) -> Option<u64> {
        let digits = self.b[self.i..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        let text = &self.b[self.i..self.i + digits];
        if digits == 0 || (digits > 1 && text[0] == b'0') {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.b.get(self.i + digits) {
            return None;
        }
        let mut n: u64 = 0;
        for c in text {
            n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        }
        self.i += digits;
        Some(n)
    }

    /// A member value; objects only when `nest` (one level below the usage object).
    fn value(&mut self, nest: bool) -> Option<Quick> {
        match *self.b.get(self.i)? {
            b'0'..=b'9' => self.number().map(Quick::Number),
            b'"' => self.string().map(|_| Quick::Other),
            b'n' => self.word(b"null"),
            b't' => self.word(b"true"),
            b'f' => self.word(b"false"),
            b'{' if nest => {
                let mut cached = None;
                let mut seen = false;
                self.object(|r, name| {
                    let value = r.value(false)?;
                    if name == b"cached_tokens" {
                        if seen {
                            return None; // serde refuses it
                        }
                        seen = true;
                        cached = match value {
                            Quick::Number(n) => Some(n),
                            _ => None,
                        };
                    }
                    Some(())
                })?;
                Some(Quick::Object(cached))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every count, in field order: what the two readers are compared on.
    fn counts(u: &UsageFields) -> [Option<u64>; 12] {
        [
            u.prompt_tokens.0,
            u.completion_tokens.0,
            (u.prompt_tokens_details.0).0,
            u.input_tokens.0,
            u.output_tokens.0,
            (u.input_tokens_details.0).0,
            u.cache_creation_input_tokens.0,
            u.cache_read_input_tokens.0,
            u.prompt_token_count.0,
            u.candidates_token_count.0,
            u.thoughts_token_count.0,
            u.cached_content_token_count.0,
        ]
    }

    fn by_serde(text: &str) -> Option<[Option<u64>; 12]> {
        serde_json::from_str::<UsageFields>(text)
            .ok()
            .map(|u| counts(&u))
    }

    #[test]
    fn the_usual_usage_objects_are_read_by_hand_as_serde_reads_them() {
        for text in [
            r#"{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}"#,
            r#"{"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18, "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}"#,
            r#"{"input_tokens":10,"cache_creation_input_tokens":2,"cache_read_input_tokens":3,"output_tokens":4,"service_tier":"standard","cache_creation":{"ephemeral_5m_input_tokens":0}}"#,
            r#"{"input_tokens":20,"output_tokens":30,"input_tokens_details":{"cached_tokens":2},"output_tokens_details":{"reasoning_tokens":null}}"#,
            "{\n  \"promptTokenCount\" : 8 ,\r\n \"candidatesTokenCount\":2,\"thoughtsTokenCount\":3,\"cachedContentTokenCount\":1\t}",
            r#"{"prompt_tokens":18446744073709551615,"completion_tokens":null,"x":true,"y":false}"#,
            "{}",
        ] {
            let quick = quick(text.as_bytes()).map(|u| counts(&u));
            assert!(quick.is_some(), "read by hand: {text}");
            assert_eq!(quick, by_serde(text), "{text}");
        }
    }

    #[test]
    fn what_the_hand_reader_does_not_expect_goes_to_serde() {
        for text in [
            r#"{"prompt_tokens":1.5}"#,
            r#"{"prompt_tokens":1e3}"#,
            r#"{"prompt_tokens":-1,"completion_tokens":2}"#,
            r#"{"prompt_tokens":18446744073709551616}"#,
            r#"{"prompt_tokens":012}"#,
            r#"{"promptTokensDetails":[{"modality":"TEXT","tokenCount":9}],"promptTokenCount":9}"#,
            r#"{"prompt\u005ftokens":5}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            r#"{"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":2},"prompt_tokens":3}"#,
            r#"{"x":{"y":{"z":1}},"prompt_tokens":3}"#,
            r#"{"note":"caf\u00e9","prompt_tokens":3}"#,
            r#"{"prompt_tokens":3,}"#,
            r#"{"prompt_tokens":3} x"#,
            r#"[3, 4]"#,
        ] {
            assert!(quick(text.as_bytes()).is_none(), "{text}");
            let read = UsageFields::read(text.as_bytes()).map(|u| counts(&u));
            assert_eq!(read, by_serde(text), "{text}");
        }
    }

    mod generated {
        use super::*;
        use proptest::prelude::*;

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("\"prompt_tokens\"".to_string()),
                Just("\"completion_tokens\"".to_string()),
                Just("\"input_tokens\"".to_string()),
                Just("\"output_tokens\"".to_string()),
                Just("\"prompt_tokens_details\"".to_string()),
                Just("\"input_tokens_details\"".to_string()),
                Just("\"cache_read_input_tokens\"".to_string()),
                Just("\"promptTokenCount\"".to_string()),
                Just("\"cached_tokens\"".to_string()),
                Just("\"total_tokens\"".to_string()),
                Just("\"prompt\\u005ftokens\"".to_string()),
                Just("\"\"".to_string()),
                Just("\"é\"".to_string()),
            ]
        }

        fn scalar() -> impl Strategy<Value = String> {
            prop_oneof![
                "[0-9]{1,3}",
                Just("0".to_string()),
                Just("00".to_string()),
                Just("-0".to_string()),
                Just("-4".to_string()),
                Just("2.0".to_string()),
                Just("3E1".to_string()),
                Just("18446744073709551615".to_string()),
                Just("18446744073709551616".to_string()),
                Just("null".to_string()),
                Just("true".to_string()),
                Just("nul".to_string()),
                Just("\"text\"".to_string()),
                Just("\"a\\\"b\"".to_string()),
                Just("\"\u{1}\"".to_string()),
                Just("[]".to_string()),
            ]
        }

        fn ws() -> impl Strategy<Value = &'static str> {
            prop_oneof![Just(""), Just(" "), Just("\n\t"), Just("\u{0b}")]
        }

        fn object(inner: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
            let member = (ws(), name(), ws(), inner, ws());
            (
                proptest::collection::vec(member, 0..6),
                prop_oneof![Just(""), Just(","), Just(" x")],
            )
                .prop_map(|(members, tail)| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(a, n, b, v, c)| format!("{a}{n}{b}:{v}{c}"))
                        .collect();
                    format!("{{{}{tail}}}", members.join(","))
                })
        }

        fn usage() -> impl Strategy<Value = String> {
            let nested = object(scalar());
            let value = prop_oneof![4 => scalar(), 1 => nested];
            object(value.boxed())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(20_000))]
            /// Whatever the hand reader gives is what serde gives.
            #[test]
            fn the_hand_reader_agrees_with_serde_or_hands_over(text in usage()) {
                if let Some(u) = quick(text.as_bytes()) {
                    prop_assert_eq!(Some(counts(&u)), by_serde(&text), "{}", text);
                }
                let read = UsageFields::read(text.as_bytes()).map(|u| counts(&u));
                prop_assert_eq!(read, by_serde(&text), "{}", text);
            }
        }
    }
}
