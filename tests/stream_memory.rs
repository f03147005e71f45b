//! Long answers stream through with flat memory: 200 MB through `/proxy`, and 1 GiB of
//! SSE through `/llm` with usage tracking on.
//!
//! Memory is the heap this process has allocated and not freed, counted by a wrapper
//! around the system allocator at every allocation. The process's RSS said more about the
//! allocator than about the proxy: once it grew by 124 MiB in CI (pages the allocator
//! kept, or other tests of the same binary running at once), and never here. These tests
//! have their own binary and run one at a time, so the count is theirs.

mod support;

use bytes::Bytes;
use http::Method;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::{PROXY_KEY, channel_body, request, send, start, upstream_raw};

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator, counting the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call goes to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            grew(new_size);
        }
        q
    }
}

#[global_allocator]
static HEAP: Counting = Counting;

/// One test at a time: each reads the peak of the whole process's heap.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts counting the peak afresh; the heap's size now.
fn peak_from_here() -> usize {
    let live = LIVE.load(Relaxed);
    PEAK.store(live, Relaxed);
    live
}

/// A body of `total` bytes in 64 KiB frames, generated as it is sent.
fn generated(total: usize) -> (tokio::task::JoinHandle<()>, api_key_rotator::body::Body) {
    let (tx, body) = support::channel_body();
    let task = tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            if tx.send(chunk.slice(..n)).await.is_err() {
                return;
            }
            sent += n;
        }
    });
    (task, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_download_streams_with_flat_memory() {
    let _alone = ONE_AT_A_TIME.lock().await;
    const TOTAL: usize = 200 << 20;
    let up = upstream_raw(|_req: Request<Incoming>| async {
        let (_task, body) = generated(TOTAL);
        Response::builder()
            .header("content-type", "application/octet-stream")
            .body(body)
            .unwrap()
    })
    .await;
    let s = start(&[]).await;
    s.generic_service("big", &up.url(""), &["k"]).await;
    let before = peak_from_here();
    let resp = support::send(support::request(
        Method::GET,
        &s.url("/proxy/big/file"),
        &[("x-proxy-key", PROXY_KEY)],
        api_key_rotator::body::empty(),
    ))
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len();
        }
    }
    assert_eq!(received, TOTAL);
    let growth = PEAK.load(Relaxed).saturating_sub(before);
    // What is in flight at once: a few frames and hyper's buffers.
    assert!(
        growth < 8 << 20,
        "memory grew by {} KiB while 200 MiB went through",
        growth >> 10
    );
}

#[tokio::test]
async fn a_gigabyte_stream_passes_whole_with_flat_memory() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // 16,384 events of 64 KiB (1 GiB), then the usage: the tap reads the last event and
    // holds nothing of the rest.
    const EVENTS: usize = 16_384;
    let text = "y".repeat(64 * 1024 - 64);
    let event = Bytes::from(format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}}}}],\"usage\":null}}\n\n"
    ));
    let last = Bytes::from_static(
        b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":16384}}\n\ndata: [DONE]\n\n",
    );
    let total = (event.len() * EVENTS + last.len()) as u64;
    let (ev, la) = (event.clone(), last.clone());
    let up = upstream_raw(move |_req| {
        let (ev, la) = (ev.clone(), la.clone());
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                for _ in 0..EVENTS {
                    if tx.send(ev.clone()).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(la).await;
            });
            http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        }
    })
    .await;
    let s = start(&[]).await;
    s.llm_service("big", "openai_compatible", &up.url(""), &["sk-upstream"])
        .await;
    let resp = send(request(
        Method::POST,
        &s.url("/llm/big/v1/chat/completions"),
        &[("authorization", "Bearer test-proxy-key")],
        api_key_rotator::body::full(r#"{"model":"m","stream":true}"#),
    ))
    .await;
    let mut body = resp.into_body();
    let (mut seen, mut at_start) = (0u64, None);
    let mut mismatch = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        let Some(data) = frame.data_ref() else {
            continue;
        };
        // Every byte is the upstream's: the events' bytes, then the last event's.
        let offset = seen as usize;
        let whole = event.len() * EVENTS;
        for (i, b) in data.iter().enumerate() {
            let at = offset + i;
            let want = if at < whole {
                event[at % event.len()]
            } else {
                last[at - whole]
            };
            if *b != want && mismatch.is_none() {
                mismatch = Some(at);
            }
        }
        seen += data.len() as u64;
        if at_start.is_none() && seen > 64 << 20 {
            at_start = Some(peak_from_here());
        }
    }
    let (at_start, peak) = (at_start.unwrap(), PEAK.load(Relaxed));
    assert_eq!(mismatch, None, "a byte differs");
    assert_eq!(seen, total);
    // What is in flight at once: a few frames and hyper's buffers (here 0.5 MiB).
    assert!(
        peak < at_start + (8 << 20),
        "memory grew with the stream: {} KiB after 64 MiB, {} KiB at most",
        at_start >> 10,
        peak >> 10
    );
    let (status, _, b) = s.admin(Method::GET, "/admin/usage?service=big", None).await;
    assert_eq!(status, 200, "{b}");
    let sum = |f: &str| {
        b.as_array()
            .unwrap()
            .iter()
            .map(|x| x[f].as_i64().unwrap())
            .sum::<i64>()
    };
    assert_eq!(
        [sum("requests"), sum("tokens_in"), sum("tokens_out")],
        [1, 3, 16_384]
    );
}
