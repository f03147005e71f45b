//! The SQLite store (lightweight build).
//!
//! One connection behind a mutex, used from `spawn_blocking`: admin writes are rare, and
//! proxied requests never come here. WAL with `synchronous=FULL` (an admin's "saved"
//! survives a power cut), `foreign_keys=ON` (deleting a service deletes its keys, which
//! the original forgot), `busy_timeout`, and `BEGIN IMMEDIATE` for every write.

use std::path::Path;
use std::sync::{Arc, Mutex};

mod client_keys;
mod key_pages;
mod rows;
mod schema;
mod usage;

use self::rows::*;
use self::schema::migrate;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{
    BatchOutcome, BoxFuture, DUMP_FORMAT, Dump, ImportOutcome, KeyHealth, KeyRecord, ServiceFields,
    ServiceRecord, StatsUpdate, Store, StoreError, StoreResult, UsageBatch,
};
use crate::config::Secret;
use crate::seal::Sealer;
use crate::store::client_keys::{ClientKeyFields, ClientKeyRecord};
use crate::store::key_query::{self, BulkAction, KeyFilter, PageQuery, Selection};
use crate::store::keyring::{self, AtRest};
use crate::store::usage::{Bucket, LogEntry, RequestQuery, UsageQuery};

/// A SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Seals key values on their way in and opens them on their way out (`ENCRYPTION_KEY`).
    sealer: Option<Arc<Sealer>>,
}

pub(super) fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (creating the directory and file if needed) and migrates the database.
    /// With `reset`, the tables are dropped first: every service and key is lost.
    pub async fn open(path: &Path, reset: bool) -> StoreResult<SqliteStore> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            check_writable(&path)?;
            let conn = Connection::open(&path).map_err(backend)?;
            Self::from_connection(conn, reset)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    /// Sets the pragmas and migrates an open connection.
    pub fn from_connection(mut conn: Connection, reset: bool) -> StoreResult<SqliteStore> {
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(backend)?;
        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
            crate::log::warn!("SQLite journal_mode is {mode}, not WAL");
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(backend)?;
        // What is deleted or overwritten is zeroed in the file (an old key value, say).
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(backend)?;
        migrate(&mut conn, reset)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            sealer: None,
        })
    }

    /// [`open`](Self::open), then encryption as the database and `key` (`ENCRYPTION_KEY`)
    /// say ([`keyring::decide`]): refused when they disagree.
    pub async fn open_encrypted(
        path: &Path,
        reset: bool,
        (key, previous): (Option<&Secret>, Option<&Secret>),
    ) -> Result<SqliteStore, String> {
        let mut store = Self::open(path, reset).await.map_err(|e| e.to_string())?;
        let at_rest = store.run(at_rest).await.map_err(|e| e.to_string())?;
        let (sealer, writes) = keyring::decide(&at_rest, key, previous)?;
        store
            .write(move |tx| {
                for (name, value) in writes {
                    tx.execute(
                        "INSERT OR REPLACE INTO rotator_meta (name, value) VALUES (?1, ?2)",
                        params![name, value],
                    )
                    .map_err(backend)?;
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?;
        store.sealer = sealer;
        store.fill_tails().await.map_err(|e| e.to_string())?;
        Ok(store)
    }

    /// Gives sealed keys stored before `key_tail` existed their tail (searched by `q`; the
    /// migration fills plain ones).
    async fn fill_tails(&self) -> StoreResult<()> {
        let sealer = self.sealer.clone();
        self.write(move |tx| {
            let rows: Vec<(i64, String, i64)> = tx
                .prepare(keyring::TAILLESS)
                .and_then(|mut s| {
                    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect()
                })
                .map_err(backend)?;
            for (tail, id) in keyring::tails(sealer.as_deref(), rows) {
                tx.execute(
                    "UPDATE api_keys SET key_tail = ?1 WHERE id = ?2",
                    params![tail, id],
                )
                .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    /// Runs `f` with the connection on the blocking pool.
    fn run<T, F>(&self, f: F) -> BoxFuture<'_, StoreResult<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut guard)
            })
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
        })
    }

    /// Runs `f` inside `BEGIN IMMEDIATE … COMMIT` (rolled back on error).
    fn write<T, F>(&self, f: F) -> BoxFuture<'_, StoreResult<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let out = f(&tx)?;
            tx.commit().map_err(backend)?;
            Ok(out)
        })
    }
}

/// Checks, before SQLite tries, that the directory of `path` exists (creating it) and
/// is writable, and that the file, if there, can be written: SQLite would only say
/// "unable to open database file", or open it read-only and fail at the first write.
fn check_writable(path: &Path) -> StoreResult<()> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d,
        None => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| not_writable("create the directory", dir, &e))?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .map_err(|e| not_writable("write in the directory", dir, &e))?;
    let _ = std::fs::remove_file(&probe);
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(not_writable("write the database file", path, &e))
        }
        _ => Ok(()),
    }
}

/// One line: what failed, where, as whom, and the fix.
fn not_writable(what: &str, path: &Path, e: &std::io::Error) -> StoreError {
    // SAFETY: getuid and getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let fix = if e.raw_os_error() == Some(libc::EROFS) {
        "the file system is read-only: mount a writable volume there (e.g. -v rotator_data:/app/data) or set DATABASE_PATH to a writable place".to_string()
    } else {
        format!(
            "make it writable by uid {uid}: on the host, `sudo chown -R {uid}:{gid} ./data` for a bind mount, or use a named volume (-v rotator_data:/app/data); or set DATABASE_PATH to a writable place"
        )
    };
    StoreError::Backend(format!(
        "cannot {what} {} (running as uid {uid}, gid {gid}): {e}. Fix: {fix}",
        path.display()
    ))
}

impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        self.run(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
    }

    fn load_all(&self) -> BoxFuture<'_, StoreResult<Dump>> {
        let sealer = self.sealer.clone();
        self.run(move |c| {
            let mut keys = query_keys(c, "", &[])?;
            keyring::open_keys(sealer.as_deref(), &mut keys);
            Ok(Dump {
                format: DUMP_FORMAT.into(),
                services: query_services(c, "", &[])?,
                keys,
            })
        })
    }

    fn list_services(&self) -> BoxFuture<'_, StoreResult<Vec<ServiceRecord>>> {
        self.run(|c| query_services(c, "", &[]))
    }

    fn get_service(&self, id: i64) -> BoxFuture<'_, StoreResult<Option<ServiceRecord>>> {
        self.run(move |c| service_by_id(c, id))
    }

    fn create_service(&self, fields: ServiceFields) -> BoxFuture<'_, StoreResult<ServiceRecord>> {
        self.write(move |tx| {
            check_unique(tx, &fields, -1)?;
            let id = insert_service(tx, &fields)?;
            service_by_id(tx, id)?.ok_or(StoreError::NotFound)
        })
    }

    fn update_service(
        &self,
        id: i64,
        fields: ServiceFields,
    ) -> BoxFuture<'_, StoreResult<ServiceRecord>> {
        self.write(move |tx| {
            if !service_exists(tx, id)? {
                return Err(StoreError::NotFound);
            }
            check_unique(tx, &fields, id)?;
            update_service_row(tx, id, &fields)?;
            service_by_id(tx, id)?.ok_or(StoreError::NotFound)
        })
    }

    fn set_service_active(&self, id: i64, active: bool) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |tx| {
            changed_or_missing(
                tx.execute(
                    "UPDATE proxy_configs SET is_active = ?2, updated_at = ?3 WHERE id = ?1",
                    params![id, active, now_text()],
                )
                .map_err(backend)?,
            )
        })
    }

    fn delete_service(&self, id: i64) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |tx| {
            // Explicit, in case a file's table predates the foreign key.
            tx.execute("DELETE FROM api_keys WHERE proxy_config_id = ?1", [id])
                .map_err(backend)?;
            changed_or_missing(
                tx.execute("DELETE FROM proxy_configs WHERE id = ?1", [id])
                    .map_err(backend)?,
            )
        })
    }

    fn list_keys(&self, service_id: i64) -> BoxFuture<'_, StoreResult<Vec<KeyRecord>>> {
        let sealer = self.sealer.clone();
        self.run(move |c| {
            if !service_exists(c, service_id)? {
                return Err(StoreError::NotFound);
            }
            let mut keys = query_keys(c, "WHERE proxy_config_id = ?1", &[&service_id])?;
            keyring::open_keys(sealer.as_deref(), &mut keys);
            Ok(keys)
        })
    }

    fn page_keys(&self, q: PageQuery) -> BoxFuture<'_, StoreResult<Vec<KeyRecord>>> {
        let sealer = self.sealer.clone();
        self.run(move |c| key_pages::page(c, sealer.as_deref(), &q))
    }

    fn count_keys(&self, service_id: i64, filter: KeyFilter) -> BoxFuture<'_, StoreResult<u64>> {
        let sealer = self.sealer.clone();
        self.run(move |c| key_pages::count(c, sealer.as_deref(), service_id, &filter))
    }

    fn select_keys(
        &self,
        service_id: i64,
        selection: Selection,
    ) -> BoxFuture<'_, StoreResult<Vec<i64>>> {
        let sealer = self.sealer.clone();
        self.run(move |c| key_pages::select(c, sealer.as_deref(), service_id, &selection))
    }

    fn bulk_keys(
        &self,
        service_id: i64,
        selection: Selection,
        action: BulkAction,
    ) -> BoxFuture<'_, StoreResult<Vec<i64>>> {
        let sealer = self.sealer.clone();
        self.write(move |tx| key_pages::bulk(tx, sealer.as_deref(), service_id, &selection, action))
    }

    fn set_key_note(&self, key_id: i64, note: Option<String>) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |tx| {
            changed_or_missing(
                tx.execute(
                    "UPDATE api_keys SET note = ?2 WHERE id = ?1",
                    params![key_id, note],
                )
                .map_err(backend)?,
            )
        })
    }

    fn get_key(&self, key_id: i64) -> BoxFuture<'_, StoreResult<Option<KeyRecord>>> {
        let sealer = self.sealer.clone();
        self.run(move |c| {
            let mut keys = query_keys(c, "WHERE id = ?1", &[&key_id])?;
            keyring::open_keys(sealer.as_deref(), &mut keys);
            Ok(keys.pop())
        })
    }

    fn add_key(
        &self,
        service_id: i64,
        value: String,
        active: bool,
    ) -> BoxFuture<'_, StoreResult<KeyRecord>> {
        let sealer = self.sealer.clone();
        self.write(move |tx| {
            if !service_exists(tx, service_id)? {
                return Err(StoreError::NotFound);
            }
            let id = insert_new(tx, sealer.as_deref(), service_id, &value, active)?
                .ok_or(StoreError::Conflict("key_value"))?;
            let mut keys = query_keys(tx, "WHERE id = ?1", &[&id])?;
            keyring::open_keys(sealer.as_deref(), &mut keys);
            keys.pop().ok_or(StoreError::NotFound)
        })
    }

    fn add_keys(
        &self,
        service_id: i64,
        values: Vec<String>,
    ) -> BoxFuture<'_, StoreResult<BatchOutcome>> {
        let sealer = self.sealer.clone();
        self.write(move |tx| {
            if !service_exists(tx, service_id)? {
                return Err(StoreError::NotFound);
            }
            let mut out = BatchOutcome::default();
            for value in values {
                match insert_new(tx, sealer.as_deref(), service_id, &value, true)? {
                    Some(_) => out.success_count += 1,
                    None => out.skipped_count += 1,
                }
            }
            Ok(out)
        })
    }

    fn clear_keys(&self, service_id: i64) -> BoxFuture<'_, StoreResult<u64>> {
        self.write(move |tx| {
            if !service_exists(tx, service_id)? {
                return Err(StoreError::NotFound);
            }
            let n = tx
                .execute(
                    "DELETE FROM api_keys WHERE proxy_config_id = ?1",
                    [service_id],
                )
                .map_err(backend)?;
            Ok(n as u64)
        })
    }

    fn set_key_active(&self, key_id: i64, active: bool) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |tx| {
            changed_or_missing(
                tx.execute(
                    "UPDATE api_keys SET is_active = ?2 WHERE id = ?1",
                    params![key_id, active],
                )
                .map_err(backend)?,
            )
        })
    }

    fn delete_key(&self, key_id: i64) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |tx| {
            changed_or_missing(
                tx.execute("DELETE FROM api_keys WHERE id = ?1", [key_id])
                    .map_err(backend)?,
            )
        })
    }

    fn set_key_health(&self, key_id: i64, h: KeyHealth) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |tx| {
            changed_or_missing(
                tx.execute(
                    "UPDATE api_keys SET invalid_reason = ?2, invalid_at = ?3, cooldown_until = ?4 WHERE id = ?1",
                    params![key_id, h.invalid_reason, h.invalid_at, h.cooldown_until],
                )
                .map_err(backend)?,
            )
        })
    }

    fn save_stats(&self, updates: Vec<StatsUpdate>) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE api_keys SET request_count = request_count + ?2, \
                     success_count = success_count + ?3, failure_count = failure_count + ?4, \
                     consecutive_failures = ?5, last_used_at = COALESCE(?6, last_used_at), \
                     last_status = COALESCE(?7, last_status), last_error = COALESCE(?8, last_error), \
                     cooldown_until = ?9 WHERE id = ?1",
                )
                .map_err(backend)?;
            for u in updates {
                stmt.execute(params![
                    u.key_id, u.requests, u.successes, u.failures, u.consecutive_failures,
                    u.last_used_at, u.last_status, u.last_error, u.cooldown_until
                ])
                .map_err(backend)?;
            }
            Ok(())
        })
    }

    fn import(&self, dump: Dump) -> BoxFuture<'_, StoreResult<ImportOutcome>> {
        let sealer = self.sealer.clone();
        self.write(move |tx| import_dump(tx, dump, sealer.as_deref()))
    }

    fn save_usage(&self, batch: std::sync::Arc<UsageBatch>) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |tx| usage::save(tx, batch))
    }

    fn query_usage(&self, q: UsageQuery) -> BoxFuture<'_, StoreResult<Vec<Bucket>>> {
        self.run(move |conn| usage::buckets(conn, &q))
    }

    fn query_requests(&self, q: RequestQuery) -> BoxFuture<'_, StoreResult<Vec<LogEntry>>> {
        self.run(move |conn| usage::entries(conn, &q))
    }

    fn convert_keys(&self, to_plain: bool, batch: usize) -> BoxFuture<'_, StoreResult<usize>> {
        let sealer = self.sealer.clone();
        self.write(move |tx| {
            let rows: Vec<(i64, String, i64)> = tx
                .prepare(keyring::to_convert(to_plain))
                .and_then(|mut s| {
                    s.query_map([batch as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect()
                })
                .map_err(backend)?;
            for row in &rows {
                let (value, lookup) = keyring::converted(sealer.as_deref(), to_plain, row)?;
                tx.execute(keyring::CONVERT, params![value, lookup, row.0, row.1])
                    .map_err(backend)?;
            }
            if to_plain && rows.is_empty() {
                tx.execute(
                    "DELETE FROM rotator_meta WHERE name = ?1",
                    [keyring::META_KEY_ID],
                )
                .map_err(backend)?;
            }
            Ok(rows.len())
        })
    }

    fn rekey_keys(&self, to: Secret, batch: usize) -> BoxFuture<'_, StoreResult<usize>> {
        let sealer = self.sealer.clone();
        self.write(move |tx| {
            let salt = tx
                .query_row(
                    "SELECT value FROM rotator_meta WHERE name = ?1",
                    [keyring::META_SALT],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            let (from, to) = keyring::rekey_pair(sealer.as_ref(), salt, &to)?;
            let rows: Vec<(i64, String, i64)> = tx
                .prepare(keyring::TO_REKEY)
                .and_then(|mut s| {
                    s.query_map(params![keyring::sealed_by(&from), batch as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect()
                })
                .map_err(backend)?;
            for row in &rows {
                let (value, lookup) = keyring::resealed(&from, &to, row)?;
                tx.execute(keyring::CONVERT, params![value, lookup, row.0, row.1])
                    .map_err(backend)?;
            }
            if rows.is_empty() {
                tx.execute(
                    "UPDATE rotator_meta SET value = ?2 WHERE name = ?1",
                    params![keyring::META_KEY_ID, to.id()],
                )
                .map_err(backend)?;
            }
            Ok(rows.len())
        })
    }

    fn compact(&self) -> BoxFuture<'_, StoreResult<()>> {
        self.run(|c| {
            c.execute_batch("VACUUM").map_err(backend)?;
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(backend)
        })
    }

    fn list_client_keys(&self) -> BoxFuture<'_, StoreResult<Vec<ClientKeyRecord>>> {
        self.run(|conn| client_keys::list(conn))
    }

    fn create_client_key(
        &self,
        fields: ClientKeyFields,
        prefix: String,
        hash: String,
    ) -> BoxFuture<'_, StoreResult<ClientKeyRecord>> {
        self.write(move |tx| client_keys::create(tx, &fields, &prefix, &hash))
    }

    fn update_client_key(
        &self,
        id: i64,
        fields: ClientKeyFields,
    ) -> BoxFuture<'_, StoreResult<ClientKeyRecord>> {
        self.write(move |tx| client_keys::update(tx, id, &fields))
    }

    fn delete_client_key(&self, id: i64) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |tx| client_keys::delete(tx, id))
    }

    fn touch_client_keys(&self, used: Vec<(i64, i64)>) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |tx| client_keys::touch(tx, &used))
    }
}

/// Adds `value` to the service (sealed when there is a sealer) unless it is there
/// already: its id, or `None` for a duplicate.
fn insert_new(
    tx: &Transaction<'_>,
    sealer: Option<&Sealer>,
    service_id: i64,
    value: &str,
    active: bool,
) -> StoreResult<Option<i64>> {
    if find_key(tx, service_id, value, &keyring::lookups(sealer, value))?.is_some() {
        return Ok(None);
    }
    let stored = keyring::to_store(sealer, value, service_id)?;
    insert_key(tx, service_id, &stored, &key_query::tail(value), active).map(Some)
}

/// What the database holds of encryption.
fn at_rest(c: &mut Connection) -> StoreResult<AtRest> {
    let meta = |name: &str| {
        c.query_row(
            "SELECT value FROM rotator_meta WHERE name = ?1",
            [name],
            |r| r.get::<_, String>(0),
        )
        .optional()
        .map_err(backend)
    };
    let (salt, key_id) = (meta(keyring::META_SALT)?, meta(keyring::META_KEY_ID)?);
    let sealed: i64 = c
        .query_row(keyring::COUNT_SEALED, [], |r| r.get(0))
        .map_err(backend)?;
    Ok(AtRest {
        salt,
        key_id,
        sealed_rows: sealed as u64,
    })
}

fn import_dump(
    tx: &Transaction<'_>,
    dump: Dump,
    sealer: Option<&Sealer>,
) -> StoreResult<ImportOutcome> {
    let mut out = ImportOutcome::default();
    let mut id_map = std::collections::HashMap::new();
    for s in &dump.services {
        let existing: Option<i64> = tx
            .query_row(
                "SELECT id FROM proxy_configs WHERE slug = ?1",
                [&s.fields.slug],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        let id = match existing {
            Some(id) => {
                check_unique(tx, &s.fields, id)?;
                update_service_row(tx, id, &s.fields)?;
                out.services_updated += 1;
                id
            }
            None => {
                check_unique(tx, &s.fields, -1)?;
                out.services_created += 1;
                insert_service(tx, &s.fields)?
            }
        };
        id_map.insert(s.id, id);
    }
    for k in &dump.keys {
        let Some(&service_id) = id_map.get(&k.proxy_config_id) else {
            continue;
        };
        let stored = keyring::to_store(sealer, &k.key_value, service_id)?;
        let existing = find_key(
            tx,
            service_id,
            &k.key_value,
            &keyring::lookups(sealer, &k.key_value),
        )?;
        let id = match existing {
            Some(id) => {
                out.keys_updated += 1;
                id
            }
            None => {
                out.keys_created += 1;
                insert_key(
                    tx,
                    service_id,
                    &stored,
                    &key_query::tail(&k.key_value),
                    k.is_active,
                )?
            }
        };
        write_key_state(tx, id, k)?;
    }
    Ok(out)
}
