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
use mysql_async::{Conn, Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, Row};
use mysql_async::{Transaction, TxOpts, Value};

use super::{
    BatchOutcome, BoxFuture, DUMP_FORMAT, Dump, ImportOutcome, KeyHealth, KeyRecord, KeyStats,
    ServiceFields, ServiceRecord, StatsUpdate, Store, StoreError, StoreResult,
};
use crate::config::MysqlConfig;

/// The original's tables (with the documented widenings).
const SCHEMA: &str = include_str!("mysql_schema.sql");

/// Columns added to the original's tables (the same list as SQLite's, in MySQL types).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("proxy_configs", "max_retries", "int DEFAULT NULL"),
    ("proxy_configs", "retry_on", "text"),
    ("proxy_configs", "probe_path", "text"),
    ("proxy_configs", "idle_timeout", "int DEFAULT NULL"),
    ("api_keys", "created_at", "datetime(3) DEFAULT NULL"),
    ("api_keys", "invalid_reason", "text"),
    ("api_keys", "invalid_at", "bigint DEFAULT NULL"),
    ("api_keys", "cooldown_until", "bigint DEFAULT NULL"),
    ("api_keys", "request_count", "bigint NOT NULL DEFAULT 0"),
    ("api_keys", "success_count", "bigint NOT NULL DEFAULT 0"),
    ("api_keys", "failure_count", "bigint NOT NULL DEFAULT 0"),
    (
        "api_keys",
        "consecutive_failures",
        "bigint NOT NULL DEFAULT 0",
    ),
    ("api_keys", "last_used_at", "bigint DEFAULT NULL"),
    ("api_keys", "last_status", "int DEFAULT NULL"),
    ("api_keys", "last_error", "text"),
];

/// Columns of the original that must be at least this wide (characters), and their
/// definition when they are not (see `mysql_schema.sql` for why).
const WIDENED_COLUMNS: &[(&str, &str, u64, &str)] = &[
    ("proxy_configs", "method", 100, "varchar(100) DEFAULT NULL"),
    (
        "proxy_configs",
        "target_url",
        2048,
        "varchar(2048) DEFAULT NULL",
    ),
    (
        "proxy_configs",
        "target_base_url",
        2048,
        "varchar(2048) DEFAULT NULL",
    ),
];

/// API keys are case-sensitive: the original's column had the case-insensitive default.
const KEY_VALUE_DECL: &str = "varchar(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL";

/// Serialises the migration of instances that start together.
const MIGRATION_LOCK: &str = "api_key_rotator_migration";

const SERVICE_COLS: &str = "id, name, slug, config_type, is_active, api_key_location, api_key_name, \
     method, target_url, target_base_url, api_format, output_format, max_retries, retry_on, \
     probe_path, idle_timeout, DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%sZ'), \
     DATE_FORMAT(updated_at, '%Y-%m-%dT%H:%i:%sZ'), \
     (SELECT COUNT(*) FROM api_keys k WHERE k.proxy_config_id = proxy_configs.id), \
     (SELECT COUNT(*) FROM api_keys k WHERE k.proxy_config_id = proxy_configs.id AND k.is_active)";

const KEY_COLS: &str = "id, key_value, is_active, proxy_config_id, invalid_reason, invalid_at, \
     cooldown_until, request_count, success_count, failure_count, consecutive_failures, \
     last_used_at, last_status, last_error";

/// Rows per multi-row `INSERT` of a batch import.
const INSERT_CHUNK: usize = 500;

/// How long connecting (TCP and handshake) may take: a host that swallows packets must
/// fail the start or an admin request, not hang it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// MySQL's duplicate-key error.
const ER_DUP_ENTRY: u16 = 1062;

/// A MySQL database.
pub struct MysqlStore {
    pool: Pool,
}

/// One transaction, as the closures of [`MysqlStore::tx`] see it.
type Tx = Transaction<'static>;

fn backend(e: mysql_async::Error) -> StoreError {
    if let mysql_async::Error::Server(s) = &e {
        // A concurrent writer won the race the pre-check could not see.
        if s.code == ER_DUP_ENTRY {
            if s.message.contains("idx_proxy_configs_slug") {
                return StoreError::Conflict("slug");
            }
            if s.message.contains("idx_proxy_configs_name") {
                return StoreError::Conflict("name");
            }
        }
    }
    StoreError::Backend(e.to_string())
}

fn connect_opts(c: &MysqlConfig, database: Option<&str>) -> Opts {
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

/// `name` as a quoted MySQL identifier.
fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
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
        Ok(MysqlStore { pool })
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
async fn connecting<T>(fut: impl Future<Output = Result<T, mysql_async::Error>>) -> StoreResult<T> {
    match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
        Ok(result) => result.map_err(backend),
        Err(_) => Err(StoreError::Backend(format!(
            "no answer from the MySQL server within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// `CREATE DATABASE IF NOT EXISTS`. Not being allowed to is fine (the database may exist:
/// the real connection says "Unknown database" otherwise); not reaching the server is the
/// error to report.
async fn create_database(config: &MysqlConfig) -> StoreResult<()> {
    let mut conn = connecting(Conn::new(connect_opts(config, None))).await?;
    let sql = format!(
        "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4",
        quote_ident(&config.database)
    );
    if let Err(e) = conn.query_drop(sql).await {
        crate::debug!("could not create the MySQL database (it may exist already): {e}");
    }
    let _ = conn.disconnect().await;
    Ok(())
}

/// Migrates while holding a named lock, so that instances starting together take turns.
async fn with_migration_lock(conn: &mut Conn, reset: bool) -> StoreResult<()> {
    let got: Option<i64> = conn
        .exec_first("SELECT GET_LOCK(?, 60)", (MIGRATION_LOCK,))
        .await
        .map_err(backend)?;
    if got != Some(1) {
        return Err(StoreError::Backend(
            "another instance has been migrating the schema for 60 s".into(),
        ));
    }
    let result = migrate(conn, reset).await;
    let _ = conn
        .exec_drop("SELECT RELEASE_LOCK(?)", (MIGRATION_LOCK,))
        .await;
    result
}

/// Creates the tables, adds our columns and indexes, widens what must be wider. DDL
/// commits by itself in MySQL, so each step is idempotent instead of transactional.
async fn migrate(conn: &mut Conn, reset: bool) -> StoreResult<()> {
    if reset {
        conn.query_drop("DROP TABLE IF EXISTS api_keys")
            .await
            .map_err(backend)?;
        conn.query_drop("DROP TABLE IF EXISTS proxy_configs")
            .await
            .map_err(backend)?;
    }
    for stmt in schema_statements(SCHEMA) {
        conn.query_drop(stmt).await.map_err(backend)?;
    }
    for (table, column, decl) in ADDED_COLUMNS {
        if column_info(conn, table, column).await?.is_none() {
            alter(conn, table, &format!("ADD COLUMN `{column}` {decl}")).await?;
        }
    }
    for (table, column, width, decl) in WIDENED_COLUMNS {
        if let Some(info) = column_info(conn, table, column).await? {
            if info.max_chars.is_some_and(|w| w < *width) {
                alter(conn, table, &format!("MODIFY COLUMN `{column}` {decl}")).await?;
            }
        }
    }
    let key_value = column_info(conn, "api_keys", "key_value").await?;
    if key_value.and_then(|i| i.collation).as_deref() != Some("utf8mb4_bin") {
        alter(
            conn,
            "api_keys",
            &format!("MODIFY COLUMN `key_value` {KEY_VALUE_DECL}"),
        )
        .await?;
    }
    if !has_index(conn, "api_keys", "idx_api_keys_config_value").await? {
        alter(
            conn,
            "api_keys",
            "ADD INDEX `idx_api_keys_config_value` (`proxy_config_id`, `key_value`)",
        )
        .await?;
    }
    remove_orphans(conn).await
}

/// The statements of a schema file: comments dropped, split at `;` ending a line.
fn schema_statements(schema: &str) -> Vec<String> {
    let text: String = schema
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .map(|l| format!("{l}\n"))
        .collect();
    text.split(";\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

async fn alter(conn: &mut Conn, table: &str, change: &str) -> StoreResult<()> {
    conn.query_drop(format!("ALTER TABLE `{table}` {change}"))
        .await
        .map_err(backend)
}

/// What the migration needs to know of an existing column.
struct ColumnInfo {
    max_chars: Option<u64>,
    collation: Option<String>,
}

async fn column_info(
    conn: &mut Conn,
    table: &str,
    column: &str,
) -> StoreResult<Option<ColumnInfo>> {
    let row: Option<(Option<u64>, Option<String>)> = conn
        .exec_first(
            "SELECT CHARACTER_MAXIMUM_LENGTH, COLLATION_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?",
            (table, column),
        )
        .await
        .map_err(backend)?;
    Ok(row.map(|(max_chars, collation)| ColumnInfo {
        max_chars,
        collation,
    }))
}

async fn has_index(conn: &mut Conn, table: &str, index: &str) -> StoreResult<bool> {
    let row: Option<i64> = conn
        .exec_first(
            "SELECT 1 FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND INDEX_NAME = ? LIMIT 1",
            (table, index),
        )
        .await
        .map_err(backend)?;
    Ok(row.is_some())
}

/// Keys whose service is gone (possible in tables created without the foreign key).
async fn remove_orphans(conn: &mut Conn) -> StoreResult<()> {
    conn.query_drop(
        "DELETE FROM api_keys WHERE proxy_config_id IS NULL \
         OR proxy_config_id NOT IN (SELECT id FROM proxy_configs)",
    )
    .await
    .map_err(backend)?;
    let orphans = conn.affected_rows();
    if orphans > 0 {
        crate::warn!("removed {orphans} orphaned api_keys rows (keys of deleted services)");
    }
    Ok(())
}

/// Column `i` of a row, converted.
fn col<T: mysql_async::prelude::FromValue>(row: &mut Row, i: usize) -> StoreResult<T> {
    row.take_opt(i)
        .ok_or_else(|| StoreError::Backend(format!("column {i} missing")))?
        .map_err(|e| StoreError::Backend(format!("column {i}: {e}")))
}

/// A boolean column: GORM writes 1/0; NULL counts as the column's default (true).
fn col_bool(row: &mut Row, i: usize) -> StoreResult<bool> {
    Ok(col::<Option<i64>>(row, i)?.is_none_or(|v| v != 0))
}

fn service_from_row(mut row: Row) -> StoreResult<ServiceRecord> {
    let r = &mut row;
    Ok(ServiceRecord {
        id: col(r, 0)?,
        fields: ServiceFields {
            name: col(r, 1)?,
            slug: col(r, 2)?,
            config_type: col(r, 3)?,
            is_active: col_bool(r, 4)?,
            api_key_location: col(r, 5)?,
            api_key_name: col(r, 6)?,
            method: col(r, 7)?,
            target_url: col(r, 8)?,
            target_base_url: col(r, 9)?,
            api_format: col(r, 10)?,
            output_format: col(r, 11)?,
            max_retries: col(r, 12)?,
            retry_on: col(r, 13)?,
            probe_path: col(r, 14)?,
            idle_timeout: col(r, 15)?,
        },
        created_at: col(r, 16)?,
        updated_at: col(r, 17)?,
        key_count: col(r, 18)?,
        active_key_count: col(r, 19)?,
    })
}

fn key_from_row(mut row: Row) -> StoreResult<KeyRecord> {
    let r = &mut row;
    Ok(KeyRecord {
        id: col(r, 0)?,
        key_value: col(r, 1)?,
        is_active: col_bool(r, 2)?,
        proxy_config_id: col(r, 3)?,
        health: KeyHealth {
            invalid_reason: col(r, 4)?,
            invalid_at: col(r, 5)?,
            cooldown_until: col(r, 6)?,
        },
        stats: KeyStats {
            request_count: col(r, 7)?,
            success_count: col(r, 8)?,
            failure_count: col(r, 9)?,
            consecutive_failures: col(r, 10)?,
            last_used_at: col(r, 11)?,
            last_status: col(r, 12)?,
            last_error: col(r, 13)?,
        },
    })
}

async fn query_services(
    tx: &mut Tx,
    filter: &str,
    params: Params,
) -> StoreResult<Vec<ServiceRecord>> {
    let sql = format!("SELECT {SERVICE_COLS} FROM proxy_configs {filter} ORDER BY id");
    let rows: Vec<Row> = tx.exec(sql, params).await.map_err(backend)?;
    rows.into_iter().map(service_from_row).collect()
}

async fn query_keys(tx: &mut Tx, filter: &str, params: Params) -> StoreResult<Vec<KeyRecord>> {
    let sql = format!("SELECT {KEY_COLS} FROM api_keys {filter} ORDER BY id");
    let rows: Vec<Row> = tx.exec(sql, params).await.map_err(backend)?;
    rows.into_iter().map(key_from_row).collect()
}

async fn service_by_id(tx: &mut Tx, id: i64) -> StoreResult<Option<ServiceRecord>> {
    Ok(query_services(tx, "WHERE id = ?", Params::from((id,)))
        .await?
        .pop())
}

async fn key_by_id(tx: &mut Tx, id: i64) -> StoreResult<Option<KeyRecord>> {
    Ok(query_keys(tx, "WHERE id = ?", Params::from((id,)))
        .await?
        .pop())
}

/// Runs a statement that returns one optional value.
async fn first<T: mysql_async::prelude::FromRow + Send + 'static>(
    tx: &mut Tx,
    sql: &str,
    params: Params,
) -> StoreResult<Option<T>> {
    tx.exec_first(sql, params).await.map_err(backend)
}

/// Runs a statement; returns the number of rows it changed.
async fn exec(tx: &mut Tx, sql: &str, params: Params) -> StoreResult<u64> {
    tx.exec_drop(sql, params).await.map_err(backend)?;
    Ok(tx.affected_rows())
}

async fn require_service(tx: &mut Tx, id: i64) -> StoreResult<()> {
    first::<i64>(
        tx,
        "SELECT id FROM proxy_configs WHERE id = ?",
        Params::from((id,)),
    )
    .await?
    .map(|_| ())
    .ok_or(StoreError::NotFound)
}

async fn key_exists(tx: &mut Tx, service_id: i64, value: &str) -> StoreResult<bool> {
    Ok(first::<i64>(
        tx,
        "SELECT 1 FROM api_keys WHERE proxy_config_id = ? AND key_value = ? LIMIT 1",
        Params::from((service_id, value)),
    )
    .await?
    .is_some())
}

/// `Conflict` when another service (not `except`) already has the name or slug.
async fn check_unique(tx: &mut Tx, f: &ServiceFields, except: i64) -> StoreResult<()> {
    for (field, value) in [("name", &f.name), ("slug", &f.slug)] {
        let sql = format!("SELECT 1 FROM proxy_configs WHERE {field} = ? AND id != ? LIMIT 1");
        let taken = first::<i64>(tx, &sql, Params::from((value.as_str(), except))).await?;
        if taken.is_some() {
            return Err(StoreError::Conflict(field));
        }
    }
    Ok(())
}

/// Now, as a `datetime(3)` literal in UTC.
fn now_datetime() -> String {
    let text = crate::timefmt::rfc3339_millis(crate::timefmt::now_ms());
    text.trim_end_matches('Z').replacen('T', " ", 1)
}

/// The settable fields, in the order of the `INSERT` and `UPDATE` below.
fn field_values(f: &ServiceFields) -> Vec<Value> {
    vec![
        f.name.as_str().into(),
        f.slug.as_str().into(),
        f.config_type.as_str().into(),
        f.is_active.into(),
        f.api_key_location.clone().into(),
        f.api_key_name.clone().into(),
        f.method.clone().into(),
        f.target_url.clone().into(),
        f.target_base_url.clone().into(),
        f.api_format.clone().into(),
        f.output_format.clone().into(),
        f.max_retries.into(),
        f.retry_on.clone().into(),
        f.probe_path.clone().into(),
        f.idle_timeout.into(),
    ]
}

async fn insert_service(tx: &mut Tx, f: &ServiceFields) -> StoreResult<i64> {
    let now = now_datetime();
    let mut values = field_values(f);
    values.extend([now.as_str().into(), now.as_str().into()]);
    exec(
        tx,
        "INSERT INTO proxy_configs (name, slug, config_type, is_active, api_key_location, \
         api_key_name, method, target_url, target_base_url, api_format, output_format, \
         max_retries, retry_on, probe_path, idle_timeout, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        Params::Positional(values),
    )
    .await?;
    last_id(tx)
}

async fn update_service_row(tx: &mut Tx, id: i64, f: &ServiceFields) -> StoreResult<()> {
    let mut values = field_values(f);
    values.extend([now_datetime().into(), id.into()]);
    exec(
        tx,
        "UPDATE proxy_configs SET name = ?, slug = ?, config_type = ?, is_active = ?, \
         api_key_location = ?, api_key_name = ?, method = ?, target_url = ?, \
         target_base_url = ?, api_format = ?, output_format = ?, max_retries = ?, \
         retry_on = ?, probe_path = ?, idle_timeout = ?, updated_at = ? WHERE id = ?",
        Params::Positional(values),
    )
    .await?;
    Ok(())
}

fn last_id(tx: &Tx) -> StoreResult<i64> {
    tx.last_insert_id()
        .and_then(|id| i64::try_from(id).ok())
        .ok_or_else(|| StoreError::Backend("no id after INSERT".into()))
}

async fn insert_key(tx: &mut Tx, service_id: i64, value: &str, active: bool) -> StoreResult<i64> {
    exec(
        tx,
        "INSERT INTO api_keys (key_value, is_active, proxy_config_id, created_at) \
         VALUES (?, ?, ?, ?)",
        Params::from((value, active, service_id, now_datetime())),
    )
    .await?;
    last_id(tx)
}

/// Inserts enabled keys with multi-row `INSERT`s (a 10,000-key import is 20 statements,
/// not 10,000 round trips).
async fn insert_keys(tx: &mut Tx, service_id: i64, values: &[String]) -> StoreResult<()> {
    let now = now_datetime();
    for chunk in values.chunks(INSERT_CHUNK) {
        let rows = vec!["(?, 1, ?, ?)"; chunk.len()].join(", ");
        let sql = format!(
            "INSERT INTO api_keys (key_value, is_active, proxy_config_id, created_at) VALUES {rows}"
        );
        let params = chunk
            .iter()
            .flat_map(|v| [v.as_str().into(), service_id.into(), now.as_str().into()])
            .collect();
        exec(tx, &sql, Params::Positional(params)).await?;
    }
    Ok(())
}

async fn write_key_state(tx: &mut Tx, id: i64, k: &KeyRecord) -> StoreResult<()> {
    let values: Vec<Value> = vec![
        k.is_active.into(),
        k.health.invalid_reason.clone().into(),
        k.health.invalid_at.into(),
        k.health.cooldown_until.into(),
        k.stats.request_count.into(),
        k.stats.success_count.into(),
        k.stats.failure_count.into(),
        k.stats.consecutive_failures.into(),
        k.stats.last_used_at.into(),
        k.stats.last_status.into(),
        k.stats.last_error.clone().into(),
        id.into(),
    ];
    exec(
        tx,
        "UPDATE api_keys SET is_active = ?, invalid_reason = ?, invalid_at = ?, \
         cooldown_until = ?, request_count = ?, success_count = ?, failure_count = ?, \
         consecutive_failures = ?, last_used_at = ?, last_status = ?, last_error = ? \
         WHERE id = ?",
        Params::Positional(values),
    )
    .await?;
    Ok(())
}

/// `NotFound` when a `DELETE` removed nothing. (MySQL counts rows *changed*, not matched,
/// so updates check that their row exists first instead.)
fn changed_or_missing(n: u64) -> StoreResult<()> {
    if n == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
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
        self.tx(|tx| {
            Box::pin(async move {
                Ok(Dump {
                    format: DUMP_FORMAT.into(),
                    services: query_services(tx, "", Params::Empty).await?,
                    keys: query_keys(tx, "", Params::Empty).await?,
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
        self.tx(move |tx| {
            Box::pin(async move {
                require_service(tx, service_id).await?;
                query_keys(tx, "WHERE proxy_config_id = ?", Params::from((service_id,))).await
            })
        })
    }

    fn get_key(&self, key_id: i64) -> BoxFuture<'_, StoreResult<Option<KeyRecord>>> {
        self.tx(move |tx| Box::pin(key_by_id(tx, key_id)))
    }

    fn add_key(
        &self,
        service_id: i64,
        value: String,
        active: bool,
    ) -> BoxFuture<'_, StoreResult<KeyRecord>> {
        self.tx(move |tx| {
            Box::pin(async move {
                require_service(tx, service_id).await?;
                if key_exists(tx, service_id, &value).await? {
                    return Err(StoreError::Conflict("key_value"));
                }
                let id = insert_key(tx, service_id, &value, active).await?;
                key_by_id(tx, id).await?.ok_or(StoreError::NotFound)
            })
        })
    }

    fn add_keys(
        &self,
        service_id: i64,
        values: Vec<String>,
    ) -> BoxFuture<'_, StoreResult<BatchOutcome>> {
        self.tx(move |tx| {
            Box::pin(async move {
                require_service(tx, service_id).await?;
                let stored: Vec<String> = tx
                    .exec(
                        "SELECT key_value FROM api_keys WHERE proxy_config_id = ?",
                        (service_id,),
                    )
                    .await
                    .map_err(backend)?;
                let mut seen: HashSet<String> = stored.into_iter().collect();
                let mut out = BatchOutcome::default();
                let mut new = Vec::new();
                for value in values {
                    if seen.insert(value.clone()) {
                        new.push(value);
                    } else {
                        out.skipped_count += 1;
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
                let params = updates.into_iter().map(|u| {
                    Params::Positional(vec![
                        u.requests.into(),
                        u.successes.into(),
                        u.failures.into(),
                        u.consecutive_failures.into(),
                        u.last_used_at.into(),
                        u.last_status.into(),
                        u.last_error.into(),
                        u.cooldown_until.into(),
                        u.key_id.into(),
                    ])
                });
                tx.exec_batch(
                    "UPDATE api_keys SET request_count = request_count + ?, \
                     success_count = success_count + ?, failure_count = failure_count + ?, \
                     consecutive_failures = ?, last_used_at = COALESCE(?, last_used_at), \
                     last_status = COALESCE(?, last_status), \
                     last_error = COALESCE(?, last_error), cooldown_until = ? WHERE id = ?",
                    params,
                )
                .await
                .map_err(backend)
            })
        })
    }

    fn import(&self, dump: Dump) -> BoxFuture<'_, StoreResult<ImportOutcome>> {
        self.tx(move |tx| Box::pin(import_dump(tx, dump)))
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

async fn import_dump(tx: &mut Tx, dump: Dump) -> StoreResult<ImportOutcome> {
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
        let existing: Option<i64> = first(
            tx,
            "SELECT id FROM api_keys WHERE proxy_config_id = ? AND key_value = ? \
             ORDER BY id LIMIT 1",
            Params::from((service_id, k.key_value.as_str())),
        )
        .await?;
        let id = match existing {
            Some(id) => {
                out.keys_updated += 1;
                id
            }
            None => {
                out.keys_created += 1;
                insert_key(tx, service_id, &k.key_value, k.is_active).await?
            }
        };
        write_key_state(tx, id, k).await?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_splits_into_its_two_tables() {
        let stmts = schema_statements(SCHEMA);
        assert_eq!(stmts.len(), 2, "{stmts:#?}");
        assert!(stmts[0].starts_with("CREATE TABLE IF NOT EXISTS `proxy_configs`"));
        assert!(stmts[1].contains("fk_proxy_configs_api_keys"));
        assert!(stmts.iter().all(|s| !s.contains("--")));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("api_key_rotator"), "`api_key_rotator`");
        assert_eq!(quote_ident("we`ird"), "`we``ird`");
    }

    #[test]
    fn datetime_literal_is_utc_millis() {
        let t = now_datetime();
        assert_eq!(t.len(), 23, "{t}");
        assert_eq!(&t[10..11], " ");
        assert!(!t.ends_with('Z'));
    }
}
