//! A lean HTTP/1.1 client connection (RFC 9112) for upstreams that speak HTTP/1.1.
//!
//! hyper's client connection runs as a task of its own and hands the request, the
//! response and every body frame across channels; a proxied request then costs two
//! tasks and their wake-ups. Here the request's own task writes the request and parses
//! the answer, and the response body reads straight from the socket when the server
//! side polls it. The answer is read while the request is written, so an early answer
//! (a 413 during an upload) comes through, and an upstream may stream its answer while
//! the body still goes up. The connection goes back to its pool (`release`) once the
//! request went out whole and the body has been read to the end with the framing
//! intact; anything unusual (a body cut short, an answer without a length,
//! `Connection: close`, bytes after the answer, an answer to HEAD or a 204/304 that
//! announces a body) closes it instead, so a connection is only reused at a clean
//! message boundary.
//!
//! - [`head`]: the status line, the headers and the framing they announce;
//! - [`writer`]: the request, written as the body arrives;
//! - [`framing`]: the response body, by length, chunks or close.

mod framing;
mod head;
mod writer;

use std::future::Future as _;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use self::framing::{Framing, ResponseBody};
use self::writer::Writer;
use crate::body::{Body, BoxError};
use crate::headers::Rewrite;

/// Bytes asked for per read at first; a read that fills it doubles it, up to `MAX_READ`.
const READ_SIZE: usize = 8 * 1024;
const MAX_READ: usize = 128 * 1024;

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

/// A failed exchange, and how far it got: whether any byte of the request reached the
/// socket (the upstream may have acted on it) and whether any byte of an answer came.
#[derive(Debug)]
pub struct Failure {
    pub error: Error,
    pub wrote: bool,
    pub answered: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
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

    /// Reads until a complete response head is buffered and parses it.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<head::Head, Error>> {
        loop {
            if !self.buf.is_empty()
                && let Some(parsed) = head::parse(&mut self.buf)?
            {
                return Poll::Ready(Ok(parsed));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(Error::Closed));
            }
        }
    }
}

/// A request to send, by reference: the proxy keeps the client's headers for the next
/// attempt instead of copying them into each request.
pub struct RequestRef<'a> {
    pub method: &'a Method,
    /// The request target: path and query (scheme and authority are the pool's).
    pub target: &'a str,
    /// Sent as `rewrite` says, except framing headers (ours are written), `Host` (the
    /// pool's) and the `extra` headers' names.
    pub headers: &'a HeaderMap,
    pub rewrite: Rewrite,
    /// Headers set over any of the same name in `headers`, written last (the request id,
    /// the encoding usage tracking asks for, the injected key).
    pub extra: &'a [(&'a HeaderName, &'a HeaderValue)],
}

/// Sends the request and reads the response head, reading while writing. The response
/// body streams from the connection (and writes the rest of the request, if the answer
/// came first); `release` gets the connection back when the exchange ended cleanly and
/// the connection can carry another request.
pub async fn send<T, R>(
    mut conn: Conn<T>,
    head: RequestRef<'_>,
    host: &HeaderValue,
    body: Body,
    release: R,
) -> Result<Response<Body>, Failure>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: FnOnce(Conn<T>) + Send + Unpin + 'static,
{
    let head_only = *head.method == Method::HEAD;
    let out = std::mem::take(&mut conn.out);
    let mut exchange = Exchange {
        writer: Some(Writer::new(head, host, body, out)),
        wrote: false,
        write_error: None,
    };
    let parsed = std::future::poll_fn(|cx| exchange.poll_head(&mut conn, cx)).await;
    let (parts, framing, mut keep_alive) = parsed.map_err(|error| Failure {
        wrote: exchange.wrote,
        answered: !conn.buf.is_empty() || matches!(error, Error::Protocol(_)),
        error,
    })?;
    // A request that did not go out whole leaves the connection in doubt.
    keep_alive &= exchange.write_error.is_none();
    let bodyless = head_only
        || matches!(
            parts.status,
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
        );
    if head_only || (bodyless && head::announces_body(&parts.headers)) {
        // A body may follow anyway: never reuse what could carry stray bytes.
        keep_alive = false;
    }
    let framing = if bodyless {
        Framing::Length(0)
    } else {
        framing
    };
    let mut writer = exchange.writer;
    if let Some(buf) = writer.take_if(|w| w.done()).and_then(Writer::into_buffer) {
        conn.out = buf;
    }
    let mut body = ResponseBody {
        conn: Some(conn),
        framing,
        keep_alive,
        release: Some(release),
        writer,
    };
    if matches!(body.framing, Framing::Length(0)) {
        // Nothing to read: the connection is free again now (if the request is out).
        body.finish();
        return Ok(Response::from_parts(parts, crate::body::empty()));
    }
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

/// A request being written while its answer is awaited.
struct Exchange {
    /// `None` once a write failed (the upload stops).
    writer: Option<Writer>,
    /// Whether any request byte reached the socket.
    wrote: bool,
    write_error: Option<Error>,
}

impl Exchange {
    /// Writes what can be written, then reads, until the final response head. A write
    /// that fails stops the writing (the upstream may have answered early and closed);
    /// its error is the exchange's only when no answer comes.
    fn poll_head<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<head::Head, Error>> {
        if let Some(w) = self.writer.as_mut().filter(|w| !w.done()) {
            let written = w.poll_write(cx, &mut conn.io);
            self.wrote |= w.wrote;
            match written {
                // The request body itself failed: nothing the upstream says helps.
                Poll::Ready(Err(e @ Error::Body(_))) => return Poll::Ready(Err(e)),
                Poll::Ready(Err(e)) => {
                    self.write_error = Some(e);
                    self.writer = None;
                }
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        loop {
            let parsed = match ready!(conn.poll_head(cx)) {
                Ok(parsed) => parsed,
                Err(Error::Closed) if self.write_error.is_some() => {
                    return Poll::Ready(Err(self.write_error.take().expect("checked")));
                }
                Err(e) => return Poll::Ready(Err(e)),
            };
            if !parsed.0.status.is_informational() {
                return Poll::Ready(Ok(parsed));
            }
            if parsed.0.status == StatusCode::SWITCHING_PROTOCOLS {
                return Poll::Ready(Err(Error::Protocol("switching protocols is not proxied")));
            }
            // 100 Continue, 103 Early Hints: the final answer follows.
        }
    }
}

#[cfg(test)]
mod tests;
