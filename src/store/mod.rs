//! Durable configuration: services, keys, key health and counters.
//!
//! The [`Store`] trait is what the admin API, the snapshot loader, the statistics
//! flusher and the export/import commands use. Backends: SQLite (the lightweight
//! default) and MySQL (`--features mysql`). A backend that is asked for but not
//! compiled in is a start-up error naming the build to use.
//!
//! Nothing here is on the proxy's hot path: proxied requests read the in-memory
//! snapshot, never the store.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{Secret, StoreConfig};

pub mod client_keys;
pub mod key_query;
pub mod keyring;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod usage;

use self::client_keys::{ClientKeyFields, ClientKeyRecord};
use self::key_query::{BulkAction, KeyFilter, PageQuery, Selection};
use self::usage::{Bucket, LogEntry, RequestQuery, Rollup, UsageQuery};

/// A boxed future, so the trait can be used as `dyn Store`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Store failures.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreError {
    /// A unique value is taken: `name`, `slug` or `key_value`.
    Conflict(&'static str),
    /// The row the operation needs does not exist.
    NotFound,
    /// The database failed; the text is for the log.
    Backend(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Conflict(field) => write!(f, "{field} already exists"),
            StoreError::NotFound => f.write_str("not found"),
            StoreError::Backend(e) => write!(f, "database error: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Result of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// A service ("proxy config") as stored. Field names are the original's columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ServiceRecord {
    pub id: i64,
    #[serde(flatten)]
    pub fields: ServiceFields,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
    /// How many keys the service has (not part of exports).
    #[serde(skip)]
    pub key_count: i64,
    /// How many of them are enabled.
    #[serde(skip)]
    pub active_key_count: i64,
}

/// The settable fields of a service (create and full update).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ServiceFields {
    pub name: String,
    pub slug: String,
    pub config_type: String,
    pub is_active: bool,
    #[serde(default)]
    pub api_key_location: Option<String>,
    #[serde(default)]
    pub api_key_name: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub target_url: Option<String>,
    #[serde(default)]
    pub target_base_url: Option<String>,
    #[serde(default)]
    pub api_format: Option<String>,
    #[serde(default)]
    pub output_format: Option<String>,
    /// Extra attempts with other keys after a retryable failure (default 2).
    #[serde(default)]
    pub max_retries: Option<i64>,
    /// Comma-separated statuses that trigger a retry (default depends on the type).
    #[serde(default)]
    pub retry_on: Option<String>,
    /// Path (under the target) that `POST /admin/keys/:id/test` calls for generic services.
    #[serde(default)]
    pub probe_path: Option<String>,
    /// Seconds an answer's body may go without a byte before it is cut (0: never;
    /// unset: `UPSTREAM_IDLE_TIMEOUT`).
    #[serde(default)]
    pub idle_timeout: Option<i64>,
    /// Seconds between background re-validations of its invalid keys (unset or 0: off).
    #[serde(default)]
    pub revalidate_interval: Option<i64>,
}

/// Health of a key that survives restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KeyHealth {
    /// Set when the upstream refused the key (401/403, quota phrases).
    #[serde(default)]
    pub invalid_reason: Option<String>,
    /// Unix milliseconds.
    #[serde(default)]
    pub invalid_at: Option<i64>,
    /// Unix milliseconds; the key is skipped until then.
    #[serde(default)]
    pub cooldown_until: Option<i64>,
}

/// Usage counters of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KeyStats {
    #[serde(default)]
    pub request_count: i64,
    #[serde(default)]
    pub success_count: i64,
    #[serde(default)]
    pub failure_count: i64,
    #[serde(default)]
    pub consecutive_failures: i64,
    /// Unix milliseconds.
    #[serde(default)]
    pub last_used_at: Option<i64>,
    #[serde(default)]
    pub last_status: Option<i64>,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// A key as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: i64,
    pub key_value: String,
    pub is_active: bool,
    pub proxy_config_id: i64,
    #[serde(flatten)]
    pub health: KeyHealth,
    #[serde(flatten)]
    pub stats: KeyStats,
    /// The admin's note on the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A key's plain value is wiped from memory when its record goes.
impl Drop for KeyRecord {
    fn drop(&mut self) {
        // SAFETY: zero bytes keep the string valid UTF-8.
        crate::seal::wipe(unsafe { self.key_value.as_bytes_mut() });
    }
}

/// A batch of counter changes for one key, written by the statistics flusher.
/// Counts are deltas (so several instances can add to the same row); the rest are
/// the latest values.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatsUpdate {
    pub key_id: i64,
    pub requests: i64,
    pub successes: i64,
    pub failures: i64,
    pub consecutive_failures: i64,
    pub last_used_at: Option<i64>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub cooldown_until: Option<i64>,
}

/// Outcome of a batch import, in the original's shape.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BatchOutcome {
    pub success_count: u64,
    pub failed_count: u64,
    pub skipped_count: u64,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub failed_keys: Vec<String>,
}

/// Everything the store holds; what `export` writes and `import` reads.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Dump {
    #[serde(default)]
    pub format: String,
    pub services: Vec<ServiceRecord>,
    pub keys: Vec<KeyRecord>,
}

/// The format tag of [`Dump`].
pub const DUMP_FORMAT: &str = "api-key-rotator/1";

/// What an import did.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ImportOutcome {
    pub services_created: u64,
    pub services_updated: u64,
    pub keys_created: u64,
    pub keys_updated: u64,
}

/// What the statistics flusher writes of usage insight, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct UsageBatch {
    /// Added to their hours' rows.
    pub rollups: Vec<Rollup>,
    /// Appended to the request log, oldest first.
    pub entries: Vec<LogEntry>,
    /// Then the log keeps its newest this many entries.
    pub keep_entries: usize,
    /// And rollups of hours before this (Unix seconds) go.
    pub keep_since: i64,
}

/// Longest key accepted (the original's column is varchar(255) on MySQL).
pub const MAX_KEY_LEN: usize = 255;

/// Durable storage of services and keys.
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `mysql`.
    fn kind(&self) -> &'static str;
    /// Checks the database answers.
    fn ping(&self) -> BoxFuture<'_, StoreResult<()>>;
    /// Every service and key (for the snapshot and `export`), in id order.
    fn load_all(&self) -> BoxFuture<'_, StoreResult<Dump>>;
    /// Every service, in id order.
    fn list_services(&self) -> BoxFuture<'_, StoreResult<Vec<ServiceRecord>>>;
    /// One service.
    fn get_service(&self, id: i64) -> BoxFuture<'_, StoreResult<Option<ServiceRecord>>>;
    /// Creates a service. `Conflict("name"|"slug")` when taken.
    fn create_service(&self, fields: ServiceFields) -> BoxFuture<'_, StoreResult<ServiceRecord>>;
    /// Replaces a service's fields. `NotFound`, `Conflict`.
    fn update_service(
        &self,
        id: i64,
        fields: ServiceFields,
    ) -> BoxFuture<'_, StoreResult<ServiceRecord>>;
    /// Enables or disables a service. `NotFound`.
    fn set_service_active(&self, id: i64, active: bool) -> BoxFuture<'_, StoreResult<()>>;
    /// Deletes a service and its keys. `NotFound`.
    fn delete_service(&self, id: i64) -> BoxFuture<'_, StoreResult<()>>;
    /// The keys of a service, in id order. `NotFound` when the service does not exist.
    fn list_keys(&self, service_id: i64) -> BoxFuture<'_, StoreResult<Vec<KeyRecord>>>;
    /// One page of a service's keys ([`key_query`]). `NotFound` (service).
    fn page_keys(&self, q: PageQuery) -> BoxFuture<'_, StoreResult<Vec<KeyRecord>>>;
    /// How many of a service's keys `filter` matches. `NotFound` (service).
    fn count_keys(&self, service_id: i64, filter: KeyFilter) -> BoxFuture<'_, StoreResult<u64>>;
    /// The ids a selection names among a service's keys, in id order. `NotFound` (service).
    fn select_keys(
        &self,
        service_id: i64,
        selection: Selection,
    ) -> BoxFuture<'_, StoreResult<Vec<i64>>>;
    /// Applies `action` to the selected keys in one transaction (all or none); returns
    /// their ids. `NotFound` (service).
    fn bulk_keys(
        &self,
        service_id: i64,
        selection: Selection,
        action: BulkAction,
    ) -> BoxFuture<'_, StoreResult<Vec<i64>>>;
    /// Sets (or, with `None`, clears) a key's note. `NotFound`.
    fn set_key_note(&self, key_id: i64, note: Option<String>) -> BoxFuture<'_, StoreResult<()>>;
    /// One key.
    fn get_key(&self, key_id: i64) -> BoxFuture<'_, StoreResult<Option<KeyRecord>>>;
    /// Adds one key. `NotFound` (service), `Conflict("key_value")` (already in this service).
    fn add_key(
        &self,
        service_id: i64,
        value: String,
        active: bool,
    ) -> BoxFuture<'_, StoreResult<KeyRecord>>;
    /// Adds many keys in one transaction: all or nothing. Values must be trimmed and
    /// non-empty; duplicates (in the batch or already stored) are skipped.
    fn add_keys(
        &self,
        service_id: i64,
        values: Vec<String>,
    ) -> BoxFuture<'_, StoreResult<BatchOutcome>>;
    /// Deletes every key of a service, returning how many. `NotFound`.
    fn clear_keys(&self, service_id: i64) -> BoxFuture<'_, StoreResult<u64>>;
    /// Enables or disables a key. `NotFound`.
    fn set_key_active(&self, key_id: i64, active: bool) -> BoxFuture<'_, StoreResult<()>>;
    /// Deletes a key. `NotFound`.
    fn delete_key(&self, key_id: i64) -> BoxFuture<'_, StoreResult<()>>;
    /// Replaces a key's health (invalid mark, cooldown). `NotFound`.
    fn set_key_health(&self, key_id: i64, health: KeyHealth) -> BoxFuture<'_, StoreResult<()>>;
    /// Adds counter deltas and sets the latest values, in one transaction. Unknown key ids
    /// (deleted meanwhile) are ignored.
    fn save_stats(&self, updates: Vec<StatsUpdate>) -> BoxFuture<'_, StoreResult<()>>;
    /// Writes usage insight in one transaction (see [`UsageBatch`]).
    fn save_usage(&self, batch: Arc<UsageBatch>) -> BoxFuture<'_, StoreResult<()>>;
    /// Usage buckets (`GET /admin/usage`).
    fn query_usage(&self, q: UsageQuery) -> BoxFuture<'_, StoreResult<Vec<Bucket>>>;
    /// Request log entries, newest first (`GET /admin/requests`).
    fn query_requests(&self, q: RequestQuery) -> BoxFuture<'_, StoreResult<Vec<LogEntry>>>;
    /// Every client key, in id order.
    fn list_client_keys(&self) -> BoxFuture<'_, StoreResult<Vec<ClientKeyRecord>>>;
    /// Adds a client key with the prefix and hash of its secret. `Conflict("secret")` when
    /// the hash is taken.
    fn create_client_key(
        &self,
        fields: ClientKeyFields,
        prefix: String,
        hash: String,
    ) -> BoxFuture<'_, StoreResult<ClientKeyRecord>>;
    /// Replaces a client key's fields. `NotFound`.
    fn update_client_key(
        &self,
        id: i64,
        fields: ClientKeyFields,
    ) -> BoxFuture<'_, StoreResult<ClientKeyRecord>>;
    /// Deletes a client key. `NotFound`.
    fn delete_client_key(&self, id: i64) -> BoxFuture<'_, StoreResult<()>>;
    /// Sets when client keys were last used: `(id, Unix ms)`, never moving one back.
    fn touch_client_keys(&self, used: Vec<(i64, i64)>) -> BoxFuture<'_, StoreResult<()>>;
    /// `encrypt` (`to_plain` false) seals up to `batch` values stored in plain text;
    /// `decrypt` opens up to `batch` sealed ones; in one transaction. Returns how many it
    /// changed (0: nothing left). Needs `ENCRYPTION_KEY`; a value that does not open stops
    /// `decrypt` with an error naming its key id. After the last `decrypt` batch, the key
    /// id is forgotten, so the database opens without `ENCRYPTION_KEY`.
    fn convert_keys(&self, to_plain: bool, batch: usize) -> BoxFuture<'_, StoreResult<usize>>;
    /// `rekey`: re-seals up to `batch` values sealed under the store's `ENCRYPTION_KEY`
    /// with `to` (same salt), in one transaction; returns how many (0: done, and from then
    /// on the database's key id is `to`'s).
    fn rekey_keys(&self, to: Secret, batch: usize) -> BoxFuture<'_, StoreResult<usize>>;
    /// After `encrypt`: leaves no old plain value in the database's files (SQLite rewrites
    /// the file and empties its write-ahead log; MySQL: nothing to do here).
    fn compact(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Merges a dump in one transaction: services matched by slug, keys by
    /// (service, value). Idempotent.
    fn import(&self, dump: Dump) -> BoxFuture<'_, StoreResult<ImportOutcome>>;
}

/// Opens the store the configuration asks for, creating and migrating the schema.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, String> {
    use crate::config::DatabaseConfig;
    match &config.database {
        #[cfg(feature = "sqlite")]
        DatabaseConfig::Sqlite { path } => {
            let keys = (config.encryption_key.as_ref(), config.encryption_key_previous.as_ref());
            let store = sqlite::SqliteStore::open_encrypted(path, config.reset_db_tables, keys)
                .await
                .map_err(|e| format!("Failed to initialize database ({}): {e}", path.display()))?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "sqlite"))]
        DatabaseConfig::Sqlite { .. } => Err(
            "this binary was built without SQLite support; rebuild with the default features".into(),
        ),
        #[cfg(feature = "mysql")]
        DatabaseConfig::Mysql(m) => {
            let keys = (config.encryption_key.as_ref(), config.encryption_key_previous.as_ref());
            let store = mysql::MysqlStore::open_encrypted(m, config.reset_db_tables, keys)
                .await
                .map_err(|e| format!("Failed to initialize database (mysql {}:{}/{}): {e}", m.host, m.port, m.database))?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "mysql"))]
        DatabaseConfig::Mysql(_) => Err(
            "the environment asks for MySQL (DATABASE_URL=mysql://… or DB_HOST), but this is the \
             lightweight build. Use the enterprise build (`cargo build --release --features enterprise`, \
             image api-key-rotator:enterprise), or unset DATABASE_URL/DB_HOST to use SQLite"
                .into(),
        ),
    }
}
