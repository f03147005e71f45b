//! Client keys in SQLite: the SQL is shared with MySQL ([`crate::store::client_keys`]).

use rusqlite::{Connection, Transaction, params_from_iter};

use super::backend;
use super::usage::values;
use crate::store::client_keys::{self as sql, ClientKeyFields, ClientKeyRecord};
use crate::store::{StoreError, StoreResult};

pub(super) fn list(conn: &Connection) -> StoreResult<Vec<ClientKeyRecord>> {
    let mut stmt = conn.prepare_cached(sql::SELECT_ALL).map_err(backend)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(sql::record(
                |i| r.get::<_, Option<i64>>(i).ok().flatten(),
                |i| r.get::<_, Option<String>>(i).ok().flatten(),
            ))
        })
        .map_err(backend)?;
    rows.collect::<Result<_, _>>().map_err(backend)
}

fn by_id(tx: &Transaction<'_>, id: i64) -> StoreResult<ClientKeyRecord> {
    list(tx)?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or(StoreError::NotFound)
}

pub(super) fn create(
    tx: &Transaction<'_>,
    f: &ClientKeyFields,
    prefix: &str,
    hash: &str,
) -> StoreResult<ClientKeyRecord> {
    let now = crate::timefmt::now_ms() as i64;
    tx.execute(
        sql::INSERT,
        params_from_iter(values(sql::insert_args(f, prefix, hash, now))),
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(err, _)
            if err.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict("secret")
        }
        e => backend(e),
    })?;
    by_id(tx, tx.last_insert_rowid())
}

pub(super) fn update(
    tx: &Transaction<'_>,
    id: i64,
    f: &ClientKeyFields,
) -> StoreResult<ClientKeyRecord> {
    let n = tx
        .execute(
            sql::UPDATE,
            params_from_iter(values(sql::update_args(id, f))),
        )
        .map_err(backend)?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    by_id(tx, id)
}

pub(super) fn delete(tx: &Transaction<'_>, id: i64) -> StoreResult<()> {
    match tx.execute(sql::DELETE, [id]).map_err(backend)? {
        0 => Err(StoreError::NotFound),
        _ => Ok(()),
    }
}

pub(super) fn touch(tx: &Transaction<'_>, used: &[(i64, i64)]) -> StoreResult<()> {
    let mut stmt = tx.prepare_cached(sql::TOUCH).map_err(backend)?;
    for (id, at) in used {
        stmt.execute(params_from_iter(values(sql::touch_args(*id, *at))))
            .map_err(backend)?;
    }
    Ok(())
}
