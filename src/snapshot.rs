//! The immutable in-memory view of active services and their enabled keys.
//!
//! Built from the store after every admin write (and, with Redis, on change notices),
//! then swapped whole. Proxied requests only ever read a snapshot.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use crate::keys::{KeyPool, KeyRegistry, KeyRuntime, PoolKey};
use crate::metrics::{Metrics, ServiceMetrics};
use crate::service::{self, Placement, ServiceSpec};
use crate::store::{Dump, KeyRecord, ServiceRecord};
use crate::upstream::{Pool, Upstreams};

/// One active service, ready for the hot path.
#[derive(Debug)]
pub struct Service {
    pub id: i64,
    /// Shared with the request log's traces (never the service: see `Trace::service`).
    pub slug: Arc<str>,
    pub spec: ServiceSpec,
    /// `Allow` for a 405, when the service restricts methods.
    pub allow: Option<String>,
    pub pool: KeyPool,
    /// Round-robin cursor; outlives snapshots.
    pub cursor: Arc<AtomicU64>,
    pub metrics: Arc<ServiceMetrics>,
    /// Connections to the upstream.
    pub conns: Arc<Pool>,
}

/// All active services by slug.
#[derive(Debug, Default)]
pub struct Snapshot {
    by_slug: HashMap<Box<str>, Arc<Service>>,
    list: Vec<Arc<Service>>,
}

impl Snapshot {
    /// Builds a snapshot from everything the store holds. Services whose fields cannot be
    /// used (possible in files written by the original, which validated nothing) are left
    /// out with a warning naming them.
    pub fn build(
        dump: &Dump,
        registry: &KeyRegistry,
        metrics: &Metrics,
        upstreams: &Upstreams,
        now_ms: u64,
    ) -> Snapshot {
        let runtimes = registry.sync(&dump.keys);
        let mut keys_by_service: HashMap<i64, Vec<&KeyRecord>> = HashMap::new();
        for k in dump.keys.iter().filter(|k| k.is_active) {
            keys_by_service
                .entry(k.proxy_config_id)
                .or_default()
                .push(k);
        }
        let mut snap = Snapshot::default();
        for rec in dump.services.iter().filter(|s| s.fields.is_active) {
            let spec = match service::spec(&rec.fields) {
                Ok(spec) => spec,
                Err(e) => {
                    crate::log::warn!(
                        "service '{}' (id {}) is not served: {}",
                        rec.fields.slug,
                        rec.id,
                        e.message
                    );
                    continue;
                }
            };
            let mut keys: Vec<PoolKey> = keys_by_service
                .remove(&rec.id)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|k| pool_key(k, &spec.placement, runtimes.get(&k.id)?))
                .collect();
            keys.sort_by_key(|k| k.id);
            let conns = upstreams.pool(&spec.upstream);
            let svc = Arc::new(Service {
                id: rec.id,
                slug: rec.fields.slug.as_str().into(),
                allow: spec.methods.as_ref().map(|m| allow_header(m)),
                spec,
                pool: KeyPool::new(keys, now_ms),
                cursor: registry.cursor(rec.id),
                metrics: metrics.service(&rec.fields.slug),
                conns,
            });
            snap.push(svc);
        }
        snap
    }

    /// Adds a service (in id order).
    fn push(&mut self, svc: Arc<Service>) {
        self.by_slug.insert(Box::from(&*svc.slug), svc.clone());
        self.list.push(svc);
    }

    /// The active service with this slug.
    #[inline]
    pub fn get(&self, slug: &str) -> Option<&Arc<Service>> {
        self.by_slug.get(slug)
    }

    /// Every active service, in id order.
    pub fn services(&self) -> &[Arc<Service>] {
        &self.list
    }

    /// This snapshot with one service's pool changed: the keys in `remove` gone, `add`
    /// (enabled keys, with their runtimes) added, and which keys are usable worked out
    /// again. Costs one pass over that service's keys, not a read of the store. `None`
    /// when the service is not served (nothing to change).
    pub fn patched(
        &self,
        service_id: i64,
        remove: &std::collections::HashSet<i64>,
        add: &[(&KeyRecord, Arc<KeyRuntime>)],
        now_ms: u64,
    ) -> Option<Snapshot> {
        let old = self.list.iter().find(|s| s.id == service_id)?;
        let added: std::collections::HashSet<i64> = add.iter().map(|(r, _)| r.id).collect();
        let mut keys: Vec<PoolKey> = old
            .pool
            .keys()
            .iter()
            .filter(|k| !remove.contains(&k.id) && !added.contains(&k.id))
            .cloned()
            .collect();
        keys.extend(
            add.iter()
                .filter(|(r, _)| r.is_active && !remove.contains(&r.id))
                .filter_map(|(r, rt)| pool_key(r, &old.spec.placement, rt)),
        );
        keys.sort_by_key(|k| k.id);
        let svc = Arc::new(Service {
            id: old.id,
            pool: KeyPool::new(keys, now_ms),
            slug: old.slug.clone(),
            spec: old.spec.clone(),
            allow: old.allow.clone(),
            cursor: old.cursor.clone(),
            metrics: old.metrics.clone(),
            conns: old.conns.clone(),
        });
        let mut snap = Snapshot::default();
        for s in &self.list {
            snap.push(if s.id == service_id {
                svc.clone()
            } else {
                s.clone()
            });
        }
        Some(snap)
    }

    /// The service and pool position of an enabled key.
    pub fn find_key(&self, service_id: i64, key_id: i64) -> Option<(&Arc<Service>, usize)> {
        let svc = self.list.iter().find(|s| s.id == service_id)?;
        Some((svc, svc.pool.position(key_id)?))
    }
}

/// A key ready for the hot path; `None` (with a warning) when it cannot be sent.
fn pool_key(k: &KeyRecord, placement: &Placement, rt: &Arc<KeyRuntime>) -> Option<PoolKey> {
    if k.key_value.is_empty() {
        // It did not decrypt (store::keyring): marked invalid, and nothing to send.
        return None;
    }
    let (prefix, header): (&'static [u8], bool) = match placement {
        Placement::Header { bearer: true, .. } => (b"Bearer ", true),
        Placement::Header { bearer: false, .. } => (b"", true),
        _ => (b"", false),
    };
    let Some(secret) = crate::keys::KeySecret::build(prefix, &k.key_value, header) else {
        crate::log::warn!(
            "key id {} has characters no request can carry (control characters); skipped",
            k.id
        );
        return None;
    };
    Some(PoolKey {
        id: k.id,
        secret,
        rt: rt.clone(),
    })
}

fn allow_header(methods: &[http::Method]) -> String {
    let mut list: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
    if !list.contains(&"OPTIONS") {
        list.push("OPTIONS");
    }
    list.join(", ")
}

/// The current snapshot, swapped whole.
#[derive(Debug, Default)]
pub struct SnapshotCell(RwLock<Arc<Snapshot>>);

impl SnapshotCell {
    /// The current snapshot.
    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the snapshot.
    pub fn store(&self, snap: Snapshot) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snap);
    }
}

/// The service record a snapshot service came from is not kept; admin code that needs
/// the spec of an inactive service builds it from the record with this.
pub fn spec_of(rec: &ServiceRecord) -> Result<ServiceSpec, service::FieldError> {
    service::spec(&rec.fields)
}
