//! Server-sent events: time to first event, per-event delivery delay, gaps, and many
//! streams held open at once (for memory).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::task::JoinSet;

use crate::client::{Conn, Error, ReqSpec};
use crate::stats::Dist;
use crate::upstream::unix_us;

/// What one stream showed.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    /// Request sent → first event received, µs.
    pub ttfb_us: u64,
    /// For each event: received (wall clock) − sent by the upstream (wall clock), µs.
    pub delays_us: Vec<u64>,
    /// Between consecutive events as received, µs.
    pub gaps_us: Vec<u64>,
    pub events: usize,
}

/// Summary of many streams to one target.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SseSummary {
    pub streams: usize,
    pub failed: usize,
    pub events: usize,
    pub ttfb_us: Dist,
    pub delay_us: Dist,
    pub gap_us: Dist,
}

/// Reads one stream to its end.
pub async fn one(addr: SocketAddr, spec: &ReqSpec) -> Result<Stream, Error> {
    let mut conn = Conn::open(addr).await?;
    let sent = Instant::now();
    let resp = conn.send(spec).await?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()).into());
    }
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut s = Stream::default();
    let mut last: Option<Instant> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let now = Instant::now();
        let now_unix = unix_us();
        buf.extend_from_slice(&data);
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..pos + 2).collect();
            let Some(t) = sent_at(&event) else {
                continue;
            };
            if s.events == 0 {
                s.ttfb_us = now.duration_since(sent).as_micros() as u64;
            }
            s.delays_us.push(now_unix.saturating_sub(t));
            if let Some(l) = last {
                s.gaps_us.push(now.duration_since(l).as_micros() as u64);
            }
            last = Some(now);
            s.events += 1;
        }
    }
    Ok(s)
}

/// The `"t":<µs>` of an event.
fn sent_at(event: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(event).ok()?;
    let at = text.find("\"t\":")? + 4;
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// `streams` concurrent streams to one target, summarised.
pub fn measure(addr: SocketAddr, spec: &ReqSpec, streams: usize) -> SseSummary {
    let rt = crate::targets::rt();
    rt.block_on(async {
        let mut set = JoinSet::new();
        for _ in 0..streams {
            let spec = spec.clone();
            set.spawn(async move { one(addr, &spec).await });
        }
        let mut ok = Vec::new();
        let mut failed = 0;
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(s)) => ok.push(s),
                _ => failed += 1,
            }
        }
        summarize(&ok, failed)
    })
}

pub fn summarize(streams: &[Stream], failed: usize) -> SseSummary {
    SseSummary {
        streams: streams.len(),
        failed,
        events: streams.iter().map(|s| s.events).sum(),
        ttfb_us: Dist::of(streams.iter().map(|s| s.ttfb_us).collect()),
        delay_us: Dist::of(streams.iter().flat_map(|s| s.delays_us.clone()).collect()),
        gap_us: Dist::of(streams.iter().flat_map(|s| s.gaps_us.clone()).collect()),
    }
}

/// What holding many streams open showed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Held {
    pub opened: usize,
    pub failed: usize,
    pub seconds_to_open: f64,
}

/// Opens `n` long streams and keeps them open (each until its first event arrived)
/// while `during` runs, then drops them all.
pub fn hold<T>(
    addr: SocketAddr,
    spec: &ReqSpec,
    n: usize,
    during: impl FnOnce() -> T,
) -> (Held, T) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let mut set = JoinSet::new();
    let spec2 = spec.clone();
    rt.block_on(async {
        for i in 0..n {
            let spec = spec2.clone();
            let tx = tx.clone();
            set.spawn(async move {
                let opened: Result<_, Error> = async {
                    let mut conn = Conn::open(addr).await?;
                    let resp = conn.send(&spec).await?;
                    let mut body = resp.into_body();
                    // Wait for the first event, then keep reading until dropped.
                    let first = body.frame().await.ok_or("ended")??;
                    drop(first);
                    Ok((conn, body))
                }
                .await;
                match opened {
                    Ok((_conn, mut body)) => {
                        let _ = tx.send(true);
                        while let Some(Ok(_)) = body.frame().await {}
                    }
                    Err(_) => {
                        let _ = tx.send(false);
                    }
                }
            });
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let mut held = Held::default();
    rt.block_on(async {
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        while held.opened + held.failed < n {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(true)) => held.opened += 1,
                Ok(Some(false)) => held.failed += 1,
                _ => break,
            }
        }
    });
    held.seconds_to_open = start.elapsed().as_secs_f64();
    // The streams keep flowing on the runtime's worker thread meanwhile.
    let out = during();
    rt.block_on(async {
        set.abort_all();
        while set.join_next().await.is_some() {}
    });
    drop(rt);
    (held, out)
}
