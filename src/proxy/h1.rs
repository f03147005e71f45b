//! A lean HTTP/1.1 client connection (RFC 9112) for upstreams that speak HTTP/1.1.
//!
//! hyper's client connection runs as a task of its own and hands the request, the
//! response and every body frame across channels; a proxied request then costs two
//! tasks and their wake-ups. Here the request's own task writes the request and parses
//! the answer, and the response body reads straight from the socket when the server
//! side polls it. The connection goes back to its pool (`release`) once the body has
//! been read to the end with the framing intact; anything unusual (a body cut short, an
//! answer without a length, `Connection: close`, bytes after the answer) closes it
//! instead, so a connection is only reused at a clean message boundary.

use std::future::Future as _;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::headers::{self, Rewrite, Value, list};
use crate::body::{Body, BoxError};

/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The most response headers accepted.
const MAX_HEADERS: usize = 100;
/// The most bytes of chunk-size lines and trailers accepted.
const MAX_LINE: usize = 16 * 1024;
/// Bytes asked for per read at first; a read that fills it doubles it, up to `MAX_READ`.
const READ_SIZE: usize = 8 * 1024;
const MAX_READ: usize = 128 * 1024;
/// Request bodies up to this size go out in the same write as the head.
const COALESCE: usize = 64 * 1024;
/// A request buffer up to this size stays with its connection for the next request.
const KEEP_OUT: usize = 8 * 1024;

/// Why an exchange failed.
#[derive(Debug)]
pub enum Error {
    Io(std::io::Error),
    /// The upstream broke the protocol (or a limit above).
    Protocol(&'static str),
    /// The connection closed before the response head was complete.
    Closed,
    /// The request body failed, or did not match its announced length.
    Body(BoxError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Protocol(what) => write!(f, "invalid HTTP/1.1 answer: {what}"),
            Error::Closed => write!(f, "connection closed before the response head"),
            Error::Body(e) => write!(f, "request body: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e)
    }
}

/// An open connection and the bytes read from it but not used yet (none while idle).
/// The stream is boxed: a TLS stream is over a kilobyte, and a connection moves from the
/// pool to the request to the response body and back.
pub struct Conn<T> {
    io: Box<T>,
    buf: BytesMut,
    read_size: usize,
    /// The last request's write buffer, emptied, for the next one.
    out: Vec<u8>,
}

impl<T> std::fmt::Debug for Conn<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn({} bytes buffered)", self.buf.len())
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Conn<T> {
    pub fn new(io: T) -> Conn<T> {
        Conn {
            io: Box::new(io),
            buf: BytesMut::new(),
            read_size: READ_SIZE,
            out: Vec::new(),
        }
    }

    /// Whether an idle connection can take a request: the upstream has neither closed it
    /// nor sent anything unasked (checked without waiting).
    pub fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        self.buf.reserve(self.read_size);
        let n = ready!(pin!(self.io.read_buf(&mut self.buf)).poll(cx))?;
        if n >= self.read_size {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(n))
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// A request to send, by reference: the proxy keeps the client's headers for the next
/// attempt instead of copying them into each request.
pub struct RequestRef<'a> {
    pub method: &'a Method,
    /// The request target: path and query (scheme and authority are the pool's).
    pub target: &'a str,
    /// Sent as `rewrite` says, except framing headers (ours are written), `Host` (the
    /// pool's) and the `extra` header's name.
    pub headers: &'a HeaderMap,
    pub rewrite: Rewrite,
    /// A header set over any of the same name in `headers` (the injected key).
    pub extra: Option<(&'a HeaderName, &'a HeaderValue)>,
}

/// Sends the request and reads the response head. The response body streams from the
/// connection; `release` gets the connection back when the body ended cleanly and the
/// connection can carry another request.
pub async fn send<T, R>(
    mut conn: Conn<T>,
    head: RequestRef<'_>,
    host: &HeaderValue,
    body: Body,
    release: R,
) -> Result<Response<Body>, Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: FnOnce(Conn<T>) + Send + Unpin + 'static,
{
    let head_only = *head.method == Method::HEAD;
    write_request(&mut conn, head, host, body).await?;
    let (parts, framing, keep_alive) = loop {
        let parsed = read_head(&mut conn).await?;
        if !parsed.0.status.is_informational() {
            break parsed;
        }
        if parsed.0.status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Error::Protocol("switching protocols is not proxied"));
        }
        // 100 Continue, 103 Early Hints: the final answer follows.
    };
    let framing = match (head_only, parts.status) {
        (true, _) | (_, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) => Framing::Length(0),
        _ => framing,
    };
    let mut body = ResponseBody {
        conn: Some(conn),
        framing,
        keep_alive,
        release: Some(release),
    };
    if matches!(body.framing, Framing::Length(0)) {
        // Nothing to read: the connection is free again now.
        body.finish();
        return Ok(Response::from_parts(parts, crate::body::empty()));
    }
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

/// Writes the request line, `Host`, the headers with our own framing, and the body.
async fn write_request<T>(
    conn: &mut Conn<T>,
    head: RequestRef<'_>,
    host: &HeaderValue,
    mut body: Body,
) -> Result<(), Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    // The framing: the body's own length, else the client's Content-Length (checked
    // against what is sent), else chunked.
    let length = if body.is_end_stream() {
        Some(0)
    } else {
        body.size_hint().exact().or_else(|| {
            head.headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        })
    };
    let mut out = std::mem::take(&mut conn.out);
    out.clear();
    out.reserve(512 + length.filter(|n| *n as usize <= COALESCE).unwrap_or(0) as usize);
    out.put_slice(head.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(head.target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\nhost: ");
    out.put_slice(host.as_bytes());
    out.put_slice(b"\r\n");
    let extra = head.extra.map(|(name, _)| name);
    head.rewrite.each(head.headers, |name, value| {
        if name == CONTENT_LENGTH
            || name == TRANSFER_ENCODING
            || name == HOST
            || Some(name) == extra
        {
            return;
        }
        match value {
            Value::Same(v) => put_header(&mut out, name, &[v.as_bytes()]),
            Value::Joined(parts) => put_header(&mut out, name, parts),
        }
    });
    if let Some((name, value)) = head.extra {
        put_header(&mut out, name, &[value.as_bytes()]);
    }
    match length {
        // A body-less GET and the like announce nothing; methods that carry a body say 0.
        Some(0)
            if !matches!(*head.method, Method::POST | Method::PUT | Method::PATCH)
                && !headers::has(head.headers, &CONTENT_LENGTH) => {}
        Some(n) => {
            out.put_slice(b"content-length: ");
            out.put_slice(itoa(n, &mut [0; 20]));
            out.put_slice(b"\r\n");
        }
        None => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.put_slice(b"\r\n");
    let mut sent = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Error::Body)?.into_data() else {
            continue; // trailers are not forwarded
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if length.is_some_and(|n| sent > n) {
            return Err(Error::Body("longer than its announced length".into()));
        }
        if length.is_none() {
            out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if out.len() + data.len() <= COALESCE {
            out.put_slice(&data);
        } else {
            conn.io.write_all(&out).await?;
            out.clear();
            conn.io.write_all(&data).await?;
        }
        if length.is_none() {
            out.put_slice(b"\r\n");
        }
    }
    if length.is_some_and(|n| sent != n) {
        return Err(Error::Body("shorter than its announced length".into()));
    }
    if length.is_none() {
        out.put_slice(b"0\r\n\r\n");
    }
    conn.io.write_all(&out).await?;
    conn.io.flush().await?;
    if out.capacity() <= KEEP_OUT {
        conn.out = out;
    }
    Ok(())
}

/// `name: value`, the value written from its pieces.
fn put_header(out: &mut Vec<u8>, name: &HeaderName, value: &[&[u8]]) {
    out.put_slice(name.as_str().as_bytes());
    out.put_slice(b": ");
    value.iter().for_each(|piece| out.put_slice(piece));
    out.put_slice(b"\r\n");
}

/// `n` in decimal.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Reads and parses one response head.
async fn read_head<T>(conn: &mut Conn<T>) -> Result<(http::response::Parts, Framing, bool), Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        if !conn.buf.is_empty()
            && let Some(parsed) = parse_head(&mut conn.buf)?
        {
            return Ok(parsed);
        }
        if conn.buf.len() >= MAX_HEAD {
            return Err(Error::Protocol("response head too large"));
        }
        if conn.fill().await? == 0 {
            return Err(Error::Closed);
        }
    }
}

/// Parses a complete head at the start of `buf` and removes it from there; `None` when
/// more bytes are needed. Returns the parts, the body's framing and whether the
/// connection may carry another request afterwards.
fn parse_head(buf: &mut BytesMut) -> Result<Option<(http::response::Parts, Framing, bool)>, Error> {
    // Left uninitialised (filling 100 empty headers first cost ~280 instructions).
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
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
    let mut headers = HeaderMap::with_capacity(count);
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
    let (framing, keep_alive) = framing.framing()?;
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
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
}

impl FramingHeaders {
    fn new(version: Version) -> FramingHeaders {
        FramingHeaders {
            version,
            keep_alive: version == Version::HTTP_11,
            chunked_last: None,
            length: Ok(None),
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
                self.length = match (self.length, decimal(part)) {
                    (Err(e), _) => Err(e),
                    (_, None) => Err("invalid content-length"),
                    (Ok(Some(l)), Some(n)) if l != n => Err("conflicting content-length values"),
                    (Ok(_), Some(n)) => Ok(Some(n)),
                };
            }
        }
    }

    /// How the body is delimited, and whether the connection stays open.
    fn framing(self) -> Result<(Framing, bool), Error> {
        if let Some(chunked_last) = self.chunked_last {
            // Content-Length beside Transfer-Encoding is ignored, and the connection is
            // not trusted with another message (RFC 9112 §6.3, point 3).
            let reuse = self.keep_alive && matches!(self.length, Ok(None));
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

/// How the rest of the body is delimited.
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes the connection.
    Close,
}

/// Where the chunked decoder is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Chunked {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
    Done,
}

/// What one step of the chunked decoder produced.
enum Step {
    Data(Bytes),
    NeedMore,
    Again,
}

impl Chunked {
    /// Decodes from the front of `buf`.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Error> {
        match *self {
            Chunked::Size => {
                let Some(eol) = buf.iter().position(|b| *b == b'\n') else {
                    return match buf.len() > MAX_LINE {
                        true => Err(Error::Protocol("chunk size line too long")),
                        false => Ok(Step::NeedMore),
                    };
                };
                let size = chunk_size(&buf[..eol])?;
                buf.advance(eol + 1);
                *self = match size {
                    0 => Chunked::Trailers(0),
                    n => Chunked::Data(n),
                };
                Ok(Step::Again)
            }
            Chunked::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = (left as usize).min(buf.len());
                let data = buf.split_to(n).freeze();
                *self = match left - n as u64 {
                    0 => Chunked::DataEnd,
                    rest => Chunked::Data(rest),
                };
                Ok(Step::Data(data))
            }
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::Protocol("chunk not followed by CRLF"));
                }
                buf.advance(2);
                *self = Chunked::Size;
                Ok(Step::Again)
            }
            Chunked::Trailers(seen) => {
                let Some(eol) = buf.iter().position(|b| *b == b'\n') else {
                    return match seen + buf.len() > MAX_LINE {
                        true => Err(Error::Protocol("trailers too long")),
                        false => Ok(Step::NeedMore),
                    };
                };
                let blank = buf[..eol] == *b"\r" || eol == 0;
                buf.advance(eol + 1);
                *self = match blank {
                    true => Chunked::Done,
                    false => Chunked::Trailers(seen + eol + 1),
                };
                Ok(Step::Again)
            }
            Chunked::Done => Ok(Step::Again),
        }
    }
}

/// The size of a chunk-size line (`1a3;ext=1\r`): hex digits, then extensions.
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[digits..];
    let rest_ok = rest.is_empty() || matches!(rest[0], b';' | b' ' | b'\t');
    if digits == 0 || digits > 15 || !rest_ok {
        return Err(Error::Protocol("invalid chunk size"));
    }
    let text =
        std::str::from_utf8(&line[..digits]).map_err(|_| Error::Protocol("invalid chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| Error::Protocol("invalid chunk size"))
}

/// A response body read from the connection as the server side asks for it.
struct ResponseBody<T, R> {
    conn: Option<Conn<T>>,
    framing: Framing,
    keep_alive: bool,
    release: Option<R>,
}

impl<T, R> ResponseBody<T, R>
where
    T: AsyncRead + AsyncWrite + Unpin,
    R: FnOnce(Conn<T>),
{
    /// The body ended cleanly: the connection goes back if it can carry another request.
    fn finish(&mut self) {
        let conn = self.conn.take();
        if let (Some(conn), Some(release)) = (conn, self.release.take())
            && self.keep_alive
            && conn.buf.is_empty()
        {
            release(conn);
        }
    }
}

impl<T, R> hyper::body::Body for ResponseBody<T, R>
where
    T: AsyncRead + AsyncWrite + Unpin,
    R: FnOnce(Conn<T>) + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.framing {
                Framing::Length(0) | Framing::Chunked(Chunked::Done) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !conn.buf.is_empty() => {
                    let n = (*left).min(conn.buf.len() as u64);
                    *left -= n;
                    let data = conn.buf.split_to(n as usize).freeze();
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(state) if !conn.buf.is_empty() => {
                    match state.step(&mut conn.buf) {
                        Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(Step::Again) => continue,
                        Ok(Step::NeedMore) => {}
                        Err(e) => return Poll::Ready(Some(Err(fail(this, e)))),
                    }
                }
                _ => {}
            }
            let conn = this.conn.as_mut().expect("checked above");
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.framing, Framing::Close) => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return Poll::Ready(Some(Err(fail(
                        this,
                        Error::Protocol("connection closed mid-body"),
                    ))));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(fail(this, Error::Io(e))))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
            || matches!(
                self.framing,
                Framing::Length(0) | Framing::Chunked(Chunked::Done)
            )
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) if self.conn.is_some() => SizeHint::with_exact(n),
            _ if self.conn.is_none() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Closes the connection after a body error.
fn fail<T, R>(body: &mut ResponseBody<T, R>, e: Error) -> BoxError {
    body.conn = None;
    Box::new(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A raw upstream on 127.0.0.1:0: on one connection, answers each request with the
    /// next canned bytes, then closes. Returns its address and the requests it read.
    async fn upstream(answers: Vec<&'static [u8]>) -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            for answer in answers {
                let request = read_request(&mut sock).await;
                log.lock().unwrap().push(request);
                sock.write_all(answer).await.unwrap();
            }
            // Linger so the client sees the answer before the close.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        });
        (addr, seen)
    }

    /// Reads one request: the head, then a Content-Length or chunked body.
    async fn read_request(sock: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            if sock.read(&mut byte).await.unwrap() == 0 {
                return got;
            }
            got.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&got).to_lowercase();
        if let Some(len) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            let mut body = vec![0; len];
            sock.read_exact(&mut body).await.unwrap();
            got.extend(body);
        } else if head.contains("transfer-encoding: chunked") {
            while !got.ends_with(b"\r\n0\r\n\r\n") {
                sock.read_exact(&mut byte).await.unwrap();
                got.push(byte[0]);
            }
        }
        got
    }

    type Released = Arc<Mutex<Option<Conn<TcpStream>>>>;

    /// Sends `req` on `conn`; returns the status, the headers, the body (or its error)
    /// and the connection if it came back for reuse.
    async fn exchange(
        conn: Conn<TcpStream>,
        req: Request<Body>,
    ) -> Result<(Response<()>, Result<Bytes, String>, Option<Conn<TcpStream>>), Error> {
        let released: Released = Arc::default();
        let slot = released.clone();
        let (parts, body) = req.into_parts();
        let host = parts.headers["host"].clone();
        let head = RequestRef {
            method: &parts.method,
            target: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            headers: &parts.headers,
            rewrite: Rewrite::NONE,
            extra: parts
                .extensions
                .get::<(HeaderName, HeaderValue)>()
                .map(|(n, v)| (n, v)),
        };
        let resp = send(conn, head, &host, body, move |c| {
            *slot.lock().unwrap() = Some(c)
        })
        .await?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| e.to_string());
        let conn = released.lock().unwrap().take();
        Ok((Response::from_parts(parts, ()), body, conn))
    }

    async fn connect(addr: &str) -> Conn<TcpStream> {
        Conn::new(TcpStream::connect(addr).await.unwrap())
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path)
            .header("host", "upstream")
            .body(crate::body::empty())
            .unwrap()
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[tokio::test]
    async fn content_length_answers_are_read_exactly_and_the_connection_is_reused() {
        let (addr, seen) = upstream(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
            b"HTTP/1.1 201 Created\r\ncontent-length: 2 , 2\r\n\r\nok",
        ])
        .await;
        let (resp, body, conn) = exchange(connect(&addr).await, get("/a?b=1")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-a"], "1");
        assert_eq!(body.unwrap(), "hello");
        let mut conn = conn.expect("reusable");
        assert!(conn.is_reusable());
        let (resp, body, conn) = exchange(conn, get("/second")).await.unwrap();
        assert_eq!(
            (resp.status().as_u16(), body.unwrap()),
            (201, Bytes::from("ok"))
        );
        assert!(conn.is_some());
        let seen = seen.lock().unwrap();
        assert_eq!(
            text(&seen[0]),
            "GET /a?b=1 HTTP/1.1\r\nhost: upstream\r\n\r\n"
        );
        assert!(text(&seen[1]).starts_with("GET /second HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn chunked_answers_are_decoded_with_extensions_and_trailers() {
        let (addr, _) = upstream(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        ])
        .await;
        let (_, body, conn) = exchange(connect(&addr).await, get("/")).await.unwrap();
        assert_eq!(body.unwrap(), "hello world");
        assert!(
            conn.is_some(),
            "a clean chunked end leaves the connection reusable"
        );
    }

    #[tokio::test]
    async fn anything_unusual_closes_the_connection_instead_of_reusing_it() {
        let cases: [&'static [u8]; 4] = [
            // Bytes after the answer.
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            // Chunked beside Content-Length: chunked wins, the connection is not trusted.
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ];
        for answer in cases {
            let (addr, _) = upstream(vec![answer]).await;
            let (_, body, conn) = exchange(connect(&addr).await, get("/")).await.unwrap();
            assert_eq!(body.unwrap(), "ok", "{}", text(answer));
            assert!(conn.is_none(), "not reused after {}", text(answer));
        }
    }

    #[tokio::test]
    async fn an_answer_without_a_length_runs_until_the_upstream_closes() {
        let (addr, _) = upstream(vec![b"HTTP/1.1 200 OK\r\n\r\nall of this"]).await;
        let (_, body, conn) = exchange(connect(&addr).await, get("/")).await.unwrap();
        assert_eq!(body.unwrap(), "all of this");
        assert!(conn.is_none());
    }

    #[tokio::test]
    async fn head_204_and_304_answers_have_no_body_and_free_the_connection() {
        let (addr, _) = upstream(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        ])
        .await;
        let head = Request::head("/")
            .header("host", "u")
            .body(crate::body::empty())
            .unwrap();
        let (resp, body, conn) = exchange(connect(&addr).await, head).await.unwrap();
        assert_eq!(resp.headers()["content-length"], "10");
        assert_eq!(body.unwrap(), "");
        let (resp, body, conn) = exchange(conn.unwrap(), get("/")).await.unwrap();
        assert_eq!((resp.status().as_u16(), body.unwrap()), (204, Bytes::new()));
        let (resp, body, conn) = exchange(conn.unwrap(), get("/")).await.unwrap();
        assert_eq!((resp.status().as_u16(), body.unwrap()), (304, Bytes::new()));
        assert!(conn.is_some());
    }

    #[tokio::test]
    async fn interim_answers_are_skipped_and_upgrades_refused() {
        let (addr, _) = upstream(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
        ])
        .await;
        let (resp, body, _) = exchange(connect(&addr).await, get("/")).await.unwrap();
        assert_eq!(
            (resp.status().as_u16(), body.unwrap()),
            (200, Bytes::from("x"))
        );
        let (addr, _) = upstream(vec![
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        ])
        .await;
        let err = exchange(connect(&addr).await, get("/")).await.unwrap_err();
        assert!(err.to_string().contains("switching protocols"), "{err}");
    }

    #[tokio::test]
    async fn malformed_answers_are_errors() {
        let heads: [(&'static [u8], &str); 7] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
                "invalid content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2,\r\n\r\nok",
                "invalid content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1e2\r\n\r\n",
                "invalid content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "invalid content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
                "conflicting",
            ),
            (b"SMTP ready\r\n\r\n", "malformed"),
        ];
        for (answer, why) in heads {
            let (addr, _) = upstream(vec![answer]).await;
            let err = exchange(connect(&addr).await, get("/")).await.unwrap_err();
            assert!(err.to_string().contains(why), "{}: {err}", text(answer));
        }
        // A bad chunk size fails the body, and the connection is dropped.
        let (addr, _) = upstream(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ])
        .await;
        let (_, body, conn) = exchange(connect(&addr).await, get("/")).await.unwrap();
        assert!(body.unwrap_err().contains("invalid chunk size"));
        assert!(conn.is_none());
        // Closed mid-body.
        let (addr, _) = upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"]).await;
        let (_, body, conn) = exchange(connect(&addr).await, get("/")).await.unwrap();
        assert!(body.unwrap_err().contains("closed mid-body"));
        assert!(conn.is_none());
        // Closed before any answer.
        let (addr, _) = upstream(vec![b""]).await;
        let err = exchange(connect(&addr).await, get("/")).await.unwrap_err();
        assert!(matches!(err, Error::Closed), "{err}");
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
        assert!(parse_head(&mut partial).unwrap().is_none());
        assert_eq!(partial.len(), 20);
        partial.unsplit(buf);
        let (parts, framing, keep_alive) = parse_head(&mut partial).unwrap().unwrap();
        assert_eq!(parts.headers["x-h2"], "v2");
        assert!(matches!(framing, Framing::Length(2)) && keep_alive);
        assert_eq!(&partial[..], b"ok", "the body is left in the buffer");
        let (parts, ..) = parse_head(&mut with(MAX_HEADERS)).unwrap().unwrap();
        assert_eq!(parts.headers.len(), MAX_HEADERS);
        match parse_head(&mut with(MAX_HEADERS + 1)) {
            Err(err) => assert!(err.to_string().contains("too many headers"), "{err}"),
            Ok(_) => panic!("101 headers were accepted"),
        }
    }

    #[tokio::test]
    async fn request_bodies_are_framed_by_length_or_chunked() {
        let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let (addr, seen) = upstream(vec![ok; 4]).await;
        let post = |body: Body| {
            Request::post("/p")
                .header("host", "u")
                .header("transfer-encoding", "gzip")
                .body(body)
                .unwrap()
        };
        let (_, _, conn) = exchange(connect(&addr).await, post(crate::body::full("abc")))
            .await
            .unwrap();
        let (_, _, conn) = exchange(conn.unwrap(), post(crate::body::empty()))
            .await
            .unwrap();
        // A body of unknown length goes chunked.
        let stream = crate::body::chain(Bytes::from("ab"), crate::body::full("cd"));
        let (_, _, conn) = exchange(conn.unwrap(), post(stream)).await.unwrap();
        // A body-less GET announces nothing.
        let (_, _, conn) = exchange(conn.unwrap(), get("/g")).await.unwrap();
        assert!(conn.is_some());
        let seen = seen.lock().unwrap();
        assert_eq!(
            text(&seen[0]),
            "POST /p HTTP/1.1\r\nhost: u\r\ncontent-length: 3\r\n\r\nabc"
        );
        assert_eq!(
            text(&seen[1]),
            "POST /p HTTP/1.1\r\nhost: u\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(
            text(&seen[2]),
            "POST /p HTTP/1.1\r\nhost: u\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"
        );
        assert_eq!(text(&seen[3]), "GET /g HTTP/1.1\r\nhost: upstream\r\n\r\n");
    }

    #[tokio::test]
    async fn the_extra_header_replaces_one_of_the_same_name_and_host_is_ours() {
        let (addr, seen) = upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]).await;
        let mut req = Request::get("/k")
            .header("host", "upstream.example")
            .header("x-api-key", "from-the-client")
            .header("accept", "*/*")
            .body(crate::body::empty())
            .unwrap();
        req.extensions_mut().insert((
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_static("the-real-key"),
        ));
        let (_, body, _) = exchange(connect(&addr).await, req).await.unwrap();
        assert_eq!(body.unwrap(), "");
        assert_eq!(
            text(&seen.lock().unwrap()[0]),
            "GET /k HTTP/1.1\r\nhost: upstream.example\r\naccept: */*\r\nx-api-key: the-real-key\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_body_that_does_not_match_its_content_length_is_refused() {
        let (addr, _) = upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]).await;
        let stream = crate::body::chain(Bytes::from("ab"), crate::body::full("cd"));
        let req = Request::post("/p")
            .header("host", "u")
            .header("content-length", "10")
            .body(stream)
            .unwrap();
        let err = exchange(connect(&addr).await, req).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("shorter than its announced length"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_not_reusable() {
        let (addr, _) = upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]).await;
        let (_, _, conn) = exchange(connect(&addr).await, get("/")).await.unwrap();
        let mut conn = conn.unwrap();
        assert!(conn.is_reusable());
        // The upstream closes 50 ms after its last answer.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!conn.is_reusable());
    }
}
