//! The MySQL store (enterprise build). Placeholder until the enterprise backend lands.

use crate::config::MysqlConfig;

use super::StoreError;

/// A MySQL database.
pub struct MysqlStore;

impl MysqlStore {
    /// Connects and migrates.
    pub async fn open(
        _config: &MysqlConfig,
        _reset: bool,
    ) -> Result<super::sqlite::SqliteStore, StoreError> {
        Err(StoreError::Backend(
            "the MySQL backend is not implemented yet".into(),
        ))
    }
}
