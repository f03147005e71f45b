//! The SQLite store (lightweight build).
//!
//! One connection behind a mutex, used from `spawn_blocking`: admin writes are rare, and
//! proxied requests never come here. WAL with `synchronous=FULL` (an admin's "saved"
//! survives a power cut), `foreign_keys=ON` (deleting a service deletes its keys, which
//! the original forgot), `busy_timeout`, and `BEGIN IMMEDIATE` for every write.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use super::{
    BatchOutcome, BoxFuture, DUMP_FORMAT, Dump, ImportOutcome, KeyHealth, KeyRecord, KeyStats,
    ServiceFields, ServiceRecord, StatsUpdate, Store, StoreError, StoreResult,
};

/// The original's tables (see the file for the columns we add).
const SCHEMA: &str = include_str!("../../schema.sql");

/// Columns added to the original's tables, by idempotent `ALTER TABLE … ADD COLUMN`.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("proxy_configs", "max_retries", "integer"),
    ("proxy_configs", "retry_on", "text"),
    ("proxy_configs", "probe_path", "text"),
    ("proxy_configs", "idle_timeout", "integer"),
    ("api_keys", "created_at", "datetime"),
    ("api_keys", "invalid_reason", "text"),
    ("api_keys", "invalid_at", "integer"),
    ("api_keys", "cooldown_until", "integer"),
    ("api_keys", "request_count", "integer NOT NULL DEFAULT 0"),
    ("api_keys", "success_count", "integer NOT NULL DEFAULT 0"),
    ("api_keys", "failure_count", "integer NOT NULL DEFAULT 0"),
    (
        "api_keys",
        "consecutive_failures",
        "integer NOT NULL DEFAULT 0",
    ),
    ("api_keys", "last_used_at", "integer"),
    ("api_keys", "last_status", "integer"),
    ("api_keys", "last_error", "text"),
];

/// Indexes we add.
const ADDED_INDEXES: &str =
    "CREATE INDEX IF NOT EXISTS idx_api_keys_config_value ON api_keys(proxy_config_id, key_value);";

const SERVICE_COLS: &str = "id, name, slug, config_type, is_active, api_key_location, api_key_name, \
     method, target_url, target_base_url, api_format, output_format, max_retries, retry_on, \
     probe_path, idle_timeout, created_at, updated_at, \
     (SELECT COUNT(*) FROM api_keys k WHERE k.proxy_config_id = proxy_configs.id), \
     (SELECT COUNT(*) FROM api_keys k WHERE k.proxy_config_id = proxy_configs.id AND k.is_active)";

const KEY_COLS: &str = "id, key_value, is_active, proxy_config_id, invalid_reason, invalid_at, \
     cooldown_until, request_count, success_count, failure_count, consecutive_failures, \
     last_used_at, last_status, last_error";

/// A SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

fn backend(e: rusqlite::Error) -> StoreError {
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
            crate::warn!("SQLite journal_mode is {mode}, not WAL");
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(backend)?;
        migrate(&mut conn, reset)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
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

fn migrate(conn: &mut Connection, reset: bool) -> StoreResult<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    if reset {
        tx.execute_batch("DROP TABLE IF EXISTS api_keys; DROP TABLE IF EXISTS proxy_configs;")
            .map_err(backend)?;
    }
    tx.execute_batch(SCHEMA).map_err(backend)?;
    for (table, column, decl) in ADDED_COLUMNS {
        if !has_column(&tx, table, column)? {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))
                .map_err(backend)?;
        }
    }
    tx.execute_batch(ADDED_INDEXES).map_err(backend)?;
    // The original never enabled foreign keys, so deleting a service left its keys behind.
    let orphans = tx
        .execute(
            "DELETE FROM api_keys WHERE proxy_config_id IS NULL \
             OR proxy_config_id NOT IN (SELECT id FROM proxy_configs)",
            [],
        )
        .map_err(backend)?;
    if orphans > 0 {
        crate::warn!(
            "removed {orphans} orphaned api_keys rows (keys of services deleted by the original)"
        );
    }
    tx.commit().map_err(backend)
}

fn has_column(tx: &Transaction<'_>, table: &str, column: &str) -> StoreResult<bool> {
    let mut stmt = tx
        .prepare(&format!("PRAGMA table_info({table})"))
        .map_err(backend)?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(1))
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    Ok(names.iter().any(|n| n.eq_ignore_ascii_case(column)))
}

/// Booleans written by GORM are 1/0 (or "true"/"false" text in odd files).
fn get_bool(row: &Row<'_>, idx: usize) -> rusqlite::Result<bool> {
    use rusqlite::types::ValueRef;
    Ok(match row.get_ref(idx)? {
        ValueRef::Null => true,
        ValueRef::Integer(i) => i != 0,
        ValueRef::Real(f) => f != 0.0,
        ValueRef::Text(t) | ValueRef::Blob(t) => {
            !matches!(t, b"0" | b"false" | b"FALSE" | b"f" | b"")
        }
    })
}

/// Timestamps the original wrote are GORM datetimes; ours are RFC 3339. Either way, JSON
/// shows RFC 3339.
fn get_time(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<String>> {
    let raw: Option<String> = row.get(idx).unwrap_or(None);
    Ok(raw.map(|s| {
        crate::timefmt::parse_datetime(&s)
            .map(crate::timefmt::rfc3339)
            .unwrap_or(s)
    }))
}

fn service_from_row(row: &Row<'_>) -> rusqlite::Result<ServiceRecord> {
    Ok(ServiceRecord {
        id: row.get(0)?,
        fields: ServiceFields {
            name: row.get(1)?,
            slug: row.get(2)?,
            config_type: row.get(3)?,
            is_active: get_bool(row, 4)?,
            api_key_location: row.get(5)?,
            api_key_name: row.get(6)?,
            method: row.get(7)?,
            target_url: row.get(8)?,
            target_base_url: row.get(9)?,
            api_format: row.get(10)?,
            output_format: row.get(11)?,
            max_retries: row.get(12)?,
            retry_on: row.get(13)?,
            probe_path: row.get(14)?,
            idle_timeout: row.get(15)?,
        },
        created_at: get_time(row, 16)?,
        updated_at: get_time(row, 17)?,
        key_count: row.get(18)?,
        active_key_count: row.get(19)?,
    })
}

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    Ok(KeyRecord {
        id: row.get(0)?,
        key_value: row.get(1)?,
        is_active: get_bool(row, 2)?,
        proxy_config_id: row.get(3)?,
        health: KeyHealth {
            invalid_reason: row.get(4)?,
            invalid_at: row.get(5)?,
            cooldown_until: row.get(6)?,
        },
        stats: KeyStats {
            request_count: row.get(7)?,
            success_count: row.get(8)?,
            failure_count: row.get(9)?,
            consecutive_failures: row.get(10)?,
            last_used_at: row.get(11)?,
            last_status: row.get(12)?,
            last_error: row.get(13)?,
        },
    })
}

fn query_services(
    conn: &Connection,
    filter: &str,
    args: &[&dyn rusqlite::ToSql],
) -> StoreResult<Vec<ServiceRecord>> {
    let sql = format!("SELECT {SERVICE_COLS} FROM proxy_configs {filter} ORDER BY id");
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let rows = stmt.query_map(args, service_from_row).map_err(backend)?;
    rows.collect::<Result<_, _>>().map_err(backend)
}

fn query_keys(
    conn: &Connection,
    filter: &str,
    args: &[&dyn rusqlite::ToSql],
) -> StoreResult<Vec<KeyRecord>> {
    let sql = format!("SELECT {KEY_COLS} FROM api_keys {filter} ORDER BY id");
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let rows = stmt.query_map(args, key_from_row).map_err(backend)?;
    rows.collect::<Result<_, _>>().map_err(backend)
}

fn service_by_id(conn: &Connection, id: i64) -> StoreResult<Option<ServiceRecord>> {
    Ok(query_services(conn, "WHERE id = ?1", &[&id])?.pop())
}

fn service_exists(conn: &Connection, id: i64) -> StoreResult<bool> {
    conn.query_row(
        "SELECT 1 FROM proxy_configs WHERE id = ?1",
        [id],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
    .map_err(backend)
}

fn key_exists(conn: &Connection, service_id: i64, value: &str) -> StoreResult<bool> {
    conn.prepare_cached(
        "SELECT 1 FROM api_keys WHERE proxy_config_id = ?1 AND key_value = ?2 LIMIT 1",
    )
    .and_then(|mut s| s.exists(params![service_id, value]))
    .map_err(backend)
}

/// `Conflict` when another service (not `except`) already has the name or slug.
fn check_unique(conn: &Connection, f: &ServiceFields, except: i64) -> StoreResult<()> {
    for (field, value) in [("name", &f.name), ("slug", &f.slug)] {
        let taken = conn
            .query_row(
                &format!("SELECT 1 FROM proxy_configs WHERE {field} = ?1 AND id != ?2"),
                params![value, except],
                |_| Ok(()),
            )
            .optional()
            .map_err(backend)?
            .is_some();
        if taken {
            return Err(StoreError::Conflict(field));
        }
    }
    Ok(())
}

fn now_text() -> String {
    crate::timefmt::rfc3339(crate::timefmt::now_secs())
}

/// The settable columns of a service, in the order of the INSERT and UPDATE below.
fn service_values(f: &ServiceFields) -> Vec<&dyn rusqlite::ToSql> {
    vec![
        &f.name,
        &f.slug,
        &f.config_type,
        &f.is_active,
        &f.api_key_location,
        &f.api_key_name,
        &f.method,
        &f.target_url,
        &f.target_base_url,
        &f.api_format,
        &f.output_format,
        &f.max_retries,
        &f.retry_on,
        &f.probe_path,
        &f.idle_timeout,
    ]
}

fn insert_service(tx: &Transaction<'_>, f: &ServiceFields) -> StoreResult<i64> {
    let now = now_text();
    let mut values = service_values(f);
    values.push(&now);
    tx.execute(
        "INSERT INTO proxy_configs (name, slug, config_type, is_active, api_key_location, \
         api_key_name, method, target_url, target_base_url, api_format, output_format, \
         max_retries, retry_on, probe_path, idle_timeout, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?16)",
        values.as_slice(),
    )
    .map_err(backend)?;
    Ok(tx.last_insert_rowid())
}

fn update_service_row(tx: &Transaction<'_>, id: i64, f: &ServiceFields) -> StoreResult<()> {
    let now = now_text();
    let mut values = service_values(f);
    values.push(&now);
    values.push(&id);
    tx.execute(
        "UPDATE proxy_configs SET name = ?1, slug = ?2, config_type = ?3, is_active = ?4, \
         api_key_location = ?5, api_key_name = ?6, method = ?7, target_url = ?8, \
         target_base_url = ?9, api_format = ?10, output_format = ?11, max_retries = ?12, \
         retry_on = ?13, probe_path = ?14, idle_timeout = ?15, updated_at = ?16 WHERE id = ?17",
        values.as_slice(),
    )
    .map_err(backend)?;
    Ok(())
}

fn insert_key(
    tx: &Transaction<'_>,
    service_id: i64,
    value: &str,
    active: bool,
) -> StoreResult<i64> {
    tx.prepare_cached(
        "INSERT INTO api_keys (key_value, is_active, proxy_config_id, created_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| s.execute(params![value, active, service_id, now_text()]))
    .map_err(backend)?;
    Ok(tx.last_insert_rowid())
}

fn write_key_state(tx: &Transaction<'_>, id: i64, k: &KeyRecord) -> StoreResult<()> {
    tx.execute(
        "UPDATE api_keys SET is_active = ?2, invalid_reason = ?3, invalid_at = ?4, \
         cooldown_until = ?5, request_count = ?6, success_count = ?7, failure_count = ?8, \
         consecutive_failures = ?9, last_used_at = ?10, last_status = ?11, last_error = ?12 \
         WHERE id = ?1",
        params![
            id,
            k.is_active,
            k.health.invalid_reason,
            k.health.invalid_at,
            k.health.cooldown_until,
            k.stats.request_count,
            k.stats.success_count,
            k.stats.failure_count,
            k.stats.consecutive_failures,
            k.stats.last_used_at,
            k.stats.last_status,
            k.stats.last_error
        ],
    )
    .map_err(backend)?;
    Ok(())
}

fn changed_or_missing(n: usize) -> StoreResult<()> {
    if n == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        self.run(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
    }

    fn load_all(&self) -> BoxFuture<'_, StoreResult<Dump>> {
        self.run(|c| {
            Ok(Dump {
                format: DUMP_FORMAT.into(),
                services: query_services(c, "", &[])?,
                keys: query_keys(c, "", &[])?,
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
        self.run(move |c| {
            if !service_exists(c, service_id)? {
                return Err(StoreError::NotFound);
            }
            query_keys(c, "WHERE proxy_config_id = ?1", &[&service_id])
        })
    }

    fn get_key(&self, key_id: i64) -> BoxFuture<'_, StoreResult<Option<KeyRecord>>> {
        self.run(move |c| Ok(query_keys(c, "WHERE id = ?1", &[&key_id])?.pop()))
    }

    fn add_key(
        &self,
        service_id: i64,
        value: String,
        active: bool,
    ) -> BoxFuture<'_, StoreResult<KeyRecord>> {
        self.write(move |tx| {
            if !service_exists(tx, service_id)? {
                return Err(StoreError::NotFound);
            }
            if key_exists(tx, service_id, &value)? {
                return Err(StoreError::Conflict("key_value"));
            }
            let id = insert_key(tx, service_id, &value, active)?;
            query_keys(tx, "WHERE id = ?1", &[&id])?
                .pop()
                .ok_or(StoreError::NotFound)
        })
    }

    fn add_keys(
        &self,
        service_id: i64,
        values: Vec<String>,
    ) -> BoxFuture<'_, StoreResult<BatchOutcome>> {
        self.write(move |tx| {
            if !service_exists(tx, service_id)? {
                return Err(StoreError::NotFound);
            }
            let mut out = BatchOutcome::default();
            for value in values {
                if key_exists(tx, service_id, &value)? {
                    out.skipped_count += 1;
                } else {
                    insert_key(tx, service_id, &value, true)?;
                    out.success_count += 1;
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
        self.write(move |tx| import_dump(tx, dump))
    }
}

fn import_dump(tx: &Transaction<'_>, dump: Dump) -> StoreResult<ImportOutcome> {
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
        let existing: Option<i64> = tx
            .query_row(
                "SELECT id FROM api_keys WHERE proxy_config_id = ?1 AND key_value = ?2 ORDER BY id LIMIT 1",
                params![service_id, k.key_value],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        let id = match existing {
            Some(id) => {
                out.keys_updated += 1;
                id
            }
            None => {
                out.keys_created += 1;
                insert_key(tx, service_id, &k.key_value, k.is_active)?
            }
        };
        write_key_state(tx, id, k)?;
    }
    Ok(out)
}
