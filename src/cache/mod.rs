//! Hot shared rotation state: the round-robin ticket of each request and, with several
//! instances, the notices that keep their snapshots and key health in step.
//!
//! Lightweight build: process memory (an atomic per service). Enterprise build: Redis,
//! with at most one round trip per proxied request on the original's counter
//! `proxy_config:<id>:key_index` (under load, one `INCRBY` serves a block of waiting
//! requests: [`lease`]) and a pub/sub channel for change notices.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clients::{SharedLimits, Verdict};
use crate::config::{CacheConfig, Config};
use crate::snapshot::Service;
use crate::store::{BoxFuture, StoreError};

#[cfg(feature = "redis")]
pub mod lease;
#[cfg(feature = "redis")]
pub mod redis;

/// A change to one key's health that other instances must apply.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyEvent {
    /// The key cools down until this Unix ms.
    Cooldown {
        service_id: i64,
        key_id: i64,
        until_ms: u64,
    },
    /// The key was marked invalid (already persisted in the store).
    Invalid { service_id: i64, key_id: i64 },
    /// An admin reset the key: clear cooldown and invalid mark.
    Reset { service_id: i64, key_id: i64 },
}

/// What the cache tells the rest of the service about changes other instances made
/// (the state implements it; the cache stays below the state).
pub trait Listener: Send + Sync + 'static {
    /// Services or keys changed in the store: rebuild the snapshot.
    fn reload(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// A key cooled down or was reset on another instance: apply it here.
    fn key_event(&self, event: KeyEvent);
}

/// Where rotation state lives.
#[derive(Clone)]
pub enum Cache {
    /// In-process atomics.
    Memory,
    /// Redis, shared by several instances.
    #[cfg(feature = "redis")]
    Redis(Arc<redis::RedisCache>),
}

impl Cache {
    /// Connects to what the configuration asks for.
    pub async fn open(config: &Config) -> Result<Cache, String> {
        match &config.cache {
            CacheConfig::Memory => Ok(Cache::Memory),
            #[cfg(feature = "redis")]
            CacheConfig::Redis { url } => Ok(Cache::Redis(Arc::new(
                redis::RedisCache::connect(url.expose(), config.worker_threads)
                    .await
                    .map_err(|e| format!("Failed to initialize cache (redis): {e}"))?,
            ))),
            #[cfg(not(feature = "redis"))]
            CacheConfig::Redis { .. } => Err(
                "the environment asks for Redis (REDIS_URL or REDIS_HOST), but this is the \
                 lightweight build. Use the enterprise build (`cargo build --release --features \
                 enterprise`, image api-key-rotator:enterprise), or unset REDIS_URL/REDIS_HOST to \
                 keep rotation state in memory"
                    .into(),
            ),
        }
    }

    /// `memory` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self {
            Cache::Memory => "memory",
            #[cfg(feature = "redis")]
            Cache::Redis(_) => "redis",
        }
    }

    /// The rotation ticket for the next request to `svc` (0, 1, 2, …).
    #[inline]
    pub async fn ticket(&self, svc: &Service) -> u64 {
        match self {
            Cache::Memory => svc.cursor.fetch_add(1, Relaxed),
            #[cfg(feature = "redis")]
            Cache::Redis(r) => r.ticket(svc).await,
        }
    }

    /// Counts a request of a client key on the counters every instance shares: `None` in
    /// the lightweight build and while Redis cannot be asked (then the caller counts with
    /// its own counters). One round trip.
    pub async fn count_client(&self, limits: SharedLimits, now_ms: u64) -> Option<Verdict> {
        match self {
            Cache::Memory => {
                let _ = (limits, now_ms);
                None
            }
            #[cfg(feature = "redis")]
            Cache::Redis(r) => r.count_client(limits, now_ms).await,
        }
    }

    /// Adds the tokens client keys used here to the shared counters (`(id, tokens)`);
    /// false when they could not be (Redis is away): give them back for the next time.
    pub async fn add_client_tokens(&self, tokens: &[(i64, u64)], now_ms: u64) -> bool {
        match self {
            Cache::Memory => {
                let _ = (tokens, now_ms);
                true
            }
            #[cfg(feature = "redis")]
            Cache::Redis(r) => r.add_client_tokens(tokens, now_ms).await,
        }
    }

    /// Tells other instances that services or keys changed (they reload their snapshot).
    pub fn publish_change(&self) {
        match self {
            Cache::Memory => {}
            #[cfg(feature = "redis")]
            Cache::Redis(r) => r.publish_change(),
        }
    }

    /// Tells other instances about a key's health change.
    pub fn publish_key_event(&self, event: KeyEvent) {
        match self {
            Cache::Memory => {
                let _ = event;
            }
            #[cfg(feature = "redis")]
            Cache::Redis(r) => r.publish_key_event(event),
        }
    }
}

/// Starts what the cache needs in the background (with Redis: the change subscriber and
/// the periodic reload), until `stop` changes.
pub fn spawn_background(
    cache: &Cache,
    listener: Arc<dyn Listener>,
    stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    match cache {
        Cache::Memory => {
            let _ = (listener, stop);
            None
        }
        #[cfg(feature = "redis")]
        Cache::Redis(r) => Some(r.clone().spawn_background(listener, stop)),
    }
}
