//! Recording a request: the [`Trace`] the proxy fills as the request goes, the
//! [`Recorder`] body that watches the answer to its end (bytes, time to first byte,
//! usage), and the per-shard [`Usage`] buffers the statistics flusher empties into the
//! store. Nothing here allocates for the usual request (short path, model and id, one
//! attempt); the request log's text is made when it is flushed.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method};

use super::inline::InlineStr;
use super::rollups::{Ids, Rollups};
use super::tap::{Tap, Tokens};
use super::{Counts, LogEntry, Outcome, Rollup};
use crate::body::{self, Body, End, Watch};
use crate::service::ApiFormat;

/// The most attempts a request makes (1 + the largest `max_retries`).
pub const MAX_ATTEMPTS: usize = crate::service::MAX_RETRIES_LIMIT as usize + 1;

/// A path or a model name, inline when short (the usual ones are).
pub type Text = InlineStr<46>;
/// A request id's text (ours are 20 characters).
type IdText = InlineStr<30>;
/// A masked key (`sk-****wxyz`).
type Mask = InlineStr<14>;

/// What a proxied request was, filled as it goes: by the dispatcher (time, client, id),
/// the proxy handler (service, model) and the forwarder (attempts, key, latency). Holds
/// nothing shared with other requests and, for the usual request, nothing on the heap
/// but its request id's header value (the log keeps the id's text): every request makes
/// one.
pub struct Trace {
    pub start: Instant,
    /// Unix ms when the request came.
    pub at_ms: u64,
    /// For the headers (upstream and answer); the log keeps its text.
    pub request_id: HeaderValue,
    id_text: IdText,
    pub method: Method,
    /// The path without the query. Copied: a `Uri` or a header value of the request shares
    /// the connection's read buffer, and holding it until the flush kept hyper from
    /// reusing that buffer (a new one per request: a third of the throughput).
    pub path: Text,
    pub client: IpAddr,
    /// The id of the service the request reached; only such requests are recorded. Not
    /// the service: a trace waits up to half a minute in the request log, and holding the
    /// service kept every snapshot of its key pool made meanwhile (the soak test's admin
    /// writes made one every half second: tens of MB). Its slug is found at flush
    /// ([`Usage::name_services`]).
    pub service: Option<i64>,
    /// The LLM dialect, for reading usage.
    pub format: Option<ApiFormat>,
    /// The model the request named (body or path).
    pub model: Option<Text>,
    attempts: Attempts,
    /// The key of the last attempt: its id and its mask (not the key: sharing its buffer
    /// with every request made both threads write to one counter).
    key: Option<(i64, Mask)>,
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
            id_text: IdText::from(request_id.to_str().unwrap_or("")),
            request_id,
            method,
            path: path.into(),
            client,
            service: None,
            format: None,
            model: None,
            attempts: Attempts::None,
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
        self.attempts.push((key_id, status));
        if self.key.as_ref().is_none_or(|(id, _)| *id != key_id) {
            let (head, tail) = crate::keys::mask_parts(secret);
            self.key = Some((key_id, Mask::concat(&[head, "****", tail])));
        }
    }

    /// The attempts made, in order.
    pub fn attempts(&self) -> &[(i64, u16)] {
        self.attempts.as_slice()
    }
}

/// The attempts of a request: (key id, status, 0 when it got no answer). One without an
/// allocation; a retried request's in a list.
#[derive(Clone, Default)]
enum Attempts {
    #[default]
    None,
    One((i64, u16)),
    Many(Vec<(i64, u16)>),
}

impl Attempts {
    fn push(&mut self, a: (i64, u16)) {
        *self = match std::mem::take(self) {
            Attempts::None => Attempts::One(a),
            Attempts::One(first) => Attempts::Many(vec![first, a]),
            Attempts::Many(mut all) => {
                if all.len() < MAX_ATTEMPTS {
                    all.push(a);
                }
                Attempts::Many(all)
            }
        }
    }

    fn as_slice(&self) -> &[(i64, u16)] {
        match self {
            Attempts::None => &[],
            Attempts::One(a) => std::slice::from_ref(a),
            Attempts::Many(all) => all,
        }
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
        let answer = Answer {
            status: self.status,
            ended,
            tokens,
            answer_model,
            ttfb,
            bytes_out,
        };
        self.usage.record(&self.trace, answer);
    }
}

/// How the answer to a traced request went.
struct Answer {
    status: u16,
    ended: End,
    tokens: Option<Tokens>,
    answer_model: Option<String>,
    ttfb: Option<Duration>,
    bytes_out: u64,
}

/// What the request log keeps of a request until it is written: fixed in size and, for
/// the usual request, nothing on the heap (its text is made at flush). At tens of
/// thousands of requests a second nearly every one is made and dropped unwritten; as a
/// trace with its allocations, that cost a tenth of the throughput.
struct Slot {
    start: Instant,
    at_ms: u64,
    request_id: IdText,
    service_id: i64,
    method: Method,
    path: Text,
    status: u16,
    attempts: Attempts,
    key: Option<(i64, Mask)>,
    model: Option<Text>,
    tokens: Option<Tokens>,
    latency: Option<Duration>,
    ttfb: Option<Duration>,
    bytes_in: u64,
    bytes_out: u64,
    client: IpAddr,
    error: Option<Box<str>>,
    client_key_id: i64,
}

/// Tokens by service id, then model: `[in, out, cached]`.
type TokenTotals = HashMap<i64, Vec<(String, [u64; 3])>, Ids>;

/// What one shard recorded, behind one lock (taken once per request).
#[derive(Default)]
struct Shard {
    rollups: Rollups,
    log: VecDeque<Slot>,
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
    /// Every service's slug by id, for the log's entries (a deleted service's stays).
    slugs: Mutex<HashMap<i64, Arc<str>>>,
    /// Held by a flush from taking what is pending to its write's end
    /// ([`Usage::begin_flush`]).
    flushing: tokio::sync::Mutex<()>,
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
            slugs: Mutex::default(),
            flushing: tokio::sync::Mutex::const_new(()),
        }
    }

    /// Learns the services' slugs (the state calls this before it serves a new snapshot,
    /// so every recorded service is known by the time its entries are written).
    pub fn name_services<'a>(&self, services: impl Iterator<Item = (i64, &'a str)>) {
        let mut slugs = lock(&self.slugs);
        for (id, slug) in services {
            if slugs.get(&id).is_none_or(|s| **s != *slug) {
                slugs.insert(id, slug.into());
            }
        }
    }

    fn record(&self, t: &Trace, a: Answer) {
        let Some(service_id) = t.service else {
            return;
        };
        let model = model_name(
            t.model
                .as_deref()
                .or(a.answer_model.as_deref())
                .unwrap_or(""),
        );
        let outcome = match &a.ended {
            End::Failed(_) => Outcome::ProxyError,
            _ => Outcome::of(a.status, t.proxy_error),
        };
        let mut counts = Counts {
            requests: 1,
            latency_ms_sum: t.latency.map_or(0, |d| d.as_millis() as i64),
            ttfb_ms_sum: a.ttfb.map_or(0, |d| d.as_millis() as i64),
            ..Counts::default()
        };
        match outcome {
            Outcome::Success => counts.successes = 1,
            Outcome::ClientError => counts.failures_client = 1,
            Outcome::RateLimited => counts.failures_rate_limited = 1,
            Outcome::UpstreamError => counts.failures_upstream = 1,
            Outcome::ProxyError => counts.failures_proxy = 1,
        }
        if let Some(tokens) = a.tokens {
            counts.tokens_in = tokens.input as i64;
            counts.tokens_out = tokens.output as i64;
            counts.tokens_cached = tokens.cached as i64;
        } else if t.format.is_some() && outcome == Outcome::Success {
            counts.usage_unknown = 1;
        }
        let hour = (t.at_ms / 3_600_000 * 3600) as i64;
        let key_id = t.key.as_ref().map_or(0, |(id, _)| *id);
        let tokens = a.tokens;
        let slot = (self.log_size > 0).then(|| Slot::of(t, service_id, model, &a));
        let mut shard = lock(&self.shards[crate::shard::current() % self.shards.len()]);
        let client = t.client_key_id;
        shard
            .rollups
            .add(hour, service_id, key_id, client, model, &counts);
        if let Some(t) = tokens {
            let models = shard.tokens.entry(service_id).or_default();
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
        if let Some(slot) = slot {
            if shard.log.len() >= self.log_size {
                shard.log.pop_front();
            }
            shard.log.push_back(slot);
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

    /// Starts a flush: waits for the one in progress to end, then takes what is pending
    /// ([`Usage::take_pending`]). Keep the guard until the rows are written or put back. A
    /// reader flushes before it reads the store; without the guard, a periodic flush that
    /// had taken the rows and not yet written them left that reader nothing to flush, and
    /// it read the store without them.
    pub async fn begin_flush(&self, with_log: bool) -> (Pending, tokio::sync::MutexGuard<'_, ()>) {
        let one_at_a_time = self.flushing.lock().await;
        (self.take_pending(with_log), one_at_a_time)
    }

    /// Takes the rollups and, `with_log`, the request log, as they are: only buffers are
    /// swapped, so the shard that flushes is not held up. [`Pending::into_rows`] does the
    /// rest, off the shards. Without `with_log` the log stays (bounded) for a later take.
    fn take_pending(&self, with_log: bool) -> Pending {
        let (mut rollups, mut log) = (Vec::new(), Vec::new());
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let fresh = shard.rollups.like();
            rollups.push(std::mem::replace(&mut shard.rollups, fresh));
            if with_log {
                log.push(std::mem::take(&mut shard.log));
            }
        }
        let (unwritten, slugs) = match with_log {
            true => (
                std::mem::take(&mut *lock(&self.unwritten)),
                lock(&self.slugs).clone(),
            ),
            false => (Vec::new(), HashMap::new()),
        };
        Pending {
            rollups,
            log,
            unwritten,
            log_size: self.log_size,
            slugs,
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
    log: Vec<VecDeque<Slot>>,
    unwritten: Vec<LogEntry>,
    log_size: usize,
    slugs: HashMap<i64, Arc<str>>,
}

impl Pending {
    /// The rollups, and the request log's entries, oldest first (only the newest
    /// `REQUEST_LOG_SIZE`: under load, writing every entry to be trimmed at once cost a
    /// third of the throughput).
    pub fn into_rows(self) -> (Vec<Rollup>, Vec<LogEntry>) {
        let mut rollups = Vec::with_capacity(self.rollups.iter().map(Rollups::len).sum());
        for shard in self.rollups {
            shard.drain_into(&mut rollups);
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
        let mut fresh: Vec<Slot> = self.log.into_iter().flatten().collect();
        // In the order the requests came (the monotonic clock: finer than the wall's ms).
        fresh.sort_by_key(|f| f.start);
        let skip = fresh.len().saturating_sub(self.log_size);
        let slugs = &self.slugs;
        entries.extend(fresh.into_iter().skip(skip).map(|f| f.entry(slugs)));
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

impl Slot {
    /// The log's slot for a request to service `service_id` (its model already cut to
    /// [`MAX_MODEL_LEN`]), answered as `a` says.
    fn of(t: &Trace, service_id: i64, model: &str, a: &Answer) -> Slot {
        let error = match (&a.ended, &t.error) {
            (End::Failed(cause), _) => Some(format!("answer cut: {cause}").into()),
            (_, Some(e)) => Some(e.as_str().into()),
            (End::ClientGone, None) => Some("the client went away".into()),
            (End::Complete, None) => None,
        };
        Slot {
            start: t.start,
            at_ms: t.at_ms,
            request_id: t.id_text.clone(),
            service_id,
            method: t.method.clone(),
            path: t.path.clone(),
            status: a.status,
            attempts: t.attempts.clone(),
            key: t.key.clone(),
            model: (!model.is_empty()).then(|| model.into()),
            tokens: a.tokens,
            latency: t.latency,
            ttfb: a.ttfb,
            bytes_in: t.bytes_in,
            bytes_out: a.bytes_out,
            client: t.client,
            error,
            client_key_id: t.client_key_id,
        }
    }

    /// The request log's entry (its text is made here, at flush); `slugs` names the
    /// services.
    fn entry(self, slugs: &HashMap<i64, Arc<str>>) -> LogEntry {
        let (key_id, key_mask) = match self.key {
            Some((id, mask)) => (id, mask.to_string()),
            None => (0, String::new()),
        };
        LogEntry {
            id: 0,
            at: self.at_ms as i64,
            request_id: self.request_id.to_string(),
            service_id: self.service_id,
            service: slugs
                .get(&self.service_id)
                .map_or(String::new(), |s| s.to_string()),
            method: self.method.to_string(),
            path: self.path.to_string(),
            status: self.status,
            attempts: self.attempts.as_slice().to_vec(),
            key_id,
            key_mask,
            model: self.model.map(|m| m.to_string()),
            tokens_in: self.tokens.map(|x| x.input as i64),
            tokens_out: self.tokens.map(|x| x.output as i64),
            tokens_cached: self.tokens.map(|x| x.cached as i64),
            latency_ms: self.latency.map(|d| d.as_millis() as i64),
            ttfb_ms: self.ttfb.map(|d| d.as_millis() as i64),
            bytes_in: self.bytes_in as i64,
            bytes_out: self.bytes_out as i64,
            client_ip: self.client.to_string(),
            error: self.error.map(String::from),
            client_key_id: self.client_key_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::Poll;

    /// A GET to `/llm/x` that reached service 1.
    fn plain_trace() -> Trace {
        let mut t = Trace::new(
            Instant::now(),
            1_000,
            HeaderValue::from_static("id"),
            Method::GET,
            "/llm/x",
            IpAddr::from([127, 0, 0, 1]),
        );
        t.service = Some(1);
        t
    }

    fn answered(usage: &Usage, t: &Trace) {
        let answer = Answer {
            status: 200,
            ended: End::Complete,
            tokens: Some(Tokens {
                input: 3,
                output: 2,
                cached: 1,
            }),
            answer_model: None,
            ttfb: None,
            bytes_out: 10,
        };
        usage.record(t, answer);
    }

    #[test]
    fn log_entries_keep_long_texts_whole_and_a_deleted_services_slug() {
        let usage = Usage::new(1, 10);
        usage.name_services([(7, "gone-soon")].into_iter());
        let long_path = format!("/proxy/gone-soon/{}", "p".repeat(100));
        let long_id = "i".repeat(128);
        let mut t = Trace::new(
            Instant::now(),
            1_000,
            HeaderValue::from_str(&long_id).unwrap(),
            Method::POST,
            &long_path,
            IpAddr::from([127, 0, 0, 1]),
        );
        t.service = Some(7);
        t.model = Some(Text::from("m".repeat(60).as_str()));
        let (k1, k2) = (
            crate::keys::KeySecret::new("sk-first-key-0001"),
            crate::keys::KeySecret::new("sk-second-key-0002"),
        );
        t.attempt(1, &k1, 429);
        t.attempt(2, &k2, 0);
        t.attempt(2, &k2, 200);
        answered(&usage, &t);
        // The service is deleted: a later snapshot no longer names it.
        usage.name_services(std::iter::empty());
        let (rollups, entries) = usage.take();
        let e = &entries[0];
        assert_eq!(e.path, long_path);
        assert_eq!(e.request_id, long_id);
        assert_eq!(e.service, "gone-soon");
        assert_eq!(e.model.as_deref(), Some("m".repeat(60).as_str()));
        assert_eq!(e.attempts, vec![(1, 429), (2, 0), (2, 200)]);
        assert_eq!((e.key_id, e.key_mask.as_str()), (2, "sk-****0002"));
        assert_eq!((e.tokens_in, e.tokens_out), (Some(3), Some(2)));
        assert_eq!(rollups[0].counts.tokens_cached, 1);
        assert_eq!(usage.token_totals()[0].2, [3, 2, 1]);
    }

    #[test]
    fn a_flush_waits_for_the_one_that_has_not_written_yet() {
        let usage = Usage::new(1, 10);
        answered(&usage, &plain_trace());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut first = std::pin::pin!(usage.begin_flush(false));
        let Poll::Ready((taken, writing)) = first.as_mut().poll(&mut cx) else {
            panic!("no flush in progress: the first starts at once");
        };
        assert_eq!(taken.into_rows().0.len(), 1);
        answered(&usage, &plain_trace());
        let mut second = std::pin::pin!(usage.begin_flush(false));
        assert!(
            second.as_mut().poll(&mut cx).is_pending(),
            "the first is writing"
        );
        drop(writing);
        let Poll::Ready((taken, _)) = second.as_mut().poll(&mut cx) else {
            panic!("the first has written: the second goes on");
        };
        assert_eq!(taken.into_rows().0[0].counts.requests, 1);
    }

    #[test]
    fn a_request_log_of_size_zero_still_counts_tokens() {
        let usage = Usage::new(1, 0);
        answered(&usage, &plain_trace());
        let (rollups, entries) = usage.take();
        assert!(entries.is_empty());
        assert_eq!(rollups.len(), 1);
        assert_eq!(usage.token_totals()[0].2, [3, 2, 1]);
    }
}
