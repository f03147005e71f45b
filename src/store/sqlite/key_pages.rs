//! Pages of a service's keys, selections and bulk actions ([`crate::store::key_query`]).

use rusqlite::{Connection, Transaction, params_from_iter};

use super::backend;
use super::rows::{KEY_COLS, key_from_row, service_exists};
use super::usage::values;
use crate::seal::Sealer;
use crate::store::key_query::{self as kq, BulkAction, KeyFilter, PageQuery, Selection};
use crate::store::keyring;
use crate::store::usage::Dialect;
use crate::store::{KeyRecord, StoreError, StoreResult};
use crate::timefmt::now_ms;

fn require_service(c: &Connection, id: i64) -> StoreResult<()> {
    if service_exists(c, id)? {
        Ok(())
    } else {
        Err(StoreError::NotFound)
    }
}

pub(super) fn page(
    c: &Connection,
    sealer: Option<&Sealer>,
    q: &PageQuery,
) -> StoreResult<Vec<KeyRecord>> {
    require_service(c, q.service_id)?;
    let (text, args) = kq::page(
        Dialect::Sqlite,
        KEY_COLS,
        q,
        &keyring::search_lookups(sealer, &q.filter),
        now_ms() as i64,
    );
    let mut stmt = c.prepare_cached(&text).map_err(backend)?;
    let mut keys: Vec<KeyRecord> = stmt
        .query_map(params_from_iter(values(args)), key_from_row)
        .map_err(backend)?
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    keyring::open_keys(sealer, &mut keys);
    Ok(keys)
}

pub(super) fn count(
    c: &Connection,
    sealer: Option<&Sealer>,
    service_id: i64,
    f: &KeyFilter,
) -> StoreResult<u64> {
    require_service(c, service_id)?;
    let (text, args) = kq::matching(
        kq::Answer::Count,
        Dialect::Sqlite,
        service_id,
        f,
        &keyring::search_lookups(sealer, f),
        now_ms() as i64,
    );
    c.prepare_cached(&text)
        .and_then(|mut s| s.query_row(params_from_iter(values(args)), |r| r.get::<_, i64>(0)))
        .map(|n| n as u64)
        .map_err(backend)
}

pub(super) fn select(
    c: &Connection,
    sealer: Option<&Sealer>,
    service_id: i64,
    sel: &Selection,
) -> StoreResult<Vec<i64>> {
    require_service(c, service_id)?;
    let query = |(text, args): (String, Vec<_>)| -> StoreResult<Vec<i64>> {
        let mut stmt = c.prepare(&text).map_err(backend)?;
        let rows = stmt
            .query_map(params_from_iter(values(args)), |r| r.get(0))
            .map_err(backend)?;
        rows.collect::<Result<Vec<i64>, _>>().map_err(backend)
    };
    match sel {
        Selection::Filter(f) => query(kq::matching(
            kq::Answer::Ids,
            Dialect::Sqlite,
            service_id,
            f,
            &keyring::search_lookups(sealer, f),
            now_ms() as i64,
        )),
        Selection::Ids(ids) => {
            let mut out = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(kq::CHUNK) {
                out.extend(query(kq::ids_in_service(service_id, chunk))?);
            }
            out.sort_unstable();
            out.dedup();
            Ok(out)
        }
    }
}

pub(super) fn bulk(
    tx: &Transaction<'_>,
    sealer: Option<&Sealer>,
    service_id: i64,
    sel: &Selection,
    action: BulkAction,
) -> StoreResult<Vec<i64>> {
    let ids = select(tx, sealer, service_id, sel)?;
    for chunk in ids.chunks(kq::CHUNK) {
        tx.prepare_cached(&action.sql(chunk.len()))
            .and_then(|mut s| s.execute(params_from_iter(chunk)))
            .map_err(backend)?;
    }
    Ok(ids)
}
