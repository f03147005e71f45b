//! Keys at rest in either database: whether values are sealed and with what key (the
//! install's salt and the key id, in table `rotator_meta`), checked at every start; values
//! sealed on their way in and opened on their way out. See [`crate::seal`].

use std::sync::Arc;

use super::usage::Dialect;
use super::{KeyRecord, StoreError, StoreResult};
use crate::config::Secret;
use crate::seal::{Sealer, is_sealed};

/// Why a key has no value: it did not decrypt.
pub const CANNOT_DECRYPT: &str = "cannot decrypt (wrong ENCRYPTION_KEY?)";
/// `rotator_meta` names.
pub const META_SALT: &str = "encryption_salt";
pub const META_KEY_ID: &str = "encryption_key_id";

/// The table of install-wide values.
pub fn create_meta(d: Dialect) -> String {
    let suffix = match d {
        Dialect::Sqlite => "",
        Dialect::Mysql => " DEFAULT CHARSET=utf8mb4",
    };
    format!(
        "CREATE TABLE IF NOT EXISTS rotator_meta (name VARCHAR(64) NOT NULL PRIMARY KEY, \
         value TEXT NOT NULL){suffix}"
    )
}

/// Counts the sealed values (what `encrypt` wrote).
pub const COUNT_SEALED: &str = "SELECT COUNT(*) FROM api_keys WHERE key_value LIKE 'v1:%'";

/// Up to `?` keys still to convert: plain ones for `encrypt`, sealed ones for `decrypt`.
pub fn to_convert(to_plain: bool) -> &'static str {
    match to_plain {
        false => {
            "SELECT id, key_value, proxy_config_id FROM api_keys \
                  WHERE key_value NOT LIKE 'v1:%' ORDER BY id LIMIT ?"
        }
        true => {
            "SELECT id, key_value, proxy_config_id FROM api_keys \
                 WHERE key_value LIKE 'v1:%' ORDER BY id LIMIT ?"
        }
    }
}

/// Writes a converted value: value, lookup, id, and the value it had (so a row changed
/// meanwhile is left alone).
pub const CONVERT: &str =
    "UPDATE api_keys SET key_value = ?, key_lookup = ? WHERE id = ? AND key_value = ?";

/// The new value and lookup of a key being converted.
pub fn converted(
    sealer: Option<&Sealer>,
    to_plain: bool,
    (id, value, service_id): &(i64, String, i64),
) -> StoreResult<(String, Option<String>)> {
    let s = sealer.ok_or_else(|| {
        StoreError::Backend("ENCRYPTION_KEY is not set: it is needed to encrypt or decrypt".into())
    })?;
    if !to_plain {
        return to_store(Some(s), value, *service_id);
    }
    s.open(value, *service_id)
        .map(|plain| (plain, None))
        .map_err(|e| StoreError::Backend(format!("key id {id} cannot be decrypted: {e}")))
}

/// `rotator_meta` rows to write: `(name, value)`.
pub type MetaWrites = Vec<(&'static str, String)>;

/// Up to `?` keys sealed under key id `?` (`v1:<id>:%`), for `rekey`.
pub const TO_REKEY: &str = "SELECT id, key_value, proxy_config_id FROM api_keys \
    WHERE key_value LIKE ? ORDER BY id LIMIT ?";

/// The `LIKE` pattern of values sealed under `sealer`.
pub fn sealed_by(sealer: &Sealer) -> String {
    format!("v1:{}:%", sealer.id())
}

/// The sealers of `rekey`: the store's (`from`) and `to` over the same salt.
pub fn rekey_pair(
    from: Option<&Arc<Sealer>>,
    salt: Option<String>,
    to: &Secret,
) -> StoreResult<(Arc<Sealer>, Sealer)> {
    let e = |m: String| StoreError::Backend(m);
    let from = from
        .cloned()
        .ok_or_else(|| e("the database is not encrypted: use `encrypt`".into()))?;
    let salt = salt.ok_or_else(|| e("the database has no encryption salt".into()))?;
    let to = Sealer::new(to.expose().as_bytes(), salt.as_bytes()).map_err(e)?;
    if to.id() == from.id() {
        return Err(e("--to is the key the database already has".into()));
    }
    Ok((from, to))
}

/// A value re-sealed: opened with `from`, sealed and fingerprinted with `to`.
pub fn resealed(
    from: &Sealer,
    to: &Sealer,
    (id, value, service_id): &(i64, String, i64),
) -> StoreResult<(String, Option<String>)> {
    let plain = from
        .open(value, *service_id)
        .map_err(|e| StoreError::Backend(format!("key id {id} cannot be decrypted: {e}")))?;
    to_store(Some(to), &plain, *service_id)
}

/// What the database holds of encryption.
#[derive(Debug, Default, Clone)]
pub struct AtRest {
    pub salt: Option<String>,
    pub key_id: Option<String>,
    pub sealed_rows: u64,
}

/// The sealer `ENCRYPTION_KEY` (`key`) gives with what the database holds, and the
/// `rotator_meta` rows to write; or why the service must not start: sealed values and no
/// key, or a key other than the one the database was sealed with.
pub fn decide(
    db: &AtRest,
    key: Option<&Secret>,
    previous: Option<&Secret>,
) -> Result<(Option<Arc<Sealer>>, MetaWrites), String> {
    let Some(key) = key else {
        if db.sealed_rows > 0 {
            return Err(format!(
                "{} upstream keys in the database are encrypted, and ENCRYPTION_KEY is not \
                 set: set it to the key they were encrypted with",
                db.sealed_rows
            ));
        }
        return Ok((None, Vec::new()));
    };
    let mut writes = Vec::new();
    let salt = match &db.salt {
        Some(s) => s.clone(),
        None => {
            let s = Sealer::new_salt()?;
            writes.push((META_SALT, s.clone()));
            s
        }
    };
    let mut sealer = Sealer::new(key.expose().as_bytes(), salt.as_bytes())?;
    if let Some(p) = previous {
        sealer = sealer.with_previous(Sealer::new(p.expose().as_bytes(), salt.as_bytes())?);
    }
    match &db.key_id {
        // A rekey to this key has not finished: the previous key is the database's.
        Some(id) if sealer.previous_id() == Some(id.as_str()) => {}
        Some(id) if id != sealer.id() => {
            return Err(format!(
                "ENCRYPTION_KEY is not the key this database's upstream keys were encrypted \
                 with (its key id is {id}, this ENCRYPTION_KEY's is {}). Every instance must \
                 use the same ENCRYPTION_KEY",
                sealer.id()
            ));
        }
        Some(_) => {}
        None => writes.push((META_KEY_ID, sealer.id().to_string())),
    }
    Ok((Some(Arc::new(sealer)), writes))
}

/// A value as stored, with its lookup: sealed for service `service_id` when there is a
/// sealer, else as it is (and no lookup).
pub fn to_store(
    sealer: Option<&Sealer>,
    value: &str,
    service_id: i64,
) -> StoreResult<(String, Option<String>)> {
    match sealer {
        None => Ok((value.to_string(), None)),
        Some(s) => {
            let sealed = s.seal(value, service_id).map_err(StoreError::Backend)?;
            Ok((sealed, Some(s.lookup(value))))
        }
    }
}

/// Sealed keys stored before `key_tail` existed (their tail is filled at start).
pub const TAILLESS: &str = "SELECT id, key_value, proxy_config_id FROM api_keys \
    WHERE key_tail IS NULL AND key_value LIKE 'v1:%'";

/// Plain keys stored before `key_tail` existed: their tail, by SQL.
pub fn fill_plain_tails(d: Dialect) -> String {
    let f = match d {
        Dialect::Sqlite => "substr(key_value, -4)",
        Dialect::Mysql => "RIGHT(key_value, 4)",
    };
    format!(
        "UPDATE api_keys SET key_tail = {f} WHERE key_tail IS NULL AND key_value NOT LIKE 'v1:%'"
    )
}

/// The tails of sealed keys without one: `(tail, id)` of those that open.
pub fn tails(sealer: Option<&Sealer>, rows: Vec<(i64, String, i64)>) -> Vec<(String, i64)> {
    let Some(s) = sealer else { return Vec::new() };
    rows.into_iter()
        .filter_map(|(id, value, service)| {
            let plain = crate::seal::WipedString(s.open(&value, service).ok()?);
            Some((super::key_query::tail(&plain.0), id))
        })
        .collect()
}

/// The lookups a stored duplicate of `value` may have (none without encryption).
pub fn lookups(sealer: Option<&Sealer>, value: &str) -> Vec<String> {
    sealer.map(|s| s.lookups(value)).unwrap_or_default()
}

/// The lookups of a search `q` taken as a whole key (none without one, or without
/// encryption).
pub fn search_lookups(sealer: Option<&Sealer>, f: &super::key_query::KeyFilter) -> Vec<String> {
    f.q.as_deref()
        .map(|q| lookups(sealer, q))
        .unwrap_or_default()
}

/// Opens every sealed value of `keys` in place. A value that does not open leaves its
/// key without a value, marked invalid ([`CANNOT_DECRYPT`]): never sent, never shown.
pub fn open_keys(sealer: Option<&Sealer>, keys: &mut [KeyRecord]) {
    for k in keys.iter_mut().filter(|k| is_sealed(&k.key_value)) {
        match sealer.map(|s| s.open(&k.key_value, k.proxy_config_id)) {
            Some(Ok(plain)) => k.key_value = plain,
            _ => {
                k.key_value.clear();
                k.health.invalid_reason = Some(CANNOT_DECRYPT.into());
                k.health
                    .invalid_at
                    .get_or_insert(crate::timefmt::now_ms() as i64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Secret {
        Secret::new("k".repeat(32))
    }

    #[test]
    fn starts_are_refused_when_the_key_is_missing_or_another() {
        let plain = AtRest::default();
        assert!(decide(&plain, None, None).unwrap().0.is_none());
        let (sealer, writes) = decide(&plain, Some(&key()), None).unwrap();
        let sealer = sealer.unwrap();
        assert_eq!(
            writes.iter().map(|w| w.0).collect::<Vec<_>>(),
            [META_SALT, META_KEY_ID]
        );
        let sealed = AtRest {
            salt: Some(writes[0].1.clone()),
            key_id: Some(sealer.id().into()),
            sealed_rows: 3,
        };
        let (again, writes) = decide(&sealed, Some(&key()), None).unwrap();
        assert_eq!(again.unwrap().id(), sealer.id());
        assert!(writes.is_empty());
        let e = decide(&sealed, None, None).unwrap_err();
        assert!(
            e.contains("3 upstream keys") && e.contains("not set"),
            "{e}"
        );
        let e = decide(&sealed, Some(&Secret::new("x".repeat(40))), None).unwrap_err();
        assert!(e.contains("same ENCRYPTION_KEY"), "{e}");
    }

    #[test]
    fn values_that_do_not_open_leave_their_key_invalid_and_empty() {
        let (sealer, _) = decide(&AtRest::default(), Some(&key()), None).unwrap();
        let s = sealer.unwrap();
        let (stored, lookup) = to_store(Some(&s), "sk-1", 4).unwrap();
        assert_eq!(lookup, Some(s.lookup("sk-1")));
        let record = |value: &str, service: i64| KeyRecord {
            id: 1,
            key_value: value.into(),
            is_active: true,
            proxy_config_id: service,
            health: Default::default(),
            stats: Default::default(),
            note: None,
        };
        let mut keys = vec![record(&stored, 4), record(&stored, 5), record("plain", 4)];
        open_keys(Some(&s), &mut keys);
        assert_eq!(keys[0].key_value, "sk-1");
        assert_eq!(
            (
                keys[1].key_value.as_str(),
                keys[1].health.invalid_reason.as_deref()
            ),
            ("", Some(CANNOT_DECRYPT))
        );
        assert_eq!(
            keys[2].key_value, "plain",
            "a value never encrypted reads as it is"
        );
    }
}
