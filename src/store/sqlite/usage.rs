//! Usage insight in SQLite: the SQL is shared with MySQL ([`crate::store::usage`]).

use rusqlite::types::Value;
use rusqlite::{Connection, Transaction, params_from_iter};

use super::backend;
use crate::store::usage::{self as sql, Arg, Dialect};
use crate::store::usage::{Bucket, LogEntry, RequestQuery, UsageQuery};
use crate::store::{StoreResult, UsageBatch};

pub(super) fn values(args: Vec<Arg>) -> impl Iterator<Item = Value> {
    args.into_iter().map(|a| match a {
        Arg::Int(i) => Value::Integer(i),
        Arg::Text(t) => Value::Text(t),
        Arg::Null => Value::Null,
    })
}

/// Adds the rollups, appends the entries, trims the log and old hours.
pub(super) fn save(tx: &Transaction<'_>, batch: std::sync::Arc<UsageBatch>) -> StoreResult<()> {
    let mut upsert = tx
        .prepare_cached(&sql::upsert_rollup(Dialect::Sqlite))
        .map_err(backend)?;
    for r in &batch.rollups {
        upsert
            .execute(params_from_iter(values(sql::rollup_args(r))))
            .map_err(backend)?;
    }
    let mut insert = tx.prepare_cached(sql::INSERT_ENTRY).map_err(backend)?;
    for e in &batch.entries {
        insert
            .execute(params_from_iter(values(sql::entry_args(e))))
            .map_err(backend)?;
    }
    let max: i64 = tx
        .query_row(sql::MAX_ENTRY_ID, [], |r| r.get(0))
        .map_err(backend)?;
    tx.execute(sql::TRIM_LOG, [max - batch.keep_entries as i64])
        .map_err(backend)?;
    tx.execute(sql::TRIM_ROLLUPS, [batch.keep_since])
        .map_err(backend)?;
    Ok(())
}

pub(super) fn buckets(conn: &mut Connection, q: &UsageQuery) -> StoreResult<Vec<Bucket>> {
    let (text, args) = sql::usage_query(q, Dialect::Sqlite);
    let mut stmt = conn.prepare(&text).map_err(backend)?;
    let rows = stmt
        .query_map(params_from_iter(values(args)), |r| {
            let mut sums = [0i64; 12];
            for (i, s) in sums.iter_mut().enumerate() {
                *s = r.get::<_, Option<i64>>(5 + i)?.unwrap_or(0);
            }
            Ok(sql::bucket(
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                sums,
            ))
        })
        .map_err(backend)?;
    rows.collect::<Result<_, _>>().map_err(backend)
}

pub(super) fn entries(conn: &mut Connection, q: &RequestQuery) -> StoreResult<Vec<LogEntry>> {
    let (text, args) = sql::requests_query(q);
    let mut stmt = conn.prepare(&text).map_err(backend)?;
    let rows = stmt
        .query_map(params_from_iter(values(args)), |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, text) = row.map_err(backend)?;
        out.extend(sql::log_entry(id, &text));
    }
    Ok(out)
}
