//! The one body type every response uses, its constructors, and bounded body reading.

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::body::{Body as _, Frame, Incoming};
use std::future::Future as _;
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

/// How a response body ended, for the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Sent whole.
    Complete,
    /// Dropped before its end: the client went away.
    ClientGone,
    /// Failed mid-way (the upstream broke off or stalled): the cause.
    Failed(String),
}

/// What watches a body through [`watch_with`]: each data frame as it passes, then its
/// end, once.
pub trait Watch: Send + Unpin + 'static {
    /// A data frame on its way to the client.
    fn frame(&mut self, _data: &Bytes) {}
    /// The body ended (whole, failed, or dropped before its end) after `bytes` bytes.
    fn end(self, bytes: u64, end: End);
}

/// A [`Watch`] that only waits for the end.
struct OnEnd<F>(F);

impl<F: FnOnce(u64, End) + Send + Unpin + 'static> Watch for OnEnd<F> {
    fn end(self, bytes: u64, end: End) {
        (self.0)(bytes, end)
    }
}

/// Wraps `inner` so that `done(bytes, end)` runs once: when the body ends, fails, or is
/// dropped before its end.
pub fn watch<F>(inner: Body, done: F) -> Body
where
    F: FnOnce(u64, End) + Send + Unpin + 'static,
{
    watch_with(inner, OnEnd(done))
}

/// Wraps `inner` so that `watcher` sees each data frame and, once, the end.
pub fn watch_with<W: Watch>(inner: Body, watcher: W) -> Body {
    Watched {
        inner,
        bytes: 0,
        watcher: Some(watcher),
    }
    .boxed_unsync()
}

struct Watched<W: Watch> {
    inner: Body,
    bytes: u64,
    watcher: Option<W>,
}

impl<W: Watch> Watched<W> {
    fn end(&mut self, end: End) {
        if let Some(w) = self.watcher.take() {
            w.end(self.bytes, end);
        }
    }
}

impl<W: Watch> hyper::body::Body for Watched<W> {
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
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                    if let Some(w) = this.watcher.as_mut() {
                        w.frame(data);
                    }
                }
            }
            Poll::Ready(None) => this.end(End::Complete),
            Poll::Ready(Some(Err(e))) => this.end(End::Failed(e.to_string())),
            Poll::Pending => {}
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

impl<W: Watch> Drop for Watched<W> {
    fn drop(&mut self) {
        let end = match self.inner.is_end_stream() {
            true => End::Complete,
            false => End::ClientGone,
        };
        self.end(end);
    }
}

/// A body that fails at once with `error`: the end of a body that was cut, so the client
/// sees a broken answer, never a complete-looking short one.
pub fn failed(error: impl Into<BoxError>) -> Body {
    Failing(Some(error.into())).boxed_unsync()
}

struct Failing(Option<BoxError>);

impl hyper::body::Body for Failing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.take().map(Err))
    }
}

/// The first bytes of a body, and how it goes on.
pub struct Prefix {
    pub bytes: Bytes,
    pub rest: Tail,
}

/// What follows a [`Prefix`].
pub enum Tail {
    /// Nothing: the prefix is the whole body.
    End,
    /// The rest, unread.
    More(Body),
    /// The body failed or stalled after the prefix.
    Failed(BoxError),
}

impl Prefix {
    /// The whole body again: the prefix, then the rest (or the failure).
    pub fn into_body(self) -> Body {
        match self.rest {
            Tail::End => full(self.bytes),
            Tail::More(rest) => chain(self.bytes, rest),
            Tail::Failed(e) => chain(self.bytes, failed(e)),
        }
    }
}

/// Reads at most `limit` bytes of `body` before `deadline`, keeping whatever was read
/// when it fails or stalls.
pub async fn read_prefix(mut body: Body, limit: usize, deadline: tokio::time::Instant) -> Prefix {
    let mut buf = BytesMut::new();
    let mut first = Bytes::new();
    loop {
        if body.is_end_stream() {
            return prefix(first, buf, Tail::End);
        }
        let next = crate::deadline::timeout_at(deadline, body.frame()).await;
        let frame = match next {
            Err(_) => {
                let stalled = "the upstream's answer stalled (PROXY_TIMEOUT)";
                return prefix(first, buf, Tail::Failed(stalled.into()));
            }
            Ok(None) => return prefix(first, buf, Tail::End),
            Ok(Some(Err(e))) => return prefix(first, buf, Tail::Failed(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if first.is_empty() && buf.is_empty() {
            first = data;
        } else {
            if buf.is_empty() {
                buf.extend_from_slice(&first);
            }
            buf.extend_from_slice(&data);
        }
        if first.len().max(buf.len()) > limit {
            return prefix(first, buf, Tail::More(body));
        }
    }
}

fn prefix(first: Bytes, buf: BytesMut, rest: Tail) -> Prefix {
    let bytes = if buf.is_empty() { first } else { buf.freeze() };
    Prefix { bytes, rest }
}

/// Fails `inner` when no frame comes for `idle` (checked lazily: a timer is set when the
/// body first waits, and re-armed only when it fires after progress, so the cut comes
/// between `idle` and twice `idle` after the last frame, and a body that never waits
/// costs no timer at all).
pub fn idle_timeout(inner: Body, idle: std::time::Duration) -> Body {
    Idle {
        inner,
        idle,
        timer: None,
        progressed: false,
    }
    .boxed_unsync()
}

struct Idle {
    inner: Body,
    idle: std::time::Duration,
    timer: Option<crate::deadline::Sleep>,
    progressed: bool,
}

impl hyper::body::Body for Idle {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.progressed = true;
            return Poll::Ready(frame);
        }
        loop {
            let idle = this.idle;
            let timer = this.timer.get_or_insert_with(|| {
                crate::deadline::sleep_until(std::time::Instant::now() + idle)
            });
            if Pin::new(timer).poll(cx).is_pending() {
                return Poll::Pending;
            }
            if !std::mem::take(&mut this.progressed) {
                this.timer = None;
                let secs = idle.as_secs_f64();
                return Poll::Ready(Some(Err(format!(
                    "the upstream sent nothing for {secs} s (idle timeout)"
                )
                .into())));
            }
            this.timer = None;
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A body written by another task, chunk by chunk, through a bounded channel (the writer
/// waits while the client is slow, so memory stays bounded). An `Err` cuts the body short.
pub fn channel(capacity: usize) -> (tokio::sync::mpsc::Sender<Result<Bytes, BoxError>>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    (tx, ChannelBody(rx).boxed_unsync())
}

struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Bytes, BoxError>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
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
