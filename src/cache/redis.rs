//! Redis rotation state (enterprise build): one round-robin counter per service shared by
//! every instance, and a pub/sub channel that keeps their snapshots and key health in step.
//!
//! * A proxied request costs at most one round trip on the original's counter
//!   `proxy_config:<id>:key_index` (the ticket is the value minus one), and under load
//!   less: a shard reserves a block of tickets with one `INCRBY`, as many as it has
//!   requests waiting, and a busy shard reserves its next block ahead (see
//!   [`super::lease`]); one request at a time, that is one `INCR` each, as the original.
//!   It has a short timeout, and on failure the request rotates with the service's local
//!   cursor.
//! * While Redis is unreachable, requests do not wait for it: a breaker (`Breaker`) lets
//!   one request per back-off period probe it (and the background task pings it every
//!   second), everyone else rotates locally at once. The outage is logged once, and so is
//!   the recovery, after which the instance reloads its snapshot (notices were lost).
//! * Notices (`change`, `cooldown`, `invalid`, `reset`) are queued by the request or admin
//!   path and published by the background task: fire and forget, never on the request
//!   path. Each carries the sender's instance id, so an instance skips its own.
//! * One multiplexed RESP3 connection carries commands and the subscription; the
//!   connection manager reconnects and resubscribes by itself. RESP3 needs Redis 6 or
//!   later (or Valkey, KeyDB, Dragonfly).
//! * The channel is `api_key_rotator:events:<db>`: pub/sub ignores database numbers, so
//!   deployments sharing one Redis server on different `REDIS_DB`s stay apart.
//! * A periodic reload (every [`RELOAD_EVERY`]) is the safety net for a lost notice.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cache::lease::Leases;
use crate::cache::{KeyEvent, Listener};
use crate::clients::{Limit, SharedLimits, Verdict};
use crate::snapshot::Service;
use crate::timefmt::now_ms;

/// How long a request waits for its `INCR` before rotating locally.
const INCR_TIMEOUT: Duration = Duration::from_millis(200);
/// Timeout of the other commands (publish, ping) and of each connection attempt.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the start-up connection may take (the original's ping waited 5 s too).
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How often every instance reloads its snapshot anyway, in case a notice was lost.
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// How often the background task looks after the connection.
const TICK: Duration = Duration::from_secs(1);
/// Back-off between probes while Redis is unreachable.
const BACKOFF_MIN_MS: u64 = 250;
const BACKOFF_MAX_MS: u64 = 5_000;
/// Notices waiting to be published; beyond this they are dropped (the periodic reload
/// covers them).
const OUTBOX: usize = 1024;

/// A Redis connection for rotation state.
pub struct RedisCache {
    /// Subscriptions, publishing and the checks of the background task.
    conn: ConnectionManager,
    /// Opens each shard's own command connection.
    client: Client,
    /// One command connection per shard, opened on first use on the shard's runtime, so
    /// a request's INCR never waits on another thread.
    shard_conns: Box<[tokio::sync::OnceCell<ConnectionManager>]>,
    /// `host:port/db`, for log lines (never the password).
    target: String,
    channel: String,
    instance: String,
    breaker: Breaker,
    /// Each shard's blocks of tickets.
    leases: Arc<Leases>,
    outbox: mpsc::Sender<String>,
    /// Taken by the background task.
    inbox: Mutex<Option<(mpsc::Receiver<String>, UnboundedReceiver<PushInfo>)>>,
}

impl RedisCache {
    /// Connects to Redis (RESP3) and subscribes to the change channel. Fails when Redis
    /// does not answer within a few seconds: a misconfiguration should stop the start.
    pub async fn connect(url: &str, shards: usize) -> Result<RedisCache, String> {
        let client = Client::open(url).map_err(|e| format!("REDIS_URL is not usable: {e}"))?;
        let info = client.get_connection_info().clone();
        let db = info.redis_settings().db();
        let target = format!("{}/{db}", info.addr());
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings))
            .map_err(|e| format!("redis {target}: {e}"))?;
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(push_tx)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1));
        let channel = format!("api_key_rotator:events:{db}");
        let conn = async {
            let mut conn = ConnectionManager::new_with_config(client.clone(), config).await?;
            conn.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        let conn = tokio::time::timeout(START_TIMEOUT, conn)
            .await
            .map_err(|_| format!("redis {target} did not answer within 5 s"))?
            .map_err(|e| format!("redis {target}: {e} (Redis 6 or later is needed)"))?;
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        crate::log::info!("Cache: redis {target}, channel {channel}");
        Ok(RedisCache {
            conn,
            client,
            shard_conns: (0..shards.max(1))
                .map(|_| tokio::sync::OnceCell::new())
                .collect(),
            target,
            channel,
            instance: instance_id(),
            breaker: Breaker::default(),
            leases: Arc::new(Leases::new(shards, INCR_TIMEOUT * 2)),
            outbox,
            inbox: Mutex::new(Some((outbox_rx, push_rx))),
        })
    }

    /// The rotation ticket for `svc`: the shared counter, or the local cursor while Redis
    /// is unreachable.
    pub async fn ticket(self: &Arc<Self>, svc: &Service) -> u64 {
        let ticket = if self.breaker.is_down() {
            // No blocks while Redis is away: one request per back-off period probes it,
            // everyone else rotates locally at once.
            self.reserve(svc.id, 1).await.map(|end| end - 1)
        } else {
            let id = svc.id;
            self.leases
                .ticket(id, |n| {
                    let cache = self.clone();
                    async move { cache.reserve(id, n).await }
                })
                .await
        };
        ticket.unwrap_or_else(|| local_ticket(svc))
    }

    /// Reserves `n` tickets on the service's counter and returns its new value. The
    /// counter starts at 1 and the original picks (counter - 1) mod keys, so the tickets
    /// are `value - n .. value`.
    async fn reserve(&self, service_id: i64, n: u64) -> Option<u64> {
        let admit = self.breaker.admit(now_ms());
        if admit == Admit::Skip {
            return None;
        }
        let mut incr = redis::cmd("INCRBY");
        incr.arg(counter_key(service_id)).arg(n);
        let value = self.command::<i64>(incr, INCR_TIMEOUT, admit, true).await?;
        u64::try_from(value).ok().filter(|v| *v >= n)
    }

    /// Runs one command with a timeout, telling the breaker how it went: on this shard's
    /// own connection for requests (`on_shard`), else on the background connection.
    async fn command<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
        timeout: Duration,
        admit: Admit,
        on_shard: bool,
    ) -> Option<T> {
        let query = async {
            let mut conn = match on_shard {
                true => self.shard_conn().await?,
                false => self.conn.clone(),
            };
            cmd.query_async::<T>(&mut conn).await
        };
        match tokio::time::timeout(timeout, query).await {
            Ok(Ok(v)) => {
                self.breaker.succeeded(admit);
                Some(v)
            }
            Ok(Err(e)) => {
                self.breaker.failed(admit, &e.to_string(), &self.target);
                None
            }
            Err(_) => {
                self.breaker
                    .failed(admit, "command timed out", &self.target);
                None
            }
        }
    }

    /// This shard's command connection (opened here on first use).
    async fn shard_conn(&self) -> redis::RedisResult<ConnectionManager> {
        let cell = &self.shard_conns[crate::shard::current() % self.shard_conns.len()];
        let conn = cell
            .get_or_try_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(COMMAND_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(100))
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await?;
        Ok(conn.clone())
    }

    /// Counts a client key's request on the shared counters of its minute and day (one
    /// script, one round trip): admitted and counted, or which limit it is over. `None`
    /// when Redis cannot be asked (the breaker logs the outage once).
    pub async fn count_client(&self, l: SharedLimits, now_ms: u64) -> Option<Verdict> {
        let admit = self.breaker.admit(now_ms);
        if admit == Admit::Skip {
            return None;
        }
        let (minute, day) = (now_ms / 60_000, now_ms / 86_400_000);
        let mut eval = redis::cmd("EVAL");
        eval.arg(COUNT_CLIENT)
            .arg(3)
            .arg(client_counter(l.key_id, "m", minute))
            .arg(client_counter(l.key_id, "d", day))
            .arg(client_counter(l.key_id, "t", day))
            .arg(l.rpm)
            .arg(l.rpd)
            .arg(l.tpd)
            .arg(120)
            .arg(2 * 86_400);
        let code = self.command::<i64>(eval, INCR_TIMEOUT, admit, true).await?;
        Some(match code {
            0 => Verdict::Admitted,
            1 => Verdict::Over(Limit::PerMinute),
            2 => Verdict::Over(Limit::PerDay),
            _ => Verdict::Over(Limit::Tokens),
        })
    }

    /// Adds `(client key id, tokens)` to today's shared token counters, in one script.
    pub async fn add_client_tokens(&self, tokens: &[(i64, u64)], now_ms: u64) -> bool {
        if tokens.is_empty() {
            return true;
        }
        let admit = self.breaker.admit(now_ms);
        if admit == Admit::Skip {
            return false;
        }
        let day = now_ms / 86_400_000;
        let mut eval = redis::cmd("EVAL");
        eval.arg(ADD_TOKENS).arg(tokens.len());
        for (id, _) in tokens {
            eval.arg(client_counter(*id, "t", day));
        }
        for (_, n) in tokens {
            eval.arg(*n);
        }
        eval.arg(2 * 86_400);
        self.command::<i64>(eval, COMMAND_TIMEOUT, admit, false)
            .await
            .is_some()
    }

    /// Announces a configuration change.
    pub fn publish_change(&self) {
        self.queue(Notice::Change);
    }

    /// Announces a key health change.
    pub fn publish_key_event(&self, event: KeyEvent) {
        self.queue(Notice::Key(event));
    }

    fn queue(&self, notice: Notice) {
        // Full queue: dropped; other instances catch up at their periodic reload.
        let _ = self.outbox.try_send(notice.encode(&self.instance));
    }

    /// Runs the subscriber, the publisher, the connection keeper and the periodic reload
    /// until `stop` changes.
    pub fn spawn_background(
        self: Arc<Self>,
        state: Arc<dyn Listener>,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner()).take();
        tokio::spawn(async move {
            if let Some((outbox, pushes)) = inbox {
                self.background(state, outbox, pushes, stop).await;
            }
        })
    }

    async fn background(
        &self,
        state: Arc<dyn Listener>,
        mut outbox: mpsc::Receiver<String>,
        mut pushes: UnboundedReceiver<PushInfo>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut reload_tick = tokio::time::interval(RELOAD_EVERY);
        reload_tick.tick().await; // the first tick is immediate; the snapshot is fresh
        let mut tick = tokio::time::interval(TICK);
        loop {
            let reload = tokio::select! {
                Some(push) = pushes.recv() => self.received(&*state, push, &mut pushes),
                Some(text) = outbox.recv() => { self.publish(text).await; false }
                _ = tick.tick() => self.keep_connected().await,
                _ = reload_tick.tick() => true,
                _ = stop.changed() => break,
            };
            if reload {
                if let Err(e) = state.reload().await {
                    crate::log::warn!("could not reload the services after a change notice: {e}");
                }
            }
        }
    }

    /// Handles a push and whatever else already waits, so a burst of notices costs one
    /// reload. Returns whether the snapshot must be reloaded.
    fn received(
        &self,
        state: &dyn Listener,
        first: PushInfo,
        pushes: &mut UnboundedReceiver<PushInfo>,
    ) -> bool {
        let mut reload = false;
        let mut next = Some(first);
        while let Some(push) = next {
            reload |= self.handle_push(state, push);
            next = pushes.try_recv().ok();
        }
        reload
    }

    fn handle_push(&self, state: &dyn Listener, push: PushInfo) -> bool {
        match push.kind {
            PushKind::Disconnection => {
                self.breaker.trip("connection lost", &self.target);
                false
            }
            PushKind::Message => match message_text(&push.data) {
                Some(text) => match Notice::decode(&text, &self.instance) {
                    Some(notice) => apply(state, notice),
                    None => false,
                },
                None => false,
            },
            _ => false,
        }
    }

    async fn publish(&self, text: String) {
        let admit = self.breaker.admit(now_ms());
        if admit == Admit::Skip {
            return;
        }
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&self.channel).arg(text);
        let _ = self
            .command::<i64>(publish, COMMAND_TIMEOUT, admit, false)
            .await;
    }

    /// While Redis is down, probes it (the connection manager reconnects and resubscribes
    /// on the way). Returns true once after it came back: notices were lost meanwhile.
    async fn keep_connected(&self) -> bool {
        let admit = self.breaker.admit(now_ms());
        if admit == Admit::Probe {
            let _ = self
                .command::<String>(redis::cmd("PING"), COMMAND_TIMEOUT, admit, false)
                .await;
        }
        self.breaker.take_rejoined()
    }
}

/// Counts a client key's request if it is within its limits. KEYS: the minute's and the
/// day's request counters, the day's token counter; ARGV: rpm, rpd, tpd (0: none), the
/// minute's and the day's time to live. Returns 0 (counted), 1 (over rpm), 2 (over rpd)
/// or 3 (over tpd).
const COUNT_CLIENT: &str = r#"
local m = tonumber(redis.call('GET', KEYS[1]) or '0')
local d = tonumber(redis.call('GET', KEYS[2]) or '0')
local t = tonumber(redis.call('GET', KEYS[3]) or '0')
local rpm, rpd, tpd = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if tpd > 0 and t >= tpd then return 3 end
if rpd > 0 and d >= rpd then return 2 end
if rpm > 0 and m >= rpm then return 1 end
if redis.call('INCR', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
if redis.call('INCR', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
return 0
"#;

/// Adds tokens: KEYS are token counters, ARGV their amounts, then the time to live.
const ADD_TOKENS: &str = r#"
for i, k in ipairs(KEYS) do
  redis.call('INCRBY', k, ARGV[i])
  redis.call('EXPIRE', k, ARGV[#ARGV])
end
return 0
"#;

/// A client key's counter of one window (`m`inute or `d`ay of requests, `t`okens of a
/// day). The braces keep a key's counters on one Redis Cluster slot.
fn client_counter(id: i64, kind: &str, window: u64) -> String {
    format!("api_key_rotator:{{client:{id}}}:{kind}:{window}")
}

/// The original's counter name.
fn counter_key(service_id: i64) -> String {
    format!("proxy_config:{service_id}:key_index")
}

fn local_ticket(svc: &Service) -> u64 {
    svc.cursor.fetch_add(1, Relaxed)
}

/// A random id for this process, so it can skip its own notices.
fn instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// The payload of a `message` push: `[channel, payload]`.
fn message_text(data: &[Value]) -> Option<String> {
    match data.get(1)? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Applies a notice from another instance. Returns whether the snapshot must be reloaded.
fn apply(state: &dyn Listener, notice: Notice) -> bool {
    match notice {
        // The store has the change (an invalid mark is persisted before it is announced).
        Notice::Change | Notice::Key(KeyEvent::Invalid { .. }) => true,
        Notice::Key(event) => {
            state.key_event(event);
            false
        }
    }
}

/// What instances tell each other: `<instance> change`,
/// `<instance> cooldown <service> <key> <until_ms>`, `<instance> invalid <service> <key>`,
/// `<instance> reset <service> <key>`.
#[derive(Debug, Clone, PartialEq)]
enum Notice {
    Change,
    Key(KeyEvent),
}

impl Notice {
    fn encode(&self, instance: &str) -> String {
        match self {
            Notice::Change => format!("{instance} change"),
            Notice::Key(KeyEvent::Cooldown {
                service_id,
                key_id,
                until_ms,
            }) => format!("{instance} cooldown {service_id} {key_id} {until_ms}"),
            Notice::Key(KeyEvent::Invalid { service_id, key_id }) => {
                format!("{instance} invalid {service_id} {key_id}")
            }
            Notice::Key(KeyEvent::Reset { service_id, key_id }) => {
                format!("{instance} reset {service_id} {key_id}")
            }
        }
    }

    /// Parses a notice; `None` for our own, and for anything unknown (a newer version's).
    fn decode(text: &str, own_instance: &str) -> Option<Notice> {
        let mut parts = text.split_ascii_whitespace();
        if parts.next()? == own_instance {
            return None;
        }
        let kind = parts.next()?;
        let mut num = || parts.next()?.parse::<i64>().ok();
        Some(match kind {
            "change" => Notice::Change,
            "cooldown" => {
                let (service_id, key_id) = (num()?, num()?);
                let until_ms = u64::try_from(num()?).ok()?;
                Notice::Key(KeyEvent::Cooldown {
                    service_id,
                    key_id,
                    until_ms,
                })
            }
            "invalid" => Notice::Key(KeyEvent::Invalid {
                service_id: num()?,
                key_id: num()?,
            }),
            "reset" => Notice::Key(KeyEvent::Reset {
                service_id: num()?,
                key_id: num()?,
            }),
            _ => return None,
        })
    }
}

/// What the breaker allows a caller that wants to use Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// Redis is up: go ahead.
    Healthy,
    /// Redis is down and this caller is the one probe of this back-off period.
    Probe,
    /// Redis is down: do without it.
    Skip,
}

/// Keeps callers off Redis while it is unreachable, logging the outage and the
/// recovery once each.
#[derive(Debug, Default)]
struct Breaker {
    down: AtomicBool,
    /// Unix ms of the next probe.
    retry_at: AtomicU64,
    backoff_ms: AtomicU64,
    /// Set on recovery, taken by the background task (which then reloads).
    rejoined: AtomicBool,
}

impl Breaker {
    fn is_down(&self) -> bool {
        self.down.load(Relaxed)
    }

    fn admit(&self, now: u64) -> Admit {
        if !self.down.load(Relaxed) {
            return Admit::Healthy;
        }
        let at = self.retry_at.load(Relaxed);
        let next = now + self.backoff_ms.load(Relaxed).max(BACKOFF_MIN_MS);
        // One caller per period wins the exchange and probes.
        if now >= at
            && self
                .retry_at
                .compare_exchange(at, next, Relaxed, Relaxed)
                .is_ok()
        {
            Admit::Probe
        } else {
            Admit::Skip
        }
    }

    fn succeeded(&self, admit: Admit) {
        // Only a probe ends an outage: a request that started before it may still succeed.
        if admit == Admit::Probe && self.down.swap(false, Relaxed) {
            self.backoff_ms.store(BACKOFF_MIN_MS, Relaxed);
            self.rejoined.store(true, Relaxed);
            crate::log::info!("Redis answers again: global rotation and change notices resumed");
        }
    }

    fn failed(&self, admit: Admit, why: &str, target: &str) {
        match admit {
            Admit::Healthy => self.trip(why, target),
            Admit::Probe => {
                let backoff =
                    (self.backoff_ms.load(Relaxed) * 2).clamp(BACKOFF_MIN_MS, BACKOFF_MAX_MS);
                self.backoff_ms.store(backoff, Relaxed);
                self.retry_at.store(now_ms() + backoff, Relaxed);
            }
            Admit::Skip => {}
        }
    }

    /// Marks Redis down (logging it when it was up).
    fn trip(&self, why: &str, target: &str) {
        if self.down.load(Relaxed) {
            return;
        }
        self.backoff_ms.store(BACKOFF_MIN_MS, Relaxed);
        self.retry_at.store(now_ms() + BACKOFF_MIN_MS, Relaxed);
        if !self.down.swap(true, Relaxed) {
            crate::log::warn!(
                "Redis {target} is unreachable ({why}): rotating keys locally and missing \
                 change notices until it answers again"
            );
        }
    }

    fn take_rejoined(&self) -> bool {
        self.rejoined.swap(false, Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_skip_our_own() {
        let notices = [
            Notice::Change,
            Notice::Key(KeyEvent::Cooldown {
                service_id: 3,
                key_id: 9,
                until_ms: 1_800_000_000_000,
            }),
            Notice::Key(KeyEvent::Invalid {
                service_id: 3,
                key_id: 9,
            }),
            Notice::Key(KeyEvent::Reset {
                service_id: 3,
                key_id: 9,
            }),
        ];
        for n in notices {
            let text = n.encode("aaaa");
            assert_eq!(Notice::decode(&text, "bbbb"), Some(n.clone()), "{text}");
            assert_eq!(Notice::decode(&text, "aaaa"), None, "own notice skipped");
        }
        for junk in ["", "x", "x future 1 2", "x cooldown 1", "x cooldown 1 2 -5"] {
            assert_eq!(Notice::decode(junk, "y"), None, "{junk:?}");
        }
    }

    #[test]
    fn breaker_lets_one_probe_through_per_period() {
        let b = Breaker::default();
        assert_eq!(b.admit(now_ms()), Admit::Healthy);
        b.failed(Admit::Healthy, "test", "t");
        b.failed(Admit::Healthy, "again", "t"); // logged once
        let now = now_ms();
        assert_eq!(b.admit(now), Admit::Skip, "within the back-off");
        let later = now + BACKOFF_MIN_MS + 1;
        assert_eq!(b.admit(later), Admit::Probe);
        assert_eq!(b.admit(later), Admit::Skip, "one probe per period");
        b.failed(Admit::Probe, "still down", "t");
        assert_eq!(b.backoff_ms.load(Relaxed), 2 * BACKOFF_MIN_MS, "backs off");
        b.succeeded(Admit::Healthy);
        assert!(b.down.load(Relaxed), "only a probe ends an outage");
        b.succeeded(Admit::Probe);
        assert_eq!(b.admit(now_ms()), Admit::Healthy);
        assert!(b.take_rejoined());
        assert!(!b.take_rejoined(), "taken once");
    }

    #[test]
    fn backoff_is_capped() {
        let b = Breaker::default();
        b.trip("x", "t");
        for _ in 0..20 {
            b.failed(Admit::Probe, "x", "t");
        }
        assert_eq!(b.backoff_ms.load(Relaxed), BACKOFF_MAX_MS);
    }

    #[test]
    fn counter_is_the_originals() {
        assert_eq!(counter_key(7), "proxy_config:7:key_index");
    }
}
