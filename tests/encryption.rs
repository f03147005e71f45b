//! Upstream keys encrypted at rest (`ENCRYPTION_KEY`): nothing readable in the SQLite
//! files, the proxy the same, refusals at start when the key is missing or another,
//! tampered and moved values never sent, `encrypt`/`decrypt` (the real binary, cut short
//! by `kill -9` and run again), masked exports.

mod support;

use std::process::Command;
use std::sync::Arc;

use api_key_rotator::config::StoreConfig;
use http::Method;
use serde_json::json;
use support::{call, ok_json, start_in, upstream};

const KEY: &str = "an-encryption-key-of-32-bytes-or-more-0001";
const OTHER: &str = "another-encryption-key-of-32-bytes-000002";

/// Every byte of the database's files (main file and write-ahead log).
fn file_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("db.sqlite")
        {
            all.extend(std::fs::read(&p).unwrap());
        }
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn store_config(dir: &std::path::Path, key: Option<&str>) -> StoreConfig {
    let db = dir.join("db.sqlite");
    let db = db.to_str().unwrap().to_string();
    StoreConfig::from_source(&|name| match name {
        "DATABASE_PATH" => Some(db.clone()),
        "ENCRYPTION_KEY" => key.map(str::to_string),
        _ => None,
    })
    .unwrap()
}

fn raw(dir: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("db.sqlite")).unwrap()
}

#[tokio::test]
async fn keys_are_stored_encrypted_and_the_proxy_works_the_same() {
    let up = upstream(|r| ok_json(json!({"key": r.header("x-api-key")}))).await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut s = start_in(dir.clone(), &[("ENCRYPTION_KEY", KEY)]).await;
    let keys = ["sk-secret-alpha-0001", "sk-secret-beta-0002"];
    let id = s.generic_service("enc", &up.url(""), &keys).await;
    // Dedupe without decrypting: the same key again is refused, in a batch skipped.
    let (status, _, _) = s
        .admin(
            Method::POST,
            &format!("/admin/proxy-configs/{id}/keys"),
            Some(json!({"key_value": keys[0], "is_active": true})),
        )
        .await;
    assert_eq!(status, 409);
    let (_, _, v) = s
        .admin(
            Method::POST,
            &format!("/admin/proxy-configs/{id}/keys/batch"),
            Some(json!({"keys": [keys[1], "sk-secret-gamma-0003"]})),
        )
        .await;
    assert_eq!(
        (v["success_count"].as_u64(), v["skipped_count"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    // The upstream gets the real keys; the admin sees them revealed.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (status, _, body) = call(
            Method::GET,
            &s.url("/proxy/enc/x"),
            &[("x-proxy-key", support::PROXY_KEY)],
            "",
        )
        .await;
        assert_eq!(status, 200);
        seen.push(String::from_utf8(body.to_vec()).unwrap());
    }
    assert!(
        seen.iter().any(|b| b.contains("alpha")) && seen.iter().any(|b| b.contains("gamma")),
        "{seen:?}"
    );
    let listed = s.keys(id).await;
    assert!(
        listed.iter().any(|k| k["key_value"] == keys[0]),
        "{listed:?}"
    );
    s.stop().await;
    let bytes = file_bytes(dir.path());
    for k in keys {
        assert!(
            !contains(&bytes, k),
            "{k} is readable in the database files"
        );
    }
    let stored: Vec<String> = raw(dir.path())
        .prepare("SELECT key_value FROM api_keys")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|v| v.starts_with("v1:")), "{stored:?}");
}

#[tokio::test]
async fn a_missing_or_other_key_stops_the_start_and_damaged_values_are_never_sent() {
    let up = upstream(|r| ok_json(json!({"key": r.header("x-api-key")}))).await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut s = start_in(dir.clone(), &[("ENCRYPTION_KEY", KEY)]).await;
    let a = s
        .generic_service("a", &up.url(""), &["sk-a-tampered-01", "sk-a-good-02"])
        .await;
    let b = s
        .generic_service("b", &up.url(""), &["sk-b-moved-in-03", "sk-b-good-04"])
        .await;
    s.stop().await;

    for (key, says) in [
        (None, "ENCRYPTION_KEY is not set"),
        (Some(OTHER), "same ENCRYPTION_KEY"),
    ] {
        let config = store_config(dir.path(), key);
        let e = api_key_rotator::store::open(&config)
            .await
            .err()
            .expect("refused");
        assert!(e.contains(says), "{e}");
    }

    // One value tampered with; another moved from service a's row into service b's.
    let db = raw(dir.path());
    let value = |id: i64| -> String {
        db.query_row("SELECT key_value FROM api_keys WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap()
    };
    let mut tampered = value(1).into_bytes();
    let last = tampered.len() - 3;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    db.execute(
        "UPDATE api_keys SET key_value = ?1 WHERE id = 1",
        [String::from_utf8(tampered).unwrap()],
    )
    .unwrap();
    db.execute(
        "UPDATE api_keys SET key_value = ?1 WHERE id = 3",
        [value(2)],
    )
    .unwrap();
    drop(db);

    let s = start_in(dir.clone(), &[("ENCRYPTION_KEY", KEY)]).await;
    for svc in [a, b] {
        let listed = s.keys(svc).await;
        let bad: Vec<_> = listed.iter().filter(|k| k["key_value"] == "").collect();
        assert_eq!(bad.len(), 1, "{listed:?}");
        assert_eq!(
            bad[0]["invalid_reason"],
            "cannot decrypt (wrong ENCRYPTION_KEY?)"
        );
    }
    for slug in ["a", "b", "a", "b"] {
        let (status, _, body) = call(
            Method::GET,
            &s.url(&format!("/proxy/{slug}/x")),
            &[("x-proxy-key", support::PROXY_KEY)],
            "",
        )
        .await;
        assert_eq!(status, 200);
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.contains("good"), "only the good keys are sent: {body}");
    }
}

fn run_bin(dir: &std::path::Path, args: &[&str], key: Option<&str>) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_api-key-rotator"));
    cmd.env_clear()
        .current_dir(dir)
        .env("DATABASE_PATH", dir.join("db.sqlite"))
        .env("LOG_LEVEL", "warn")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(k) = key {
        cmd.env("ENCRYPTION_KEY", k);
    }
    cmd.spawn().unwrap()
}

fn finish(child: std::process::Child) -> (bool, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypt_cut_short_by_kill_9_runs_again_and_decrypt_goes_back() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut s = start_in(dir.clone(), &[]).await;
    let keys: Vec<String> = (0..6000).map(|i| format!("sk-plain-{i:06}-zz")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let id = s.generic_service("big", "http://127.0.0.1:9", &refs).await;
    s.stop().await;
    assert!(contains(&file_bytes(dir.path()), "sk-plain-000001-zz"));

    // kill -9 as soon as the first batches are written, then run it again.
    let mut child = run_bin(dir.path(), &["encrypt"], Some(KEY));
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("encrypted 500 keys so far"), "{first}");
    child.kill().unwrap();
    child.wait().unwrap();
    let sealed: i64 = raw(dir.path())
        .query_row(
            "SELECT COUNT(*) FROM api_keys WHERE key_value LIKE 'v1:%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!((500..6000).contains(&sealed), "part done: {sealed}");
    // Every batch is whole: the next run converts exactly the rest.
    let (ok, _, err) = finish(run_bin(dir.path(), &["encrypt"], Some(KEY)));
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("encrypted {} keys;", 6000 - sealed)),
        "{err}"
    );
    let bytes = file_bytes(dir.path());
    assert!(
        !contains(&bytes, "sk-plain-"),
        "no plain value left in the files"
    );
    let (ok, _, err) = finish(run_bin(dir.path(), &["encrypt"], Some(KEY)));
    assert!(ok && err.contains("encrypted 0 keys"), "idempotent: {err}");

    // The service sees every key, decrypted; the export masks them unless --reveal.
    let s = start_in(dir.clone(), &[("ENCRYPTION_KEY", KEY)]).await;
    let listed = s.keys(id).await;
    assert_eq!(listed.len(), 6000);
    assert!(listed.iter().all(|k| k["invalid_reason"].is_null()));
    drop(s);
    let (ok, masked, _) = finish(run_bin(dir.path(), &["export"], Some(KEY)));
    assert!(ok && !masked.contains("sk-plain-000001-zz") && masked.contains("masked"));
    let (ok, revealed, _) = finish(run_bin(dir.path(), &["export", "--reveal"], Some(KEY)));
    assert!(ok && revealed.contains("sk-plain-000001-zz"));
    std::fs::write(dir.path().join("masked.json"), &masked).unwrap();
    let (ok, _, err) = finish(run_bin(dir.path(), &["import", "masked.json"], Some(KEY)));
    assert!(
        !ok && err.contains("--reveal"),
        "a masked export is refused: {err}"
    );

    // decrypt: plain again, and the database opens without ENCRYPTION_KEY.
    let (ok, _, err) = finish(run_bin(dir.path(), &["decrypt"], None));
    assert!(!ok && err.contains("ENCRYPTION_KEY"), "{err}");
    let (ok, _, err) = finish(run_bin(dir.path(), &["decrypt"], Some(KEY)));
    assert!(ok && err.contains("decrypted 6000 keys;"), "{err}");
    let s = start_in(dir.clone(), &[]).await;
    assert_eq!(s.keys(id).await.len(), 6000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_cut_short_by_kill_9_runs_again_and_ends_consistent() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut s = start_in(dir.clone(), &[("ENCRYPTION_KEY", KEY)]).await;
    let keys: Vec<String> = (0..4000).map(|i| format!("sk-rekey-{i:06}-zz")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let id = s.generic_service("big", "http://127.0.0.1:9", &refs).await;
    s.stop().await;

    let mut child = run_bin(dir.path(), &["rekey", "--from", KEY, "--to", OTHER], None);
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("rekeyed 500 keys so far"), "{first}");
    child.kill().unwrap();
    child.wait().unwrap();
    // Cut short: the database still belongs to the old key, and says so at start.
    let e = api_key_rotator::store::open(&store_config(dir.path(), Some(OTHER)))
        .await
        .err()
        .expect("the new key is refused until the rekey is done");
    assert!(e.contains("same ENCRYPTION_KEY"), "{e}");
    let (ok, _, err) = finish(run_bin(
        dir.path(),
        &["rekey", "--from", KEY, "--to", OTHER],
        None,
    ));
    assert!(ok, "{err}");
    assert!(
        err.contains("keys; set ENCRYPTION_KEY to the new key"),
        "{err}"
    );
    // Consistent: every key opens with the new key, the old one is refused.
    let e = api_key_rotator::store::open(&store_config(dir.path(), Some(KEY)))
        .await
        .err()
        .expect("the old key is refused");
    assert!(e.contains("same ENCRYPTION_KEY"), "{e}");
    let s = start_in(dir.clone(), &[("ENCRYPTION_KEY", OTHER)]).await;
    let listed = s.keys(id).await;
    assert_eq!(listed.len(), 4000);
    assert!(
        listed.iter().all(|k| k["invalid_reason"].is_null()),
        "every key opens"
    );
    let mut values: Vec<String> = listed
        .iter()
        .map(|k| k["key_value"].as_str().unwrap().to_string())
        .collect();
    values.sort();
    assert_eq!(values, keys);
    // Duplicates are still found (the lookups were rekeyed too).
    let (status, _, _) = s
        .admin(
            Method::POST,
            &format!("/admin/proxy-configs/{id}/keys"),
            Some(json!({"key_value": keys[7], "is_active": true})),
        )
        .await;
    assert_eq!(status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_changes_while_an_instance_serves() {
    let up = upstream(|r| ok_json(json!({"key": r.header("x-api-key")}))).await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut s = start_in(dir.clone(), &[("ENCRYPTION_KEY", KEY)]).await;
    let old_keys: Vec<String> = (0..1200).map(|i| format!("sk-old-{i:05}")).collect();
    let refs: Vec<&str> = old_keys.iter().map(String::as_str).collect();
    let id = s.generic_service("live", &up.url(""), &refs).await;
    s.stop().await;

    // 1. The instance restarts with the new key and the old one as previous.
    let s = start_in(
        dir.clone(),
        &[("ENCRYPTION_KEY", OTHER), ("ENCRYPTION_KEY_PREVIOUS", KEY)],
    )
    .await;
    let listed = s.keys(id).await;
    assert!(
        listed.iter().all(|k| k["invalid_reason"].is_null()),
        "old values open"
    );
    s.add_keys(id, &["sk-new-00001"]).await;
    let (status, _, _) = s
        .admin(
            Method::POST,
            &format!("/admin/proxy-configs/{id}/keys"),
            Some(json!({"key_value": old_keys[3], "is_active": true})),
        )
        .await;
    assert_eq!(
        status, 409,
        "a duplicate under the previous key's lookup is found"
    );

    // 2. rekey runs while it serves; requests keep getting real keys throughout.
    let rekey = run_bin(dir.path(), &["rekey", "--from", KEY, "--to", OTHER], None);
    for i in 0..20 {
        let (status, _, body) = call(
            Method::GET,
            &s.url("/proxy/live/x"),
            &[("x-proxy-key", support::PROXY_KEY)],
            "",
        )
        .await;
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&body).contains("sk-"), "{body:?}");
        // Each write reloads the keys, whatever mix of keys they are under by then.
        s.add_keys(id, &[&format!("sk-mid-{i:03}")]).await;
    }
    assert!(
        s.keys(id)
            .await
            .iter()
            .all(|k| k["invalid_reason"].is_null())
    );
    let (ok, _, err) = finish(rekey);
    assert!(ok, "{err}");
    // An admin write reloads the keys: every one opens.
    s.add_keys(id, &["sk-new-00002"]).await;
    let listed = s.keys(id).await;
    assert_eq!(listed.len(), 1222);
    assert!(listed.iter().all(|k| k["invalid_reason"].is_null()));
    drop(s);

    // 3. The new key alone from now on.
    let s = start_in(dir.clone(), &[("ENCRYPTION_KEY", OTHER)]).await;
    assert!(
        s.keys(id)
            .await
            .iter()
            .all(|k| k["invalid_reason"].is_null())
    );
}
