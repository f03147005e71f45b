//! `api-key-rotator export` and `import`: every service and key (with health and
//! counters) as one JSON document, so a deployment can move between SQLite and MySQL.
//! Import is one transaction and idempotent: services are matched by slug, keys by
//! (service, value). `export` masks the key values unless asked to reveal them, and with
//! `ENCRYPTION_KEY`, `import` encrypts what it writes; `encrypt` and `decrypt` convert the
//! stored values in place, a batch per transaction.

use crate::config::{Secret, StoreConfig};
use crate::store::{self, BoxFuture, DUMP_FORMAT, Dump, ImportOutcome, Store, StoreResult};

/// The format tag of an export whose key values are masked: it cannot be imported.
pub const MASKED_FORMAT: &str = "api-key-rotator/1 (key values masked)";
/// Keys converted per transaction by `encrypt` and `decrypt`.
pub const CONVERT_BATCH: usize = 500;

/// Reads everything from the configured store as pretty JSON. The key values are masked
/// unless `reveal` (a masked export is for reading, not for `import`).
pub async fn export(config: &StoreConfig, reveal: bool) -> Result<String, String> {
    let store = store::open(config).await?;
    let mut dump = store.load_all().await.map_err(|e| e.to_string())?;
    if !reveal {
        dump.format = MASKED_FORMAT.into();
        for k in &mut dump.keys {
            k.key_value = crate::keys::mask(&k.key_value);
        }
    }
    serde_json::to_string_pretty(&dump).map_err(|e| e.to_string())
}

/// `rekey`: every value sealed under `config`'s `ENCRYPTION_KEY` re-sealed with `to`, a
/// batch per transaction (`progress` after each); resumable (what is done is left alone),
/// and the database takes `to`'s key id once the last batch is done.
pub async fn rekey(
    config: &StoreConfig,
    to: Secret,
    progress: impl FnMut(usize),
) -> Result<usize, String> {
    let store = store::open(config).await?;
    in_batches(
        &*store,
        |s| s.rekey_keys(to.clone(), CONVERT_BATCH),
        true,
        progress,
    )
    .await
}

/// `encrypt` (`to_plain` false) or `decrypt` every stored key value, a batch per
/// transaction (`progress` after each); returns how many were converted. Idempotent and
/// resumable: what is already converted is left alone, so after a crash it runs again.
pub async fn convert(
    config: &StoreConfig,
    to_plain: bool,
    progress: impl FnMut(usize),
) -> Result<usize, String> {
    let store = store::open(config).await?;
    in_batches(
        &*store,
        |s| s.convert_keys(to_plain, CONVERT_BATCH),
        !to_plain,
        progress,
    )
    .await
}

/// Runs `step` (one batch, one transaction) until it converts nothing more, calling
/// `progress` with the total after each; then, when `compact`, leaves no old value in the
/// database's files. Returns the total.
async fn in_batches<F>(
    store: &dyn Store,
    mut step: F,
    compact: bool,
    mut progress: impl FnMut(usize),
) -> Result<usize, String>
where
    F: for<'a> FnMut(&'a dyn Store) -> BoxFuture<'a, StoreResult<usize>>,
{
    let mut total = 0;
    loop {
        let n = step(store).await.map_err(|e| e.to_string())?;
        if n == 0 {
            if compact {
                store.compact().await.map_err(|e| e.to_string())?;
            }
            return Ok(total);
        }
        total += n;
        progress(total);
    }
}

/// Parses and checks an export document.
pub fn parse(text: &str) -> Result<Dump, String> {
    let dump: Dump =
        serde_json::from_str(text).map_err(|e| format!("not an export document: {e}"))?;
    if dump.format == MASKED_FORMAT {
        return Err(
            "this export has masked key values (it was made without --reveal): \
                    export again with `api-key-rotator export --reveal`"
                .into(),
        );
    }
    if !dump.format.is_empty() && dump.format != DUMP_FORMAT {
        return Err(format!(
            "unknown export format '{}' (expected {DUMP_FORMAT})",
            dump.format
        ));
    }
    for s in &dump.services {
        crate::service::check_identity(&s.fields)
            .map_err(|e| format!("service '{}': {}", s.fields.slug, e.message))?;
    }
    Ok(dump)
}

/// Merges an export document into the configured store, in one transaction.
pub async fn import(config: &StoreConfig, text: &str) -> Result<ImportOutcome, String> {
    let dump = parse(text)?;
    let store = store::open(config).await?;
    store.import(dump).await.map_err(|e| e.to_string())
}
