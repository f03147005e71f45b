//! Rows and statements: services and keys read from rows and written back, the small
//! queries the operations are made of.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::backend;
use crate::store::{
    KeyHealth, KeyRecord, KeyStats, ServiceFields, ServiceRecord, StoreError, StoreResult,
};

pub(super) const SERVICE_COLS: &str = "id, name, slug, config_type, is_active, api_key_location, api_key_name, \
     method, target_url, target_base_url, api_format, output_format, max_retries, retry_on, \
     probe_path, idle_timeout, created_at, updated_at, \
     (SELECT COUNT(*) FROM api_keys k WHERE k.proxy_config_id = proxy_configs.id), \
     (SELECT COUNT(*) FROM api_keys k WHERE k.proxy_config_id = proxy_configs.id AND k.is_active), \
     revalidate_interval";

pub(super) const KEY_COLS: &str = "id, key_value, is_active, proxy_config_id, invalid_reason, invalid_at, \
     cooldown_until, request_count, success_count, failure_count, consecutive_failures, \
     last_used_at, last_status, last_error, note";

/// Booleans written by GORM are 1/0 (or "true"/"false" text in odd files).
pub(super) fn get_bool(row: &Row<'_>, idx: usize) -> rusqlite::Result<bool> {
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
pub(super) fn get_time(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<String>> {
    let raw: Option<String> = row.get(idx).unwrap_or(None);
    Ok(raw.map(|s| {
        crate::timefmt::parse_datetime(&s)
            .map(crate::timefmt::rfc3339)
            .unwrap_or(s)
    }))
}

pub(super) fn service_from_row(row: &Row<'_>) -> rusqlite::Result<ServiceRecord> {
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
            revalidate_interval: row.get(20)?,
        },
        created_at: get_time(row, 16)?,
        updated_at: get_time(row, 17)?,
        key_count: row.get(18)?,
        active_key_count: row.get(19)?,
    })
}

pub(super) fn key_from_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
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
        note: row.get(14)?,
    })
}

pub(super) fn query_services(
    conn: &Connection,
    filter: &str,
    args: &[&dyn rusqlite::ToSql],
) -> StoreResult<Vec<ServiceRecord>> {
    let sql = format!("SELECT {SERVICE_COLS} FROM proxy_configs {filter} ORDER BY id");
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let rows = stmt.query_map(args, service_from_row).map_err(backend)?;
    rows.collect::<Result<_, _>>().map_err(backend)
}

pub(super) fn query_keys(
    conn: &Connection,
    filter: &str,
    args: &[&dyn rusqlite::ToSql],
) -> StoreResult<Vec<KeyRecord>> {
    let sql = format!("SELECT {KEY_COLS} FROM api_keys {filter} ORDER BY id");
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let rows = stmt.query_map(args, key_from_row).map_err(backend)?;
    rows.collect::<Result<_, _>>().map_err(backend)
}

pub(super) fn service_by_id(conn: &Connection, id: i64) -> StoreResult<Option<ServiceRecord>> {
    Ok(query_services(conn, "WHERE id = ?1", &[&id])?.pop())
}

pub(super) fn service_exists(conn: &Connection, id: i64) -> StoreResult<bool> {
    conn.query_row(
        "SELECT 1 FROM proxy_configs WHERE id = ?1",
        [id],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
    .map_err(backend)
}

/// The id of the service's key whose value is `value` (found by its lookup when values
/// are sealed; a value stored before `encrypt` by itself).
pub(super) fn find_key(
    conn: &Connection,
    service_id: i64,
    value: &str,
    lookups: &[String],
) -> StoreResult<Option<i64>> {
    // Two lookups, each on its own index (one query with OR scanned the service's keys).
    let by = |column: &str, v: &str| {
        conn.prepare_cached(&format!(
            "SELECT MIN(id) FROM api_keys WHERE proxy_config_id = ?1 AND {column} = ?2"
        ))
        .and_then(|mut s| s.query_row(params![service_id, v], |r| r.get::<_, Option<i64>>(0)))
        .map_err(backend)
    };
    for l in lookups {
        if let Some(id) = by("key_lookup", l)? {
            return Ok(Some(id));
        }
    }
    by("key_value", value)
}

/// `Conflict` when another service (not `except`) already has the name or slug.
pub(super) fn check_unique(conn: &Connection, f: &ServiceFields, except: i64) -> StoreResult<()> {
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

pub(super) fn now_text() -> String {
    crate::timefmt::rfc3339(crate::timefmt::now_secs())
}

/// The settable columns of a service, in the order of the INSERT and UPDATE below.
pub(super) fn service_values(f: &ServiceFields) -> Vec<&dyn rusqlite::ToSql> {
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
        &f.revalidate_interval,
    ]
}

pub(super) fn insert_service(tx: &Transaction<'_>, f: &ServiceFields) -> StoreResult<i64> {
    let now = now_text();
    let mut values = service_values(f);
    values.push(&now);
    tx.execute(
        "INSERT INTO proxy_configs (name, slug, config_type, is_active, api_key_location, \
         api_key_name, method, target_url, target_base_url, api_format, output_format, \
         max_retries, retry_on, probe_path, idle_timeout, revalidate_interval, created_at, \
         updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?17)",
        values.as_slice(),
    )
    .map_err(backend)?;
    Ok(tx.last_insert_rowid())
}

pub(super) fn update_service_row(
    tx: &Transaction<'_>,
    id: i64,
    f: &ServiceFields,
) -> StoreResult<()> {
    let now = now_text();
    let mut values = service_values(f);
    values.push(&now);
    values.push(&id);
    tx.execute(
        "UPDATE proxy_configs SET name = ?1, slug = ?2, config_type = ?3, is_active = ?4, \
         api_key_location = ?5, api_key_name = ?6, method = ?7, target_url = ?8, \
         target_base_url = ?9, api_format = ?10, output_format = ?11, max_retries = ?12, \
         retry_on = ?13, probe_path = ?14, idle_timeout = ?15, revalidate_interval = ?16, \
         updated_at = ?17 WHERE id = ?18",
        values.as_slice(),
    )
    .map_err(backend)?;
    Ok(())
}

/// Inserts a key: its value as stored (sealed or not) and its lookup.
pub(super) fn insert_key(
    tx: &Transaction<'_>,
    service_id: i64,
    (value, lookup): &(String, Option<String>),
    tail: &str,
    active: bool,
) -> StoreResult<i64> {
    tx.prepare_cached(
        "INSERT INTO api_keys (key_value, key_lookup, key_tail, is_active, proxy_config_id, \
         created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| s.execute(params![value, lookup, tail, active, service_id, now_text()]))
    .map_err(backend)?;
    Ok(tx.last_insert_rowid())
}

pub(super) fn write_key_state(tx: &Transaction<'_>, id: i64, k: &KeyRecord) -> StoreResult<()> {
    tx.execute(
        "UPDATE api_keys SET is_active = ?2, invalid_reason = ?3, invalid_at = ?4, \
         cooldown_until = ?5, request_count = ?6, success_count = ?7, failure_count = ?8, \
         consecutive_failures = ?9, last_used_at = ?10, last_status = ?11, last_error = ?12, \
         note = ?13 WHERE id = ?1",
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
            k.stats.last_error,
            k.note
        ],
    )
    .map_err(backend)?;
    Ok(())
}

pub(super) fn changed_or_missing(n: usize) -> StoreResult<()> {
    if n == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}
