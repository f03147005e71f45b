//! The MySQL schema: the original's tables (`schema.sql`, with the documented widenings),
//! the columns this project adds, and the migration that brings any database there,
//! under a named lock so that instances starting together do not race.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::{backend, connect_opts, connecting};
use crate::config::MysqlConfig;
use crate::store::usage::{self as usage_sql, Dialect};
use crate::store::{StoreError, StoreResult};

/// The original's tables (with the documented widenings).
const SCHEMA: &str = include_str!("schema.sql");

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
    ("api_keys", "key_lookup", "char(64) DEFAULT NULL"),
    (
        "api_keys",
        "key_tail",
        "varchar(8) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL",
    ),
    ("api_keys", "note", "varchar(255) DEFAULT NULL"),
    ("proxy_configs", "revalidate_interval", "int DEFAULT NULL"),
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
/// Wide enough for a 255-byte key once encrypted (about 390 characters).
const KEY_VALUE_DECL: &str = "varchar(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL";

/// Serialises the migration of instances that start together.
const MIGRATION_LOCK: &str = "api_key_rotator_migration";

/// `CREATE DATABASE IF NOT EXISTS`. Not being allowed to is fine (the database may exist:
/// the real connection says "Unknown database" otherwise); not reaching the server is the
/// error to report.
pub(super) async fn create_database(config: &MysqlConfig) -> StoreResult<()> {
    let mut conn = connecting(Conn::new(connect_opts(config, None))).await?;
    let sql = format!(
        "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4",
        quote_ident(&config.database)
    );
    if let Err(e) = conn.query_drop(sql).await {
        crate::log::debug!("could not create the MySQL database (it may exist already): {e}");
    }
    let _ = conn.disconnect().await;
    Ok(())
}

/// Migrates while holding a named lock, so that instances starting together take turns.
pub(super) async fn with_migration_lock(conn: &mut Conn, reset: bool) -> StoreResult<()> {
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
        conn.query_drop(
            "DROP TABLE IF EXISTS usage_hourly, request_log, client_keys, rotator_meta",
        )
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
    let narrow = key_value
        .as_ref()
        .is_some_and(|i| i.max_chars.is_some_and(|w| w < 512));
    if narrow || key_value.and_then(|i| i.collation).as_deref() != Some("utf8mb4_bin") {
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
    for table in usage_sql::create_tables(Dialect::Mysql) {
        conn.query_drop(table).await.map_err(backend)?;
    }
    conn.query_drop(crate::store::client_keys::create_table(Dialect::Mysql))
        .await
        .map_err(backend)?;
    conn.query_drop(crate::store::keyring::create_meta(Dialect::Mysql))
        .await
        .map_err(backend)?;
    if !has_index(conn, "api_keys", "idx_api_keys_config_lookup").await? {
        alter(
            conn,
            "api_keys",
            "ADD INDEX `idx_api_keys_config_lookup` (`proxy_config_id`, `key_lookup`)",
        )
        .await?;
    }
    for (name, table, columns) in usage_sql::INDEXES {
        if !has_index(conn, table, name).await? {
            alter(conn, table, &format!("ADD INDEX `{name}` ({columns})")).await?;
        }
    }
    conn.query_drop(crate::store::keyring::fill_plain_tails(Dialect::Mysql))
        .await
        .map_err(backend)?;
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
        crate::log::warn!("removed {orphans} orphaned api_keys rows (keys of deleted services)");
    }
    Ok(())
}

/// `name` as a quoted MySQL identifier.
fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
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
}
