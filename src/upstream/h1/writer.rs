//! Writing a request: the head, then the body framed by its length or in chunks, driven
//! by polls so that the answer can be read at the same time (an early answer, or an
//! upstream that streams its answer while the body still goes up).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes};
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, Method};
use hyper::body::Body as _;
use tokio::io::AsyncWrite;

use super::{Error, RequestRef};
use crate::body::Body;
use crate::headers::{self, Value};

/// Request bodies up to this size go out in the same write as the head.
const COALESCE: usize = 64 * 1024;
/// A request buffer up to this size stays with its connection for the next request.
pub const KEEP_OUT: usize = 8 * 1024;

/// A request on its way out.
pub struct Writer {
    /// Bytes to write: the head, small frames and chunk framing.
    out: Vec<u8>,
    /// How much of `out` is written.
    at: usize,
    /// A large frame written on its own, after `out`, and how much of it is written.
    big: Option<(Bytes, usize)>,
    /// `None` once the body has ended (and its end is in `out`).
    body: Option<Body>,
    /// The announced length, or `None` for chunked.
    length: Option<u64>,
    sent: u64,
    /// Whether any byte reached the socket.
    pub wrote: bool,
    flushed: bool,
}

/// A request cut short leaves its head (and the upstream key in it) zeroed too.
impl Drop for Writer {
    fn drop(&mut self) {
        crate::seal::wipe(&mut self.out);
    }
}

impl Writer {
    /// Writes the head into a buffer (`out`, the connection's from its last request) and
    /// takes the body.
    pub fn new(head: RequestRef<'_>, host: &HeaderValue, body: Body, out: Vec<u8>) -> Writer {
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
        let mut out = out;
        out.clear();
        out.reserve(512 + length.filter(|n| *n as usize <= COALESCE).unwrap_or(0) as usize);
        out.put_slice(head.method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(head.target.as_bytes());
        out.put_slice(b" HTTP/1.1\r\nhost: ");
        out.put_slice(host.as_bytes());
        out.put_slice(b"\r\n");
        head.rewrite.each(head.headers, |name, value| {
            if name == CONTENT_LENGTH
                || name == TRANSFER_ENCODING
                || name == HOST
                || head.replaces(name)
            {
                return;
            }
            match value {
                Value::Same(v) => put_header(&mut out, name, &[v.as_bytes()]),
                Value::Joined(parts) => put_header(&mut out, name, parts),
            }
        });
        for (name, value) in head.extra {
            put_header(&mut out, name, &[value.as_bytes()]);
        }
        match length {
            // A body-less GET and the like announce nothing; methods that carry a body
            // say 0.
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
        let body = (length != Some(0) || !body.is_end_stream()).then_some(body);
        Writer {
            out,
            at: 0,
            big: None,
            body,
            length,
            sent: 0,
            wrote: false,
            flushed: false,
        }
    }

    /// Whether everything has been written and flushed.
    pub fn done(&self) -> bool {
        self.flushed
    }

    /// The write buffer, for the connection's next request (when it is small).
    pub fn into_buffer(mut self) -> Option<Vec<u8>> {
        let mut out = std::mem::take(&mut self.out);
        out.fill(0);
        out.clear();
        (out.capacity() <= KEEP_OUT).then_some(out)
    }

    /// Writes as much as can be written now; `Ready(Ok)` once the whole request is out.
    pub fn poll_write<T: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut T,
    ) -> Poll<Result<(), Error>> {
        loop {
            if self.flushed {
                return Poll::Ready(Ok(()));
            }
            // Gather what the body has ready, so a small body goes with the head.
            if self.big.is_none() && self.out.len() < COALESCE {
                if let Some(body) = self.body.as_mut() {
                    if let Poll::Ready(frame) = Pin::new(body).poll_frame(cx) {
                        self.take(frame)?;
                        continue;
                    }
                }
            }
            let idle = self.at == self.out.len() && self.big.is_none();
            if idle && self.body.is_some() {
                // Waiting for the body (polled above, which will wake us).
                return Poll::Pending;
            }
            while self.at < self.out.len() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.out[self.at..]))?;
                if n == 0 {
                    return Poll::Ready(Err(Error::Io(std::io::ErrorKind::WriteZero.into())));
                }
                self.at += n;
                self.wrote = true;
            }
            // The head holds the upstream key: zeroed once written (a memset, not a
            // volatile loop: the buffer is reused, so the writes are not dead).
            self.out.fill(0);
            self.out.clear();
            self.at = 0;
            if let Some((data, at)) = self.big.as_mut() {
                while *at < data.len() {
                    let n = ready!(Pin::new(&mut *io).poll_write(cx, &data[*at..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(Error::Io(std::io::ErrorKind::WriteZero.into())));
                    }
                    *at += n;
                    self.wrote = true;
                }
                self.big = None;
                if self.length.is_none() {
                    self.out.put_slice(b"\r\n");
                }
                continue;
            }
            if self.body.is_none() {
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                self.flushed = true;
            }
        }
    }

    /// Takes one polled body frame into `out` (or `big`).
    fn take(
        &mut self,
        frame: Option<Result<hyper::body::Frame<Bytes>, crate::body::BoxError>>,
    ) -> Result<(), Error> {
        let Some(frame) = frame else {
            if self.length.is_some_and(|n| self.sent != n) {
                return Err(Error::Body("shorter than its announced length".into()));
            }
            if self.length.is_none() {
                self.out.put_slice(b"0\r\n\r\n");
            }
            self.body = None;
            return Ok(());
        };
        let Ok(data) = frame.map_err(Error::Body)?.into_data() else {
            return Ok(()); // trailers are not forwarded
        };
        if data.is_empty() {
            return Ok(());
        }
        self.sent += data.len() as u64;
        if self.length.is_some_and(|n| self.sent > n) {
            return Err(Error::Body("longer than its announced length".into()));
        }
        if self.length.is_none() {
            self.out
                .put_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if self.out.len() + data.len() <= COALESCE {
            self.out.put_slice(&data);
            if self.length.is_none() {
                self.out.put_slice(b"\r\n");
            }
        } else {
            self.big = Some((data, 0));
        }
        Ok(())
    }
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
