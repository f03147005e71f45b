//! The upstream every target talks to: a tiny hyper HTTP/1.1 server that must never be
//! the bottleneck.
//!
//! * any request without `X-Api-Key` or `Authorization` → 401 (so a proxy that forgot to
//!   inject the key shows up as non-2xx answers in wrk);
//! * a POST whose body says `"stream":true`, or a path ending in `/sse` → an SSE stream of
//!   `n` events (query `n`, default 50) `gap_ms` apart (default 20), the first one at
//!   once; each event carries its send time (`"t"`, Unix µs) so the client can tell how
//!   long the event took to arrive;
//! * `POST …/chat/completions` → a small chat completion;
//! * anything else → a tiny JSON object.

use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};

const STREAM: &[u8] = b"\"stream\":true";
const TINY: &[u8] = br#"{"ok":true,"id":42,"name":"bench","tags":["a","b"]}"#;
const COMPLETION: &[u8] = br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}"#;

/// Runs the upstream on 127.0.0.1:`port` with `threads` worker threads (never returns).
pub fn main(port: u16, threads: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("upstream runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("upstream: cannot listen on port {port}: {e}"));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    });
}

async fn handle(req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    let keyed =
        req.headers().contains_key("x-api-key") || req.headers().contains_key("authorization");
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if !keyed {
        let mut resp = Response::new(UpBody::Full(Some(Bytes::from_static(
            br#"{"error":"no key"}"#,
        ))));
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(resp);
    }
    let path = parts.uri.path();
    let streaming = path.ends_with("/sse") || body.windows(STREAM.len()).any(|w| w == STREAM);
    if streaming {
        let (mut n, mut gap_ms) = (50u32, 20u64);
        for pair in parts.uri.query().unwrap_or("").split('&') {
            match pair.split_once('=') {
                Some(("n", v)) => n = v.parse().unwrap_or(n),
                Some(("gap_ms", v)) => gap_ms = v.parse().unwrap_or(gap_ms),
                _ => {}
            }
        }
        let start = Instant::now();
        let body = UpBody::Sse {
            n,
            k: 0,
            gap: Duration::from_millis(gap_ms),
            start,
            sleep: Box::pin(tokio::time::sleep_until(start)),
        };
        let resp = Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .header("x-accel-buffering", "no")
            .body(body)
            .expect("sse response");
        return Ok(resp);
    }
    let json = if path.ends_with("/chat/completions") {
        COMPLETION
    } else {
        TINY
    };
    let resp = Response::builder()
        .header("content-type", "application/json")
        .body(UpBody::Full(Some(Bytes::from_static(json))))
        .expect("json response");
    Ok(resp)
}

/// A whole body, or an event stream paced by the tokio timer.
pub enum UpBody {
    Full(Option<Bytes>),
    Sse {
        n: u32,
        k: u32,
        gap: Duration,
        start: Instant,
        sleep: Pin<Box<Sleep>>,
    },
}

/// Wall-clock microseconds (comparable across processes on one machine).
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl hyper::body::Body for UpBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            UpBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpBody::Sse {
                n,
                k,
                gap,
                start,
                sleep,
            } => {
                if *k > *n {
                    return Poll::Ready(None);
                }
                // The first event goes at once: an elapsed tokio sleep still waits for
                // the timer's next 1 ms tick.
                if *k > 0 && sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // The last chunk carries the usage, as OpenAI's do with `include_usage`.
                let event = if *k == *n {
                    "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":20,\"total_tokens\":29}}\n\ndata: [DONE]\n\n".to_string()
                } else {
                    format!(
                        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"i\":{},\"t\":{},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok\"}}}}]}}\n\n",
                        k,
                        unix_us()
                    )
                };
                *k += 1;
                if *k < *n {
                    sleep.as_mut().reset(*start + *gap * *k);
                }
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, UpBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            UpBody::Full(None) => SizeHint::with_exact(0),
            UpBody::Sse { .. } => SizeHint::default(),
        }
    }
}
