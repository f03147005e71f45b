//! Closed-loop saturation with wrk (keep-alive, fixed connection count).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::client::ReqSpec;

/// What one wrk run reported.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Wrk {
    pub rps: f64,
    pub requests: u64,
    pub non_2xx: u64,
    pub socket_errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs `wrk -t<threads> -c<conns> -d<secs>` with the request of `spec`.
pub fn run(
    work: &Path,
    addr: SocketAddr,
    spec: &ReqSpec,
    conns: usize,
    threads: usize,
    duration: Duration,
    cpus: Option<&str>,
) -> Wrk {
    let script = work.join(format!("wrk-{}.lua", spec.method.as_str().to_lowercase()));
    let body = String::from_utf8_lossy(&spec.body)
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let mut lua = format!("wrk.method = \"{}\"\n", spec.method.as_str());
    if !body.is_empty() {
        lua.push_str(&format!("wrk.body = \"{body}\"\n"));
    }
    std::fs::write(&script, lua).expect("wrk script");
    let wrk =
        crate::targets::which("wrk").expect("wrk is not installed (benches/run.sh installs it)");
    let mut cmd = crate::targets::client(cpus, &wrk);
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--latency")
        .arg("-s")
        .arg(&script);
    for h in spec.header_args() {
        cmd.arg("-H").arg(h);
    }
    cmd.arg(format!("http://{addr}{}", spec.path));
    let out = cmd.output().expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    parse(&text).unwrap_or_else(|| {
        panic!(
            "could not read wrk's output:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn parse(text: &str) -> Option<Wrk> {
    let mut w = Wrk::default();
    let mut seen_rps = false;
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse().ok()?;
            seen_rps = true;
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            w.non_2xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            w.socket_errors = v
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if l.contains("requests in") {
            w.requests = l.split_whitespace().next()?.parse().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("50%") {
            w.p50_ms = ms(v.trim());
        } else if let Some(v) = l.strip_prefix("99%") {
            w.p99_ms = ms(v.trim());
        }
    }
    seen_rps.then_some(w)
}

/// wrk's `123.45us` / `1.23ms` / `1.02s` in milliseconds.
fn ms(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}
