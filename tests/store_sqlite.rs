//! The SQLite store against real files: the shared store suite, a database written by
//! the original, all-or-nothing batch imports, RESET_DB_TABLES and the pragmas.

mod support;

use std::sync::Arc;

use api_key_rotator::store::sqlite::SqliteStore;
use api_key_rotator::store::{Store, StoreError};
use support::store_suite;

async fn fresh(dir: &tempfile::TempDir, name: &str) -> Arc<dyn Store> {
    Arc::new(
        SqliteStore::open(&dir.path().join(name), false)
            .await
            .unwrap(),
    )
}

#[tokio::test]
async fn store_suite_passes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    store_suite::run_all(|| {
        let name = format!(
            "suite-{}.db",
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let dir = &dir;
        async move { fresh(dir, &name).await }
    })
    .await;
}

fn original_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("original.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(include_str!("fixtures/original_v1.sql"))
        .unwrap();
    path
}

#[tokio::test]
async fn a_database_written_by_the_original_opens_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = original_file(&dir);
    let store = SqliteStore::open(&path, false).await.unwrap();
    let services = store.list_services().await.unwrap();
    assert_eq!(services.len(), 2);
    let weather = &services[0];
    assert_eq!(weather.fields.slug, "weather");
    assert_eq!(weather.fields.api_key_location.as_deref(), Some("query"));
    assert_eq!(
        weather.created_at.as_deref(),
        Some("2025-03-01T02:00:00Z"),
        "GORM time read as RFC 3339"
    );
    assert_eq!((weather.key_count, weather.active_key_count), (2, 1));
    let keys = store.list_keys(1).await.unwrap();
    assert_eq!(keys.len(), 2);
    assert!(
        keys[0].is_active && !keys[1].is_active,
        "numeric booleans read"
    );
    assert_eq!(
        keys[0].stats.request_count, 0,
        "added columns default to zero"
    );
    // The orphans (keys of a service the original deleted without cascading) are gone,
    // and a new service never inherits them.
    let all = store.load_all().await.unwrap();
    assert_eq!(all.keys.iter().map(|k| k.id).collect::<Vec<_>>(), [1, 2, 3]);
    let new = store
        .create_service(store_suite::generic("newer"))
        .await
        .unwrap();
    assert!(new.id > 3, "ids are never reused");
    assert!(store.list_keys(new.id).await.unwrap().is_empty());
    drop(store);
    // Opening again is a no-op migration.
    let again = SqliteStore::open(&path, false).await.unwrap();
    assert_eq!(again.list_services().await.unwrap().len(), 3);
}

#[tokio::test]
async fn the_original_schema_gets_our_columns_and_foreign_keys_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = original_file(&dir);
    drop(SqliteStore::open(&path, false).await.unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let cols: Vec<String> = conn
        .prepare("PRAGMA table_info(api_keys)")
        .unwrap()
        .query_map([], |r| r.get(1))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for c in [
        "invalid_reason",
        "cooldown_until",
        "request_count",
        "last_error",
    ] {
        assert!(cols.iter().any(|x| x == c), "{c} added: {cols:?}");
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn an_interrupted_batch_import_leaves_nothing_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("atomic.db");
    let store = SqliteStore::open(&path, false).await.unwrap();
    let s = store
        .create_service(store_suite::generic("atomic"))
        .await
        .unwrap();
    store.add_key(s.id, "existing".into(), true).await.unwrap();
    // Make the database fail in the middle of the batch, as a full disk or a crash would.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER fail_midway BEFORE INSERT ON api_keys WHEN NEW.key_value = 'k500' \
             BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
        )
        .unwrap();
    }
    let batch: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    let err = store.add_keys(s.id, batch).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Backend(ref m) if m.contains("disk full")),
        "{err:?}"
    );
    let keys = store.list_keys(s.id).await.unwrap();
    assert_eq!(
        keys.iter()
            .map(|k| k.key_value.as_str())
            .collect::<Vec<_>>(),
        ["existing"]
    );
}

#[tokio::test]
async fn reset_drops_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reset.db");
    let store = SqliteStore::open(&path, false).await.unwrap();
    let s = store
        .create_service(store_suite::generic("doomed"))
        .await
        .unwrap();
    store.add_key(s.id, "k".into(), true).await.unwrap();
    drop(store);
    let kept = SqliteStore::open(&path, false).await.unwrap();
    assert_eq!(kept.list_services().await.unwrap().len(), 1);
    drop(kept);
    let reset = SqliteStore::open(&path, true).await.unwrap();
    assert!(reset.list_services().await.unwrap().is_empty());
    assert!(reset.load_all().await.unwrap().keys.is_empty());
}

#[tokio::test]
async fn a_missing_directory_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/db.sqlite");
    let store = SqliteStore::open(&path, false).await.unwrap();
    store.ping().await.unwrap();
    assert!(path.exists());
}

/// The same suite with every key value encrypted (`ENCRYPTION_KEY`): what goes in comes
/// back, duplicates are found without decrypting, and nothing is stored in plain text.
#[tokio::test]
async fn store_suite_passes_on_sqlite_with_encryption() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    let key = api_key_rotator::config::Secret::new("suite-encryption-key-0123456789abcdef");
    store_suite::run_all(|| {
        let name = format!(
            "enc-{}.db",
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let path = dir.path().join(name);
        let key = key.clone();
        async move {
            let store = SqliteStore::open_encrypted(&path, false, (Some(&key), None))
                .await
                .unwrap();
            Arc::new(store) as Arc<dyn Store>
        }
    })
    .await;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let conn = rusqlite::Connection::open(entry.unwrap().path()).unwrap();
        let plain: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM api_keys WHERE key_value NOT LIKE 'v1:%'",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        assert_eq!(plain, 0);
    }
}
