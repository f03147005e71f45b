//! `api-key-rotator export` and `import`: every service and key (with health and
//! counters) as one JSON document, so a deployment can move between SQLite and MySQL.
//! Import is one transaction and idempotent: services are matched by slug, keys by
//! (service, value).

use crate::config::StoreConfig;
use crate::store::{self, DUMP_FORMAT, Dump, ImportOutcome};

/// Reads everything from the configured store as pretty JSON.
pub async fn export(config: &StoreConfig) -> Result<String, String> {
    let store = store::open(config).await?;
    let dump = store.load_all().await.map_err(|e| e.to_string())?;
    serde_json::to_string_pretty(&dump).map_err(|e| e.to_string())
}

/// Parses and checks an export document.
pub fn parse(text: &str) -> Result<Dump, String> {
    let dump: Dump =
        serde_json::from_str(text).map_err(|e| format!("not an export document: {e}"))?;
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
