//! Client keys in MySQL: the SQL is shared with SQLite ([`crate::store::client_keys`]).

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Row};

use super::usage::params;
use super::{Tx, backend};
use crate::store::client_keys::{self as sql, ClientKeyFields, ClientKeyRecord};
use crate::store::{StoreError, StoreResult};

pub(super) async fn list(tx: &mut Tx) -> StoreResult<Vec<ClientKeyRecord>> {
    let rows: Vec<Row> = tx
        .exec(sql::SELECT_ALL, Params::Empty)
        .await
        .map_err(backend)?;
    Ok(rows
        .iter()
        .map(|r| {
            sql::record(
                |i| r.get::<Option<i64>, _>(i).flatten(),
                |i| r.get::<Option<String>, _>(i).flatten(),
            )
        })
        .collect())
}

async fn by_id(tx: &mut Tx, id: i64) -> StoreResult<ClientKeyRecord> {
    list(tx)
        .await?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or(StoreError::NotFound)
}

async fn require(tx: &mut Tx, id: i64) -> StoreResult<()> {
    let n: Option<i64> = tx.exec_first(sql::EXISTS, (id,)).await.map_err(backend)?;
    match n {
        Some(n) if n > 0 => Ok(()),
        _ => Err(StoreError::NotFound),
    }
}

pub(super) async fn create(
    tx: &mut Tx,
    f: ClientKeyFields,
    prefix: String,
    hash: String,
) -> StoreResult<ClientKeyRecord> {
    let now = crate::timefmt::now_ms() as i64;
    tx.exec_drop(
        sql::INSERT,
        params(sql::insert_args(&f, &prefix, &hash, now)),
    )
    .await
    .map_err(backend)?;
    let id = tx.last_insert_id().unwrap_or(0) as i64;
    by_id(tx, id).await
}

pub(super) async fn update(
    tx: &mut Tx,
    id: i64,
    f: ClientKeyFields,
) -> StoreResult<ClientKeyRecord> {
    require(tx, id).await?;
    tx.exec_drop(sql::UPDATE, params(sql::update_args(id, &f)))
        .await
        .map_err(backend)?;
    by_id(tx, id).await
}

pub(super) async fn delete(tx: &mut Tx, id: i64) -> StoreResult<()> {
    require(tx, id).await?;
    tx.exec_drop(sql::DELETE, (id,)).await.map_err(backend)
}

pub(super) async fn touch(tx: &mut Tx, used: Vec<(i64, i64)>) -> StoreResult<()> {
    if used.is_empty() {
        return Ok(());
    }
    let rows = used
        .iter()
        .map(|(id, at)| params(sql::touch_args(*id, *at)));
    tx.exec_batch(sql::TOUCH, rows).await.map_err(backend)
}
