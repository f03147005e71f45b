//! The binary as a container starts it: started as root with `RUN_AS`, it makes the data
//! directory usable and drops to that user; an unwritable directory is one clear line;
//! `export` and `import` need only the database settings.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_api-key-rotator");

/// The binary with a clean environment, run in `dir` (so no `.env` of ours is read).
fn rotator(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(dir)
        .stdin(Stdio::null());
    cmd
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn health(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `/proc/<pid>/status` lines starting with `field:`, whitespace-split.
fn status_field(pid: u32, field: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn started_as_root_with_run_as_it_takes_the_data_dir_and_drops_to_that_user() {
    if !is_root() {
        eprintln!("skipped: only root can test a privilege drop (the image tests cover it in CI)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A data directory and a database file owned by root, as the original's image left them.
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let db = data.join("api_key_rotator.db");
    assert!(make_database(&db), "a root-owned database file was made");
    assert_eq!(std::fs::metadata(&db).unwrap().uid(), 0);
    let port = free_port();
    let child = rotator(tmp.path())
        .env("RUN_AS", "10001:10002")
        .env("ADMIN_PASSWORD", "pw-container-test")
        .env("JWT_SECRET", "0123456789abcdef0123456789abcdef")
        .env("GLOBAL_PROXY_KEYS", "pk")
        .env("BACKEND_PORT", port.to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("DATABASE_PATH", "./data/api_key_rotator.db")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !health(port) {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the server exited: {:?}",
            child.0.wait_with_output_text()
        );
        assert!(Instant::now() < deadline, "no answer on /health");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.0.id();
    assert_eq!(
        status_field(pid, "Uid"),
        ["10001"; 4],
        "real, effective, saved, fs uid"
    );
    assert_eq!(status_field(pid, "Gid"), ["10002"; 4]);
    assert!(
        status_field(pid, "Groups").is_empty(),
        "no supplementary group"
    );
    assert_eq!(status_field(pid, "NoNewPrivs"), ["1"]);
    for path in [&data, &db] {
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (10001, 10002),
            "{}",
            path.display()
        );
    }
    // The log says what happened.
    let _ = child.0.kill();
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("now running as uid 10001, gid 10002"), "{err}");
}

/// Makes a database file as root: the binary's own `import` of an empty dump creates it.
fn make_database(db: &Path) -> bool {
    let dir = db.parent().unwrap();
    let dump = dir.join("empty.json");
    std::fs::write(
        &dump,
        r#"{"format":"api-key-rotator/1","services":[],"keys":[]}"#,
    )
    .unwrap();
    let ok = rotator(dir)
        .env("DATABASE_PATH", db)
        .arg("import")
        .arg(&dump)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    std::fs::remove_file(&dump).unwrap();
    for side in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(side);
        let _ = std::fs::remove_file(p);
    }
    ok
}

trait OutputText {
    fn wait_with_output_text(&mut self) -> String;
}

impl OutputText for Child {
    fn wait_with_output_text(&mut self) -> String {
        let mut text = String::new();
        if let Some(err) = self.stderr.as_mut() {
            let _ = err.read_to_string(&mut text);
        }
        text
    }
}

#[test]
fn an_unwritable_data_directory_is_one_line_with_the_user_and_the_fix() {
    if !is_root() {
        eprintln!("skipped: needs root to run the binary as another user");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // Root's directory, mode 755: uid 10001 may read it, not write it.
    let out = rotator(tmp.path())
        .env("DATABASE_PATH", "./data/api_key_rotator.db")
        .uid(10001)
        .gid(10001)
        .arg("export")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    let line = lines[0];
    for part in [
        "./data",
        "running as uid 10001, gid 10001",
        "Permission denied",
        "sudo chown -R 10001:10001 ./data",
        "named volume",
    ] {
        assert!(line.contains(part), "missing '{part}' in: {line}");
    }
    assert!(!line.contains("unable to open database file"), "{line}");
}

#[test]
fn export_and_import_need_only_the_database_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("backup.json");
    std::fs::write(
        &dump,
        r#"{"format":"api-key-rotator/1","services":[{"id":1,"name":"Weather","slug":"weather","config_type":"GENERIC","is_active":true,"method":"GET","target_url":"https://api.example.com"}],"keys":[{"id":1,"key_value":"wk-1","is_active":true,"proxy_config_id":1}]}"#,
    )
    .unwrap();
    // No ADMIN_PASSWORD, JWT_SECRET or GLOBAL_PROXY_KEYS: a plain shell.
    let import = rotator(tmp.path())
        .env("DATABASE_PATH", "./db.sqlite")
        .arg("import")
        .arg("backup.json")
        .output()
        .unwrap();
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    assert!(String::from_utf8_lossy(&import.stderr).contains("1 services created"));
    let export = rotator(tmp.path())
        .env("DATABASE_PATH", "./db.sqlite")
        .args(["export", "--reveal"])
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&export.stdout).unwrap();
    assert_eq!(json["services"][0]["slug"], "weather");
    assert_eq!(json["keys"][0]["key_value"], "wk-1");
    // Serving still needs its settings, and says which.
    let serve = rotator(tmp.path())
        .env("DATABASE_PATH", "./db.sqlite")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(serve.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&serve.stderr).contains("ADMIN_PASSWORD is not set"));
}

#[test]
fn a_bad_run_as_is_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = rotator(tmp.path())
        .env("RUN_AS", "app")
        .arg("export")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RUN_AS must be a numeric uid:gid"), "{err}");
    assert!(!tmp.path().join("data").exists(), "nothing was created");
}
