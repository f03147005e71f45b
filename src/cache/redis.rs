//! Redis rotation state (enterprise build). Placeholder until the enterprise backend lands.

use crate::cache::KeyEvent;
use crate::snapshot::Service;

/// A Redis connection for rotation state.
pub struct RedisCache;

impl RedisCache {
    /// Connects to Redis.
    pub async fn connect(_url: &str) -> Result<RedisCache, String> {
        Err("the Redis backend is not implemented yet".into())
    }

    /// The rotation ticket for `svc`.
    pub async fn ticket(&self, svc: &Service) -> u64 {
        svc.cursor
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Announces a configuration change.
    pub fn publish_change(&self) {}

    /// Announces a key health change.
    pub fn publish_key_event(&self, _event: KeyEvent) {}

    /// Runs the change subscriber until `stop` changes.
    pub fn spawn_background(
        self: std::sync::Arc<Self>,
        _state: std::sync::Arc<crate::app::AppState>,
        _stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async {})
    }
}
