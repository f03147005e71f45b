//! The state every handler shares, built once at start: configuration, store, cache
//! (rotation state), the current snapshot, key runtimes, upstream pools, metrics,
//! credentials. Below the handlers: it knows nothing of requests.

use std::sync::Arc;

use crate::auth::{LoginThrottle, ProxyKeys};
use crate::cache::{Cache, KeyEvent};
use crate::clients::{Caller, Clients};
use crate::config::Config;
use crate::error::ApiError;
use crate::keys::KeyRegistry;
use crate::metrics::Metrics;
use crate::snapshot::{Snapshot, SnapshotCell};
use crate::store::{KeyRecord, Store};
use crate::timefmt::now_ms;
use crate::upstream::Upstreams;
use crate::usage::record::Usage;

/// What an admin did to some keys of a service ([`AppState::keys_changed`]).
pub enum KeyChange {
    /// Added or enabled, as stored now.
    Upserted(Vec<KeyRecord>),
    /// Deleted.
    Removed(Vec<i64>),
    /// Disabled (still stored).
    Disabled(Vec<i64>),
    /// Invalid mark and cooldown cleared.
    Reset(Vec<i64>),
}

/// Everything a request may need, built once at start.
pub struct AppState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub cache: Cache,
    pub snapshot: SnapshotCell,
    pub registry: KeyRegistry,
    /// Upstream connection pools (one slot per shard).
    pub upstreams: Upstreams,
    pub metrics: Metrics,
    pub proxy_keys: ProxyKeys,
    /// Client access keys and their limits.
    pub clients: Clients,
    pub login_throttle: LoginThrottle,
    /// Background jobs admins started (testing many keys).
    pub jobs: crate::jobs::Jobs,
    /// Usage insight not yet written (rollups, request log); off: `None`.
    pub usage: Option<Arc<Usage>>,
    /// Serialises snapshot rebuilds so an older one never replaces a newer one.
    reload_lock: tokio::sync::Mutex<()>,
}

impl AppState {
    /// Builds the state and loads the first snapshot.
    pub async fn new(
        config: Config,
        store: Arc<dyn Store>,
        cache: Cache,
    ) -> Result<Arc<AppState>, String> {
        let state = Arc::new(AppState {
            upstreams: Upstreams::new(
                config.connect_timeout,
                config.worker_threads,
                config.upstream_ca_file.as_deref(),
            )?,
            proxy_keys: ProxyKeys::new(&config.proxy_keys),
            clients: Clients::default(),
            usage: config
                .usage_tracking
                .then(|| Arc::new(Usage::new(config.worker_threads, config.request_log_size))),
            config,
            store,
            cache,
            snapshot: SnapshotCell::default(),
            registry: KeyRegistry::default(),
            metrics: Metrics::default(),
            login_throttle: LoginThrottle::default(),
            jobs: Default::default(),
            reload_lock: tokio::sync::Mutex::new(()),
        });
        let undecryptable = state
            .reload()
            .await
            .map_err(|e| format!("Failed to load services: {e}"))?;
        if undecryptable > 0 {
            crate::log::warn!(
                "{undecryptable} upstream keys cannot be decrypted (wrong ENCRYPTION_KEY?): they \
                 are marked invalid and never sent"
            );
        }
        Ok(state)
    }

    /// Rebuilds the snapshot from the store; returns how many keys did not decrypt.
    pub async fn reload(&self) -> Result<usize, crate::store::StoreError> {
        let _guard = self.reload_lock.lock().await;
        let dump = self.store.load_all().await?;
        let client_keys = self.store.list_client_keys().await?;
        let snap = Snapshot::build(
            &dump,
            &self.registry,
            &self.metrics,
            &self.upstreams,
            now_ms(),
        );
        if let Some(usage) = &self.usage {
            usage.name_services(dump.services.iter().map(|s| (s.id, s.fields.slug.as_str())));
        }
        // Client keys first: a service that is served already has the keys that gate it.
        self.clients.rebuild(&client_keys);
        self.snapshot.store(snap);
        self.upstreams.prune();
        let cannot = Some(crate::store::keyring::CANNOT_DECRYPT);
        let undecryptable = dump
            .keys
            .iter()
            .filter(|k| k.health.invalid_reason.as_deref() == cannot)
            .count();
        drop(dump);
        release_freed_memory();
        Ok(undecryptable)
    }

    /// Who `candidate` (a credential the client sent) is: a global proxy key (compared in
    /// constant time) or a client key (by its hash).
    pub fn caller(&self, candidate: &[u8]) -> Option<Caller> {
        if self.proxy_keys.check(candidate) {
            return Some(Caller::Global);
        }
        self.clients.find(candidate).map(Caller::Client)
    }

    /// After an admin changed some keys of one service: the snapshot follows without
    /// reading every key again (a 100,000-key pool is not re-read to add one), and other
    /// instances are told to reload.
    pub async fn keys_changed(&self, service_id: i64, change: KeyChange) -> Result<(), ApiError> {
        {
            let _guard = self.reload_lock.lock().await;
            let (remove, records): (Vec<i64>, Vec<KeyRecord>) = match change {
                KeyChange::Upserted(records) => (Vec::new(), records),
                KeyChange::Removed(ids) => {
                    self.registry.remove(&ids);
                    (ids, Vec::new())
                }
                KeyChange::Disabled(ids) => (ids, Vec::new()),
                KeyChange::Reset(ids) => {
                    for rt in ids.iter().filter_map(|id| self.registry.get(*id)) {
                        rt.reset();
                    }
                    (Vec::new(), Vec::new())
                }
            };
            let add: Vec<_> = records
                .iter()
                .map(|r| (r, self.registry.insert(r)))
                .collect();
            let remove = remove.into_iter().collect();
            let now = now_ms();
            if let Some(snap) = self.snapshot.load().patched(service_id, &remove, &add, now) {
                self.snapshot.store(snap);
            }
        }
        // The pool just replaced (100,000 entries, say) is free now.
        release_freed_memory();
        self.cache.publish_change();
        Ok(())
    }

    /// After an admin write: rebuild the snapshot and tell other instances.
    pub async fn changed(&self) -> Result<(), ApiError> {
        self.reload()
            .await
            .map_err(|e| ApiError::internal("saved, but reloading the services failed", e))?;
        self.cache.publish_change();
        Ok(())
    }
}

impl crate::cache::Listener for AppState {
    fn reload(&self) -> crate::store::BoxFuture<'_, Result<(), crate::store::StoreError>> {
        Box::pin(async move { AppState::reload(self).await.map(drop) })
    }

    fn key_event(&self, event: KeyEvent) {
        self.apply_key_event(event);
    }
}

impl AppState {
    /// Applies a key's health change another instance made (a cooldown or a reset).
    pub fn apply_key_event(&self, event: KeyEvent) {
        let (service_id, key_id) = match event {
            KeyEvent::Cooldown {
                service_id,
                key_id,
                until_ms,
            } => {
                if let Some(rt) = self.registry.get(key_id) {
                    rt.cool_until(until_ms);
                }
                (service_id, key_id)
            }
            KeyEvent::Reset { service_id, key_id } => {
                if let Some(rt) = self.registry.get(key_id) {
                    rt.reset();
                }
                (service_id, key_id)
            }
            // Persisted before it is announced: the reload that follows brings it.
            KeyEvent::Invalid { .. } => return,
        };
        let snap = self.snapshot.load();
        if let Some((svc, idx)) = snap.find_key(service_id, key_id) {
            svc.pool.refresh(idx, now_ms());
        }
    }
}

/// Gives freed memory back to the system: glibc keeps it otherwise. After a full reload
/// (the whole pool read once), a pool patch, and each statistics write: under steady
/// traffic, freed pages spread over the worker threads' arenas and the RSS crept up
/// though the memory in use did not (the soak test showed it).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}
