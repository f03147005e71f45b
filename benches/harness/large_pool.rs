//! Phase 9: a pool of 100,000 keys (issue 26's targets). A fresh proxy whose REST service
//! holds `POOL` keys (put in through the batch endpoint, then the proxy restarted so its
//! memory is that of a start with the pool):
//!
//! * idle RSS;
//! * one page of 100 keys (`limit=100` at cursors spread over the pool), p50 and max;
//! * adding and deleting one key, snapshot included, p50 and max;
//! * RSS added by listing every key: the whole array streamed, then every page of 1,000;
//! * proxy throughput on the pool ÷ the same on the 3-key pool of `small`, alternated.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};

use crate::client::{ReqSpec, admin_json, fetch_once};
use crate::procs::{self, Proc};
use crate::stats::Spread;
use crate::targets::{self, Kind, ProxyOpts, Route, Target};
use crate::{Opts, addr, log, throughput};

/// Keys in the pool.
pub const POOL: usize = 100_000;

/// The pool's size: [`POOL`], or `BENCH_POOL_KEYS` (at least 1,000). A larger pool shows on
/// a machine with a large cache what 100,000 keys cost on one with a smaller cache.
fn pool() -> usize {
    std::env::var("BENCH_POOL_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n >= 1_000)
        .unwrap_or(POOL)
}
/// Keys per batch request while filling it (well under the 1 MiB body limit).
const FILL_BATCH: usize = 10_000;

fn key_of(i: usize) -> String {
    format!(
        "sk-pool-{i:06}-{:08x}",
        (i as u64).wrapping_mul(2_654_435_761) as u32
    )
}

/// Milliseconds `f` took.
async fn timed<F: std::future::Future>(f: F) -> (f64, F::Output) {
    let t = Instant::now();
    let out = f.await;
    (t.elapsed().as_secs_f64() * 1000.0, out)
}

fn spread(v: &[f64]) -> Value {
    let s = Spread::of(v);
    let max = v.iter().copied().fold(0.0, f64::max);
    json!({"p50_ms": s.median, "max_ms": max, "n": v.len()})
}

/// The REST service's id on a proxy set up by [`targets::setup`].
async fn rest_id(addr: SocketAddr, token: &str) -> Result<i64, String> {
    let (_, list) = admin_json(addr, Method::GET, "/admin/proxy-configs", Some(token), None)
        .await
        .map_err(|e| e.to_string())?;
    list.as_array()
        .and_then(|l| l.iter().find(|s| s["slug"] == targets::REST_SLUG))
        .and_then(|s| s["id"].as_i64())
        .ok_or_else(|| format!("no REST service: {list}"))
}

async fn fill(addr: SocketAddr, token: &str, id: i64) -> Result<(), String> {
    let n = pool();
    for start in (0..n).step_by(FILL_BATCH) {
        let keys: Vec<String> = (start..(start + FILL_BATCH).min(n)).map(key_of).collect();
        let (status, v) = admin_json(
            addr,
            Method::POST,
            &format!("/admin/proxy-configs/{id}/keys/batch"),
            Some(token),
            Some(json!({ "keys": keys })),
        )
        .await
        .map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("batch import failed ({status}): {v}"));
        }
    }
    Ok(())
}

/// Fills the REST service of the proxy at `addr` (set up by [`targets::setup`]) with the
/// pool, for `benches/run.sh profile` with `BENCH_PROFILE_POOL=1`.
pub async fn fill_at(addr: SocketAddr) -> Result<(), String> {
    let token = targets::login(addr).await?;
    let id = rest_id(addr, &token).await?;
    fill(addr, &token, id).await
}

/// Reads a GET to the end; its status.
async fn get(t: &Target, token: &str, path: &str) -> Result<(u16, bytes::Bytes), String> {
    let spec = ReqSpec::new(Method::GET, path).header("authorization", &format!("Bearer {token}"));
    fetch_once(t.addr, &spec, Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())
}

async fn admin_timings(t: &Target, token: &str, id: i64) -> Result<Value, String> {
    let mut pages = Vec::new();
    for i in 0..40usize {
        let after = (i * (pool() / 40)) as i64;
        let path = format!("/admin/proxy-configs/{id}/keys?limit=100&cursor={after}_{after}");
        let (ms, r) = timed(get(t, token, &path)).await;
        let (status, _) = r?;
        if status != 200 {
            return Err(format!("page: {status}"));
        }
        pages.push(ms);
    }
    let (mut adds, mut deletes) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let path = format!("/admin/proxy-configs/{id}/keys");
        let body = json!({"key_value": format!("sk-bench-added-{i:04}")});
        let (ms, r) = timed(admin_json(
            t.addr,
            Method::POST,
            &path,
            Some(token),
            Some(body),
        ))
        .await;
        let (status, key) = r.map_err(|e| e.to_string())?;
        if status != 201 {
            return Err(format!("add: {status} {key}"));
        }
        adds.push(ms);
        let path = format!("/admin/keys/{}", key["id"]);
        let (ms, r) = timed(admin_json(t.addr, Method::DELETE, &path, Some(token), None)).await;
        if r.map_err(|e| e.to_string())?.0 != 200 {
            return Err("delete failed".into());
        }
        deletes.push(ms);
    }
    Ok(
        json!({"page_of_100": spread(&pages), "add_one": spread(&adds), "delete_one": spread(&deletes)}),
    )
}

/// RSS added by the whole list streamed, then by walking every page of 1,000.
async fn listing_rss(t: &Target, token: &str, id: i64) -> Result<Value, String> {
    let before = t.rss_kb();
    let (ms, r) = timed(get(t, token, &format!("/admin/proxy-configs/{id}/keys"))).await;
    let (status, body) = r?;
    if status != 200 {
        return Err(format!("list: {status}"));
    }
    let after_stream = t.rss_kb();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let path = format!("/admin/proxy-configs/{id}/keys?limit=1000&cursor={cursor}");
        let (_, body) = get(t, token, &path).await?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        pages += 1;
        match v["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    let after_pages = t.rss_kb();
    Ok(json!({
        "rss_before_kb": before,
        "whole_list_bytes": body.len(),
        "whole_list_ms": ms,
        "rss_after_whole_list_kb": after_stream,
        "pages_of_1000": pages,
        "rss_after_pages_kb": after_pages,
    }))
}

/// Runs the phase; `small` is the main proxy (3 keys per service).
pub fn phase(
    o: &Opts,
    work: &Path,
    up_port: u16,
    small: &Target,
    direct: &Target,
    client_cpus: Option<&str>,
) -> Value {
    log(&format!("large pool: {} keys", pool()));
    let db = work.join("pool.db");
    let port = procs::free_port();
    let opts = ProxyOpts {
        name: "ours-pool",
        bin: &o.light,
        port,
        log_level: "warn",
        env: vec![],
        db: db.clone(),
        cpus: None,
        workers: o.workers,
    };
    let rt = targets::rt();
    let target = |p: &Proc| Target {
        name: "ours-pool".into(),
        kind: Kind::Ours,
        addr: addr(port),
        pid: p.pid,
    };
    let filled = {
        let mut p = targets::spawn_proxy(&opts, work);
        let t = target(&p);
        let r = rt.block_on(async {
            let token = targets::setup(t.addr, up_port).await?;
            let id = rest_id(t.addr, &token).await?;
            let (ms, r) = timed(fill(t.addr, &token, id)).await;
            r.map(|()| ms)
        });
        p.stop(Duration::from_secs(10));
        r
    };
    let fill_ms = match filled {
        Ok(ms) => ms,
        Err(e) => return json!({"status": "failed", "reason": e}),
    };
    let mut p = targets::spawn_proxy(&opts, work);
    let t = target(&p);
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss_kb = t.rss_kb();
    let measured = rt.block_on(async {
        let token = targets::login(t.addr).await?;
        let id = rest_id(t.addr, &token).await?;
        let timings = admin_timings(&t, &token, id).await?;
        let listing = listing_rss(&t, &token, id).await?;
        Ok::<_, String>((timings, listing))
    });
    let (timings, listing) = match measured {
        Ok(m) => m,
        Err(e) => return json!({"status": "failed", "reason": e}),
    };
    log(&format!(
        "  idle RSS {:.1} MB; {timings}; {listing}",
        idle_rss_kb as f64 / 1024.0
    ));
    let mut runs = Vec::new();
    for rep in 0..o.reps {
        let mut pair = [("pool", &t), ("small", small)];
        pair.rotate_left(rep % 2);
        for (which, target) in pair {
            let mut r = throughput(o, work, target, Route::Rest, direct, client_cpus);
            log(&format!(
                "  rep {} {which:<5} {:>9.0} req/s",
                rep + 1,
                r["rps"].as_f64().unwrap_or(0.0)
            ));
            r["rep"] = json!(rep + 1);
            r["pool"] = json!(which);
            runs.push(r);
        }
    }
    p.stop(Duration::from_secs(10));
    json!({
        "status": "measured",
        "keys": pool(),
        "fill_ms": fill_ms,
        "idle_rss_kb": idle_rss_kb,
        "admin": timings,
        "listing": listing,
        "throughput": runs,
    })
}
