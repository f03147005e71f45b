//! The binary as an operator runs it. Its log, read from its own stderr: a client cannot
//! write a line of its own into it, and a body cut short is logged as an error with its
//! cause. Its limits: with few file descriptors and clients that hold connections open
//! with trickled bodies, it keeps answering.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{PROXY_KEY, raw_upstream, read_raw_request};
use tokio::io::AsyncWriteExt;

struct Server {
    child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends raw bytes; returns the answer (until close or a short wait).
fn raw(port: u16, bytes: &[u8]) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn start() -> Server {
    start_with(&[], None)
}

/// Starts the binary with extra variables and, optionally, an open-file limit (soft and
/// hard, so it cannot raise it).
fn start_with(extra: &[(&str, &str)], nofile: Option<u64>) -> Server {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_api-key-rotator"));
    if let Some(n) = nofile {
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                match libc::setrlimit(libc::RLIMIT_NOFILE, &lim) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
    }
    let mut child = cmd
        .env_clear()
        .current_dir(dir.path())
        .env("ADMIN_PASSWORD", "pw-logs-test")
        .env("JWT_SECRET", "0123456789abcdef0123456789abcdef")
        .env("GLOBAL_PROXY_KEYS", PROXY_KEY)
        .env("BACKEND_PORT", port.to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("DATABASE_PATH", "db.sqlite")
        .env("LOG_LEVEL", "info")
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
            sink.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&line).into_owned());
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !raw(
        port,
        b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .starts_with("HTTP/1.1 200")
    {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        child,
        port,
        lines,
        _dir: dir,
    }
}

impl Server {
    /// Waits for a log line containing `text`.
    fn line_with(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(text)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {text:?}: {:#?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn admin(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> String {
        let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\n\r\n{body}",
            body.len()
        );
        raw(self.port, req.as_bytes())
    }
}

#[test]
fn a_client_cannot_write_a_line_of_its_own() {
    let s = start();
    // U+0085 (NEL) and U+2028 (LINE SEPARATOR) read as line breaks to many tools.
    let fake = "WARN service 't': key id 1 marked invalid";
    let path = format!(
        "/x\u{85}{}\u{2028}{}",
        fake.replace(' ', "_"),
        fake.replace(' ', "-")
    );
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let answer = raw(s.port, req.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    let line = s.line_with("GET /x");
    assert!(
        line.contains("\\u{85}") && line.contains("\\u{2028}"),
        "{line}"
    );
    assert!(
        !line.contains('\u{85}') && !line.contains('\u{2028}'),
        "{line:?}"
    );
    // Read as a text tool splits it (on those separators too), no part is a log line of
    // its own.
    let parts: Vec<&str> = line.split(['\u{85}', '\u{2028}', '\u{2029}']).collect();
    assert_eq!(parts.len(), 1, "{line:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_is_logged_as_an_error_with_its_cause() {
    let up = raw_upstream(|mut sock: tokio::net::TcpStream, _| async move {
        read_raw_request(&mut sock).await.unwrap();
        let _ = sock
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
            .await;
    })
    .await;
    let upstream = up.url("");
    let s = tokio::task::spawn_blocking(start).await.unwrap();
    let port = s.port;
    let s = tokio::task::spawn_blocking(move || {
        let login = s.admin(
            "POST",
            "/admin/login",
            None,
            r#"{"username":"admin","password":"pw-logs-test"}"#,
        );
        let token = login
            .split("\"access_token\":\"")
            .nth(1)
            .and_then(|t| t.split('"').next())
            .unwrap()
            .to_string();
        let created = s.admin(
            "POST",
            "/admin/proxy-configs",
            Some(&token),
            &format!(
                r#"{{"name":"cut","slug":"cut","config_type":"GENERIC","target_url":"{upstream}","method":"GET","api_key_location":"header","api_key_name":"X-Api-Key"}}"#
            ),
        );
        let id = created
            .split("\"id\":")
            .nth(1)
            .and_then(|t| t.split([',', '}']).next())
            .unwrap()
            .trim()
            .to_string();
        s.admin(
            "POST",
            &format!("/admin/proxy-configs/{id}/keys"),
            Some(&token),
            r#"{"key_value":"k1"}"#,
        );
        let req = format!(
            "GET /proxy/cut/x HTTP/1.1\r\nhost: x\r\nx-proxy-key: {PROXY_KEY}\r\nconnection: close\r\n\r\n"
        );
        raw(port, req.as_bytes());
        s
    })
    .await
    .unwrap();
    let line = s.line_with("GET /proxy/cut/x");
    assert!(
        line.contains(" WARN "),
        "an error, not an ordinary line: {line}"
    );
    assert!(line.contains(" 200 "), "{line}");
    assert!(
        line.contains("(body cut: ") && line.contains("closed mid-body"),
        "{line}"
    );
    drop(up);
}

#[test]
fn with_few_descriptors_and_trickling_clients_it_keeps_answering() {
    // 256 descriptors: MAX_CONNECTIONS defaults to (256 - 128) / 2 = 64.
    api_key_rotator::net::raise_fd_limit();
    let s = start_with(&[("BODY_READ_TIMEOUT", "1")], Some(256));
    let body = r#"{"username":"admin","password":"a-guess"}"#;
    let head = format!(
        "POST /admin/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{{",
        body.len()
    );
    // 300 clients that start a login and never finish its body.
    let mut held = Vec::new();
    for _ in 0..300 {
        if let Ok(mut sock) = std::net::TcpStream::connect(("127.0.0.1", s.port)) {
            let _ = sock.write_all(head.as_bytes());
            held.push(sock);
        }
    }
    // A client meanwhile gets an answer at once: served, or told to come back.
    let started = Instant::now();
    let answer = raw(
        s.port,
        b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 503"),
        "{answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Once the trickled bodies time out, everyone is served again, the clients still
    // holding their sockets included.
    std::thread::sleep(Duration::from_millis(2500));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = raw(
            s.port,
            b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        );
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "not served again: {answer:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = s
        .lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("MAX_CONNECTIONS"));
    assert!(refused, "the cap was reached and said so");
    drop(held);
}
