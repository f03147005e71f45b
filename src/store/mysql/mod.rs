//! The MySQL store (enterprise build), for several instances sharing one database.
//!
//! Same semantics as the SQLite store (`sqlite.rs`, the reference): every operation runs
//! in one transaction (a batch is all or nothing), the same `Conflict`/`NotFound` errors,
//! the same counts and timestamps. MySQL specifics:
//!
//! * the schema is `mysql_schema.sql` plus `ADDED_COLUMNS`, created and migrated at start
//!   under a named lock (`GET_LOCK`), so instances starting together do not race, and so a
//!   database written by the original opens as it is;
//! * the database itself is created when missing and the user may;
//! * name and slug compare case-insensitively (the default collation, as the original),
//!   key values byte for byte;
//! * two instances racing to create the same name or slug: the unique index decides, and
//!   its duplicate-key error becomes the same `Conflict` the pre-check gives.
//!
//! Nothing here is on the proxy's hot path.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts};
use mysql_async::{Transaction, TxOpts};

mod client_keys;
mod key_pages;
mod rows;
mod schema;
mod usage;

use self::rows::*;
use self::schema::{create_database, with_migration_lock};
use super::{
    BatchOutcome, BoxFuture, DUMP_FORMAT, Dump, ImportOutcome, KeyHealth, KeyRecord, ServiceFields,
    ServiceRecord, StatsUpdate, Store, StoreError, StoreResult, UsageBatch,
};
use crate::config::MysqlConfig;
use crate::config::Secret;
use crate::seal::Sealer;
use crate::store::client_keys::{ClientKeyFields, ClientKeyRecord};
use crate::store::key_query::{self, BulkAction, KeyFilter, PageQuery, Selection};
use crate::store::keyring::{self, AtRest};
use crate::store::usage::{Bucket, LogEntry, RequestQuery, UsageQuery};
use std::sync::Arc;

/// How long connecting (TCP and handshake) may take: a host that swallows packets must
/// fail the start or an admin request, not hang it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// MySQL's duplicate-key error.
const ER_DUP_ENTRY: u16 = 1062;

/// A MySQL database.
pub struct MysqlStore {
    pool: Pool,
    /// Seals key values on their way in and opens them on their way out (`ENCRYPTION_KEY`).
    sealer: Option<Arc<Sealer>>,
}

/// One transaction, as the closures of [`MysqlStore::tx`] see it.
pub(super) type Tx = Transaction<'static>;

/// Rows per `exec_batch` in a large write.
const BATCH_ROWS: usize = 500;

/// Runs `stmt` once per row, [`BATCH_ROWS`] rows at a time: mysql_async writes a whole
/// batch's packets into one buffer before sending it, and a request log of 10,000 rows
/// took 17 MB at once (the soak test's heap profile), which the allocator then kept.
pub(super) async fn exec_rows<T: Sync>(
    tx: &mut Tx,
    stmt: &str,
    items: &[T],
    row: fn(&T) -> Params,
) -> StoreResult<()> {
    for chunk in items.chunks(BATCH_ROWS) {
        let rows: Vec<Params> = chunk.iter().map(row).collect();
        tx.exec_batch(stmt, rows).await.map_err(backend)?;
    }
    Ok(())
}

pub(super) fn backend(e: mysql_async::Error) -> StoreError {
    if let mysql_async::Error::Server(s) = &e {
        // A concurrent writer won the race the pre-check could not see.
        if s.code == ER_DUP_ENTRY {
            if s.message.contains("idx_proxy_configs_slug") {
                return StoreError::Conflict("slug");
            }
            if s.message.contains("idx_proxy_configs_name") {
                return StoreError::Conflict("name");
            }
            if s.message.contains("secret_hash") {
                return StoreError::Conflict("secret");
            }
        }
    }
    StoreError::Backend(e.to_string())
}

pub(super) fn connect_opts(c: &MysqlConfig, database: Option<&str>) -> Opts {
    let pass = Some(c.password.expose()).filter(|p| !p.is_empty());
    OptsBuilder::default()
        .ip_or_hostname(c.host.clone())
        .tcp_port(c.port)
        .user(Some(c.user.clone()))
        .pass(pass)
        .db_name(database)
        // Admin writes are rare and the hot path never comes here: a few connections do.
        .pool_opts(
            PoolOpts::default().with_constraints(PoolConstraints::new(0, 8).expect("0 <= 8")),
        )
        .into()
}

impl MysqlStore {
    /// Connects (creating the database when it is missing and the user may) and migrates.
    /// With `reset`, the tables are dropped first: every service and key is lost.
    pub async fn open(config: &MysqlConfig, reset: bool) -> StoreResult<MysqlStore> {
        create_database(config).await?;
        let pool = Pool::new(connect_opts(config, Some(&config.database)));
        let mut conn = connecting(pool.get_conn()).await?;
        with_migration_lock(&mut conn, reset).await?;
        drop(conn);
        Ok(MysqlStore { pool, sealer: None })
    }

    /// [`open`](Self::open), then encryption as the database and `key` (`ENCRYPTION_KEY`)
    /// say ([`keyring::decide`]): refused when they disagree.
    pub async fn open_encrypted(
        config: &MysqlConfig,
        reset: bool,
        (key, previous): (Option<&Secret>, Option<&Secret>),
    ) -> Result<MysqlStore, String> {
        let mut store = Self::open(config, reset).await.map_err(|e| e.to_string())?;
        let db = store
            .tx(|tx| Box::pin(at_rest(tx)))
            .await
            .map_err(|e| e.to_string())?;
        let (sealer, writes) = keyring::decide(&db, key, previous)?;
        store
            .tx(move |tx| {
                Box::pin(async move {
                    for (name, value) in writes {
                        // INSERT IGNORE: when instances start together, the first one's
                        // salt wins, and the check below sees it.
                        exec(
                            tx,
                            "INSERT IGNORE INTO rotator_meta (name, value) VALUES (?, ?)",
                            Params::from((name, value)),
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .await
            .map_err(|e| e.to_string())?;
        if sealer.is_some() {
            // Another instance may have written its salt first: decide again on what is there.
            let now = store
                .tx(|tx| Box::pin(at_rest(tx)))
                .await
                .map_err(|e| e.to_string())?;
            store.sealer = keyring::decide(&now, key, previous)?.0;
        }
        store.fill_tails().await.map_err(|e| e.to_string())?;
        Ok(store)
    }

    /// Gives sealed keys stored before `key_tail` existed their tail (searched by `q`; the
    /// migration fills plain ones).
    async fn fill_tails(&self) -> StoreResult<()> {
        let sealer = self.sealer.clone();
        self.tx(move |tx| {
            Box::pin(async move {
                let rows: Vec<(i64, String, i64)> =
                    tx.exec(keyring::TAILLESS, ()).await.map_err(backend)?;
                let tails = keyring::tails(sealer.as_deref(), rows);
                exec_rows(
                    tx,
                    "UPDATE api_keys SET key_tail = ? WHERE id = ?",
                    &tails,
                    |(t, id)| Params::from((t.as_str(), *id)),
                )
                .await
            })
        })
        .await
    }

    /// Runs `f` in a transaction: committed when it returns `Ok`, rolled back otherwise.
    fn tx<'a, T, F>(&'a self, f: F) -> BoxFuture<'a, StoreResult<T>>
    where
        T: Send + 'a,
        F: for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, StoreResult<T>> + Send + 'a,
    {
        Box::pin(async move {
            let mut tx = connecting(self.pool.start_transaction(TxOpts::default())).await?;
            match f(&mut tx).await {
                Ok(out) => {
                    tx.commit().await.map_err(backend)?;
                    Ok(out)
                }
                Err(e) => {
                    // The error that matters is `e`; a failed rollback ends with the connection.
                    let _ = tx.rollback().await;
                    Err(e)
                }
            }
        })
    }
}

/// Waits for a connection at most [`CONNECT_TIMEOUT`].
pub(super) async fn connecting<T>(
    fut: impl Future<Output = Result<T, mysql_async::Error>>,
) -> StoreResult<T> {
    match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
        Ok(result) => result.map_err(backend),
        Err(_) => Err(StoreError::Backend(format!(
            "no answer from the MySQL server within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

impl Store for MysqlStore {
    fn kind(&self) -> &'static str {
        "mysql"
    }

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let mut conn = connecting(self.pool.get_conn()).await?;
            conn.ping().await.map_err(backend)
        })
    }

    fn load_all(&self) -> BoxFuture<'_, StoreResult<Dump>> {
        // One transaction: services and keys from the same moment.
        let sealer = self.sealer.clone();
        self.tx(|tx| {
            Box::pin(async move {
                let mut keys = query_keys(tx, "", Params::Empty).await?;
                keyring::open_keys(sealer.as_deref(), &mut keys);
                Ok(Dump {
                    format: DUMP_FORMAT.into(),
                    services: query_services(tx, "", Params::Empty).await?,
                    keys,
                })
            })
        })
    }

    fn list_services(&self) -> BoxFuture<'_, StoreResult<Vec<ServiceRecord>>> {
        self.tx(|tx| Box::pin(query_services(tx, "", Params::Empty)))
    }

    fn get_service(&self, id: i64) -> BoxFuture<'_, StoreResult<Option<ServiceRecord>>> {
        self.tx(move |tx| Box::pin(service_by_id(tx, id)))
    }

    fn create_service(&self, fields: ServiceFields) -> BoxFuture<'_, StoreResult<ServiceRecord>> {
        self.tx(move |tx| {
            Box::pin(async move {
                check_unique(tx, &fields, -1).await?;
                let id = insert_service(tx, &fields).await?;
                service_by_id(tx, id).await?.ok_or(StoreError::NotFound)
            })
        })
    }

    fn update_service(
        &self,
        id: i64,
        fields: ServiceFields,
    ) -> BoxFuture<'_, StoreResult<ServiceRecord>> {
        self.tx(move |tx| {
            Box::pin(async move {
                require_service(tx, id).await?;
                check_unique(tx, &fields, id).await?;
                update_service_row(tx, id, &fields).await?;
                service_by_id(tx, id).await?.ok_or(StoreError::NotFound)
            })
        })
    }

    fn set_service_active(&self, id: i64, active: bool) -> BoxFuture<'_, StoreResult<()>> {
        self.tx(move |tx| {
            Box::pin(async move {
                require_service(tx, id).await?;
                exec(
                    tx,
                    "UPDATE proxy_configs SET is_active = ?, updated_at = ? WHERE id = ?",
                    Params::from((active, now_datetime(), id)),
                )
                .await
                .map(drop)
            })
        })
    }

    fn delete_service(&self, id: i64) -> BoxFuture<'_, StoreResult<()>> {
        self.tx(move |tx| {
            Box::pin(async move {
                // Explicit, in case a table predates the foreign key.
                exec(
                    tx,
                    "DELETE FROM api_keys WHERE proxy_config_id = ?",
                    Params::from((id,)),
                )
                .await?;
                let n = exec(
                    tx,
                    "DELETE FROM proxy_configs WHERE id = ?",
                    Params::from((id,)),
                )
                .await?;
                changed_or_missing(n)
            })
        })
    }

    fn list_keys(&self, service_id: i64) -> BoxFuture<'_, StoreResult<Vec<KeyRecord>>> {
        let sealer = self.sealer.clone();
        self.tx(move |tx| {
            Box::pin(async move {
                require_service(tx, service_id).await?;
                let mut keys =
                    query_keys(tx, "WHERE proxy_config_id = ?", Params::from((service_id,)))
                        .await?;
                keyring::open_keys(sealer.as_deref(), &mut keys);
                Ok(keys)
            })
        })
    }

    fn page_keys(&self, q: PageQuery) -> BoxFuture<'_, StoreResult<Vec<KeyRecord>>> {
        let sealer = self.sealer.clone();
        self.tx(move |tx| Box::pin(async move { key_pages::page(tx, sealer.as_deref(), &q).await }))
    }

    fn count_keys(&self, service_id: i64, filter: KeyFilter) -> BoxFuture<'_, StoreResult<u64>> {
        let sealer = self.sealer.clone();
        self.tx(move |tx| {
            Box::pin(
                async move { key_pages::count(tx, sealer.as_deref(), service_id, &filter).await },
            )
        })
    }

    fn select_keys(
        &self,
        service_id: i64,
        selection: Selection,
    ) -> BoxFuture<'_, StoreResult<Vec<i64>>> {
        let sealer = self.sealer.clone();
        self.tx(move |tx| {
            Box::pin(async move {
                key_pages::select(tx, sealer.as_deref(), service_id, &selection).await
            })
        })
    }

    fn bulk_keys(
        &self,
        service_id: i64,
        selection: Selection,
        action: BulkAction,
    ) -> BoxFuture<'_, StoreResult<Vec<i64>>> {
        let sealer = self.sealer.clone();
        self.tx(move |tx| {
            Box::pin(async move {
                key_pages::bulk(tx, sealer.as_deref(), service_id, &selection, action).await
            })
        })
    }

    fn set_key_note(&self, key_id: i64, note: Option<String>) -> BoxFuture<'_, StoreResult<()>> {
        self.tx(move |tx| {
            Box::pin(async move {
                require_key(tx, key_id).await?;
                exec(
                    tx,
                    "UPDATE api_keys SET note = ? WHERE id = ?",
                    Params::from((note, key_id)),
                )
                .await
                .map(drop)
            })
        })
    }

    fn get_key(&self, key_id: i64) -> BoxFuture<'_, StoreResult<Option<KeyRecord>>> {
        let sealer = self.sealer.clone();
        self.tx(move |tx| {
            Box::pin(async move {
                let mut keys: Vec<KeyRecord> = key_by_id(tx, key_id).await?.into_iter().collect();
                keyring::open_keys(sealer.as_deref(), &mut keys);
                Ok(keys.pop())
            })
        })
    }

    fn add_key(
        &self,
        service_id: i64,
        value: String,
        active: bool,
    ) -> BoxFuture<'_, StoreResult<KeyRecord>> {
        let sealer = self.sealer.clone();
        self.tx(move |tx| {
            Box::pin(async move {
                require_service(tx, service_id).await?;
                let stored = keyring::to_store(sealer.as_deref(), &value, service_id)?;
                if find_key(
                    tx,
                    service_id,
                    &value,
                    &keyring::lookups(sealer.as_deref(), &value),
                )
                .await?
                .is_some()
                {
                    return Err(StoreError::Conflict("key_value"));
                }
                let tail = key_query::tail(&value);
                let id = insert_key(tx, service_id, &stored, &tail, active).await?;
                let mut keys: Vec<KeyRecord> = key_by_id(tx, id).await?.into_iter().collect();
                keyring::open_keys(sealer.as_deref(), &mut keys);
                keys.pop().ok_or(StoreError::NotFound)
            })
        })
    }

    fn add_keys(
        &self,
        service_id: i64,
        values: Vec<String>,
    ) -> BoxFuture<'_, StoreResult<BatchOutcome>> {
        let sealer = self.sealer.clone();
        self.tx(move |tx| {
            Box::pin(async move {
                require_service(tx, service_id).await?;
                // Stored values (those never encrypted) and lookups (of encrypted ones).
                let stored: Vec<(String, Option<String>)> = tx
                    .exec(
                        "SELECT key_value, key_lookup FROM api_keys WHERE proxy_config_id = ?",
                        (service_id,),
                    )
                    .await
                    .map_err(backend)?;
                let mut seen = HashSet::new();
                let mut seen_lookups = HashSet::new();
                for (value, lookup) in stored {
                    match lookup {
                        Some(l) => seen_lookups.insert(l),
                        None => seen.insert(value),
                    };
                }
                let mut out = BatchOutcome::default();
                let mut new = Vec::new();
                for value in values {
                    let row = keyring::to_store(sealer.as_deref(), &value, service_id)?;
                    // Under this key's lookup or (during a rekey) the previous key's.
                    let all = keyring::lookups(sealer.as_deref(), &value);
                    let dup_lookup = all.iter().any(|l| seen_lookups.contains(l))
                        || row
                            .1
                            .as_ref()
                            .is_some_and(|l| !seen_lookups.insert(l.clone()));
                    let tail = key_query::tail(&value);
                    if !seen.insert(value) || dup_lookup {
                        out.skipped_count += 1;
                    } else {
                        new.push((row, tail));
                    }
                }
                insert_keys(tx, service_id, &new).await?;
                out.success_count = new.len() as u64;
                Ok(out)
            })
        })
    }

    fn clear_keys(&self, service_id: i64) -> BoxFuture<'_, StoreResult<u64>> {
        self.tx(move |tx| {
            Box::pin(async move {
                require_service(tx, service_id).await?;
                exec(
                    tx,
                    "DELETE FROM api_keys WHERE proxy_config_id = ?",
                    Params::from((service_id,)),
                )
                .await
            })
        })
    }

    fn set_key_active(&self, key_id: i64, active: bool) -> BoxFuture<'_, StoreResult<()>> {
        self.tx(move |tx| {
            Box::pin(async move {
                require_key(tx, key_id).await?;
                exec(
                    tx,
                    "UPDATE api_keys SET is_active = ? WHERE id = ?",
                    Params::from((active, key_id)),
                )
                .await
                .map(drop)
            })
        })
    }

    fn delete_key(&self, key_id: i64) -> BoxFuture<'_, StoreResult<()>> {
        self.tx(move |tx| {
            Box::pin(async move {
                let n = exec(
                    tx,
                    "DELETE FROM api_keys WHERE id = ?",
                    Params::from((key_id,)),
                )
                .await?;
                changed_or_missing(n)
            })
        })
    }

    fn set_key_health(&self, key_id: i64, h: KeyHealth) -> BoxFuture<'_, StoreResult<()>> {
        self.tx(move |tx| {
            Box::pin(async move {
                require_key(tx, key_id).await?;
                exec(
                    tx,
                    "UPDATE api_keys SET invalid_reason = ?, invalid_at = ?, cooldown_until = ? \
                     WHERE id = ?",
                    Params::from((h.invalid_reason, h.invalid_at, h.cooldown_until, key_id)),
                )
                .await
                .map(drop)
            })
        })
    }

    fn save_stats(&self, updates: Vec<StatsUpdate>) -> BoxFuture<'_, StoreResult<()>> {
        self.tx(move |tx| {
            Box::pin(async move {
                let params = |u: &StatsUpdate| {
                    Params::Positional(vec![
                        u.requests.into(),
                        u.successes.into(),
                        u.failures.into(),
                        u.consecutive_failures.into(),
                        u.last_used_at.into(),
                        u.last_status.into(),
                        u.last_error.clone().into(),
                        u.cooldown_until.into(),
                        u.key_id.into(),
                    ])
                };
                exec_rows(
                    tx,
                    "UPDATE api_keys SET request_count = request_count + ?, \
                     success_count = success_count + ?, failure_count = failure_count + ?, \
                     consecutive_failures = ?, last_used_at = COALESCE(?, last_used_at), \
                     last_status = COALESCE(?, last_status), \
                     last_error = COALESCE(?, last_error), cooldown_until = ? WHERE id = ?",
                    &updates,
                    params,
                )
                .await
            })
        })
    }

    fn import(&self, dump: Dump) -> BoxFuture<'_, StoreResult<ImportOutcome>> {
        let sealer = self.sealer.clone();
        self.tx(move |tx| Box::pin(import_dump(tx, dump, sealer)))
    }

    fn save_usage(&self, batch: std::sync::Arc<UsageBatch>) -> BoxFuture<'_, StoreResult<()>> {
        self.tx(move |tx| Box::pin(usage::save(tx, batch)))
    }

    fn query_usage(&self, q: UsageQuery) -> BoxFuture<'_, StoreResult<Vec<Bucket>>> {
        self.tx(move |tx| Box::pin(usage::buckets(tx, q)))
    }

    fn query_requests(&self, q: RequestQuery) -> BoxFuture<'_, StoreResult<Vec<LogEntry>>> {
        self.tx(move |tx| Box::pin(usage::entries(tx, q)))
    }

    fn convert_keys(&self, to_plain: bool, batch: usize) -> BoxFuture<'_, StoreResult<usize>> {
        let sealer = self.sealer.clone();
        self.tx(move |tx| {
            Box::pin(async move {
                let rows: Vec<(i64, String, i64)> = tx
                    .exec(keyring::to_convert(to_plain), (batch as u64,))
                    .await
                    .map_err(backend)?;
                for row in &rows {
                    let (value, lookup) = keyring::converted(sealer.as_deref(), to_plain, row)?;
                    exec(
                        tx,
                        keyring::CONVERT,
                        Params::from((value, lookup, row.0, row.1.as_str())),
                    )
                    .await?;
                }
                if to_plain && rows.is_empty() {
                    exec(
                        tx,
                        "DELETE FROM rotator_meta WHERE name = ?",
                        Params::from((keyring::META_KEY_ID,)),
                    )
                    .await?;
                }
                Ok(rows.len())
            })
        })
    }

    fn rekey_keys(&self, to: Secret, batch: usize) -> BoxFuture<'_, StoreResult<usize>> {
        let sealer = self.sealer.clone();
        self.tx(move |tx| {
            Box::pin(async move {
                let salt: Option<String> = first(
                    tx,
                    "SELECT value FROM rotator_meta WHERE name = ?",
                    Params::from((keyring::META_SALT,)),
                )
                .await?;
                let (from, to) = keyring::rekey_pair(sealer.as_ref(), salt, &to)?;
                let rows: Vec<(i64, String, i64)> = tx
                    .exec(keyring::TO_REKEY, (keyring::sealed_by(&from), batch as u64))
                    .await
                    .map_err(backend)?;
                for row in &rows {
                    let (value, lookup) = keyring::resealed(&from, &to, row)?;
                    exec(
                        tx,
                        keyring::CONVERT,
                        Params::from((value, lookup, row.0, row.1.as_str())),
                    )
                    .await?;
                }
                if rows.is_empty() {
                    exec(
                        tx,
                        "UPDATE rotator_meta SET value = ? WHERE name = ?",
                        Params::from((to.id(), keyring::META_KEY_ID)),
                    )
                    .await?;
                }
                Ok(rows.len())
            })
        })
    }

    fn list_client_keys(&self) -> BoxFuture<'_, StoreResult<Vec<ClientKeyRecord>>> {
        self.tx(|tx| Box::pin(client_keys::list(tx)))
    }

    fn create_client_key(
        &self,
        fields: ClientKeyFields,
        prefix: String,
        hash: String,
    ) -> BoxFuture<'_, StoreResult<ClientKeyRecord>> {
        self.tx(move |tx| Box::pin(client_keys::create(tx, fields, prefix, hash)))
    }

    fn update_client_key(
        &self,
        id: i64,
        fields: ClientKeyFields,
    ) -> BoxFuture<'_, StoreResult<ClientKeyRecord>> {
        self.tx(move |tx| Box::pin(client_keys::update(tx, id, fields)))
    }

    fn delete_client_key(&self, id: i64) -> BoxFuture<'_, StoreResult<()>> {
        self.tx(move |tx| Box::pin(client_keys::delete(tx, id)))
    }

    fn touch_client_keys(&self, used: Vec<(i64, i64)>) -> BoxFuture<'_, StoreResult<()>> {
        self.tx(move |tx| Box::pin(client_keys::touch(tx, used)))
    }
}

async fn require_key(tx: &mut Tx, key_id: i64) -> StoreResult<()> {
    first::<i64>(
        tx,
        "SELECT id FROM api_keys WHERE id = ?",
        Params::from((key_id,)),
    )
    .await?
    .map(|_| ())
    .ok_or(StoreError::NotFound)
}

/// What the database holds of encryption.
async fn at_rest(tx: &mut Tx) -> StoreResult<AtRest> {
    let salt: Option<String> = first(
        tx,
        "SELECT value FROM rotator_meta WHERE name = ?",
        Params::from((keyring::META_SALT,)),
    )
    .await?;
    let key_id: Option<String> = first(
        tx,
        "SELECT value FROM rotator_meta WHERE name = ?",
        Params::from((keyring::META_KEY_ID,)),
    )
    .await?;
    let sealed: Option<i64> = first(tx, keyring::COUNT_SEALED, Params::Empty).await?;
    Ok(AtRest {
        salt,
        key_id,
        sealed_rows: sealed.unwrap_or(0) as u64,
    })
}

async fn import_dump(
    tx: &mut Tx,
    dump: Dump,
    sealer: Option<Arc<Sealer>>,
) -> StoreResult<ImportOutcome> {
    let mut out = ImportOutcome::default();
    let mut id_map = HashMap::new();
    for s in &dump.services {
        let existing: Option<i64> = first(
            tx,
            "SELECT id FROM proxy_configs WHERE slug = ?",
            Params::from((s.fields.slug.as_str(),)),
        )
        .await?;
        let id = match existing {
            Some(id) => {
                check_unique(tx, &s.fields, id).await?;
                update_service_row(tx, id, &s.fields).await?;
                out.services_updated += 1;
                id
            }
            None => {
                check_unique(tx, &s.fields, -1).await?;
                out.services_created += 1;
                insert_service(tx, &s.fields).await?
            }
        };
        id_map.insert(s.id, id);
    }
    for k in &dump.keys {
        let Some(&service_id) = id_map.get(&k.proxy_config_id) else {
            continue;
        };
        let stored = keyring::to_store(sealer.as_deref(), &k.key_value, service_id)?;
        let existing = find_key(
            tx,
            service_id,
            &k.key_value,
            &keyring::lookups(sealer.as_deref(), &k.key_value),
        )
        .await?;
        let id = match existing {
            Some(id) => {
                out.keys_updated += 1;
                id
            }
            None => {
                out.keys_created += 1;
                let tail = key_query::tail(&k.key_value);
                insert_key(tx, service_id, &stored, &tail, k.is_active).await?
            }
        };
        write_key_state(tx, id, k).await?;
    }
    Ok(out)
}
