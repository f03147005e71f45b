//! Rows and statements: reading services and keys from rows, writing them, the small
//! queries the operations are made of. Every function runs inside the caller's
//! transaction.

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Row, Value};

use super::{Tx, backend};
use crate::store::{
    KeyHealth, KeyRecord, KeyStats, ServiceFields, ServiceRecord, StoreError, StoreResult,
};

pub(super) const SERVICE_COLS: &str = "id, name, slug, config_type, is_active, api_key_location, api_key_name, \
     method, target_url, target_base_url, api_format, output_format, max_retries, retry_on, \
     probe_path, idle_timeout, DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%sZ'), \
     DATE_FORMAT(updated_at, '%Y-%m-%dT%H:%i:%sZ'), \
     (SELECT COUNT(*) FROM api_keys k WHERE k.proxy_config_id = proxy_configs.id), \
     (SELECT COUNT(*) FROM api_keys k WHERE k.proxy_config_id = proxy_configs.id AND k.is_active), \
     revalidate_interval";

pub(super) const KEY_COLS: &str = "id, key_value, is_active, proxy_config_id, invalid_reason, invalid_at, \
     cooldown_until, request_count, success_count, failure_count, consecutive_failures, \
     last_used_at, last_status, last_error, note";

/// Rows per multi-row `INSERT` of a batch import.
pub(super) const INSERT_CHUNK: usize = 500;

/// Column `i` of a row, converted.
pub(super) fn col<T: mysql_async::prelude::FromValue>(row: &mut Row, i: usize) -> StoreResult<T> {
    row.take_opt(i)
        .ok_or_else(|| StoreError::Backend(format!("column {i} missing")))?
        .map_err(|e| StoreError::Backend(format!("column {i}: {e}")))
}

/// A boolean column: GORM writes 1/0; NULL counts as the column's default (true).
pub(super) fn col_bool(row: &mut Row, i: usize) -> StoreResult<bool> {
    Ok(col::<Option<i64>>(row, i)?.is_none_or(|v| v != 0))
}

pub(super) fn service_from_row(mut row: Row) -> StoreResult<ServiceRecord> {
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
            revalidate_interval: col(r, 20)?,
        },
        created_at: col(r, 16)?,
        updated_at: col(r, 17)?,
        key_count: col(r, 18)?,
        active_key_count: col(r, 19)?,
    })
}

pub(super) fn key_from_row(mut row: Row) -> StoreResult<KeyRecord> {
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
        note: col(r, 14)?,
    })
}

pub(super) async fn query_services(
    tx: &mut Tx,
    filter: &str,
    params: Params,
) -> StoreResult<Vec<ServiceRecord>> {
    let sql = format!("SELECT {SERVICE_COLS} FROM proxy_configs {filter} ORDER BY id");
    let rows: Vec<Row> = tx.exec(sql, params).await.map_err(backend)?;
    rows.into_iter().map(service_from_row).collect()
}

pub(super) async fn query_keys(
    tx: &mut Tx,
    filter: &str,
    params: Params,
) -> StoreResult<Vec<KeyRecord>> {
    let sql = format!("SELECT {KEY_COLS} FROM api_keys {filter} ORDER BY id");
    let rows: Vec<Row> = tx.exec(sql, params).await.map_err(backend)?;
    rows.into_iter().map(key_from_row).collect()
}

pub(super) async fn service_by_id(tx: &mut Tx, id: i64) -> StoreResult<Option<ServiceRecord>> {
    Ok(query_services(tx, "WHERE id = ?", Params::from((id,)))
        .await?
        .pop())
}

pub(super) async fn key_by_id(tx: &mut Tx, id: i64) -> StoreResult<Option<KeyRecord>> {
    Ok(query_keys(tx, "WHERE id = ?", Params::from((id,)))
        .await?
        .pop())
}

/// Runs a statement that returns one optional value.
pub(super) async fn first<T: mysql_async::prelude::FromRow + Send + 'static>(
    tx: &mut Tx,
    sql: &str,
    params: Params,
) -> StoreResult<Option<T>> {
    tx.exec_first(sql, params).await.map_err(backend)
}

/// Runs a statement; returns the number of rows it changed.
pub(super) async fn exec(tx: &mut Tx, sql: &str, params: Params) -> StoreResult<u64> {
    tx.exec_drop(sql, params).await.map_err(backend)?;
    Ok(tx.affected_rows())
}

pub(super) async fn require_service(tx: &mut Tx, id: i64) -> StoreResult<()> {
    first::<i64>(
        tx,
        "SELECT id FROM proxy_configs WHERE id = ?",
        Params::from((id,)),
    )
    .await?
    .map(|_| ())
    .ok_or(StoreError::NotFound)
}

/// The id of the service's key whose value is `value` (found by its lookup when values
/// are sealed; a value stored before `encrypt` by itself).
pub(super) async fn find_key(
    tx: &mut Tx,
    service_id: i64,
    value: &str,
    lookups: &[String],
) -> StoreResult<Option<i64>> {
    // Each lookup on its own index, then the value.
    for l in lookups {
        let found = first::<i64>(
            tx,
            "SELECT id FROM api_keys WHERE proxy_config_id = ? AND key_lookup = ? \
             ORDER BY id LIMIT 1",
            Params::from((service_id, l.as_str())),
        )
        .await?;
        if found.is_some() {
            return Ok(found);
        }
    }
    first::<i64>(
        tx,
        "SELECT id FROM api_keys WHERE proxy_config_id = ? AND key_value = ? \
         ORDER BY id LIMIT 1",
        Params::from((service_id, value)),
    )
    .await
}

/// `Conflict` when another service (not `except`) already has the name or slug.
pub(super) async fn check_unique(tx: &mut Tx, f: &ServiceFields, except: i64) -> StoreResult<()> {
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
pub(super) fn now_datetime() -> String {
    let text = crate::timefmt::rfc3339_millis(crate::timefmt::now_ms());
    text.trim_end_matches('Z').replacen('T', " ", 1)
}

/// The settable fields, in the order of the `INSERT` and `UPDATE` below.
pub(super) fn field_values(f: &ServiceFields) -> Vec<Value> {
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
        f.revalidate_interval.into(),
    ]
}

pub(super) async fn insert_service(tx: &mut Tx, f: &ServiceFields) -> StoreResult<i64> {
    let now = now_datetime();
    let mut values = field_values(f);
    values.extend([now.as_str().into(), now.as_str().into()]);
    exec(
        tx,
        "INSERT INTO proxy_configs (name, slug, config_type, is_active, api_key_location, \
         api_key_name, method, target_url, target_base_url, api_format, output_format, \
         max_retries, retry_on, probe_path, idle_timeout, revalidate_interval, created_at, \
         updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        Params::Positional(values),
    )
    .await?;
    last_id(tx)
}

pub(super) async fn update_service_row(tx: &mut Tx, id: i64, f: &ServiceFields) -> StoreResult<()> {
    let mut values = field_values(f);
    values.extend([now_datetime().into(), id.into()]);
    exec(
        tx,
        "UPDATE proxy_configs SET name = ?, slug = ?, config_type = ?, is_active = ?, \
         api_key_location = ?, api_key_name = ?, method = ?, target_url = ?, \
         target_base_url = ?, api_format = ?, output_format = ?, max_retries = ?, \
         retry_on = ?, probe_path = ?, idle_timeout = ?, revalidate_interval = ?, \
         updated_at = ? WHERE id = ?",
        Params::Positional(values),
    )
    .await?;
    Ok(())
}

pub(super) fn last_id(tx: &Tx) -> StoreResult<i64> {
    tx.last_insert_id()
        .and_then(|id| i64::try_from(id).ok())
        .ok_or_else(|| StoreError::Backend("no id after INSERT".into()))
}

/// Inserts a key: its value as stored (sealed or not) and its lookup.
pub(super) async fn insert_key(
    tx: &mut Tx,
    service_id: i64,
    (value, lookup): &(String, Option<String>),
    tail: &str,
    active: bool,
) -> StoreResult<i64> {
    exec(
        tx,
        "INSERT INTO api_keys (key_value, key_lookup, key_tail, is_active, proxy_config_id, \
         created_at) VALUES (?, ?, ?, ?, ?, ?)",
        Params::from((value, lookup, tail, active, service_id, now_datetime())),
    )
    .await?;
    last_id(tx)
}

/// Inserts enabled keys with multi-row `INSERT`s (a 10,000-key import is 20 statements,
/// not 10,000 round trips).
pub(super) async fn insert_keys(
    tx: &mut Tx,
    service_id: i64,
    values: &[((String, Option<String>), String)],
) -> StoreResult<()> {
    let now = now_datetime();
    for chunk in values.chunks(INSERT_CHUNK) {
        let rows = vec!["(?, ?, ?, 1, ?, ?)"; chunk.len()].join(", ");
        let sql = format!(
            "INSERT INTO api_keys (key_value, key_lookup, key_tail, is_active, proxy_config_id, \
             created_at) VALUES {rows}"
        );
        let params = chunk
            .iter()
            .flat_map(|((v, lookup), tail)| {
                [
                    v.as_str().into(),
                    lookup.clone().into(),
                    tail.as_str().into(),
                    service_id.into(),
                    now.as_str().into(),
                ]
            })
            .collect();
        exec(tx, &sql, Params::Positional(params)).await?;
    }
    Ok(())
}

pub(super) async fn write_key_state(tx: &mut Tx, id: i64, k: &KeyRecord) -> StoreResult<()> {
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
        k.note.clone().into(),
        id.into(),
    ];
    exec(
        tx,
        "UPDATE api_keys SET is_active = ?, invalid_reason = ?, invalid_at = ?, \
         cooldown_until = ?, request_count = ?, success_count = ?, failure_count = ?, \
         consecutive_failures = ?, last_used_at = ?, last_status = ?, last_error = ?, \
         note = ? WHERE id = ?",
        Params::Positional(values),
    )
    .await?;
    Ok(())
}

/// `NotFound` when a `DELETE` removed nothing. (MySQL counts rows *changed*, not matched,
/// so updates check that their row exists first instead.)
pub(super) fn changed_or_missing(n: u64) -> StoreResult<()> {
    if n == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_literal_is_utc_millis() {
        let t = now_datetime();
        assert_eq!(t.len(), 23, "{t}");
        assert_eq!(&t[10..11], " ");
        assert!(!t.ends_with('Z'));
    }
}
