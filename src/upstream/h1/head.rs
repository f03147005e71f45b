//! The response head: status line and headers (httparse), and what the framing headers
//! say about the body (RFC 9112 §6.3).

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version};

use super::Error;
use super::framing::{Chunked, Framing};
use crate::headers::list;

/// The largest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most response headers accepted.
pub const MAX_HEADERS: usize = 100;

/// A parsed head: the parts (in HTTP/1.1: the client is answered in its own version,
/// never the upstream's), how the body is delimited, and whether the connection may
/// carry another request afterwards.
pub type Head = (http::response::Parts, Framing, bool);

/// Parses a complete head at the start of `buf` and removes it from there; `None` when
/// more bytes are needed.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    // Left uninitialised (filling 100 empty headers first cost instructions: see
    // docs/BENCHMARKS.md).
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            return Err(Error::Protocol("response head too large"));
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(Error::Protocol("response head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::Protocol("too many headers"));
        }
        Err(_) => return Err(Error::Protocol("malformed response head")),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(Error::Protocol("invalid status code"))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Header values are slices of the head: note where they are (on the stack), then
    // share them.
    let start = buf.as_ptr() as usize;
    let count = parsed.headers.len();
    // (The head is at most `MAX_HEAD` bytes: its offsets fit in a u32.)
    let offset = |b: &[u8]| (b.as_ptr() as usize - start) as u32;
    let mut fields = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    for (field, h) in fields.iter_mut().zip(parsed.headers.iter()) {
        let (name, value) = (h.name.as_bytes(), h.value);
        *field = (
            offset(name),
            name.len() as u32,
            offset(value),
            value.len() as u32,
        );
    }
    let head = buf.split_to(len).freeze();
    // Room for the two request-id headers the proxy adds to an answer it records.
    let mut headers = HeaderMap::with_capacity(count + 2);
    let mut framing = FramingHeaders::new(version);
    for &(name_at, name_len, at, n) in &fields[..count] {
        let (name_at, name_len, at, n) =
            (name_at as usize, name_len as usize, at as usize, n as usize);
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len])
            .map_err(|_| Error::Protocol("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(at..at + n))
            .map_err(|_| Error::Protocol("invalid header value"))?;
        framing.note(&name, value.as_bytes());
        headers.append(name, value);
    }
    framing.fix_length_header(&mut headers);
    let (framing, keep_alive) = framing.framing()?;
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    // The answer to the client is framed by this server in the client's version; the
    // upstream's version only mattered for reading this message.
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Ok(Some((parts, framing, keep_alive)))
}

/// A non-empty run of ASCII digits as a number; `None` for anything else or an overflow.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// What the framing headers of an answer say (RFC 9112 §6.3), noted header by header
/// while the head is read, so that nothing is looked up in the map afterwards.
struct FramingHeaders {
    version: Version,
    keep_alive: bool,
    /// Whether the last `Transfer-Encoding` value ends in `chunked`, when there is one.
    chunked_last: Option<bool>,
    /// The `Content-Length` (`Ok(None)`: none was sent), or why it is unusable.
    length: Result<Option<u64>, &'static str>,
    /// How many `Content-Length` values were seen (in one header or several).
    length_values: u32,
}

impl FramingHeaders {
    fn new(version: Version) -> FramingHeaders {
        FramingHeaders {
            version,
            keep_alive: version == Version::HTTP_11,
            chunked_last: None,
            length: Ok(None),
            length_values: 0,
        }
    }

    fn note(&mut self, name: &HeaderName, value: &[u8]) {
        if *name == CONNECTION {
            for token in list(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive")
                    && self.version == Version::HTTP_10
                {
                    self.keep_alive = true;
                }
            }
        } else if *name == TRANSFER_ENCODING {
            let last = list(value).next_back();
            self.chunked_last = Some(last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
        } else if *name == CONTENT_LENGTH {
            for part in list(value) {
                self.length_values += 1;
                self.length = match (self.length, decimal(part)) {
                    (Err(e), _) => Err(e),
                    (_, None) => Err("invalid content-length"),
                    (Ok(Some(l)), Some(n)) if l != n => Err("conflicting content-length values"),
                    (Ok(_), Some(n)) => Ok(Some(n)),
                };
            }
        }
    }

    /// The `Content-Length` the client gets: none beside `Transfer-Encoding` (the body
    /// is de-chunked, and that length was never the body's: RFC 9112 §6.3), and one
    /// value for a repeated one (`2, 2`).
    fn fix_length_header(&self, headers: &mut HeaderMap) {
        if self.length_values == 0 {
            return;
        }
        if self.chunked_last.is_some() {
            headers.remove(CONTENT_LENGTH);
        } else if let (true, Ok(Some(n))) = (self.length_values > 1, self.length) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }

    /// How the body is delimited, and whether the connection stays open.
    fn framing(self) -> Result<(Framing, bool), Error> {
        if let Some(chunked_last) = self.chunked_last {
            // Content-Length beside Transfer-Encoding is ignored, and the connection is
            // not trusted with another message (RFC 9112 §6.3, point 3).
            let reuse = self.keep_alive && self.length_values == 0;
            return Ok(match chunked_last {
                true => (Framing::Chunked(Chunked::Size), reuse),
                false => (Framing::Close, false),
            });
        }
        // No length: the body runs until the close (never reused then), unless the
        // status or the method says there is none.
        Ok(match self.length.map_err(Error::Protocol)? {
            Some(n) => (Framing::Length(n), self.keep_alive),
            None => (Framing::Close, self.keep_alive),
        })
    }
}

/// Whether the body of an answer with no body (to HEAD, 204, 304) could still come: the
/// head announced a length or chunks. Such a connection is not reused, so stray bytes
/// cannot become the next request's answer.
pub fn announces_body(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || headers.contains_key(TRANSFER_ENCODING)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<Head>, Error> {
        parse(&mut BytesMut::from(text.as_bytes()))
    }

    #[test]
    fn heads_are_parsed_when_complete_and_up_to_100_headers() {
        let with = |n: usize| {
            let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
            for i in 1..n {
                head.extend_from_slice(format!("x-h{i}: v{i}\r\n").as_bytes());
            }
            head.extend_from_slice(b"\r\nok");
            BytesMut::from(&head[..])
        };
        // In pieces: nothing is taken until the head is complete.
        let mut buf = with(3);
        let mut partial = buf.split_to(20);
        assert!(parse(&mut partial).unwrap().is_none());
        assert_eq!(partial.len(), 20);
        partial.unsplit(buf);
        let (parts, framing, keep_alive) = parse(&mut partial).unwrap().unwrap();
        assert_eq!(parts.headers["x-h2"], "v2");
        assert!(matches!(framing, Framing::Length(2)) && keep_alive);
        assert_eq!(&partial[..], b"ok", "the body is left in the buffer");
        let (parts, ..) = parse(&mut with(MAX_HEADERS)).unwrap().unwrap();
        assert_eq!(parts.headers.len(), MAX_HEADERS);
        match parse(&mut with(MAX_HEADERS + 1)) {
            Err(err) => assert!(err.to_string().contains("too many headers"), "{err}"),
            Ok(_) => panic!("101 headers were accepted"),
        }
    }

    #[test]
    fn a_complete_head_over_the_limit_is_refused() {
        // Two headers of 50 KB each: complete in one buffer, and 100 KB in all.
        let big = "x".repeat(50 * 1024);
        let text =
            format!("HTTP/1.1 200 OK\r\nx-a: {big}\r\nx-b: {big}\r\nContent-Length: 0\r\n\r\n");
        match head(&text) {
            Err(e) => assert!(e.to_string().contains("too large"), "{e}"),
            Ok(_) => panic!("a 100 KB head was accepted"),
        }
        // Just under the limit is fine.
        let fine = "x".repeat(MAX_HEAD - 100);
        let text = format!("HTTP/1.1 200 OK\r\nx-a: {fine}\r\n\r\n");
        assert!(head(&text).unwrap().is_some());
    }

    #[test]
    fn content_length_beside_transfer_encoding_is_dropped() {
        let (parts, framing, reuse) =
            head("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(parts.headers.get(CONTENT_LENGTH).is_none());
        assert!(matches!(framing, Framing::Chunked(_)));
        assert!(!reuse, "not trusted with another message");
    }

    #[test]
    fn a_repeated_content_length_is_forwarded_as_one_value() {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
        ] {
            let (parts, framing, _) = head(text).unwrap().unwrap();
            let values: Vec<_> = parts.headers.get_all(CONTENT_LENGTH).iter().collect();
            assert_eq!(values, ["2"], "{text}");
            assert!(matches!(framing, Framing::Length(2)));
        }
    }

    #[test]
    fn the_upstream_version_is_not_the_answer_version() {
        let (parts, framing, reuse) = head("HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(parts.version, Version::HTTP_11);
        assert!(matches!(framing, Framing::Close));
        assert!(!reuse);
    }

    #[test]
    fn bodies_announced_on_bodyless_answers_are_noticed() {
        let map = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(!announces_body(&map(&[])));
        assert!(!announces_body(&map(&[("content-length", "0")])));
        assert!(announces_body(&map(&[("content-length", "47")])));
        assert!(announces_body(&map(&[("transfer-encoding", "chunked")])));
    }
}
