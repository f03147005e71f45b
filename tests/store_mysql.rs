#![cfg(feature = "mysql")]
//! The MySQL store against the real MariaDB/MySQL server: the shared store suite (the same
//! checks SQLite passes), a database written by the original, all-or-nothing batches,
//! RESET_DB_TABLES, instances migrating together, and MySQL's collations.

mod enterprise_support;
mod support;

use std::sync::{Arc, Mutex};

use api_key_rotator::store::mysql::MysqlStore;
use api_key_rotator::store::{Store, StoreError};
use enterprise_support::TestDb;
use support::store_suite;

async fn open(db: &TestDb) -> MysqlStore {
    MysqlStore::open(&db.config(), false)
        .await
        .unwrap_or_else(|e| panic!("MySQL store opens on {}: {e}", db.name))
}

#[tokio::test]
async fn store_suite_passes_on_mysql() {
    let dbs = Mutex::new(Vec::new());
    store_suite::run_all(|| {
        let db = TestDb::new();
        let config = db.config();
        dbs.lock().unwrap().push(db);
        async move {
            let store = MysqlStore::open(&config, false).await.unwrap();
            Arc::new(store) as Arc<dyn Store>
        }
    })
    .await;
}

/// The original's tables as GORM AutoMigrate created them on MySQL (narrow `method` and
/// URLs, case-insensitive `key_value`), with its rows.
const ORIGINAL_MYSQL: &str = "
CREATE TABLE `proxy_configs` (
  `id` int AUTO_INCREMENT,
  `name` varchar(100) NOT NULL,
  `slug` varchar(100) NOT NULL,
  `config_type` varchar(50) NOT NULL,
  `api_key_location` varchar(50),
  `api_key_name` varchar(100),
  `is_active` boolean DEFAULT true,
  `created_at` datetime(3) NULL,
  `updated_at` datetime(3) NULL,
  `method` varchar(10),
  `target_url` varchar(255),
  `target_base_url` varchar(255),
  `api_format` varchar(50) DEFAULT 'openai_compatible',
  `output_format` varchar(50) DEFAULT 'none',
  PRIMARY KEY (`id`),
  UNIQUE INDEX `idx_proxy_configs_name` (`name`),
  UNIQUE INDEX `idx_proxy_configs_slug` (`slug`),
  INDEX `idx_proxy_configs_config_type` (`config_type`)
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;
CREATE TABLE `api_keys` (
  `id` int AUTO_INCREMENT,
  `key_value` varchar(255) NOT NULL,
  `is_active` boolean DEFAULT true,
  `proxy_config_id` int,
  PRIMARY KEY (`id`),
  CONSTRAINT `fk_proxy_configs_api_keys` FOREIGN KEY (`proxy_config_id`)
    REFERENCES `proxy_configs`(`id`) ON DELETE CASCADE
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;
INSERT INTO proxy_configs (id, name, slug, config_type, api_key_location, api_key_name,
  is_active, created_at, updated_at, method, target_url)
  VALUES (1, 'Weather', 'weather', 'GENERIC', 'query', 'access_key', true,
  '2025-03-01 02:00:00.123', '2025-03-02 03:00:00.000', 'GET', 'http://api.weatherstack.com');
INSERT INTO proxy_configs (id, name, slug, config_type, is_active, created_at, updated_at,
  target_base_url, api_format)
  VALUES (2, 'OpenRouter', 'openrouter', 'LLM', false, '2025-03-01 02:00:00', NULL,
  'https://openrouter.ai/api/v1', 'openai_compatible');
INSERT INTO api_keys (id, key_value, is_active, proxy_config_id) VALUES
  (1, 'wk-ABC', true, 1), (2, 'wk-old', false, 1), (3, 'sk-or-1', true, 2);
";

#[tokio::test]
async fn a_database_written_by_the_original_opens_as_it_is() {
    let db = TestDb::new();
    db.exec(ORIGINAL_MYSQL).await;
    let store = open(&db).await;
    let services = store.list_services().await.unwrap();
    assert_eq!(services.len(), 2);
    let weather = &services[0];
    assert_eq!(
        (
            weather.fields.slug.as_str(),
            weather.fields.method.as_deref()
        ),
        ("weather", Some("GET"))
    );
    assert_eq!(weather.fields.api_key_location.as_deref(), Some("query"));
    assert_eq!(
        weather.created_at.as_deref(),
        Some("2025-03-01T02:00:00Z"),
        "datetime(3) read as RFC 3339"
    );
    assert_eq!((weather.key_count, weather.active_key_count), (2, 1));
    assert!(!services[1].fields.is_active, "boolean false read");
    assert_eq!(services[1].updated_at, None);
    let keys = store.list_keys(1).await.unwrap();
    assert!(keys[0].is_active && !keys[1].is_active);
    assert_eq!(keys[0].stats.request_count, 0, "added counters start at 0");

    // What the migration changed: our columns, the widened ones, key_value byte-exact.
    let width = |col: &'static str| {
        let db = &db;
        async move {
            db.scalar(&format!(
                "SELECT CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'proxy_configs' \
                 AND COLUMN_NAME = '{col}'"
            ))
            .await
        }
    };
    assert_eq!(width("method").await.as_deref(), Some("100"));
    assert_eq!(width("target_url").await.as_deref(), Some("2048"));
    assert_eq!(
        width("name").await.as_deref(),
        Some("100"),
        "never narrowed"
    );
    let collation = db
        .scalar(
            "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = \
             DATABASE() AND TABLE_NAME = 'api_keys' AND COLUMN_NAME = 'key_value'",
        )
        .await;
    assert_eq!(collation.as_deref(), Some("utf8mb4_bin"));

    // Usable as before: a long method list and URL, a key differing only in case.
    let mut f = store_suite::generic("newer");
    f.method = Some("GET,POST,PUT,PATCH".into());
    f.target_url = Some(format!("https://example.com/{}", "p".repeat(600)));
    let new = store.create_service(f.clone()).await.unwrap();
    assert_eq!(new.fields, f);
    assert!(new.id > 2);
    store.add_key(1, "wk-abc".into(), true).await.unwrap();
    drop(store);
    // Opening again is a no-op migration.
    let again = open(&db).await;
    assert_eq!(again.list_services().await.unwrap().len(), 3);
    assert_eq!(again.list_keys(1).await.unwrap().len(), 3);
}

#[tokio::test]
async fn key_values_are_case_sensitive_and_names_are_not() {
    let db = TestDb::new();
    let store = open(&db).await;
    let s = store
        .create_service(store_suite::generic("case"))
        .await
        .unwrap();
    store.add_key(s.id, "sk-ABC".into(), true).await.unwrap();
    store.add_key(s.id, "sk-abc".into(), true).await.unwrap();
    let out = store
        .add_keys(s.id, vec!["sk-Abc".into(), "sk-ABC".into()])
        .await
        .unwrap();
    assert_eq!((out.success_count, out.skipped_count), (1, 1));
    assert_eq!(
        store.add_key(s.id, "sk-abc".into(), true).await,
        Err(StoreError::Conflict("key_value"))
    );
    // As on the original's MySQL: names and slugs are unique whatever the case.
    let mut shout = store_suite::generic("case-2");
    shout.name = "SERVICE CASE".into();
    assert_eq!(
        store.create_service(shout).await,
        Err(StoreError::Conflict("name"))
    );
}

#[tokio::test]
async fn an_interrupted_batch_import_leaves_nothing_half_written() {
    let db = TestDb::new();
    let store = open(&db).await;
    let s = store
        .create_service(store_suite::generic("atomic"))
        .await
        .unwrap();
    store.add_key(s.id, "existing".into(), true).await.unwrap();
    // Fail in the second multi-row INSERT, after the first one went through.
    db.exec(
        "CREATE TRIGGER fail_midway BEFORE INSERT ON api_keys FOR EACH ROW \
         IF NEW.key_value = 'k700' THEN \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'disk full'; END IF",
    )
    .await;
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
    // Without the trigger, the same batch goes in whole.
    db.exec("DROP TRIGGER fail_midway").await;
    let batch: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    let out = store.add_keys(s.id, batch).await.unwrap();
    assert_eq!(out.success_count, 1000);
    assert_eq!(store.list_keys(s.id).await.unwrap().len(), 1001);
}

#[tokio::test]
async fn reset_drops_everything() {
    let db = TestDb::new();
    let store = open(&db).await;
    let s = store
        .create_service(store_suite::generic("doomed"))
        .await
        .unwrap();
    store.add_key(s.id, "k".into(), true).await.unwrap();
    drop(store);
    assert_eq!(open(&db).await.list_services().await.unwrap().len(), 1);
    let reset = MysqlStore::open(&db.config(), true).await.unwrap();
    assert!(reset.list_services().await.unwrap().is_empty());
    assert!(reset.load_all().await.unwrap().keys.is_empty());
}

#[tokio::test]
async fn instances_starting_together_on_a_new_database_both_open() {
    let db = TestDb::new();
    let config = db.config();
    let (a, b, c) = tokio::join!(
        MysqlStore::open(&config, false),
        MysqlStore::open(&config, false),
        MysqlStore::open(&config, false)
    );
    let (a, b, _c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let s = a
        .create_service(store_suite::generic("shared"))
        .await
        .unwrap();
    assert_eq!(
        b.get_service(s.id).await.unwrap().unwrap().fields.slug,
        "shared"
    );
    assert_eq!(
        db.scalar("SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = DATABASE()")
            .await
            .as_deref(),
        Some("utf8mb4"),
        "the database was created in utf8mb4"
    );
}

#[tokio::test]
async fn a_wrong_password_fails_without_showing_it() {
    let db = TestDb::new();
    let mut config = db.config();
    config.user = "rotator_nobody".into();
    config.password = api_key_rotator::config::Secret::new("s3cret-pw-never-logged");
    let err = match MysqlStore::open(&config, false).await {
        Ok(_) => panic!("an unknown user must not connect"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("denied"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    assert!(!format!("{config:?}").contains("s3cret"));
}

#[tokio::test]
async fn ping_answers() {
    let db = TestDb::new();
    let store = open(&db).await;
    store.ping().await.unwrap();
    assert_eq!(store.kind(), "mysql");
}

/// The same suite with every key value encrypted (`ENCRYPTION_KEY`), then what a dump of
/// the table shows: no key value.
#[tokio::test]
async fn store_suite_passes_on_mysql_with_encryption() {
    let dbs = Mutex::new(Vec::new());
    let key = api_key_rotator::config::Secret::new("suite-encryption-key-0123456789abcdef");
    store_suite::run_all(|| {
        let db = TestDb::new();
        let config = db.config();
        dbs.lock().unwrap().push(db);
        let key = key.clone();
        async move {
            let store = MysqlStore::open_encrypted(&config, false, (Some(&key), None))
                .await
                .unwrap();
            Arc::new(store) as Arc<dyn Store>
        }
    })
    .await;
    // A fresh database: keys in, the raw rows out, as a dump would show them.
    let db = TestDb::new();
    let store = MysqlStore::open_encrypted(&db.config(), false, (Some(&key), None))
        .await
        .unwrap();
    let svc = store
        .create_service(store_suite::generic("dumped"))
        .await
        .unwrap();
    store
        .add_keys(
            svc.id,
            vec!["sk-dump-secret-1".into(), "sk-dump-secret-2".into()],
        )
        .await
        .unwrap();
    let rows = db
        .scalar("SELECT GROUP_CONCAT(key_value, '|', COALESCE(key_lookup, '')) FROM api_keys")
        .await
        .unwrap();
    assert!(!rows.contains("sk-dump-secret"), "{rows}");
    assert_eq!(rows.matches("v1:").count(), 2, "{rows}");
    // And what mysqldump writes of the whole database.
    let c = db.config();
    let mut dump = std::process::Command::new("mysqldump");
    dump.args([
        "--host",
        &c.host,
        "--port",
        &c.port.to_string(),
        "--user",
        &c.user,
    ]);
    if !c.password.expose().is_empty() {
        dump.arg(format!("--password={}", c.password.expose()));
    }
    let out = dump
        .arg(&c.database)
        .output()
        .expect("mysqldump (Debian: mariadb-client) is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("INSERT INTO `api_keys`"),
        "the dump has the keys' rows"
    );
    assert!(
        !text.contains("sk-dump-secret"),
        "a key value is in the dump"
    );
    assert_eq!(text.matches("'v1:").count(), 2);
    // Another instance with another key, or none, does not start.
    let other = api_key_rotator::config::Secret::new("another-suite-key-0123456789abcdef00");
    let e = MysqlStore::open_encrypted(&db.config(), false, (Some(&other), None))
        .await
        .err()
        .unwrap();
    assert!(e.contains("same ENCRYPTION_KEY"), "{e}");
    let e = MysqlStore::open_encrypted(&db.config(), false, (None, None))
        .await
        .err()
        .unwrap();
    assert!(e.contains("not set"), "{e}");
}
