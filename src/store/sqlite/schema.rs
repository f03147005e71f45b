//! The SQLite schema: the original's tables (`schema.sql` at the repository root), the
//! columns and indexes this project adds, and the idempotent migration.

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::backend;
use crate::store::StoreResult;
use crate::store::usage::{self as usage_sql, Dialect};

/// The original's tables (see the file for the columns we add).
const SCHEMA: &str = include_str!("../../../schema.sql");

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
    ("api_keys", "key_lookup", "text"),
    ("api_keys", "key_tail", "text"),
    ("api_keys", "note", "text"),
    ("proxy_configs", "revalidate_interval", "integer"),
];

/// Indexes we add.
const ADDED_INDEXES: &str = "CREATE INDEX IF NOT EXISTS idx_api_keys_config_value ON api_keys(proxy_config_id, key_value); \
     CREATE INDEX IF NOT EXISTS idx_api_keys_config_lookup ON api_keys(proxy_config_id, key_lookup); \
     CREATE INDEX IF NOT EXISTS idx_api_keys_config_id ON api_keys(proxy_config_id, id);";

pub(super) fn migrate(conn: &mut Connection, reset: bool) -> StoreResult<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    if reset {
        tx.execute_batch(
            "DROP TABLE IF EXISTS api_keys; DROP TABLE IF EXISTS proxy_configs; \
             DROP TABLE IF EXISTS usage_hourly; DROP TABLE IF EXISTS request_log; \
             DROP TABLE IF EXISTS client_keys;",
        )
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
    tx.execute(
        &crate::store::keyring::fill_plain_tails(Dialect::Sqlite),
        [],
    )
    .map_err(backend)?;
    for table in usage_sql::create_tables(Dialect::Sqlite) {
        tx.execute_batch(&table).map_err(backend)?;
    }
    tx.execute_batch(&crate::store::client_keys::create_table(Dialect::Sqlite))
        .map_err(backend)?;
    tx.execute_batch(&crate::store::keyring::create_meta(Dialect::Sqlite))
        .map_err(backend)?;
    for (name, table, columns) in usage_sql::INDEXES {
        tx.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS {name} ON {table}({columns})"
        ))
        .map_err(backend)?;
    }
    // The original never enabled foreign keys, so deleting a service left its keys behind.
    let orphans = tx
        .execute(
            "DELETE FROM api_keys WHERE proxy_config_id IS NULL \
             OR proxy_config_id NOT IN (SELECT id FROM proxy_configs)",
            [],
        )
        .map_err(backend)?;
    if orphans > 0 {
        crate::log::warn!(
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
