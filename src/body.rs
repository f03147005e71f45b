//! The one body type every response uses, its constructors, and bounded body reading.

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::body::{Body as _, Frame, Incoming};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Errors a body can produce while streaming.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response (and of every upstream request).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Streams an incoming body on, frame by frame.
pub fn stream(incoming: Incoming) -> Body {
    incoming.map_err(BoxError::from).boxed_unsync()
}

/// What [`read_up_to`] found.
pub enum Buffered<B> {
    /// The whole body, at most `limit` bytes.
    Complete(Bytes),
    /// The body is longer than `limit`: what was read so far and the unread rest.
    Partial(Bytes, B),
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The body is longer than the limit.
    TooLarge,
    /// The peer failed or went away mid-body.
    Io(BoxError),
}

/// Reads a body of at most `limit` bytes; longer ones are returned as [`Buffered::Partial`]
/// (without reading when the announced length already says so).
pub async fn read_up_to<B>(mut body: B, limit: usize) -> Result<Buffered<B>, BoxError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        return Ok(Buffered::Complete(Bytes::new()));
    }
    if body.size_hint().lower() as usize > limit {
        return Ok(Buffered::Partial(Bytes::new(), body));
    }
    // A body that arrives as one frame (usual when it came with the head) is kept as it
    // is, without a copy; the frames are only joined from the second on.
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Into::into)?.into_data() else {
            continue;
        };
        let len = match &mut joined {
            Some(buf) => {
                buf.extend_from_slice(&data);
                buf.len()
            }
            None if first.is_empty() => {
                first = data;
                first.len()
            }
            None => {
                let mut buf = BytesMut::with_capacity(first.len() + data.len());
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&data);
                joined.insert(buf).len()
            }
        };
        if len > limit {
            return Ok(Buffered::Partial(all(first, joined), body));
        }
    }
    Ok(Buffered::Complete(all(first, joined)))
}

fn all(first: Bytes, joined: Option<BytesMut>) -> Bytes {
    joined.map_or(first, BytesMut::freeze)
}

/// Reads a whole body of at most `limit` bytes (admin JSON), chunked or not.
pub async fn read_limited(body: Incoming, limit: usize) -> Result<Bytes, ReadError> {
    match read_up_to(body, limit).await.map_err(ReadError::Io)? {
        Buffered::Complete(b) => Ok(b),
        Buffered::Partial(..) => Err(ReadError::TooLarge),
    }
}

/// A body that first yields `prefix`, then `rest`: how a body that turned out too long to
/// buffer still goes on whole.
pub fn chain(prefix: Bytes, rest: Body) -> Body {
    if prefix.is_empty() {
        return rest;
    }
    Chain {
        head: Some(prefix),
        rest,
    }
    .boxed_unsync()
}

struct Chain {
    head: Option<Bytes>,
    rest: Body,
}

impl hyper::body::Body for Chain {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }
}

/// Wraps `inner` so that `done(bytes, complete)` runs once: when the body ends
/// (`complete` = true) or when it is dropped before that (the client went away).
pub fn watch<F>(inner: Body, done: F) -> Body
where
    F: FnOnce(u64, bool) + Send + Unpin + 'static,
{
    Watched {
        inner,
        bytes: 0,
        done: Some(done),
    }
    .boxed_unsync()
}

struct Watched<F: FnOnce(u64, bool)> {
    inner: Body,
    bytes: u64,
    done: Option<F>,
}

impl<F: FnOnce(u64, bool) + Unpin> hyper::body::Body for Watched<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Poll::Ready(None) => {
                if let Some(done) = this.done.take() {
                    done(this.bytes, true);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(u64, bool)> Drop for Watched<F> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.bytes, self.inner.is_end_stream());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of the given frames, without a length.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn frames(parts: &[&'static str]) -> Frames {
        Frames(
            parts
                .iter()
                .map(|p| Bytes::from_static(p.as_bytes()))
                .collect(),
        )
    }

    #[tokio::test]
    async fn one_frame_is_kept_as_it_is_and_more_are_joined() {
        let one = Bytes::from_static(b"{\"model\":\"m\"}");
        let Buffered::Complete(got) = read_up_to(Frames([one.clone()].into()), 64).await.unwrap()
        else {
            panic!("complete");
        };
        assert_eq!(got.as_ptr(), one.as_ptr(), "the frame itself, not a copy");
        let Buffered::Complete(got) = read_up_to(frames(&["ab", "", "cd", "e"]), 5).await.unwrap()
        else {
            panic!("complete");
        };
        assert_eq!(got, "abcde");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_comes_back_as_its_prefix_and_the_rest() {
        for parts in [
            &["abcdef", "gh"][..],
            &["ab", "cdef", "gh"],
            &["abc", "def", "gh"],
        ] {
            let Buffered::Partial(prefix, mut rest) = read_up_to(frames(parts), 5).await.unwrap()
            else {
                panic!("partial: {parts:?}");
            };
            let mut all = prefix.to_vec();
            while let Some(frame) = rest.frame().await {
                all.extend_from_slice(&frame.unwrap().into_data().unwrap());
            }
            assert_eq!(all, b"abcdefgh", "{parts:?}");
        }
    }
}
