//! Reading usage out of an answer while it streams through, frame by frame, keeping only
//! a few small values: never the body.
//!
//! - [`JsonMembers`] follows one JSON document byte by byte (strings are skipped with
//!   `memchr`) and keeps the raw text of a few top-level members (`usage`, `model`…), each
//!   at most [`MAX_MEMBER`] bytes.
//! - [`Lines`] cuts an SSE stream into lines across frames; a line longer than
//!   [`MAX_LINE`] is skipped whole.
//!
//! Neither ever fails the body: what cannot be read is reported as unknown.

use memchr::{memchr, memchr2, memrchr};

/// Longest member value kept (a usage object is a few hundred bytes).
pub const MAX_MEMBER: usize = 16 * 1024;
/// Longest SSE line read.
pub const MAX_LINE: usize = 256 * 1024;

/// Where a [`JsonMembers`] scan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Before the document's first `{`.
    Start,
    /// Inside the top-level object, waiting for a member name.
    Name,
    /// Reading a member name (a string at depth 1).
    InName { escaped: bool },
    /// After a name, waiting for `:`.
    Colon,
    /// Waiting for the first byte of a member value.
    ValueStart,
    /// Inside a value (nested depth relative to the top-level object, in a string or not).
    Value {
        depth: u32,
        in_string: bool,
        escaped: bool,
    },
    /// After the top-level object (or a document that is not an object).
    Done,
}

/// The most members a scan looks for.
pub const MAX_WANTED: usize = 4;
/// Longest member name compared (longer names are not wanted ones).
const NAME_CAP: usize = 16;

/// The raw text of chosen top-level members of a JSON object, read as it streams. Costs
/// no allocation until a wanted member's value is met (then one, for that value).
#[derive(Debug)]
pub struct JsonMembers {
    wanted: &'static [&'static str],
    at: At,
    /// The member name being read (its first [`NAME_CAP`] bytes) and its full length.
    name: [u8; NAME_CAP],
    name_len: usize,
    /// Which wanted member the current value belongs to, if any.
    capturing: Option<usize>,
    value: Vec<u8>,
    /// The raw value text of each wanted member seen (the last one, if repeated).
    found: [Option<Vec<u8>>; MAX_WANTED],
    /// The document broke the grammar this scan follows: nothing more is read.
    pub broken: bool,
}

impl JsonMembers {
    pub fn new(wanted: &'static [&'static str]) -> JsonMembers {
        assert!(wanted.len() <= MAX_WANTED && wanted.iter().all(|w| w.len() <= NAME_CAP));
        JsonMembers {
            wanted,
            at: At::Start,
            name: [0; NAME_CAP],
            name_len: 0,
            capturing: None,
            value: Vec::new(),
            found: Default::default(),
            broken: false,
        }
    }

    /// The raw text of member `name`, if it was seen (the last one, if repeated).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let i = self.wanted.iter().position(|w| *w == name)?;
        self.found[i].as_deref()
    }

    /// Whether the whole top-level object was read.
    pub fn complete(&self) -> bool {
        self.at == At::Done && !self.broken
    }

    /// Reads the next piece of the document.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.broken && self.at != At::Done {
            let used = match self.at {
                At::Value {
                    depth,
                    in_string,
                    escaped,
                } => self.value_run(bytes, depth, in_string, escaped),
                _ => self.step(bytes),
            };
            bytes = &bytes[used.min(bytes.len())..];
        }
    }

    fn fail(&mut self) -> usize {
        self.broken = true;
        usize::MAX
    }

    /// Consumes a prefix of `bytes` outside a value; returns its length.
    fn step(&mut self, bytes: &[u8]) -> usize {
        let b = bytes[0];
        match self.at {
            At::Start => match b {
                b'{' => {
                    self.at = At::Name;
                    1
                }
                _ if b.is_ascii_whitespace() => 1,
                // A BOM or anything else: not an object we read.
                _ => self.fail(),
            },
            At::Name => match b {
                b'"' => {
                    if let Some(used) = self.name_at_once(bytes) {
                        return used;
                    }
                    self.name_len = 0;
                    self.at = At::InName { escaped: false };
                    1
                }
                b'}' => {
                    self.at = At::Done;
                    1
                }
                b',' => 1,
                _ if b.is_ascii_whitespace() => 1,
                _ => self.fail(),
            },
            At::InName { escaped: true } => {
                self.push_name(&bytes[..1]);
                self.at = At::InName { escaped: false };
                1
            }
            At::InName { escaped: false } => match quote_or_escape(bytes) {
                None => {
                    self.push_name(bytes);
                    bytes.len()
                }
                Some(i) => {
                    self.push_name(&bytes[..=i]);
                    if bytes[i] == b'\\' {
                        self.at = At::InName { escaped: true };
                    } else {
                        self.name_len -= 1; // the closing quote
                        self.at = At::Colon;
                    }
                    i + 1
                }
            },
            At::Colon => match b {
                b':' => {
                    self.begin_value();
                    1
                }
                _ if b.is_ascii_whitespace() => 1,
                _ => self.fail(),
            },
            At::ValueStart => {
                if b.is_ascii_whitespace() {
                    return 1;
                }
                self.at = At::Value {
                    depth: 0,
                    in_string: false,
                    escaped: false,
                };
                0
            }
            At::Value { .. } | At::Done => bytes.len(),
        }
    }

    /// The usual member start, `"name":` and the spaces after it, read in one go when
    /// `bytes` (at its `"`) holds all of it and the name has no escape; the length read.
    /// `None`: left to the byte-by-byte states.
    fn name_at_once(&mut self, bytes: &[u8]) -> Option<usize> {
        let len = quote_or_escape(&bytes[1..])?;
        if bytes[1 + len] != b'"' {
            return None;
        }
        let mut i = len + 2;
        while bytes.get(i)?.is_ascii_whitespace() {
            i += 1;
        }
        if bytes[i] != b':' {
            return None;
        }
        self.name_len = 0;
        self.push_name(&bytes[1..1 + len]);
        self.begin_value();
        i += 1;
        while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if i < bytes.len() {
            self.at = At::Value {
                depth: 0,
                in_string: false,
                escaped: false,
            };
        }
        Some(i)
    }

    /// After a member's `:`: whether its value is kept, and where the scan is.
    fn begin_value(&mut self) {
        let name = &self.name[..self.name_len.min(NAME_CAP)];
        self.capturing = match self.name_len <= NAME_CAP {
            true => self.wanted.iter().position(|w| w.as_bytes() == name),
            false => None,
        };
        self.value.clear();
        self.at = At::ValueStart;
    }

    /// Runs through a member's value as far as `bytes` go, or to its end (the `,` or `}`
    /// after it, consumed). Strings are skipped eight bytes at a time ([`quote_or_escape`]),
    /// the rest with a byte-class table, and the kept text is copied once per call.
    fn value_run(
        &mut self,
        bytes: &[u8],
        mut depth: u32,
        mut in_string: bool,
        mut escaped: bool,
    ) -> usize {
        let n = bytes.len();
        let mut i = 0;
        while i < n {
            if in_string {
                if escaped {
                    escaped = false;
                    i += 1;
                    continue;
                }
                match quote_or_escape(&bytes[i..]) {
                    None => i = n,
                    Some(j) => {
                        i += j;
                        match bytes[i] == b'\\' {
                            true => escaped = true,
                            false => in_string = false,
                        }
                        i += 1;
                    }
                }
                continue;
            }
            while i < n && !STRUCTURAL[bytes[i] as usize] {
                i += 1;
            }
            if i == n {
                break;
            }
            match bytes[i] {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => depth -= 1,
                // The end of this member: the next one, or the end of the object.
                b @ (b',' | b'}') if depth == 0 => {
                    self.keep(&bytes[..i]);
                    self.end_value();
                    self.at = if b == b'}' { At::Done } else { At::Name };
                    return i + 1;
                }
                b']' => return self.fail(),
                _ => {}
            }
            i += 1;
        }
        self.keep(bytes);
        self.at = At::Value {
            depth,
            in_string,
            escaped,
        };
        n
    }

    fn keep(&mut self, piece: &[u8]) {
        if self.capturing.is_some() {
            if self.value.len() + piece.len() > MAX_MEMBER {
                // Too long to be what we want: forget it.
                self.capturing = None;
                self.value = Vec::new();
            } else {
                if self.value.capacity() == 0 {
                    // A usage object is a few hundred bytes: room for it at once.
                    self.value.reserve(256.max(piece.len()));
                }
                self.value.extend_from_slice(piece);
            }
        }
    }

    fn end_value(&mut self) {
        if let Some(i) = self.capturing.take() {
            let mut text = std::mem::take(&mut self.value);
            let end = text.trim_ascii_end().len();
            text.truncate(end);
            self.found[i] = Some(text);
        }
    }

    /// Appends to the name (only its first [`NAME_CAP`] bytes are kept; the length counts
    /// them all).
    fn push_name(&mut self, s: &[u8]) {
        let at = self.name_len.min(NAME_CAP);
        let n = s.len().min(NAME_CAP - at);
        self.name[at..at + n].copy_from_slice(&s[..n]);
        self.name_len += s.len();
    }
}

/// The top-level members of a whole JSON object, read from its end and only as far back
/// as needed: an answer's usage comes after its generated text, which is then never
/// read. Stops once `enough` is true of what was found (indices as in `wanted`). For
/// valid JSON it finds what [`JsonMembers`] keeps (the last of a repeated member, each at
/// most [`MAX_MEMBER`] bytes); `None` for anything it does not follow, which the caller
/// then scans forward.
pub fn members_from_end<'d>(
    doc: &'d [u8],
    wanted: &[&str],
    enough: impl Fn(&[Option<&'d [u8]>; MAX_WANTED]) -> bool,
) -> Option<[Option<&'d [u8]>; MAX_WANTED]> {
    let open = doc.iter().position(|b| !b.is_ascii_whitespace())?;
    if doc[open] != b'{' {
        return None;
    }
    let mut r = Back {
        b: doc,
        i: doc.len(),
        floor: open + 1,
    };
    r.ws();
    r.eat(b'}')?;
    r.ws();
    let mut found: [Option<&[u8]>; MAX_WANTED] = Default::default();
    if r.i == r.floor {
        return Some(found); // `{}`
    }
    loop {
        let end = r.i;
        let value = &doc[r.value()?..end];
        r.ws();
        r.eat(b':')?;
        r.ws();
        let name = r.string()?;
        if let Some(k) = wanted.iter().position(|w| w.as_bytes() == name) {
            // From the end, the first one met is the last one written.
            if found[k].is_none() && value.len() <= MAX_MEMBER {
                found[k] = Some(value);
            }
        }
        r.ws();
        if r.i == r.floor {
            return Some(found);
        }
        r.eat(b',')?;
        if enough(&found) {
            return Some(found);
        }
        r.ws();
    }
}

/// A reader going backwards through `b[floor..i]`.
struct Back<'d> {
    b: &'d [u8],
    /// One past the next byte read.
    i: usize,
    /// Nothing below this is read (the byte after the object's `{`).
    floor: usize,
}

impl<'d> Back<'d> {
    fn last(&self) -> Option<u8> {
        (self.i > self.floor).then(|| self.b[self.i - 1])
    }

    fn ws(&mut self) {
        while self.last().is_some_and(|b| b.is_ascii_whitespace()) {
            self.i -= 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.last()? == byte).then(|| self.i -= 1)
    }

    /// The string that ends here: its text between the quotes (as written), the reader
    /// left at its opening quote.
    fn string(&mut self) -> Option<&'d [u8]> {
        self.eat(b'"')?;
        let close = self.i;
        if self.escaped(close) {
            return None; // `\"`: the string does not end here
        }
        loop {
            let q = self.floor + memrchr(b'"', &self.b[self.floor..self.i])?;
            self.i = q;
            if !self.escaped(q) {
                return Some(&self.b[q + 1..close]);
            }
        }
    }

    /// Whether the quote at `q` is part of a string's text: after an odd number of
    /// backslashes.
    fn escaped(&self, q: usize) -> bool {
        let slashes = self.b[self.floor..q]
            .iter()
            .rev()
            .take_while(|&&c| c == b'\\')
            .count();
        slashes % 2 == 1
    }

    /// The value that ends here; the reader is left at its first byte, whose index is
    /// returned.
    fn value(&mut self) -> Option<usize> {
        match self.last()? {
            b'"' => {
                self.string()?;
            }
            b'}' | b']' => {
                let mut depth = 0u32;
                loop {
                    match self.last()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'}' | b']' => depth += 1,
                        b'{' | b'[' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i -= 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.i -= 1;
                }
            }
            _ => {
                // A number, `true`, `false` or `null`.
                let end = self.i;
                while self.last().is_some_and(|b| !SCALAR_END[b as usize]) {
                    self.i -= 1;
                }
                if self.i == end {
                    return None;
                }
            }
        }
        Some(self.i)
    }
}

/// The bytes that can come just before a scalar value (or inside none): where reading one
/// backwards stops.
static SCALAR_END: [bool; 256] = {
    let mut t = [false; 256];
    let stops = b"\":,{}[] \t\r\n";
    let mut k = 0;
    while k < stops.len() {
        t[stops[k] as usize] = true;
        k += 1;
    }
    t
};

/// The bytes a value's structure turns on, outside strings.
static STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut k = 0;
    while k < 6 {
        t[b"\"{}[],"[k] as usize] = true;
        k += 1;
    }
    t
};

/// The first `"` or `\\` in `bytes`. Most strings in an answer are short (names, ids,
/// roles): eight bytes at a time in a word finds their end faster than `memchr`, which
/// takes over for long ones (the generated text).
fn quote_or_escape(bytes: &[u8]) -> Option<usize> {
    const SHORT: usize = 64;
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // The high bit of each zero byte of `w` is set, and nothing below the first one.
    let zeros = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    let mut i = 0;
    while i + 8 <= bytes.len().min(SHORT) {
        let w = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("eight bytes"));
        let hits = zeros(w ^ (ONES * b'"' as u64)) | zeros(w ^ (ONES * b'\\' as u64));
        if hits != 0 {
            return Some(i + hits.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    if i < SHORT {
        let tail = &bytes[i..];
        return tail
            .iter()
            .position(|&b| b == b'"' || b == b'\\')
            .map(|j| i + j);
    }
    memchr2(b'"', b'\\', &bytes[i..]).map(|j| i + j)
}

/// The text of a JSON string given as it is written (quotes included), as a `String` or
/// an inline [`Text`](super::record::Text). Without escapes it is copied as it is;
/// otherwise serde decodes it. `None` when it is not a string.
pub fn json_string<T: for<'a> From<&'a str>>(raw: &[u8]) -> Option<T> {
    let inner = raw.strip_prefix(b"\"").and_then(|r| r.strip_suffix(b"\""));
    if let Some(inner) = inner.filter(|s| !s.iter().any(|&c| c == b'"' || c == b'\\' || c < 0x20)) {
        return std::str::from_utf8(inner).ok().map(T::from);
    }
    serde_json::from_slice::<String>(raw)
        .ok()
        .map(|s| T::from(s.as_str()))
}

/// Cuts a stream into lines (without their `\n` or `\r\n`), across frames.
#[derive(Debug, Default)]
pub struct Lines {
    partial: Vec<u8>,
    /// The line being read is longer than [`MAX_LINE`]: skipped to its end.
    skipping: bool,
    /// A line was skipped as too long.
    pub overflowed: bool,
}

impl Lines {
    /// Calls `line` with each complete line of `bytes` (and of what came before).
    pub fn feed(&mut self, mut bytes: &[u8], mut line: impl FnMut(&[u8])) {
        while let Some(i) = memchr(b'\n', bytes) {
            let (head, rest) = (&bytes[..i], &bytes[i + 1..]);
            if self.skipping {
                self.skipping = false;
            } else if self.partial.is_empty() {
                line(strip_cr(head));
            } else if self.partial.len() + head.len() <= MAX_LINE {
                self.partial.extend_from_slice(head);
                line(strip_cr(&self.partial));
            } else {
                self.overflowed = true;
            }
            self.partial.clear();
            bytes = rest;
        }
        self.keep_unfinished(bytes);
    }

    /// No line is being put together across frames: [`Lines::pass`] may be used.
    pub fn is_clean(&self) -> bool {
        self.partial.is_empty() && !self.skipping
    }

    /// Goes past `bytes`, whose whole lines are of no interest (the caller searched them
    /// all at once), keeping only the unfinished last one. Only when [`Lines::is_clean`]:
    /// otherwise the first line's start came in an earlier frame and is not searched.
    pub fn pass(&mut self, bytes: &[u8]) {
        debug_assert!(self.is_clean());
        let unfinished = match memrchr(b'\n', bytes) {
            Some(i) => &bytes[i + 1..],
            None => bytes,
        };
        self.keep_unfinished(unfinished);
    }

    /// Keeps the start of a line whose end has not come yet.
    fn keep_unfinished(&mut self, bytes: &[u8]) {
        if self.skipping || bytes.is_empty() {
            return;
        }
        if self.partial.len() + bytes.len() > MAX_LINE {
            self.partial = Vec::new();
            self.skipping = true;
            self.overflowed = true;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANTED: &[&str] = &["usage", "model"];

    /// Feeds `doc` cut at every possible place into two, and in one piece.
    fn every_split(doc: &str, check: impl Fn(&JsonMembers)) {
        let b = doc.as_bytes();
        for cut in 0..=b.len() {
            let mut s = JsonMembers::new(WANTED);
            s.feed(&b[..cut]);
            s.feed(&b[cut..]);
            check(&s);
        }
        // And byte by byte.
        let mut s = JsonMembers::new(WANTED);
        for byte in b {
            s.feed(std::slice::from_ref(byte));
        }
        check(&s);
    }

    #[test]
    fn top_level_members_are_kept_wherever_the_frames_are_cut() {
        let doc = r#"{"id":"x","model":"gpt-4o","choices":[{"message":{"content":"a \"usage\": {\"prompt_tokens\": 99}"}}],"usage":{"prompt_tokens":12,"completion_tokens":3,"nested":{"a":[1,2]}}}"#;
        every_split(doc, |s| {
            assert!(s.complete());
            assert_eq!(s.get("model"), Some(&br#""gpt-4o""#[..]));
            assert_eq!(
                s.get("usage"),
                Some(&br#"{"prompt_tokens":12,"completion_tokens":3,"nested":{"a":[1,2]}}"#[..])
            );
        });
    }

    #[test]
    fn nested_members_of_the_same_name_are_not_top_level() {
        let doc = r#"{"data":{"usage":{"x":1}},"model" : "m" , "usage" : null }"#;
        every_split(doc, |s| {
            assert_eq!(s.get("usage"), Some(&b"null"[..]));
            assert_eq!(s.get("model"), Some(&br#""m""#[..]));
        });
    }

    #[test]
    fn escapes_in_names_and_values_do_not_confuse_it() {
        let doc = r#"{"a\"b":"x\\","model":"m\"1","usage":{"k":"v\\\""}}"#;
        every_split(doc, |s| {
            assert_eq!(s.get("model"), Some(&br#""m\"1""#[..]));
            assert_eq!(s.get("usage"), Some(&br#"{"k":"v\\\""}"#[..]));
        });
    }

    #[test]
    fn what_is_not_an_object_gives_nothing() {
        for doc in ["[1,2]", "not json", "", "{\"usage\" 1}"] {
            let mut s = JsonMembers::new(WANTED);
            s.feed(doc.as_bytes());
            assert!(s.get("usage").is_none(), "{doc}");
            assert!(!s.complete(), "{doc}");
        }
    }

    #[test]
    fn a_huge_member_is_dropped_not_kept() {
        let big = "x".repeat(MAX_MEMBER + 10);
        let doc = format!(r#"{{"model":"{big}","usage":{{"a":1}}}}"#);
        let mut s = JsonMembers::new(WANTED);
        s.feed(doc.as_bytes());
        assert!(s.get("model").is_none());
        assert_eq!(s.get("usage"), Some(&br#"{"a":1}"#[..]));
    }

    #[test]
    fn the_word_at_a_time_search_finds_the_first_quote_or_backslash() {
        // Every length around the word and memchr boundaries, every place, both bytes,
        // and a 0x01 byte after the hit (the borrow of the word trick must not move it).
        for len in 0..150 {
            assert_eq!(quote_or_escape(&vec![b'a'; len]), None);
            for at in 0..len {
                for hit in [b'"', b'\\'] {
                    let mut s = vec![b'a'; len];
                    s[at] = hit;
                    if at + 1 < len {
                        s[at + 1] = 0x01;
                    }
                    let naive = s.iter().position(|&b| b == b'"' || b == b'\\');
                    assert_eq!(quote_or_escape(&s), naive, "len {len} at {at}");
                }
            }
        }
    }

    #[test]
    fn lines_are_cut_across_frames_and_long_ones_skipped() {
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut l = Lines::default();
        for piece in ["data: a", "b\r\n\ndata: c\n", "data", ": d\n"] {
            l.feed(piece.as_bytes(), |line| got.push(line.to_vec()));
        }
        assert_eq!(got, [&b"data: ab"[..], b"", b"data: c", b"data: d"]);
        let mut l = Lines::default();
        let mut got = Vec::new();
        l.feed(&vec![b'x'; MAX_LINE + 1], |line| got.push(line.to_vec()));
        l.feed(b"yy\nnext\n", |line| got.push(line.to_vec()));
        assert_eq!(got, [b"next".to_vec()]);
        assert!(l.overflowed);
    }

    mod generated {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        const WANTED: &[&str] = &["usage", "model", "modelVersion", "usageMetadata"];

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("usage"),
                Just("model"),
                Just("usageMetadata"),
                Just("id"),
                Just("a\"b\\"),
                Just("usage_"),
                Just(""),
            ]
            .prop_map(String::from)
        }

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                // Quarters: read back exactly, as any float would be by the same parser.
                (-4000i32..4000).prop_map(|n| Value::from(f64::from(n) / 4.0)),
                "[a-z\"\\{}\\[\\],: é\n]{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::vec((key(), inner), 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(5_000))]
            /// The members kept are the document's top-level ones, wherever the frames
            /// are cut and however it is spaced.
            #[test]
            fn top_level_members_are_what_serde_reads(
                members in proptest::collection::vec((key(), value()), 0..6),
                pretty in any::<bool>(),
                cut in any::<proptest::sample::Index>(),
            ) {
                let doc = Value::Object(members.into_iter().collect());
                let text = match pretty {
                    true => serde_json::to_string_pretty(&doc).unwrap(),
                    false => serde_json::to_string(&doc).unwrap(),
                };
                let cut = cut.index(text.len() + 1);
                let mut scan = JsonMembers::new(WANTED);
                scan.feed(&text.as_bytes()[..cut]);
                scan.feed(&text.as_bytes()[cut..]);
                prop_assert!(scan.complete(), "{}", text);
                for w in WANTED {
                    let got = scan.get(w).map(|raw| serde_json::from_slice::<Value>(raw).unwrap());
                    prop_assert_eq!(got.as_ref(), doc.get(*w), "{} in {}", w, text);
                }
            }

            /// Read from the end, a whole document gives the raw text the forward scan
            /// keeps, repeated members and any spacing included; stopped early, the same
            /// for what it found.
            #[test]
            fn read_from_the_end_is_read_from_the_start(
                members in proptest::collection::vec((key(), value(), 0usize..3), 0..6),
                outer in 0usize..3,
            ) {
                let space = |n: usize| [" ", "\n\t ", ""][n];
                let body: Vec<String> = members
                    .iter()
                    .map(|(k, v, s)| {
                        let (k, v) = (Value::from(k.as_str()), serde_json::to_string_pretty(v).unwrap());
                        format!("{}{k}{}:{}{v}{}", space(*s), space(*s), space(*s), space(*s))
                    })
                    .collect();
                let text = format!("{}{{{}}}{}", space(outer), body.join(","), space(outer));
                let mut scan = JsonMembers::new(WANTED);
                scan.feed(text.as_bytes());
                let all = members_from_end(text.as_bytes(), WANTED, |_| false);
                prop_assert!(all.is_some(), "{}", text);
                let some = members_from_end(text.as_bytes(), WANTED, |f| f[0].is_some()).unwrap();
                for (i, w) in WANTED.iter().enumerate() {
                    prop_assert_eq!(all.unwrap()[i], scan.get(w), "{} in {}", w, text);
                }
                prop_assert_eq!(some[0], scan.get("usage"), "{}", text);
            }
        }
    }

    #[test]
    fn read_from_the_end_gives_up_on_what_is_not_one_object() {
        let no = |doc: &str| members_from_end(doc.as_bytes(), WANTED, |_| false).is_none();
        for doc in [
            "",
            "[]",
            "{",
            "}",
            "{\"a\":1} x",
            "{\"a\":1}{\"usage\":2}",
            "{\"a\" 1}",
            "{\"a\":}",
            "{,\"a\":1}",
            "{\"a\":1 2}",
            "{\"a\":\"x\"\"y\"}",
            "{\"a\":\"x\\\"}",
            "\u{feff}{\"a\":1}",
        ] {
            assert!(no(doc), "{doc:?}");
        }
        let found = members_from_end(
            br#" { "usage" : {"n":"}\"{"} , "model":"m" } "#,
            WANTED,
            |_| false,
        )
        .unwrap();
        assert_eq!(found[0], Some(&br#"{"n":"}\"{"}"#[..]));
        assert_eq!(found[1], Some(&br#""m""#[..]));
    }
}
