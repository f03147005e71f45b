#![cfg(feature = "enterprise")]
//! Moving a deployment between the builds with the binary's own commands:
//! `api-key-rotator export > backup.json` on SQLite, `api-key-rotator import backup.json`
//! on MySQL keeps every service, key and key state; importing again changes nothing; and
//! the way back (MySQL → SQLite) keeps everything too.

mod enterprise_support;
mod support;

use std::collections::HashMap;
use std::path::Path;

use api_key_rotator::store::mysql::MysqlStore;
use api_key_rotator::store::sqlite::SqliteStore;
use api_key_rotator::store::{Dump, KeyHealth, KeyStats, ServiceFields, StatsUpdate, Store};
use enterprise_support::{ADMIN_PASSWORD, JWT_SECRET, PROXY_KEY, TestDb, run_bin};
use support::store_suite;

/// Services of every kind and keys in every state.
async fn populate(store: &dyn Store) {
    let weather = store
        .create_service(store_suite::generic("weather"))
        .await
        .unwrap();
    let llm = store
        .create_service(store_suite::llm("openai"))
        .await
        .unwrap();
    let mut off = store_suite::generic("retired");
    off.is_active = false;
    off.probe_path = Some("/status".into());
    store.create_service(off).await.unwrap();

    store
        .add_key(weather.id, "wk-live".into(), true)
        .await
        .unwrap();
    store
        .add_key(weather.id, "wk-off".into(), false)
        .await
        .unwrap();
    let dead = store.add_key(llm.id, "sk-dead".into(), true).await.unwrap();
    let busy = store.add_key(llm.id, "sk-busy".into(), true).await.unwrap();
    store
        .set_key_health(
            dead.id,
            KeyHealth {
                invalid_reason: Some("upstream answered 401 Unauthorized".into()),
                invalid_at: Some(1_800_000_000_000),
                cooldown_until: None,
            },
        )
        .await
        .unwrap();
    store
        .save_stats(vec![StatsUpdate {
            key_id: busy.id,
            requests: 42,
            successes: 40,
            failures: 2,
            consecutive_failures: 1,
            last_used_at: Some(1_800_000_000_123),
            last_status: Some(429),
            last_error: Some("upstream answered 429 (rate limited)".into()),
            cooldown_until: Some(4_000_000_000_000),
        }])
        .await
        .unwrap();
}

type KeyState = (bool, KeyHealth, KeyStats);
/// Service fields by slug, and key states by (slug, key value).
type Comparable = (Vec<ServiceFields>, Vec<((String, String), KeyState)>);

/// What must survive a move: service fields by slug, key states by (slug, value). Ids and
/// timestamps belong to the target database.
fn comparable(d: &Dump) -> Comparable {
    let slugs: HashMap<i64, &str> = d
        .services
        .iter()
        .map(|s| (s.id, s.fields.slug.as_str()))
        .collect();
    let mut services: Vec<_> = d.services.iter().map(|s| s.fields.clone()).collect();
    services.sort_by(|a, b| a.slug.cmp(&b.slug));
    let mut keys: Vec<_> = d
        .keys
        .iter()
        .map(|k| {
            let slug = slugs[&k.proxy_config_id].to_string();
            (
                (slug, k.key_value.clone()),
                (k.is_active, k.health.clone(), k.stats.clone()),
            )
        })
        .collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    (services, keys)
}

fn env_for(database: (&str, &str)) -> HashMap<String, String> {
    [
        ("ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("JWT_SECRET", JWT_SECRET),
        ("GLOBAL_PROXY_KEYS", PROXY_KEY),
        ("LOG_LEVEL", "warn"),
        database,
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `api-key-rotator export`, written to `file`.
fn export_to(env: &HashMap<String, String>, file: &Path) {
    let (code, json, err) = run_bin(&["export", "--reveal"], env);
    assert_eq!(code, 0, "export failed: {err}");
    std::fs::write(file, json).unwrap();
}

/// `api-key-rotator import <file>`; returns what it reported.
fn import_from(env: &HashMap<String, String>, file: &Path) -> String {
    let (code, _, err) = run_bin(&["import", file.to_str().unwrap()], env);
    assert_eq!(code, 0, "import failed: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_mysql_and_back_keeps_every_service_key_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let source_path = dir.path().join("source.db");
    let source = SqliteStore::open(&source_path, false).await.unwrap();
    populate(&source).await;
    let original = comparable(&source.load_all().await.unwrap());
    drop(source);
    assert_eq!((original.0.len(), original.1.len()), (3, 4));

    let backup = dir.path().join("backup.json");
    export_to(
        &env_for(("DATABASE_PATH", source_path.to_str().unwrap())),
        &backup,
    );

    let db = TestDb::new();
    let mysql_env = env_for(("DATABASE_URL", &db.url()));
    let report = import_from(&mysql_env, &backup);
    assert!(report.contains("3 services created"), "{report}");
    assert!(report.contains("4 keys created"), "{report}");
    let mysql = MysqlStore::open(&db.config(), false).await.unwrap();
    assert_eq!(comparable(&mysql.load_all().await.unwrap()), original);

    // Importing the same backup again is a no-op merge.
    let report = import_from(&mysql_env, &backup);
    assert!(report.contains("0 services created, 3 updated"), "{report}");
    assert!(report.contains("0 keys created, 4 updated"), "{report}");
    assert_eq!(comparable(&mysql.load_all().await.unwrap()), original);

    // And back: MySQL → export → a new SQLite file.
    let from_mysql = dir.path().join("from-mysql.json");
    export_to(&mysql_env, &from_mysql);
    let back_path = dir.path().join("back.db");
    import_from(
        &env_for(("DATABASE_PATH", back_path.to_str().unwrap())),
        &from_mysql,
    );
    let back = SqliteStore::open(&back_path, false).await.unwrap();
    assert_eq!(comparable(&back.load_all().await.unwrap()), original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_import_into_mysql_changes_nothing() {
    let db = TestDb::new();
    let store = MysqlStore::open(&db.config(), false).await.unwrap();
    store
        .create_service(store_suite::generic("taken"))
        .await
        .unwrap();
    // A second service whose name collides with the existing one, after a valid one.
    let mut clash = store_suite::generic("other");
    clash.name = "Service taken".into();
    let dump = serde_json::json!({
        "format": "api-key-rotator/1",
        "services": [
            { "id": 1, "name": "Fresh", "slug": "fresh", "config_type": "GENERIC",
              "is_active": true, "target_url": "https://example.com" },
            serde_json::to_value(api_key_rotator::store::ServiceRecord {
                id: 2, fields: clash, ..Default::default()
            }).unwrap(),
        ],
        "keys": [ { "id": 1, "key_value": "k", "is_active": true, "proxy_config_id": 1 } ],
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clash.json");
    std::fs::write(&file, dump.to_string()).unwrap();
    let (code, _, err) = run_bin(
        &["import", file.to_str().unwrap()],
        &env_for(("DATABASE_URL", &db.url())),
    );
    assert_ne!(code, 0);
    assert!(err.contains("nothing was changed"), "{err}");
    let services = store.list_services().await.unwrap();
    assert_eq!(
        services
            .iter()
            .map(|s| s.fields.slug.as_str())
            .collect::<Vec<_>>(),
        ["taken"],
        "the valid first service was rolled back too"
    );
}
