//! Client access keys in memory: who may call the proxy, what, and how much.
//!
//! A client key is `akr-` and 32 random bytes in base64url. The store keeps only its
//! SHA-256; a presented key is hashed and looked up in the current [`ClientSet`], rebuilt
//! after every admin write, like the service snapshot. Limits are counted here, in one
//! atomic word per key and window ([`window`]), with no store or Redis round trip: per
//! minute, per UTC day, tokens per UTC day (from usage tracking) and requests open at
//! once. The counters live in a [`ClientRuntime`] per key id that outlives the sets, so an
//! edit does not reset them.

pub mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use http::StatusCode;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, RateLimit};
use crate::store::client_keys::ClientKeyRecord;
use window::Window;

/// What every client key starts with.
pub const PREFIX: &str = "akr-";
/// Characters of a key shown to people (the prefix and 6 more).
const SHOWN: usize = PREFIX.len() + 6;

/// A new key: `(secret, shown prefix, hex SHA-256)`. The secret is returned once, to the
/// admin who made it, and never stored.
pub fn generate() -> Result<(String, String, String), ApiError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApiError::internal("cannot make a client key", "no system randomness"))?;
    let secret = format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hex(&Sha256::digest(secret.as_bytes()));
    Ok((secret.clone(), secret[..SHOWN].to_string(), hash))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A key's counters; they outlive the sets (an edit keeps them).
#[derive(Debug, Default)]
pub struct ClientRuntime {
    minute: Window,
    day: Window,
    tokens: Window,
    streams: AtomicU64,
    /// Tokens counted here and not yet added to the shared counters (enterprise build).
    unshared_tokens: AtomicU64,
    /// Unix ms of the last admitted request, and of the last one written to the store.
    last_used_ms: AtomicU64,
    saved_ms: AtomicU64,
}

impl ClientRuntime {
    /// Counts tokens an answer used (for `tpd`).
    pub fn add_tokens(&self, now_ms: u64, tokens: u64) {
        self.tokens.add(day(now_ms), tokens);
        self.unshared_tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    /// Requests admitted this minute and today, tokens today, requests open now.
    pub fn counts(&self, now_ms: u64) -> [u64; 4] {
        [
            self.minute.count(minute(now_ms)),
            self.day.count(day(now_ms)),
            self.tokens.count(day(now_ms)),
            self.streams.load(Ordering::Relaxed),
        ]
    }

    pub fn last_used_ms(&self) -> Option<u64> {
        Some(self.last_used_ms.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }
}

fn minute(ms: u64) -> u64 {
    ms / 60_000
}
fn day(ms: u64) -> u64 {
    ms / 86_400_000
}

/// How a model name is allowed: exactly, or by its start (`gpt-4o*`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ModelRule {
    Exact(Box<str>),
    Prefix(Box<str>),
}

impl ModelRule {
    fn new(s: &str) -> ModelRule {
        match s.strip_suffix('*') {
            Some(p) => ModelRule::Prefix(p.into()),
            None => ModelRule::Exact(s.into()),
        }
    }
    fn allows(&self, model: &str) -> bool {
        match self {
            ModelRule::Exact(m) => **m == *model,
            ModelRule::Prefix(p) => model.starts_with(&**p),
        }
    }
}

/// One client key, ready for the request path.
#[derive(Debug)]
pub struct ClientKey {
    pub id: i64,
    active: bool,
    expires_at_ms: Option<u64>,
    services: Box<[Box<str>]>,
    models: Box<[ModelRule]>,
    rpm: Option<u64>,
    rpd: Option<u64>,
    tpd: Option<u64>,
    max_streams: Option<u64>,
    pub rt: Arc<ClientRuntime>,
}

fn limit(v: Option<i64>) -> Option<u64> {
    v.map(|n| n.max(0) as u64)
}

/// A refusal: 401, 403 or 429, each with its own detail.
fn refuse(status: StatusCode, detail: String) -> ApiError {
    ApiError::proxy(status, detail)
}

/// 429 for a full window: retry when it ends.
fn over(what: &str, limit: u64, reset_secs: u64) -> ApiError {
    ApiError::proxy(
        StatusCode::TOO_MANY_REQUESTS,
        format!("this client key is over its limit of {limit} {what}; retry in {reset_secs} s"),
    )
    .with_retry_after(reset_secs)
    .with_rate_limit(RateLimit {
        limit,
        remaining: 0,
        reset_secs,
    })
}

impl ClientKey {
    /// Whether the request path needs the model the request names.
    pub fn limits_models(&self) -> bool {
        !self.models.is_empty()
    }

    /// [`check`](Self::check), then [`count`](Self::count) with the local counters.
    #[cfg(test)]
    fn admit(
        &self,
        now_ms: u64,
        slug: &str,
        model: Option<&str>,
        may_name_none: bool,
    ) -> Result<Admission, ApiError> {
        self.check(now_ms, slug, model, may_name_none)?;
        self.count(now_ms, None)
    }

    /// The limits several instances share (the enterprise build keeps them in Redis):
    /// requests per minute and per day, tokens per day; `None` when the key has none.
    pub fn shared_limits(&self) -> Option<SharedLimits> {
        (self.rpm.is_some() || self.rpd.is_some() || self.tpd.is_some()).then(|| SharedLimits {
            key_id: self.id,
            rpm: self.rpm.unwrap_or(0),
            rpd: self.rpd.unwrap_or(0),
            tpd: self.tpd.unwrap_or(0),
        })
    }

    /// Checks the key may call service `slug` for `model` (`None`: the request named none;
    /// refused when the key is limited to some models, unless `may_name_none`: a `GET`, or
    /// a `/proxy` request, where models are not named).
    pub fn check(
        &self,
        now_ms: u64,
        slug: &str,
        model: Option<&str>,
        may_name_none: bool,
    ) -> Result<(), ApiError> {
        if !self.active {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "this client key is disabled".into(),
            ));
        }
        if self.expires_at_ms.is_some_and(|t| t <= now_ms) {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "this client key has expired".into(),
            ));
        }
        if !self.services.is_empty() && !self.services.iter().any(|s| **s == *slug) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                format!("this client key may not call service '{slug}'"),
            ));
        }
        if !self.models.is_empty() {
            match model {
                Some(m) if self.models.iter().any(|r| r.allows(m)) => {}
                Some(m) => {
                    return Err(refuse(
                        StatusCode::FORBIDDEN,
                        format!("this client key may not use model '{m}'"),
                    ));
                }
                None if may_name_none => {}
                None => {
                    return Err(refuse(
                        StatusCode::FORBIDDEN,
                        "this client key is limited to some models, and the request names none"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Counts the request against the key's limits: per minute, per day and tokens per day
    /// as `shared` says when the instances share them (and it could be asked), else with
    /// the local counters; open requests always here. The [`Admission`] holds its place
    /// among the open requests until dropped.
    pub fn count(&self, now_ms: u64, shared: Option<Verdict>) -> Result<Admission, ApiError> {
        let rt = &self.rt;
        let (m, d) = (minute(now_ms), day(now_ms));
        // Limits the shared counters already applied are not applied here again.
        let (local_rpm, local_rpd) = match shared {
            Some(Verdict::Over(limit)) => return Err(self.refusal(limit, now_ms)),
            Some(Verdict::Admitted) => (None, None),
            None => (self.rpm, self.rpd),
        };
        if shared.is_none() && self.tpd.is_some_and(|tpd| rt.tokens.count(d) >= tpd) {
            return Err(self.refusal(Limit::Tokens, now_ms));
        }
        // Counted with or without a limit, for the admin page.
        rt.day
            .admit(d, local_rpd.unwrap_or(u64::MAX))
            .ok_or_else(|| self.refusal(Limit::PerDay, now_ms))?;
        if rt.minute.admit(m, local_rpm.unwrap_or(u64::MAX)).is_none() {
            rt.day.undo(d);
            return Err(self.refusal(Limit::PerMinute, now_ms));
        }
        let mut admission = Admission(None);
        if let Some(max) = self.max_streams {
            let open = rt.streams.fetch_add(1, Ordering::Relaxed);
            admission = Admission(Some(rt.clone()));
            if open >= max {
                drop(admission);
                rt.minute.undo(m);
                rt.day.undo(d);
                return Err(over("requests open at once", max, 1));
            }
        }
        rt.last_used_ms.fetch_max(now_ms, Ordering::Relaxed);
        Ok(admission)
    }
}

impl ClientKey {
    /// The 429 for `limit`: retry when its window (the minute, the UTC day) ends.
    fn refusal(&self, limit: Limit, now_ms: u64) -> ApiError {
        let to_midnight = (86_400_000 - now_ms % 86_400_000).div_ceil(1000);
        let (what, n, reset) = match limit {
            Limit::PerMinute => (
                "requests per minute",
                self.rpm,
                (60_000 - now_ms % 60_000).div_ceil(1000),
            ),
            Limit::PerDay => ("requests per day", self.rpd, to_midnight),
            Limit::Tokens => ("tokens per day", self.tpd, to_midnight),
        };
        over(what, n.unwrap_or(0), reset)
    }
}

/// A key's limits as the instances share them (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedLimits {
    pub key_id: i64,
    pub rpm: u64,
    pub rpd: u64,
    pub tpd: u64,
}

/// Which shared limit a request went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    PerMinute,
    PerDay,
    Tokens,
}

/// What the shared counters said of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admitted,
    Over(Limit),
}

/// A request's place among its key's open requests (`max_streams`), given back on drop:
/// keep it with the answer's body until the body ends.
#[derive(Debug)]
pub struct Admission(Option<Arc<ClientRuntime>>);

impl Admission {
    /// An admission that holds nothing (a global proxy key, or no `max_streams`).
    pub fn free() -> Admission {
        Admission(None)
    }

    /// Whether it holds a place, so must live as long as the answer.
    pub fn holds(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.streams.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl crate::body::Watch for Admission {
    fn end(self, _bytes: u64, _end: crate::body::End) {}
}

/// Who is calling the proxy.
#[derive(Debug, Clone)]
pub enum Caller {
    /// One of `GLOBAL_PROXY_KEYS`: no limits.
    Global,
    Client(Arc<ClientKey>),
}

/// A secret already matched, and its key.
type Seen = (Box<[u8]>, Arc<ClientKey>);

/// Every client key by the SHA-256 of its secret.
#[derive(Default)]
pub struct ClientSet {
    by_hash: HashMap<[u8; 32], Arc<ClientKey>>,
    /// Secrets already matched, by a keyed (per-process random) hash of them: a presented
    /// key is hashed with SHA-256 once per set, then found here with SipHash and a
    /// constant-time comparison, at a tenth of the cost. Only secrets of existing keys
    /// get in, so it holds at most one entry per key.
    seen: RwLock<HashMap<u64, Seen>>,
    hasher: std::hash::RandomState,
}

impl std::fmt::Debug for ClientSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientSet({} keys, ***)", self.by_hash.len())
    }
}

/// The current [`ClientSet`] and the counters of every key.
#[derive(Debug, Default)]
pub struct Clients {
    set: RwLock<Arc<ClientSet>>,
    runtimes: Mutex<HashMap<i64, Arc<ClientRuntime>>>,
}

impl Clients {
    /// Replaces the set with `records` (counters of kept keys stay; those of deleted keys
    /// go).
    pub fn rebuild(&self, records: &[ClientKeyRecord]) {
        let mut runtimes = self.runtimes.lock().unwrap_or_else(|p| p.into_inner());
        let kept: std::collections::HashSet<i64> = records.iter().map(|r| r.id).collect();
        runtimes.retain(|id, _| kept.contains(id));
        let mut set = ClientSet::default();
        for r in records {
            let Some(hash) = unhex(&r.hash) else {
                crate::log::warn!("client key id {} has a malformed hash; ignored", r.id);
                continue;
            };
            let rt = runtimes.entry(r.id).or_default();
            if let Some(t) = r.last_used_at {
                rt.saved_ms.fetch_max(t.max(0) as u64, Ordering::Relaxed);
                rt.last_used_ms
                    .fetch_max(t.max(0) as u64, Ordering::Relaxed);
            }
            let f = &r.fields;
            let key = ClientKey {
                id: r.id,
                active: f.is_active,
                expires_at_ms: f.expires_at.map(|s| s.max(0) as u64 * 1000),
                services: f.services.iter().map(|s| s.as_str().into()).collect(),
                models: f.models.iter().map(|m| ModelRule::new(m)).collect(),
                rpm: limit(f.rpm),
                rpd: limit(f.rpd),
                tpd: limit(f.tpd),
                max_streams: limit(f.max_streams),
                rt: rt.clone(),
            };
            set.by_hash.insert(hash, Arc::new(key));
        }
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }

    /// The key whose secret is `candidate` (only candidates that look like client keys
    /// are hashed).
    pub fn find(&self, candidate: &[u8]) -> Option<Arc<ClientKey>> {
        if !candidate.starts_with(PREFIX.as_bytes()) {
            return None;
        }
        use std::hash::BuildHasher;
        let set = self.set.read().unwrap_or_else(|p| p.into_inner()).clone();
        let short = set.hasher.hash_one(candidate);
        {
            let seen = set.seen.read().unwrap_or_else(|p| p.into_inner());
            if let Some((secret, key)) = seen.get(&short) {
                if crate::auth::equals_secret(secret, candidate) {
                    return Some(key.clone());
                }
            }
        }
        let hash: [u8; 32] = Sha256::digest(candidate).into();
        let key = set.by_hash.get(&hash)?.clone();
        let mut seen = set.seen.write().unwrap_or_else(|p| p.into_inner());
        seen.insert(short, (candidate.into(), key.clone()));
        Some(key)
    }

    /// The counters of key `id`.
    pub fn runtime(&self, id: i64) -> Option<Arc<ClientRuntime>> {
        let runtimes = self.runtimes.lock().unwrap_or_else(|p| p.into_inner());
        runtimes.get(&id).cloned()
    }

    /// `(id, last used, Unix ms)` of the keys used since the last call, for the store.
    pub fn take_used(&self) -> Vec<(i64, i64)> {
        let runtimes = self.runtimes.lock().unwrap_or_else(|p| p.into_inner());
        runtimes
            .iter()
            .filter_map(|(id, rt)| {
                let used = rt.last_used_ms.load(Ordering::Relaxed);
                let saved = rt.saved_ms.swap(used, Ordering::Relaxed);
                (used > saved).then_some((*id, used as i64))
            })
            .collect()
    }

    /// `(id, tokens)` counted here since the last call, for the shared counters.
    pub fn take_tokens(&self) -> Vec<(i64, u64)> {
        let runtimes = self.runtimes.lock().unwrap_or_else(|p| p.into_inner());
        runtimes
            .iter()
            .map(|(id, rt)| (*id, rt.unshared_tokens.swap(0, Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Gives back what [`take_tokens`](Self::take_tokens) took when they could not be
    /// shared.
    pub fn untake_tokens(&self, tokens: &[(i64, u64)]) {
        let runtimes = self.runtimes.lock().unwrap_or_else(|p| p.into_inner());
        for (id, n) in tokens {
            if let Some(rt) = runtimes.get(id) {
                rt.unshared_tokens.fetch_add(*n, Ordering::Relaxed);
            }
        }
    }

    /// Gives back what [`take_used`](Self::take_used) took when the store failed.
    pub fn untake_used(&self, used: &[(i64, i64)]) {
        let runtimes = self.runtimes.lock().unwrap_or_else(|p| p.into_inner());
        for (id, _) in used {
            if let Some(rt) = runtimes.get(id) {
                rt.saved_ms.store(0, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::client_keys::ClientKeyFields;

    fn set_with(fields: ClientKeyFields) -> (Clients, String) {
        let (secret, prefix, hash) = generate().unwrap();
        let clients = Clients::default();
        clients.rebuild(&[ClientKeyRecord {
            id: 1,
            fields,
            prefix,
            hash,
            created_at: 0,
            last_used_at: None,
        }]);
        (clients, secret)
    }

    #[test]
    fn keys_are_found_by_their_secret_only() {
        let (clients, secret) = set_with(ClientKeyFields {
            is_active: true,
            ..Default::default()
        });
        assert!(
            secret.starts_with("akr-") && secret.len() == 4 + 43,
            "{secret}"
        );
        assert_eq!(clients.find(secret.as_bytes()).unwrap().id, 1);
        assert_eq!(
            clients.find(secret.as_bytes()).unwrap().id,
            1,
            "found again, from the cache"
        );
        let mut near = secret.clone().into_bytes();
        *near.last_mut().unwrap() ^= 1;
        assert!(clients.find(&near).is_none(), "one bit off");
        assert!(clients.find(&secret.as_bytes()[..20]).is_none());
        assert!(
            !format!("{clients:?}").contains(&secret[4..]),
            "never printed"
        );
        assert!(clients.find(b"akr-").is_none() && clients.find(b"sk-other").is_none());
    }

    #[test]
    fn access_rules_refuse_with_their_own_status() {
        let (clients, secret) = set_with(ClientKeyFields {
            is_active: true,
            expires_at: Some(1_000),
            services: vec!["openai".into()],
            models: vec!["gpt-4o*".into(), "o3".into()],
            ..Default::default()
        });
        let k = clients.find(secret.as_bytes()).unwrap();
        let status =
            |r: Result<Admission, ApiError>| r.map(|_| 200).unwrap_or_else(|e| e.status.as_u16());
        assert_eq!(
            status(k.admit(0, "openai", Some("gpt-4o-mini"), false)),
            200
        );
        assert_eq!(status(k.admit(0, "openai", Some("o3"), false)), 200);
        assert_eq!(status(k.admit(0, "openai", Some("o3-mini"), false)), 403);
        assert_eq!(status(k.admit(0, "gemini", Some("o3"), false)), 403);
        assert_eq!(status(k.admit(0, "openai", None, false)), 403);
        assert_eq!(
            status(k.admit(0, "openai", None, true)),
            200,
            "listing models"
        );
        assert_eq!(
            status(k.admit(1_000_000, "openai", Some("o3"), false)),
            401,
            "expired"
        );
    }

    #[test]
    fn limits_count_and_give_back() {
        let (clients, secret) = set_with(ClientKeyFields {
            is_active: true,
            rpm: Some(3),
            rpd: Some(4),
            max_streams: Some(2),
            tpd: Some(100),
            ..Default::default()
        });
        let k = clients.find(secret.as_bytes()).unwrap();
        let now = 10 * 86_400_000 + 30_000;
        let a = k.admit(now, "s", None, false).unwrap();
        let b = k.admit(now, "s", None, false).unwrap();
        let e = k.admit(now, "s", None, false).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.retry_after),
            (429, Some(1)),
            "two open at once"
        );
        drop(a);
        let _c = k.admit(now, "s", None, false).unwrap();
        let e = k.admit(now, "s", None, false).unwrap_err();
        assert_eq!(
            e.retry_after,
            Some(30),
            "three a minute: the rest of the minute"
        );
        assert_eq!(
            k.rt.counts(now),
            [3, 3, 0, 2],
            "refusals gave their counts back"
        );
        drop(b);
        let e = k.admit(now + 60_000, "s", None, false).map(drop);
        assert!(e.is_ok());
        let e = k.admit(now + 120_000, "s", None, false).unwrap_err();
        assert!(e.message.contains("per day"), "{}", e.message);
        k.rt.add_tokens(now, 100);
        let e = k
            .admit(now + 86_400_000 - 30_000 - 1, "s", None, false)
            .unwrap_err();
        assert!(e.message.contains("tokens"), "{}", e.message);
        let next_day = now + 86_400_000;
        assert!(k.admit(next_day, "s", None, false).is_ok(), "a new day");
        assert_eq!(clients.take_used(), vec![(1, next_day as i64)]);
        assert!(clients.take_used().is_empty(), "nothing new");
    }
}
