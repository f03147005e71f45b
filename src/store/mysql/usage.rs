//! Usage insight in MySQL: the SQL is shared with SQLite ([`crate::store::usage`]).

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Row, Value};

use super::{Tx, backend, exec_rows};
use crate::store::usage::{self as sql, Arg, Dialect};
use crate::store::usage::{Bucket, LogEntry, RequestQuery, UsageQuery};
use crate::store::{StoreResult, UsageBatch};

pub(super) fn params(args: Vec<Arg>) -> Params {
    Params::Positional(
        args.into_iter()
            .map(|a| match a {
                Arg::Int(i) => Value::Int(i),
                Arg::Text(t) => Value::Bytes(t.into_bytes()),
                Arg::Null => Value::NULL,
            })
            .collect(),
    )
}

/// Adds the rollups, appends the entries, trims the log and old hours.
pub(super) async fn save(tx: &mut Tx, batch: std::sync::Arc<UsageBatch>) -> StoreResult<()> {
    let upsert = sql::upsert_rollup(Dialect::Mysql);
    exec_rows(tx, &upsert, &batch.rollups, |r| params(sql::rollup_args(r))).await?;
    exec_rows(tx, sql::INSERT_ENTRY, &batch.entries, |e| {
        params(sql::entry_args(e))
    })
    .await?;
    let max: Option<i64> = tx
        .exec_first(sql::MAX_ENTRY_ID, Params::Empty)
        .await
        .map_err(backend)?;
    let below = max.unwrap_or(0) - batch.keep_entries as i64;
    tx.exec_drop(sql::TRIM_LOG, (below,))
        .await
        .map_err(backend)?;
    tx.exec_drop(sql::TRIM_ROLLUPS, (batch.keep_since,))
        .await
        .map_err(backend)
}

pub(super) async fn buckets(tx: &mut Tx, q: UsageQuery) -> StoreResult<Vec<Bucket>> {
    let (text, args) = sql::usage_query(&q, Dialect::Mysql);
    let rows: Vec<Row> = tx.exec(text, params(args)).await.map_err(backend)?;
    Ok(rows
        .into_iter()
        .map(|mut r| {
            let mut sums = [0i64; 12];
            for (i, s) in sums.iter_mut().enumerate() {
                *s = r.take::<Option<i64>, _>(5 + i).flatten().unwrap_or(0);
            }
            sql::bucket(
                r.take::<i64, _>(0).unwrap_or(0),
                r.take(1).flatten(),
                r.take(2).flatten(),
                r.take(3).flatten(),
                r.take(4).flatten(),
                sums,
            )
        })
        .collect())
}

pub(super) async fn entries(tx: &mut Tx, q: RequestQuery) -> StoreResult<Vec<LogEntry>> {
    let (text, args) = sql::requests_query(&q);
    let rows: Vec<(i64, String)> = tx.exec(text, params(args)).await.map_err(backend)?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, entry)| sql::log_entry(id, &entry))
        .collect())
}
