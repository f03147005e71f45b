//! The response body: delimited by a length, by chunks or by the close, read from the
//! connection as the server side asks for it. While the request is still being written
//! (the upstream answered early, or streams its answer as the body goes up), each poll
//! also writes what the request body has ready.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::writer::Writer;
use super::{Conn, Error};
use crate::body::BoxError;

/// The most bytes of chunk-size lines and trailers accepted.
const MAX_LINE: usize = 16 * 1024;

/// How the rest of the body is delimited.
#[derive(Debug)]
pub enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes the connection.
    Close,
}

/// Where the chunked decoder is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Chunked {
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
pub struct ResponseBody<T, R> {
    pub conn: Option<Conn<T>>,
    pub framing: Framing,
    pub keep_alive: bool,
    pub release: Option<R>,
    /// The rest of the request, when the answer came before it was all written.
    pub writer: Option<Writer>,
}

impl<T, R> ResponseBody<T, R>
where
    T: AsyncRead + AsyncWrite + Unpin,
    R: FnOnce(Conn<T>),
{
    /// The body ended cleanly: the connection goes back if it can carry another request
    /// (its request was written whole, and nothing is left unread).
    pub fn finish(&mut self) {
        let conn = self.conn.take();
        let written = self.writer.take().is_none_or(|w| w.done());
        if let (Some(conn), Some(release)) = (conn, self.release.take())
            && self.keep_alive
            && written
            && conn.buf.is_empty()
        {
            release(conn);
        }
    }

    /// Writes what the request body has ready, while the answer is being read. A write
    /// that fails ends the upload (the upstream stopped reading); the connection is then
    /// not reused.
    fn drive_writer(&mut self, cx: &mut Context<'_>) {
        let (Some(writer), Some(conn)) = (self.writer.as_mut(), self.conn.as_mut()) else {
            return;
        };
        match writer.poll_write(cx, &mut conn.io) {
            Poll::Ready(Ok(())) => {
                if let Some(buf) = self.writer.take().and_then(Writer::into_buffer) {
                    conn.out = buf;
                }
            }
            Poll::Ready(Err(e)) => {
                crate::log::debug!("request body not sent whole: {e}");
                self.writer = None;
                self.keep_alive = false;
            }
            Poll::Pending => {}
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
        if this.writer.is_some() {
            this.drive_writer(cx);
        }
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
    body.writer = None;
    Box::new(e)
}
