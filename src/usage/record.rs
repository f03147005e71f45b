//! Recording a request: the [`Trace`] the proxy fills as the request goes, the
//! [`Recorder`] body that watches the answer to its end (bytes, time to first byte,
//! usage), and the per-shard [`Usage`] buffers the statistics flusher empties into the
//! store. Nothing here allocates per request on the way through, apart from the model's
//! name; the request log's text is made when it is flushed.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method};

use super::tap::{Tap, Tokens};
use super::{Counts, LogEntry, Outcome, Rollup};
use crate::body::{self, Body, End, Watch};
use crate::service::ApiFormat;

/// The most attempts a request makes (1 + the largest `max_retries`).
pub const MAX_ATTEMPTS: usize = crate::service::MAX_RETRIES_LIMIT as usize + 1;

/// What a proxied request was, filled as it goes: by the dispatcher (time, client, id),
/// the proxy handler (service, model) and the forwarder (attempts, key, latency).
pub struct Trace {
    pub start: Instant,
    /// Unix ms when the request came.
    pub at_ms: u64,
    pub request_id: HeaderValue,
    pub method: Method,
    /// The path without the query. Copied: a `Uri` or a header value of the request shares
    /// the connection's read buffer, and holding it until the flush kept hyper from
    /// reusing that buffer (a new one per request: a third of the throughput).
    pub path: Box<str>,
    pub client: IpAddr,
    /// Set once the request reached a service; only such requests are recorded. Its id
    /// and slug only: a trace waits up to half a minute in the request log, and holding
    /// the service kept every snapshot of its key pool made meanwhile (the soak test's
    /// admin writes made one every half second: tens of MB).
    pub service: Option<Traced>,
    /// The LLM dialect, for reading usage.
    pub format: Option<ApiFormat>,
    /// The model the request named (body or path).
    pub model: Option<String>,
    attempts: [(i64, u16); MAX_ATTEMPTS],
    attempt_count: usize,
    /// The key of the last attempt: its id and secret (for its mask, made at flush).
    pub key: Option<(i64, crate::keys::KeySecret)>,
    /// Time to the final answer's head.
    pub latency: Option<Duration>,
    pub bytes_in: u64,
    /// The proxy answered itself (an error of its own).
    pub proxy_error: bool,
    pub error: Option<String>,
    /// The client key the request came with (0: a global proxy key), and its counters,
    /// which the answer's tokens are added to (its `tpd`).
    pub client_key_id: i64,
    pub client_limits: Option<Arc<crate::clients::ClientRuntime>>,
}

impl Trace {
    pub fn new(
        start: Instant,
        at_ms: u64,
        request_id: HeaderValue,
        method: Method,
        path: &str,
        client: IpAddr,
    ) -> Trace {
        Trace {
            start,
            at_ms,
            request_id,
            method,
            path: path.into(),
            client,
            service: None,
            format: None,
            model: None,
            attempts: [(0, 0); MAX_ATTEMPTS],
            attempt_count: 0,
            key: None,
            latency: None,
            bytes_in: 0,
            proxy_error: false,
            error: None,
            client_key_id: 0,
            client_limits: None,
        }
    }

    /// Notes an attempt with key `key_id`; `status` 0 when it got no answer.
    pub fn attempt(&mut self, key_id: i64, secret: &crate::keys::KeySecret, status: u16) {
        if self.attempt_count < MAX_ATTEMPTS {
            self.attempts[self.attempt_count] = (key_id, status);
            self.attempt_count += 1;
        }
        if self.key.as_ref().is_none_or(|(id, _)| *id != key_id) {
            self.key = Some((key_id, secret.clone()));
        }
    }

    /// The attempts made, in order.
    pub fn attempts(&self) -> &[(i64, u16)] {
        &self.attempts[..self.attempt_count]
    }
}

/// The answer to a recorded request, watched to its end ([`body::watch_with`]): the
/// first byte's time and the usage through the tap. Records once, when the body ends,
/// fails or is dropped.
pub struct Recorder {
    trace: Trace,
    status: u16,
    tap: Option<Tap>,
    first_byte: Option<Instant>,
    usage: Arc<Usage>,
}

impl Recorder {
    /// Wraps the answer `body` (its head in `parts`: the status, the headers for the usage
    /// tap, and whether the proxy made it).
    pub fn attach(
        usage: Arc<Usage>,
        mut trace: Trace,
        parts: &http::response::Parts,
        body: Body,
    ) -> Body {
        if let Some(made) = parts.extensions.get::<crate::error::ProxyMade>() {
            trace.proxy_error = true;
            trace.error = Some(made.0.to_string());
        }
        let status = parts.status.as_u16();
        let tap = (!trace.proxy_error)
            .then_some(trace.format)
            .flatten()
            .map(|f| Tap::new(f, &parts.headers, trace.model.is_none()))
            .filter(Tap::is_on);
        let recorder = Recorder {
            trace,
            status,
            tap,
            first_byte: None,
            usage,
        };
        body::watch_with(body, recorder)
    }
}

impl Watch for Recorder {
    fn frame(&mut self, data: &Bytes) {
        if self.first_byte.is_none() && !data.is_empty() {
            self.first_byte = Some(Instant::now());
        }
        if let Some(tap) = self.tap.as_mut() {
            tap.frame(data);
        }
    }

    fn end(self, bytes_out: u64, ended: End) {
        let (tokens, answer_model) = match self.tap {
            Some(tap) => tap.finish(),
            None => (None, None),
        };
        if let (Some(rt), Some(t)) = (&self.trace.client_limits, tokens) {
            rt.add_tokens(crate::timefmt::now_ms(), t.input + t.output);
        }
        let ttfb = self.first_byte.map(|t| t.duration_since(self.trace.start));
        self.usage.record(Finished {
            status: self.status,
            ended,
            tokens,
            answer_model,
            ttfb,
            bytes_out,
            trace: self.trace,
        });
    }
}

/// The service a traced request reached.
pub struct Traced {
    pub id: i64,
    pub slug: Arc<str>,
}

/// A request whose answer ended.
struct Finished {
    status: u16,
    ended: End,
    tokens: Option<Tokens>,
    answer_model: Option<String>,
    ttfb: Option<Duration>,
    bytes_out: u64,
    trace: Trace,
}

/// A rollup's identity in a shard's buffer. The model is a number from the shard's
/// [`Models`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct RollupKey {
    hour: i64,
    service: i64,
    key: i64,
    client: i64,
    model: u32,
}

/// Rollups of one shard, each counted in place. A list of models per key cost an
/// allocation and a cache miss per request with a pool of 100,000 keys (a tenth of the
/// throughput).
#[derive(Default)]
struct Rollups {
    counts: HashMap<RollupKey, Counts, Ids>,
    models: Models,
}

impl Rollups {
    /// Empty, with room for `n` rollups (a large pool fills the same number again).
    fn with_capacity(n: usize) -> Rollups {
        Rollups {
            counts: HashMap::with_capacity_and_hasher(n, Ids::default()),
            models: Models::default(),
        }
    }

    fn add(&mut self, hour: i64, service: i64, key: i64, client: i64, model: &str, c: &Counts) {
        let model = self.models.id(model);
        let id = RollupKey {
            hour,
            service,
            key,
            client,
            model,
        };
        self.counts.entry(id).or_default().add(c);
    }
}

/// The model names a shard's rollups use, each given a number.
#[derive(Default)]
struct Models {
    names: Vec<Box<str>>,
    /// Names come from clients: looked up by hash, not by a walk through the list.
    ids: HashMap<Box<str>, u32>,
    /// The last one used (a shard mostly sees the same model again).
    last: u32,
}

impl Models {
    fn id(&mut self, name: &str) -> u32 {
        if self
            .names
            .get(self.last as usize)
            .is_some_and(|n| **n == *name)
        {
            return self.last;
        }
        self.last = match self.ids.get(name) {
            Some(id) => *id,
            None => {
                let id = self.names.len() as u32;
                self.names.push(name.into());
                self.ids.insert(name.into(), id);
                id
            }
        };
        self.last
    }
}

/// Tokens by service id, then model: `[in, out, cached]`.
type TokenTotals = HashMap<i64, Vec<(String, [u64; 3])>, Ids>;

/// Hashing for maps keyed by the proxy's own ids (never a client's bytes, so no flooding
/// to guard against): a multiply per id instead of SipHash, on every request.
type Ids = std::hash::BuildHasherDefault<IdHasher>;

#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|b| self.write_u64(u64::from(*b)));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// What one shard recorded, behind one lock (taken once per request).
#[derive(Default)]
struct Shard {
    rollups: Rollups,
    log: VecDeque<Finished>,
    /// Tokens since start, by service id, then model, for `/metrics`.
    tokens: TokenTotals,
}

/// What the shards recorded and the flusher has not written yet.
pub struct Usage {
    shards: Box<[Mutex<Shard>]>,
    /// The request log's length (`REQUEST_LOG_SIZE`); 0: no log.
    log_size: usize,
    /// Log entries a failed write gave back, written first next time.
    unwritten: Mutex<Vec<LogEntry>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The value kept for `name` in a short list, added (from default) if new.
fn named<'a, T: Default>(list: &'a mut Vec<(String, T)>, name: &str) -> &'a mut T {
    let i = match list.iter().position(|(n, _)| n == name) {
        Some(i) => i,
        None => {
            list.push((name.to_string(), T::default()));
            list.len() - 1
        }
    };
    &mut list[i].1
}

impl Usage {
    /// Buffers for `shards` shards and a request log of `log_size` entries.
    pub fn new(shards: usize, log_size: usize) -> Usage {
        Usage {
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
            log_size,
            unwritten: Mutex::default(),
        }
    }

    fn record(&self, f: Finished) {
        let Some(svc) = f.trace.service.as_ref() else {
            return;
        };
        let model = model_name(
            f.trace
                .model
                .as_deref()
                .or(f.answer_model.as_deref())
                .unwrap_or(""),
        );
        let outcome = match &f.ended {
            End::Failed(_) => Outcome::ProxyError,
            _ => Outcome::of(f.status, f.trace.proxy_error),
        };
        let mut counts = Counts {
            requests: 1,
            latency_ms_sum: f.trace.latency.map_or(0, |d| d.as_millis() as i64),
            ttfb_ms_sum: f.ttfb.map_or(0, |d| d.as_millis() as i64),
            ..Counts::default()
        };
        match outcome {
            Outcome::Success => counts.successes = 1,
            Outcome::ClientError => counts.failures_client = 1,
            Outcome::RateLimited => counts.failures_rate_limited = 1,
            Outcome::UpstreamError => counts.failures_upstream = 1,
            Outcome::ProxyError => counts.failures_proxy = 1,
        }
        if let Some(t) = f.tokens {
            counts.tokens_in = t.input as i64;
            counts.tokens_out = t.output as i64;
            counts.tokens_cached = t.cached as i64;
        } else if f.trace.format.is_some() && outcome == Outcome::Success {
            counts.usage_unknown = 1;
        }
        let hour = (f.trace.at_ms / 3_600_000 * 3600) as i64;
        let key_id = f.trace.key.as_ref().map_or(0, |(id, _)| *id);
        let mut shard = lock(&self.shards[crate::shard::current() % self.shards.len()]);
        let client = f.trace.client_key_id;
        shard
            .rollups
            .add(hour, svc.id, key_id, client, model, &counts);
        if let Some(t) = f.tokens {
            let models = shard.tokens.entry(svc.id).or_default();
            // Names come from clients: past a few hundred, the rest count together.
            let model = match models.len() < MAX_METRIC_MODELS {
                true => model,
                false => "(other)",
            };
            let sums = named(models, model);
            sums[0] += t.input;
            sums[1] += t.output;
            sums[2] += t.cached;
        }
        if self.log_size > 0 {
            if shard.log.len() >= self.log_size {
                shard.log.pop_front();
            }
            shard.log.push_back(f);
        }
    }

    /// How many request log entries wait to be written.
    pub fn log_pending(&self) -> usize {
        self.shards.iter().map(|s| lock(s).log.len()).sum()
    }

    /// Takes everything recorded: the rollups, and the request log's new entries, oldest
    /// first.
    pub fn take(&self) -> (Vec<Rollup>, Vec<LogEntry>) {
        self.take_pending(true).into_rows()
    }

    /// Takes the rollups and, `with_log`, the request log, as they are: only buffers are
    /// swapped, so the shard that flushes is not held up. [`Pending::into_rows`] does the
    /// rest, off the shards. Without `with_log` the log stays (bounded) for a later take.
    pub fn take_pending(&self, with_log: bool) -> Pending {
        let (mut rollups, mut log) = (Vec::new(), Vec::new());
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let room = shard.rollups.counts.len();
            rollups.push(std::mem::replace(
                &mut shard.rollups,
                Rollups::with_capacity(room),
            ));
            if with_log {
                log.push(std::mem::take(&mut shard.log));
            }
        }
        let unwritten = match with_log {
            true => std::mem::take(&mut *lock(&self.unwritten)),
            false => Vec::new(),
        };
        Pending {
            rollups,
            log,
            unwritten,
            log_size: self.log_size,
        }
    }

    /// Puts back what a failed write took (the log only as far as it has room).
    pub fn restore(&self, rollups: Vec<Rollup>, entries: Vec<LogEntry>) {
        let mut first = lock(&self.shards[0]);
        for r in rollups {
            let (hour, svc, key, client) = (r.hour, r.service_id, r.key_id, r.client_key_id);
            first
                .rollups
                .add(hour, svc, key, client, &r.model, &r.counts);
        }
        drop(first);
        let mut unwritten = lock(&self.unwritten);
        let keep = self.log_size.saturating_sub(unwritten.len());
        let skip = entries.len().saturating_sub(keep);
        unwritten.extend(entries.into_iter().skip(skip));
    }

    /// Tokens since start: `(service id, model, [in, out, cached])`.
    pub fn token_totals(&self) -> Vec<(i64, String, [u64; 3])> {
        let mut sums: HashMap<(i64, String), [u64; 3]> = HashMap::new();
        for shard in self.shards.iter() {
            for (id, models) in lock(shard).tokens.iter() {
                for (model, t) in models {
                    let s = sums.entry((*id, model.clone())).or_default();
                    for (a, b) in s.iter_mut().zip(t) {
                        *a += b;
                    }
                }
            }
        }
        let mut v: Vec<_> = sums.into_iter().map(|((id, m), t)| (id, m, t)).collect();
        v.sort();
        v
    }
}

/// What [`Usage::take_pending`] took, not yet made into rows.
pub struct Pending {
    rollups: Vec<Rollups>,
    log: Vec<VecDeque<Finished>>,
    unwritten: Vec<LogEntry>,
    log_size: usize,
}

impl Pending {
    /// The rollups, and the request log's entries, oldest first (only the newest
    /// `REQUEST_LOG_SIZE`: under load, writing every entry to be trimmed at once cost a
    /// third of the throughput).
    pub fn into_rows(self) -> (Vec<Rollup>, Vec<LogEntry>) {
        let mut rollups = Vec::with_capacity(self.rollups.iter().map(|r| r.counts.len()).sum());
        for shard in self.rollups {
            let names = shard.models.names;
            for (id, counts) in shard.counts {
                rollups.push(Rollup {
                    hour: id.hour,
                    service_id: id.service,
                    key_id: id.key,
                    model: names[id.model as usize].to_string(),
                    client_key_id: id.client,
                    counts,
                });
            }
        }
        // In the table's key order: a write of 100,000 rows then touches each page once
        // instead of jumping around (several times faster in SQLite).
        rollups.sort_unstable_by(|a, b| {
            (a.hour, a.service_id, a.key_id, &a.model, a.client_key_id).cmp(&(
                b.hour,
                b.service_id,
                b.key_id,
                &b.model,
                b.client_key_id,
            ))
        });
        let mut entries = self.unwritten;
        let mut fresh: Vec<Finished> = self.log.into_iter().flatten().collect();
        // In the order the requests came (the monotonic clock: finer than the wall's ms).
        fresh.sort_by_key(|f| f.trace.start);
        let skip = fresh.len().saturating_sub(self.log_size);
        entries.extend(fresh.into_iter().skip(skip).map(entry));
        let skip = entries.len().saturating_sub(self.log_size);
        entries.drain(..skip);
        (rollups, entries)
    }
}

/// Models per service counted apart in `/metrics`.
const MAX_METRIC_MODELS: usize = 256;
/// Longest model name kept (longer ones are cut at a character boundary).
const MAX_MODEL_LEN: usize = 128;

/// A model name as recorded: at most [`MAX_MODEL_LEN`] bytes.
fn model_name(name: &str) -> &str {
    if name.len() <= MAX_MODEL_LEN {
        return name;
    }
    let mut end = MAX_MODEL_LEN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The request log's entry of a finished request (its text is made here, at flush).
fn entry(f: Finished) -> LogEntry {
    let t = f.trace;
    let svc = t.service.as_ref();
    let error = match (f.ended, t.error.clone()) {
        (End::Failed(cause), _) => Some(format!("answer cut: {cause}")),
        (_, Some(e)) => Some(e),
        (End::ClientGone, None) => Some("the client went away".to_string()),
        (End::Complete, None) => None,
    };
    LogEntry {
        id: 0,
        at: t.at_ms as i64,
        request_id: String::from_utf8_lossy(t.request_id.as_bytes()).into_owned(),
        service_id: svc.map_or(0, |s| s.id),
        service: svc.map_or(String::new(), |s| s.slug.to_string()),
        method: t.method.to_string(),
        path: t.path.to_string(),
        status: f.status,
        attempts: t.attempts().to_vec(),
        key_id: t.key.as_ref().map_or(0, |(id, _)| *id),
        key_mask: t
            .key
            .as_ref()
            .map_or(String::new(), |(_, s)| crate::keys::mask(s)),
        model: t
            .model
            .clone()
            .or(f.answer_model)
            .map(|m| model_name(&m).to_string()),
        tokens_in: f.tokens.map(|x| x.input as i64),
        tokens_out: f.tokens.map(|x| x.output as i64),
        tokens_cached: f.tokens.map(|x| x.cached as i64),
        latency_ms: t.latency.map(|d| d.as_millis() as i64),
        ttfb_ms: f.ttfb.map(|d| d.as_millis() as i64),
        bytes_in: t.bytes_in as i64,
        bytes_out: f.bytes_out as i64,
        client_ip: t.client.to_string(),
        error,
        client_key_id: t.client_key_id,
    }
}
