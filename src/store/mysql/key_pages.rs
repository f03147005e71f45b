//! Pages of a service's keys, selections and bulk actions ([`crate::store::key_query`]).

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Row};

use super::rows::{KEY_COLS, key_from_row, require_service};
use super::usage::params;
use super::{Tx, backend};
use crate::seal::Sealer;
use crate::store::key_query::{self as kq, BulkAction, KeyFilter, PageQuery, Selection};
use crate::store::keyring;
use crate::store::usage::Dialect;
use crate::store::{KeyRecord, StoreResult};
use crate::timefmt::now_ms;

pub(super) async fn page(
    tx: &mut Tx,
    sealer: Option<&Sealer>,
    q: &PageQuery,
) -> StoreResult<Vec<KeyRecord>> {
    require_service(tx, q.service_id).await?;
    let (text, args) = kq::page(
        Dialect::Mysql,
        KEY_COLS,
        q,
        &keyring::search_lookups(sealer, &q.filter),
        now_ms() as i64,
    );
    let rows: Vec<Row> = tx.exec(text, params(args)).await.map_err(backend)?;
    let mut keys = rows
        .into_iter()
        .map(key_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    keyring::open_keys(sealer, &mut keys);
    Ok(keys)
}

pub(super) async fn count(
    tx: &mut Tx,
    sealer: Option<&Sealer>,
    service_id: i64,
    f: &KeyFilter,
) -> StoreResult<u64> {
    require_service(tx, service_id).await?;
    let (text, args) = kq::matching(
        kq::Answer::Count,
        Dialect::Mysql,
        service_id,
        f,
        &keyring::search_lookups(sealer, f),
        now_ms() as i64,
    );
    let n: Option<i64> = tx.exec_first(text, params(args)).await.map_err(backend)?;
    Ok(n.unwrap_or(0) as u64)
}

pub(super) async fn select(
    tx: &mut Tx,
    sealer: Option<&Sealer>,
    service_id: i64,
    sel: &Selection,
) -> StoreResult<Vec<i64>> {
    require_service(tx, service_id).await?;
    match sel {
        Selection::Filter(f) => {
            let (text, args) = kq::matching(
                kq::Answer::Ids,
                Dialect::Mysql,
                service_id,
                f,
                &keyring::search_lookups(sealer, f),
                now_ms() as i64,
            );
            tx.exec(text, params(args)).await.map_err(backend)
        }
        Selection::Ids(ids) => {
            let mut out: Vec<i64> = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(kq::CHUNK) {
                let (text, args) = kq::ids_in_service(service_id, chunk);
                let found: Vec<i64> = tx.exec(text, params(args)).await.map_err(backend)?;
                out.extend(found);
            }
            out.sort_unstable();
            out.dedup();
            Ok(out)
        }
    }
}

pub(super) async fn bulk(
    tx: &mut Tx,
    sealer: Option<&Sealer>,
    service_id: i64,
    sel: &Selection,
    action: BulkAction,
) -> StoreResult<Vec<i64>> {
    let ids = select(tx, sealer, service_id, sel).await?;
    for chunk in ids.chunks(kq::CHUNK) {
        let values = chunk.iter().map(|id| (*id).into()).collect();
        tx.exec_drop(action.sql(chunk.len()), Params::Positional(values))
            .await
            .map_err(backend)?;
    }
    Ok(ids)
}
