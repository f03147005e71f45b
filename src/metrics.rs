//! Prometheus metrics, counted with atomics on the hot path and rendered on scrape.
//!
//! Labels are service slugs, status classes and key states: never a key, never a URL.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::keys::KeyState;

/// Upper bounds (seconds) of the upstream latency histogram.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Counters of one service.
#[derive(Debug, Default)]
pub struct ServiceMetrics {
    /// Answers to clients by class: 1xx…5xx.
    by_class: [AtomicU64; 5],
    retries: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
}

impl ServiceMetrics {
    /// Counts an answer sent to a client.
    pub fn response(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Relaxed);
    }

    /// Counts one extra attempt with another key.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    /// Records the time until upstream response headers.
    pub fn upstream_latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_sum_us.fetch_add(d.as_micros() as u64, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }
}

/// All metrics of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    services: Mutex<HashMap<Box<str>, Arc<ServiceMetrics>>>,
    /// Proxied responses whose body is still streaming.
    pub open_streams: Arc<AtomicI64>,
    /// Client connections open on each shard.
    pub connections: OpenConnections,
}

impl Metrics {
    /// The counters of a service (by slug), created on first use.
    pub fn service(&self, slug: &str) -> Arc<ServiceMetrics> {
        let mut map = self.services.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = map.get(slug) {
            return m.clone();
        }
        map.entry(slug.into()).or_default().clone()
    }

    /// Appends the token counters: `(service, model, [in, out, cached])` since start.
    pub fn render_tokens(out: &mut String, totals: &[(String, String, [u64; 3])]) {
        out.push_str("# HELP rotator_tokens_total LLM tokens read from answers, by service, model and kind (in, out, cached).\n");
        out.push_str("# TYPE rotator_tokens_total counter\n");
        for (service, model, counts) in totals {
            for (kind, n) in ["in", "out", "cached"].iter().zip(counts) {
                let _ = writeln!(
                    out,
                    "rotator_tokens_total{{service=\"{}\",model=\"{}\",kind=\"{kind}\"}} {n}",
                    esc(service),
                    esc(model)
                );
            }
        }
    }

    /// Renders the Prometheus text format, with the enabled keys of each active service
    /// counted by state.
    pub fn render<'a>(
        &self,
        key_states: impl Iterator<Item = (&'a str, [(KeyState, usize); 3])>,
    ) -> String {
        let mut out = String::with_capacity(4096);
        let services: Vec<(Box<str>, Arc<ServiceMetrics>)> = {
            let map = self.services.lock().unwrap_or_else(|p| p.into_inner());
            let mut v: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        out.push_str("# HELP rotator_requests_total Proxied requests answered, by service and status class.\n");
        out.push_str("# TYPE rotator_requests_total counter\n");
        for (slug, m) in &services {
            for (i, c) in m.by_class.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "rotator_requests_total{{service=\"{}\",class=\"{}xx\"}} {}",
                    esc(slug),
                    i + 1,
                    c.load(Relaxed)
                );
            }
        }
        out.push_str(
            "# HELP rotator_retries_total Extra upstream attempts made with another key.\n",
        );
        out.push_str("# TYPE rotator_retries_total counter\n");
        for (slug, m) in &services {
            let _ = writeln!(
                out,
                "rotator_retries_total{{service=\"{}\"}} {}",
                esc(slug),
                m.retries.load(Relaxed)
            );
        }
        out.push_str("# HELP rotator_upstream_latency_seconds Time from sending a request upstream to its response headers.\n");
        out.push_str("# TYPE rotator_upstream_latency_seconds histogram\n");
        for (slug, m) in &services {
            let mut cumulative = 0;
            for (b, c) in BUCKETS.iter().zip(&m.latency_buckets) {
                cumulative += c.load(Relaxed);
                let _ = writeln!(
                    out,
                    "rotator_upstream_latency_seconds_bucket{{service=\"{}\",le=\"{b}\"}} {cumulative}",
                    esc(slug)
                );
            }
            let count = m.latency_count.load(Relaxed);
            let _ = writeln!(
                out,
                "rotator_upstream_latency_seconds_bucket{{service=\"{}\",le=\"+Inf\"}} {count}",
                esc(slug)
            );
            let _ = writeln!(
                out,
                "rotator_upstream_latency_seconds_sum{{service=\"{}\"}} {}",
                esc(slug),
                m.latency_sum_us.load(Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "rotator_upstream_latency_seconds_count{{service=\"{}\"}} {count}",
                esc(slug)
            );
        }
        out.push_str("# HELP rotator_keys Enabled keys of active services, by state.\n");
        out.push_str("# TYPE rotator_keys gauge\n");
        for (slug, states) in key_states {
            for (state, n) in states {
                let _ = writeln!(
                    out,
                    "rotator_keys{{service=\"{}\",state=\"{}\"}} {n}",
                    esc(slug),
                    state.as_str()
                );
            }
        }
        out.push_str("# HELP rotator_open_streams Proxied response bodies still streaming.\n");
        out.push_str("# TYPE rotator_open_streams gauge\n");
        let _ = writeln!(
            out,
            "rotator_open_streams {}",
            self.open_streams.load(Relaxed)
        );
        out.push_str(
            "# HELP rotator_open_connections Client connections open, by shard (thread).\n",
        );
        out.push_str("# TYPE rotator_open_connections gauge\n");
        for (shard, n) in self.connections.per_shard() {
            let _ = writeln!(out, "rotator_open_connections{{shard=\"{shard}\"}} {n}");
        }
        out
    }
}

/// Client connections open on each shard, which the shards use to balance new ones.
/// Rendered by `/metrics` as `rotator_open_connections{shard="…"}`.
#[derive(Debug, Default)]
pub struct OpenConnections(Mutex<Vec<usize>>);

/// Marks a shard that could not start: never chosen.
const GONE: usize = usize::MAX / 2;

impl OpenConnections {
    fn counts(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts counting for `shards` shards, none open.
    pub fn start(&self, shards: usize) {
        *self.counts() = vec![0; shards];
    }

    /// Marks a shard that could not start: never chosen.
    pub fn gone(&self, shard: usize) {
        self.counts()[shard] = GONE;
    }

    /// Open connections per shard (a shard that could not start is left out).
    pub fn per_shard(&self) -> Vec<(usize, usize)> {
        let counts = self.counts();
        let live = counts.iter().enumerate().filter(|(_, n)| **n < GONE);
        live.map(|(i, n)| (i, *n)).collect()
    }

    /// The shard that should serve a connection `me` accepted: the one with the fewest
    /// open connections, `me` on a tie. Counted as open there. `None` when `cap`
    /// connections are open already.
    pub fn assign(&self, me: usize, cap: usize) -> Option<usize> {
        let mut counts = self.counts();
        let open: usize = counts.iter().filter(|n| **n < GONE).sum();
        if open >= cap {
            return None;
        }
        let mut best = me;
        for (i, n) in counts.iter().enumerate() {
            if *n < counts[best] {
                best = i;
            }
        }
        counts[best] += 1;
        Some(best)
    }

    /// A connection of `shard` closed.
    pub fn closed(&self, shard: usize) {
        let mut counts = self.counts();
        counts[shard] = counts[shard].saturating_sub(1);
    }
}

/// Escapes a label value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
