//! Keeping the injected key out of answers. An upstream may echo it: a redirect built
//! from the request URL (`Location: …?access_key=<key>`), an error body that quotes the
//! request. Before such an answer reaches the client, every copy of the exact key, as
//! sent or percent-encoded, becomes its mask.
//!
//! Checked: `Location` and `Content-Location` of every answer; every header and the
//! first `ERROR_PEEK` bytes of the body of answers that are not 2xx (gzip and deflate
//! bodies are decoded for it). Not checked: the bodies of 2xx answers, which stream
//! through untouched (a 2xx that echoes the key, as an echo service does, reaches the
//! client as it is).

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_LOCATION, LOCATION};
use http::{HeaderMap, HeaderValue};
use memchr::memmem;

/// The forms a key may take in an answer: as sent, and percent-encoded (a key in the
/// query) when that differs.
fn forms(secret: &str) -> Vec<Cow<'_, str>> {
    let mut forms = vec![Cow::Borrowed(secret)];
    let encoded = crate::upstream::url::encode_component(secret);
    if encoded != secret {
        forms.push(Cow::Owned(encoded));
    }
    forms
}

/// `text` with every form of `secret` replaced by its mask; `None` when there is none.
fn replace(text: &[u8], secret: &str) -> Option<Vec<u8>> {
    if secret.is_empty() {
        return None;
    }
    let forms = forms(secret);
    if !forms
        .iter()
        .any(|f| memmem::find(text, f.as_bytes()).is_some())
    {
        return None;
    }
    let mask = crate::keys::mask(secret);
    let mut out = text.to_vec();
    for form in &forms {
        let finder = memmem::Finder::new(form.as_bytes());
        let mut replaced = Vec::with_capacity(out.len());
        let mut at = 0;
        for hit in finder.find_iter(&out) {
            replaced.extend_from_slice(&out[at..hit]);
            replaced.extend_from_slice(mask.as_bytes());
            at = hit + form.len();
        }
        replaced.extend_from_slice(&out[at..]);
        out = replaced;
    }
    Some(out)
}

/// Masks the key in `Location` and `Content-Location`, or in every header when `all`.
pub fn headers(h: &mut HeaderMap, secret: &str, all: bool) {
    let mut hits = Vec::new();
    for (name, value) in h.iter() {
        if !all && name != LOCATION && name != CONTENT_LOCATION {
            continue;
        }
        if let Some(masked) = replace(value.as_bytes(), secret) {
            hits.push((name.clone(), value.clone(), masked));
        }
    }
    for (name, old, masked) in hits {
        let Ok(new) = HeaderValue::from_bytes(&masked) else {
            continue;
        };
        let values: Vec<HeaderValue> = h
            .get_all(&name)
            .iter()
            .map(|v| if *v == old { new.clone() } else { v.clone() })
            .collect();
        h.remove(&name);
        for v in values {
            h.append(name.clone(), v);
        }
    }
}

/// The first bytes of an answer's body with the key masked, and whether the whole body
/// is in `prefix` (`complete`). Compressed bodies are decoded to look; a masked one is
/// then sent decoded (its `Content-Encoding` removed). `None` when there is nothing to
/// mask (or when a compressed body is longer than `prefix`, which cannot be decoded
/// apart from its rest).
pub fn body(h: &mut HeaderMap, prefix: &[u8], complete: bool, secret: &str) -> Option<Bytes> {
    let encoded = h.contains_key(CONTENT_ENCODING);
    let readable = crate::keys::policy::readable(h, prefix);
    if encoded && !complete {
        return None;
    }
    let masked = replace(&readable, secret)?;
    if encoded {
        h.remove(CONTENT_ENCODING);
    }
    if complete {
        h.insert(CONTENT_LENGTH, HeaderValue::from(masked.len()));
    } else {
        h.remove(CONTENT_LENGTH);
    }
    Some(masked.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-live/abc+def=ghijklmnop";

    #[test]
    fn every_form_of_the_key_is_masked() {
        let text = format!(
            "raw {KEY} and encoded {} and again {KEY}",
            crate::upstream::url::encode_component(KEY)
        );
        let out = String::from_utf8(replace(text.as_bytes(), KEY).unwrap()).unwrap();
        assert!(!out.contains(KEY), "{out}");
        assert!(!out.contains("abc%2Bdef"), "{out}");
        assert_eq!(out.matches(&crate::keys::mask(KEY)).count(), 3, "{out}");
        assert!(replace(b"nothing here", KEY).is_none());
        assert!(replace(b"", "").is_none());
    }

    #[test]
    fn location_is_masked_always_other_headers_on_errors() {
        let mut h = HeaderMap::new();
        h.insert(
            LOCATION,
            HeaderValue::from_str(&format!("/next?access_key={KEY}")).unwrap(),
        );
        h.insert("x-echo", HeaderValue::from_str(KEY).unwrap());
        headers(&mut h, KEY, false);
        assert!(!h[LOCATION].to_str().unwrap().contains(KEY));
        assert_eq!(h["x-echo"], KEY, "other headers only on errors");
        headers(&mut h, KEY, true);
        assert!(!h["x-echo"].to_str().unwrap().contains(KEY));
    }

    #[test]
    fn compressed_error_bodies_are_decoded_to_be_masked() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(format!("{{\"error\":\"bad key {KEY}\"}}").as_bytes())
            .unwrap();
        let gz = gz.finish().unwrap();
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(CONTENT_LENGTH, HeaderValue::from(gz.len()));
        let out = body(&mut h, &gz, true, KEY).unwrap();
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.starts_with("{\"error\":\"bad key sk-****"), "{text}");
        assert!(!h.contains_key(CONTENT_ENCODING));
        assert_eq!(h[CONTENT_LENGTH], out.len().to_string().as_str());
    }
}
