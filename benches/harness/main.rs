//! `make bench`: the proxy against nginx and the bare upstream, in one interleaved run.
//!
//! ```text
//! harness run --light BIN [--enterprise BIN] [--results DIR] [--work DIR]
//!             [--reps N] [--seconds S] [--pin none|split] [--workers N]
//!             [--build pgo|plain] [--quick]
//! harness upstream --port P [--threads N]     the upstream server (started by `run`)
//! harness hammer --port P --route rest|llm|sse --n N    N sequential requests (profiling)
//! harness saturate --port P --route rest|llm --seconds S   wrk -c64; prints the answers
//! harness nginx-conf --dir D --port P --upstream U   one-process nginx (profiling)
//! harness train --bin BIN --profiles DIR [--n N] [--env "K=V ..."]
//!                                              PGO training workload (scripts/pgo.sh)
//! harness report benches/results/<date>.json          the tables of a recorded run
//! ```
//!
//! Method and results: docs/BENCHMARKS.md. Raw results: benches/results/.

mod client;
mod large_pool;
mod litellm;
mod openloop;
mod procs;
mod report;
mod sse;
mod stats;
mod targets;
mod train;
mod upstream;
mod wrk;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::procs::Proc;
use crate::targets::{Kind, ProxyOpts, Route, Target};

/// Command-line options of `run`.
#[derive(Debug, Clone)]
pub struct Opts {
    pub light: PathBuf,
    pub enterprise: Option<PathBuf>,
    pub results: PathBuf,
    pub work: PathBuf,
    pub reps: usize,
    pub seconds: u64,
    pub warmup: u64,
    pub conns: usize,
    /// `split`: proxy/nginx on CPU 0, upstream and load generators on CPU 1; `none`.
    pub pin: String,
    /// Shards of the proxy and `worker_processes` of nginx (default: one per CPU they
    /// may use).
    pub workers: Option<usize>,
    pub streams: usize,
    /// How benches/run.sh built the proxy binaries: `pgo` (scripts/pgo.sh) or `plain`.
    pub build: String,
    /// LiteLLM's `litellm` command, to compare on /llm (benches/run.sh installs it).
    pub litellm: Option<PathBuf>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; nothing to do then but say how to run it.
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match args.first().map(String::as_str) {
        Some("upstream") => {
            let port = get("--port").and_then(|p| p.parse().ok()).expect("--port");
            let threads = get("--threads").and_then(|p| p.parse().ok()).unwrap_or(2);
            upstream::main(port, threads);
        }
        Some("hammer") => {
            let port: u16 = get("--port").and_then(|p| p.parse().ok()).expect("--port");
            let n: usize = get("--n").and_then(|p| p.parse().ok()).unwrap_or(1000);
            let (kind, route) = kind_and_route(get("--kind"), get("--route"));
            hammer(SocketAddr::from(([127, 0, 0, 1], port)), kind, route, n);
        }
        Some("openloop") => {
            // One open-loop run, for harness development: prints the result as JSON.
            let port: u16 = get("--port").and_then(|p| p.parse().ok()).expect("--port");
            let rate: f64 = get("--rate").and_then(|p| p.parse().ok()).expect("--rate");
            let secs: u64 = get("--seconds").and_then(|p| p.parse().ok()).unwrap_or(5);
            let (kind, route) = kind_and_route(get("--kind"), get("--route"));
            let r = openloop::run(
                SocketAddr::from(([127, 0, 0, 1], port)),
                &targets::request(kind, route, ""),
                rate,
                Duration::from_secs(1),
                Duration::from_secs(secs),
                64,
            );
            println!("{}", serde_json::to_string(&r).expect("json"));
        }
        Some("report") => {
            // The tables of a recorded run, again (after the report code changed).
            let path = args.get(1).expect("harness report <results.json>");
            let text = std::fs::read_to_string(path).expect("read results");
            let raw: Value = serde_json::from_str(&text).expect("results JSON");
            print!("{}", report::markdown(&raw));
        }
        Some("setup") => {
            let port: u16 = get("--port").and_then(|p| p.parse().ok()).expect("--port");
            let up: u16 = get("--upstream")
                .and_then(|p| p.parse().ok())
                .expect("--upstream");
            let token = targets::rt()
                .block_on(targets::setup(SocketAddr::from(([127, 0, 0, 1], port)), up))
                .unwrap_or_else(|e| panic!("setup failed: {e}"));
            println!("{token}");
        }
        Some("fill") => {
            // `benches/run.sh profile` with BENCH_PROFILE_POOL=1: the REST service of a
            // proxy set up by `setup` gets the large pool (BENCH_POOL_KEYS keys).
            let port: u16 = get("--port").and_then(|p| p.parse().ok()).expect("--port");
            targets::rt()
                .block_on(large_pool::fill_at(SocketAddr::from((
                    [127, 0, 0, 1],
                    port,
                ))))
                .unwrap_or_else(|e| panic!("fill failed: {e}"));
        }
        Some("nginx-conf") => {
            // One nginx process (no master, one worker's work) for callgrind:
            // `benches/run.sh profile ROUTE load`. Prints the configuration's path.
            let dir = get("--dir").map(PathBuf::from).expect("--dir");
            let port: u16 = get("--port").and_then(|p| p.parse().ok()).expect("--port");
            let up: u16 = get("--upstream")
                .and_then(|p| p.parse().ok())
                .expect("--upstream");
            let conf = targets::write_nginx_conf(&dir, port, up, 1, false);
            println!("{}", conf.display());
        }
        Some("train") => {
            let bin = get("--bin").map(PathBuf::from).expect("--bin");
            let profiles = get("--profiles").map(PathBuf::from).expect("--profiles");
            let n: usize = get("--n").and_then(|p| p.parse().ok()).unwrap_or(20_000);
            let env: Vec<(String, String)> = get("--env")
                .unwrap_or_default()
                .split_whitespace()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("--env takes K=V pairs");
                    (k.to_string(), v.to_string())
                })
                .collect();
            train::run(&bin, &profiles, n, &env);
        }
        Some("saturate") => {
            // wrk, 64 keep-alive connections, for --seconds; prints the answers counted.
            let port: u16 = get("--port").and_then(|p| p.parse().ok()).expect("--port");
            let secs: u64 = get("--seconds").and_then(|p| p.parse().ok()).unwrap_or(10);
            let (kind, route) = kind_and_route(get("--kind"), get("--route"));
            let work = get("--work")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            let spec = targets::request(kind, route, "");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let w = wrk::run(&work, addr, &spec, 64, 1, Duration::from_secs(secs), None);
            assert!(
                w.requests > 0 && w.non_2xx == 0,
                "saturate: {} answers, {} not 2xx",
                w.requests,
                w.non_2xx
            );
            println!("{}", w.requests);
        }
        Some(cmd @ ("run" | "memory" | "pool" | "tracking")) => {
            let quick = args.iter().any(|a| a == "--quick");
            let opts = Opts {
                light: get("--light").map(PathBuf::from).expect("--light BIN"),
                enterprise: get("--enterprise").map(PathBuf::from),
                results: get("--results")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| "benches/results".into()),
                work: get("--work")
                    .map(PathBuf::from)
                    .unwrap_or_else(std::env::temp_dir),
                reps: get("--reps")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(if quick { 1 } else { 3 }),
                seconds: get("--seconds")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(if quick { 2 } else { 5 }),
                warmup: 1,
                conns: 64,
                pin: get("--pin").unwrap_or_else(|| "none".into()),
                workers: get("--workers")
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0),
                streams: get("--streams")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1000),
                build: get("--build").unwrap_or_else(|| "plain".into()),
                litellm: get("--litellm").map(PathBuf::from),
            };
            if cmd == "memory" {
                memory_only(&opts);
            } else if cmd == "pool" {
                pool_only(&opts);
            } else if cmd == "tracking" {
                tracking_only(&opts);
            } else {
                run(&opts);
            }
        }
        _ => {
            eprintln!(
                "usage: harness run --light BIN [--enterprise BIN] [--results DIR] [--work DIR] \
                 [--reps N] [--seconds S] [--pin none|split] [--workers N] [--build pgo|plain] [--litellm CMD] [--quick]\n\
                 harness memory --light BIN [--streams N]   (the memory part alone)\n\
                 (normally started by benches/run.sh: `make bench`)"
            );
        }
    }
}

/// `--kind direct|ours` and `--route llm|sse|rest` (ours and rest by default).
fn kind_and_route(kind: Option<String>, route: Option<String>) -> (Kind, Route) {
    let kind = match kind.as_deref() {
        Some("direct") => Kind::Direct,
        _ => Kind::Ours,
    };
    let route = match route.as_deref() {
        Some("llm") => Route::Llm,
        Some("sse") => Route::Sse,
        _ => Route::Rest,
    };
    (kind, route)
}

/// `n` requests, one at a time on one connection (for callgrind: instructions per request),
/// with the proxy key in `HARNESS_PROXY_KEY` if set (a client key, say).
fn hammer(addr: SocketAddr, kind: Kind, route: Route, n: usize) {
    let query = if route == Route::Sse { SSE_BURST } else { "" };
    let key = std::env::var("HARNESS_PROXY_KEY").unwrap_or_else(|_| targets::PROXY_KEY.into());
    let spec = targets::request_as(kind, route, query, &key);
    targets::rt().block_on(async {
        let mut conn = client::Conn::open(addr).await.expect("connect");
        for i in 0..n {
            let (status, _) = conn.fetch(&spec).await.expect("request");
            assert_eq!(status, 200, "request {i} answered {status}");
        }
    });
}

fn log(msg: &str) {
    eprintln!(
        "[bench {}] {msg}",
        chrono_like(std::time::SystemTime::now())
    );
}

/// `HH:MM:SS` (UTC) without a date crate.
fn chrono_like(t: std::time::SystemTime) -> String {
    let s = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// CPU sets of the two sides when pinned.
struct Pins {
    server: Option<String>,
    client: Option<String>,
    /// `--workers`: set for both servers instead of one per CPU.
    workers: Option<usize>,
}

fn pins(o: &Opts) -> Pins {
    let (server, client) = match o.pin.as_str() {
        "split" => (Some("0".into()), Some("1".into())),
        _ => (None, None),
    };
    Pins {
        server,
        client,
        workers: o.workers,
    }
}

/// Threads (workers) of the servers under test: `--workers`, or one per CPU they may use,
/// as the proxy's `WORKER_THREADS` default does for its shards; nginx gets as many
/// `worker_processes`.
fn server_cpus(pin: &Pins) -> usize {
    if let Some(n) = pin.workers {
        return n;
    }
    match &pin.server {
        Some(set) => set.split(',').count(),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn run(o: &Opts) {
    let started = Instant::now();
    let work = procs::work_dir(&o.work);
    let pin = pins(o);
    if let Some(cpus) = &pin.client {
        // The harness is a load generator too (open loop, SSE, memory): on the client CPU,
        // with every thread it starts from now on.
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
            .stdout(std::process::Stdio::null())
            .status();
    }
    let mut raw = json!({});
    raw["conditions"] = conditions(o);
    log(&format!(
        "work dir {}, {} repeats of {} s, pin={}",
        work.display(),
        o.reps,
        o.seconds,
        o.pin
    ));

    // Sizes.
    raw["sizes"] = json!({
        "lightweight_bytes": procs::file_size(&o.light),
        "enterprise_bytes": o.enterprise.as_deref().map(procs::file_size),
    });

    let up_port = procs::free_port();
    let mut upstream = targets::spawn_upstream(&work, up_port, pin.client.as_deref());
    let direct = Target {
        name: "direct".into(),
        kind: Kind::Direct,
        addr: addr(up_port),
        pid: upstream.pid,
    };

    // Start time and idle memory of fresh lightweight processes (one database, set up once).
    log("start time (lightweight)");
    let start_db = work.join("start.db");
    let start_opts = |port| ProxyOpts {
        name: "start",
        bin: &o.light,
        port,
        log_level: "warn",
        env: vec![],
        db: start_db.clone(),
        cpus: pin.server.as_deref(),
        workers: pin.workers,
    };
    {
        let port = procs::free_port();
        let p = targets::spawn_proxy(&start_opts(port), &work);
        targets::rt()
            .block_on(targets::setup(addr(port), up_port))
            .unwrap_or_else(|e| panic!("setup: {e}"));
        drop(p);
    }
    let mut starts = Vec::new();
    for _ in 0..5 {
        starts.push(time_to_first_request(
            &start_opts(procs::free_port()),
            &work,
        ));
    }
    raw["start"] = json!({ "lightweight": starts });

    // The targets of the comparison.
    let nginx_port = procs::free_port();
    let nginx = targets::spawn_nginx(
        &work,
        nginx_port,
        up_port,
        server_cpus(&pin),
        pin.server.as_deref(),
    );
    let nginx_t = Target {
        name: "nginx".into(),
        kind: Kind::Nginx,
        addr: addr(nginx_port),
        pid: nginx.pid,
    };
    let mut ours_procs = Vec::new();
    let mut ours_targets = Vec::new();
    for (name, level, tracking) in [
        ("ours", "warn", "on"),
        ("ours-info", "info", "on"),
        ("ours-off", "warn", "off"),
    ] {
        let port = procs::free_port();
        let opts = ProxyOpts {
            name,
            bin: &o.light,
            port,
            log_level: level,
            env: vec![("USAGE_TRACKING".into(), tracking.into())],
            db: work.join(format!("{name}.db")),
            cpus: pin.server.as_deref(),
            workers: pin.workers,
        };
        let p = targets::spawn_proxy(&opts, &work);
        targets::rt()
            .block_on(targets::setup(addr(port), up_port))
            .unwrap_or_else(|e| panic!("setup of {name}: {e}"));
        ours_targets.push(Target {
            name: name.into(),
            kind: Kind::Ours,
            addr: addr(port),
            pid: p.pid,
        });
        ours_procs.push(p);
    }
    let ours = ours_targets[0].clone();
    let ours_info = ours_targets[1].clone();
    let ours_off = ours_targets[2].clone();
    let main_targets = [direct.clone(), nginx_t.clone(), ours.clone()];
    sanity(&main_targets, &ours_info);

    // 1 + 2: throughput.
    log("throughput (wrk)");
    let mut tp = Vec::new();
    for rep in 0..o.reps {
        for route in [Route::Rest, Route::Llm] {
            let mut list: Vec<&Target> = main_targets.iter().collect();
            if route == Route::Rest {
                list.push(&ours_info);
            }
            let len = list.len();
            list.rotate_left(rep % len);
            for t in list {
                let r = throughput(o, &work, t, route, &direct, pin.client.as_deref());
                log(&format!(
                    "  rep {} {} {:<9} {:>9.0} req/s  cpu {:.1} µs/req",
                    rep + 1,
                    route.id(),
                    t.name,
                    r["rps"].as_f64().unwrap_or(0.0),
                    r["cpu_us_per_req"].as_f64().unwrap_or(0.0)
                ));
                let mut r = r;
                r["rep"] = json!(rep + 1);
                tp.push(r);
                upstream.check_alive(&work);
            }
        }
    }
    raw["throughput"] = json!(tp);
    let ceiling = |route: Route| {
        let v: Vec<f64> = tp
            .iter()
            .filter(|r| r["route"] == route.id() && r["target"] == "nginx")
            .filter_map(|r| r["rps"].as_f64())
            .collect();
        stats::Spread::of(&v).median
    };

    // 1 + 2: latency at fixed rates.
    log("latency (open loop)");
    let mut lat = Vec::new();
    for rep in 0..o.reps {
        for route in [Route::Rest, Route::Llm] {
            for frac in [0.25, 0.5] {
                let rate = (ceiling(route) * frac).round().max(100.0);
                let mut list: Vec<&Target> = main_targets.iter().collect();
                let len = list.len();
                list.rotate_left(rep % len);
                for t in list {
                    let r = at_rate(o, t, route, rate);
                    log(&format!(
                        "  rep {} {} {:>3.0}% {:<6} {:>7.0}/s p50 {:.3} p99 {:.3} p99.9 {:.3} ms (lag p99 {:.3} ms, {} errors)",
                        rep + 1,
                        route.id(),
                        frac * 100.0,
                        t.name,
                        r.achieved_rps,
                        r.latency_us.p50 / 1000.0,
                        r.latency_us.p99 / 1000.0,
                        r.latency_us.p999 / 1000.0,
                        r.dispatch_lag_us.p99 / 1000.0,
                        r.errors
                    ));
                    lat.push(json!({
                        "rep": rep + 1, "route": route.id(), "target": t.name,
                        "load_fraction": frac, "result": r,
                    }));
                }
            }
        }
    }
    raw["latency"] = json!(lat);

    // 3: SSE.
    log("SSE (50 events, 20 ms apart)");
    let mut sse_runs = Vec::new();
    for rep in 0..o.reps {
        let mut list: Vec<&Target> = main_targets.iter().collect();
        let len = list.len();
        list.rotate_left(rep % len);
        for t in list {
            let spec = targets::request(t.kind, Route::Sse, "n=50&gap_ms=20");
            let s = sse::measure(t.addr, &spec, 10);
            log(&format!(
                "  rep {} {:<6} ttfb p50 {:.3} ms, delay p99 {:.3} max {:.3} ms, gap max {:.3} ms, {} failed",
                rep + 1,
                t.name,
                s.ttfb_us.p50 / 1000.0,
                s.delay_us.p99 / 1000.0,
                s.delay_us.max / 1000.0,
                s.gap_us.max / 1000.0,
                s.failed
            ));
            sse_runs.push(json!({"rep": rep + 1, "target": t.name, "result": s}));
        }
    }
    raw["sse"] = json!(sse_runs);

    // 7: what usage tracking costs: the same build with it on (ours) and off.
    raw["tracking"] = tracking_phase(o, &work, &ours, &ours_off, &direct, pin.client.as_deref());

    // 8: what a client key with a per-minute limit costs against a global proxy key.
    raw["client_keys"] = client_key_phase(o, &work, &ours, &direct, pin.client.as_deref());

    // 9: a pool of 100,000 keys: admin latency, memory, throughput against 3 keys.
    raw["large_pool"] = large_pool::phase(o, &work, up_port, &ours, &direct, pin.client.as_deref());

    // 5: LiteLLM, on /llm, against ours.
    raw["litellm"] = match &o.litellm {
        Some(bin) => litellm_phase(o, &work, bin, up_port, &ours, &direct, &pin),
        None => json!({"status": "pending", "reason": "no --litellm given"}),
    };
    drop(ours_procs);

    // 4: memory with many open streams (a fresh proxy; nginx as it is now).
    log(&format!("memory with {} open streams", o.streams));
    let mut mem = json!({});
    {
        let port = procs::free_port();
        let mut opts = start_opts(port);
        opts.name = "ours-mem";
        let p = targets::spawn_proxy(&opts, &work);
        let t = Target {
            name: "ours".into(),
            kind: Kind::Ours,
            addr: addr(port),
            pid: p.pid,
        };
        let token = targets::rt()
            .block_on(targets::login(t.addr))
            .unwrap_or_else(|e| panic!("{e}"));
        mem["ours"] = hold_streams(o, &t, Some(&token));
        drop(p);
    }
    mem["nginx"] = hold_streams(o, &nginx_t, None);
    raw["memory"] = mem;
    drop(nginx);

    // 6: enterprise.
    raw["enterprise"] = match &o.enterprise {
        Some(bin) => enterprise(o, &work, bin, up_port, &direct, &ceiling, &pin),
        None => json!({"status": "pending", "reason": "no enterprise binary given"}),
    };
    drop(upstream);

    raw["conditions"]["seconds_total"] = json!(started.elapsed().as_secs());
    raw["conditions"]["loadavg_end"] = json!(procs::loadavg());
    let md = report::markdown(&raw);
    let stamp = raw["conditions"]["date_utc"]
        .as_str()
        .map_or_else(report::stamp, str::to_string);
    std::fs::create_dir_all(&o.results).expect("results dir");
    let json_path = o.results.join(format!("{stamp}.json"));
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&raw).expect("json"),
    )
    .expect("write results");
    std::fs::write(o.results.join(format!("{stamp}.md")), &md).expect("write results");
    std::fs::write(o.results.join("latest.md"), &md).expect("write results");
    println!("{md}");
    log(&format!(
        "done in {:.0} s; raw results: {}",
        started.elapsed().as_secs_f64(),
        json_path.display()
    ));
    let _ = std::fs::remove_dir_all(&work);
}

/// What the machine was like.
fn conditions(o: &Opts) -> Value {
    let cmd = |c: &str, args: &[&str]| {
        Command::new(c)
            .args(args)
            .output()
            .map(|out| {
                let mut s = String::from_utf8_lossy(&out.stdout).to_string();
                s.push_str(&String::from_utf8_lossy(&out.stderr));
                s.trim().to_string()
            })
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    json!({
        "date_utc": report::stamp(),
        "cpu": cpu,
        // Counted from /proc/cpuinfo: when pinned, this process sees only its own CPU.
        "cores": std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count(),
        "kernel": cmd("uname", &["-r"]),
        "loadavg_start": procs::loadavg(),
        "nginx": cmd(targets::which("nginx").map(|p| p.display().to_string()).as_deref().unwrap_or("nginx"), &["-v"]),
        "wrk": cmd("wrk", &["-v"]).lines().next().unwrap_or("").to_string(),
        "reps": o.reps,
        "seconds": o.seconds,
        "warmup_seconds": o.warmup,
        "connections": o.conns,
        "pin": o.pin,
        "client_nice": procs::own_nice(),
        "workers_set": o.workers.is_some(),
        "proxy_workers": server_cpus(&pins(o)),
        "nginx_workers": server_cpus(&pins(o)),
        "proxy_build": o.build,
    })
}

/// LiteLLM's proxy against ours on /llm: wrk throughput and CPU per request, interleaved,
/// and LiteLLM's memory idle and after the load.
fn litellm_phase(
    o: &Opts,
    work: &Path,
    bin: &Path,
    up_port: u16,
    ours: &Target,
    direct: &Target,
    pin: &Pins,
) -> Value {
    let workers = server_cpus(pin);
    log(&format!("LiteLLM ({workers} workers), /llm"));
    let port = procs::free_port();
    let p = litellm::spawn(work, bin, port, up_port, workers, pin.server.as_deref());
    let t = Target {
        name: "litellm".into(),
        kind: Kind::Litellm,
        addr: addr(port),
        pid: p.pid,
    };
    sanity_route(&t, Route::Llm);
    std::thread::sleep(Duration::from_secs(2));
    let idle_kb = t.rss_kb();
    let mut runs = Vec::new();
    for rep in 0..o.reps {
        let mut list = [ours, &t];
        list.rotate_left(rep % 2);
        for target in list {
            let r = throughput(o, work, target, Route::Llm, direct, pin.client.as_deref());
            log(&format!(
                "  rep {} llm {:<8} {:>9.0} req/s  cpu {:.1} µs/req",
                rep + 1,
                target.name,
                r["rps"].as_f64().unwrap_or(0.0),
                r["cpu_us_per_req"].as_f64().unwrap_or(0.0)
            ));
            let mut r = r;
            r["rep"] = json!(rep + 1);
            runs.push(r);
        }
    }
    let loaded_kb = t.rss_kb();
    let version = Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    log(&format!(
        "  litellm RSS idle {:.1} MB, after load {:.1} MB",
        idle_kb as f64 / 1024.0,
        loaded_kb as f64 / 1024.0
    ));
    drop(p);
    json!({
        "status": "measured",
        "version": version,
        "workers": workers,
        "throughput": runs,
        "idle_rss_kb": idle_kb,
        "loaded_rss_kb": loaded_kb,
    })
}

/// A target answers a route with 200.
fn sanity_route(t: &Target, route: Route) {
    let spec = targets::request(t.kind, route, "");
    let got = targets::rt().block_on(client::fetch_once(t.addr, &spec, Duration::from_secs(30)));
    match got {
        Ok((200, _)) => {}
        other => panic!(
            "{} {}: expected 200, got {:?}",
            t.name,
            route.label(),
            other.map(|(s, b)| (s, String::from_utf8_lossy(&b).to_string()))
        ),
    }
}

/// Every target answers every route with 200 before anything is measured.
fn sanity(main: &[Target], extra: &Target) {
    let rt = targets::rt();
    for t in main.iter().chain([extra]) {
        for route in [Route::Rest, Route::Llm] {
            let spec = targets::request(t.kind, route, "");
            let got = rt.block_on(client::fetch_once(t.addr, &spec, Duration::from_secs(5)));
            match got {
                Ok((200, _)) => {}
                other => panic!(
                    "{} {}: expected 200, got {:?}",
                    t.name,
                    route.label(),
                    other.map(|(s, b)| (s, String::from_utf8_lossy(&b).to_string()))
                ),
            }
        }
    }
}

/// One wrk measurement (after a warm-up run), with the CPU time the target and the
/// upstream used.
/// SSE streams for throughput: 20 events each, back to back.
const SSE_BURST: &str = "n=20&gap_ms=0";

/// Usage tracking on (`on`, the default) against off (`off`), the same build side by side:
/// throughput on /llm JSON and SSE, p50 at a fixed rate, the SSE time to first event.
fn tracking_phase(
    o: &Opts,
    work: &Path,
    on: &Target,
    off: &Target,
    direct: &Target,
    client_cpus: Option<&str>,
) -> Value {
    log("usage tracking on / off (/llm)");
    let mut tp = Vec::new();
    let mut lat = Vec::new();
    let mut sse_runs = Vec::new();
    for rep in 0..o.reps {
        let mut pair = [on, off];
        pair.rotate_left(rep % 2);
        for (route, query) in [(Route::Llm, ""), (Route::Sse, SSE_BURST)] {
            for t in pair {
                let mut r = throughput_of(o, work, t, route, query, direct, client_cpus);
                log(&format!(
                    "  rep {} {} {:<8} {:>9.0} req/s",
                    rep + 1,
                    route.id(),
                    t.name,
                    r["rps"].as_f64().unwrap_or(0.0)
                ));
                r["rep"] = json!(rep + 1);
                tp.push(r);
            }
        }
        // A fixed rate both can serve: a quarter of what tracking off reached.
        let ceiling: Vec<f64> = tp
            .iter()
            .filter(|r| r["route"] == "llm" && r["target"] == off.name.as_str())
            .filter_map(|r| r["rps"].as_f64())
            .collect();
        let rate = (stats::Spread::of(&ceiling).median * 0.25)
            .round()
            .max(100.0);
        for t in pair {
            let r = at_rate(o, t, Route::Llm, rate);
            log(&format!(
                "  rep {} llm {:>7.0}/s {:<8} p50 {:.3} ms",
                rep + 1,
                rate,
                t.name,
                r.latency_us.p50 / 1000.0
            ));
            lat.push(json!({"rep": rep + 1, "target": t.name, "result": r}));
            let spec = targets::request(t.kind, Route::Sse, "n=50&gap_ms=20");
            let s = sse::measure(t.addr, &spec, 10);
            sse_runs.push(json!({"rep": rep + 1, "target": t.name, "result": s}));
        }
    }
    json!({"on": on.name, "off": off.name, "throughput": tp, "latency": lat, "sse": sse_runs})
}

/// /llm JSON throughput on `t` with a global proxy key and with a client key that has a
/// per-minute limit (too high to be reached: the check and the count are what is measured).
fn client_key_phase(
    o: &Opts,
    work: &Path,
    t: &Target,
    direct: &Target,
    client_cpus: Option<&str>,
) -> Value {
    log("client key / global proxy key (/llm)");
    let fields = json!({"name": "bench", "rpm": 1_000_000_000});
    let secret = match targets::rt().block_on(targets::client_key(t.addr, fields)) {
        Ok(s) => s,
        Err(e) => return json!({"status": "failed", "reason": e}),
    };
    let mut runs = Vec::new();
    for rep in 0..o.reps {
        let mut callers = [("global", targets::PROXY_KEY), ("client", secret.as_str())];
        callers.rotate_left(rep % 2);
        for (caller, key) in callers {
            let spec = targets::request_as(t.kind, Route::Llm, "", key);
            let mut r = throughput_spec(o, work, t, Route::Llm, spec, direct, client_cpus);
            log(&format!(
                "  rep {} {:<6} {:>9.0} req/s",
                rep + 1,
                caller,
                r["rps"].as_f64().unwrap_or(0.0)
            ));
            r["rep"] = json!(rep + 1);
            r["caller"] = json!(caller);
            runs.push(r);
        }
    }
    json!({"status": "measured", "throughput": runs})
}

/// `route` on `t` at a fixed `rate`, open loop.
fn at_rate(o: &Opts, t: &Target, route: Route, rate: f64) -> openloop::OpenLoop {
    openloop::run(
        t.addr,
        &targets::request(t.kind, route, ""),
        rate,
        Duration::from_secs(o.warmup),
        Duration::from_secs(o.seconds),
        o.conns,
    )
}

fn throughput(
    o: &Opts,
    work: &Path,
    t: &Target,
    route: Route,
    direct: &Target,
    client_cpus: Option<&str>,
) -> Value {
    throughput_of(o, work, t, route, "", direct, client_cpus)
}

/// [`throughput`] with a query string (SSE pacing).
fn throughput_of(
    o: &Opts,
    work: &Path,
    t: &Target,
    route: Route,
    query: &str,
    direct: &Target,
    client_cpus: Option<&str>,
) -> Value {
    let spec = targets::request(t.kind, route, query);
    throughput_spec(o, work, t, route, spec, direct, client_cpus)
}

/// [`throughput`] of the request `spec`.
fn throughput_spec(
    o: &Opts,
    work: &Path,
    t: &Target,
    route: Route,
    spec: client::ReqSpec,
    direct: &Target,
    client_cpus: Option<&str>,
) -> Value {
    let dur = Duration::from_secs(o.seconds);
    wrk::run(
        work,
        t.addr,
        &spec,
        o.conns,
        2,
        Duration::from_secs(o.warmup),
        client_cpus,
    );
    let (c0, u0, m0) = (t.cpu_ticks(), direct.cpu_ticks(), procs::machine_jiffies());
    let w = wrk::run(work, t.addr, &spec, o.conns, 2, dur, client_cpus);
    let (c1, u1, m1) = (t.cpu_ticks(), direct.cpu_ticks(), procs::machine_jiffies());
    let ms_per_tick = 10.0;
    let reqs = w.requests.max(1) as f64;
    json!({
        "route": route.id(),
        "target": t.name,
        "rps": w.rps,
        "requests": w.requests,
        "non_2xx": w.non_2xx,
        "socket_errors": w.socket_errors,
        "wrk_p50_ms": w.p50_ms,
        "wrk_p99_ms": w.p99_ms,
        "cpu_us_per_req": (c1 - c0) as f64 * ms_per_tick * 1000.0 / reqs,
        "target_cpu_pct": (c1 - c0) as f64 * ms_per_tick / dur.as_millis() as f64 * 100.0,
        "upstream_cpu_pct": (u1 - u0) as f64 * ms_per_tick / dur.as_millis() as f64 * 100.0,
        "machine_busy_pct": (m1.0 - m0.0) as f64 / (m1.1 - m0.1).max(1) as f64 * 100.0,
    })
}

/// Spawn → first proxied request answered 200; then RSS after 300 ms idle.
fn time_to_first_request(opts: &ProxyOpts<'_>, work: &Path) -> Value {
    let spec = targets::request(Kind::Ours, Route::Rest, "");
    let a = addr(opts.port);
    let rt = targets::rt();
    let t0 = Instant::now();
    let mut p = Proc::spawn(opts.name, targets::proxy_command(opts, work), work);
    let ms = loop {
        if let Ok((200, _)) = rt.block_on(client::fetch_once(a, &spec, Duration::from_secs(2))) {
            break t0.elapsed().as_secs_f64() * 1000.0;
        }
        p.check_alive(work);
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{} served nothing within 30 s",
            opts.name
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    std::thread::sleep(Duration::from_millis(300));
    let (rss, _) = procs::rss_kb(p.pid);
    p.stop(Duration::from_secs(5));
    json!({"ms_to_first_request": ms, "idle_rss_kb": rss})
}

/// The memory measurement alone, against a fresh proxy (for work on memory use).
/// For the phases run alone: the upstream and one set-up proxy (3 keys per service) in a
/// fresh work dir. Returns the work dir, the upstream's port, the upstream and proxy
/// processes, the proxy as a target and its admin token.
fn lone_proxy(o: &Opts, name: &str) -> (PathBuf, u16, Proc, Proc, Target, String) {
    let work = procs::work_dir(&o.work);
    let up_port = procs::free_port();
    let upstream = targets::spawn_upstream(&work, up_port, None);
    let (p, t, token) = set_up_proxy(o, &work, up_port, name, vec![]);
    (work, up_port, upstream, p, t, token)
}

/// A proxy started from the lightweight build with `env`, set up against the upstream on
/// `up_port` (3 keys per service): its process, itself as a target and its admin token.
fn set_up_proxy(
    o: &Opts,
    work: &Path,
    up_port: u16,
    name: &str,
    env: Vec<(String, String)>,
) -> (Proc, Target, String) {
    let port = procs::free_port();
    let opts = ProxyOpts {
        name,
        bin: &o.light,
        port,
        log_level: "warn",
        env,
        db: work.join(format!("{name}.db")),
        cpus: None,
        workers: o.workers,
    };
    let p = targets::spawn_proxy(&opts, work);
    let token = targets::rt()
        .block_on(targets::setup(addr(port), up_port))
        .unwrap_or_else(|e| panic!("setup: {e}"));
    let t = Target {
        name: name.into(),
        kind: Kind::Ours,
        addr: addr(port),
        pid: p.pid,
    };
    (p, t, token)
}

/// The usage-tracking phase alone (`benches/run.sh tracking`): the lightweight build with
/// tracking on (`ours`) and off (`ours-off`), side by side.
fn tracking_only(o: &Opts) {
    let (work, up_port, upstream, _on_proc, on, _) = lone_proxy(o, "ours");
    let off_env = vec![("USAGE_TRACKING".into(), "off".into())];
    let (_off_proc, off, _) = set_up_proxy(o, &work, up_port, "ours-off", off_env);
    let direct = Target {
        name: "direct".into(),
        kind: Kind::Direct,
        addr: addr(up_port),
        pid: upstream.pid,
    };
    let raw = json!({ "tracking": tracking_phase(o, &work, &on, &off, &direct, None) });
    println!("{}", serde_json::to_string(&raw).expect("json"));
    eprintln!("{}", report::tracking_md(&raw));
}

/// The large-pool phase alone (`benches/run.sh pool`), against a 3-key proxy.
fn pool_only(o: &Opts) {
    let (work, up_port, upstream, _proxy, small, _) = lone_proxy(o, "ours");
    let direct = Target {
        name: "direct".into(),
        kind: Kind::Direct,
        addr: addr(up_port),
        pid: upstream.pid,
    };
    let raw = json!({ "large_pool": large_pool::phase(o, &work, up_port, &small, &direct, None) });
    println!("{}", serde_json::to_string(&raw).expect("json"));
    eprintln!("{}", report::large_pool_md(&raw));
}

fn memory_only(o: &Opts) {
    let (_work, _, _upstream, _proxy, t, token) = lone_proxy(o, "ours-mem");
    let r = hold_streams(o, &t, Some(&token));
    println!("{}", serde_json::to_string(&r).expect("json"));
}

/// RSS before, with `o.streams` open SSE streams, and after they closed.
fn hold_streams(o: &Opts, t: &Target, token: Option<&str>) -> Value {
    let rt = targets::rt();
    let gauge = |rt: &tokio::runtime::Runtime| {
        token.and_then(|tok| rt.block_on(targets::metric(t.addr, tok, "rotator_open_streams")))
    };
    std::thread::sleep(Duration::from_millis(500));
    let idle_kb = t.rss_kb();
    let fds_idle = t.pids().iter().map(|p| procs::fd_count(*p)).sum::<usize>();
    // Long streams: 120 events 250 ms apart (30 s), dropped long before their end.
    let spec = targets::request(t.kind, Route::Sse, "n=120&gap_ms=250");
    let (held, (open_kb, fds_open, open_gauge)) = sse::hold(t.addr, &spec, o.streams, || {
        std::thread::sleep(Duration::from_secs(1));
        let rt = targets::rt();
        (
            t.rss_kb(),
            t.pids().iter().map(|p| procs::fd_count(*p)).sum::<usize>(),
            gauge(&rt),
        )
    });
    std::thread::sleep(Duration::from_secs(2));
    let after_kb = t.rss_kb();
    let fds_after = t.pids().iter().map(|p| procs::fd_count(*p)).sum::<usize>();
    let after_gauge = gauge(&rt);
    let peak_kb: u64 = t.pids().into_iter().map(|p| procs::rss_kb(p).1).sum();
    log(&format!(
        "  {:<6} idle {:.1} MB, {} streams open {:.1} MB ({} failed, {:.1} s to open), after close {:.1} MB; fds {} → {} → {}",
        t.name,
        idle_kb as f64 / 1024.0,
        held.opened,
        open_kb as f64 / 1024.0,
        held.failed,
        held.seconds_to_open,
        after_kb as f64 / 1024.0,
        fds_idle,
        fds_open,
        fds_after
    ));
    json!({
        "idle_rss_kb": idle_kb,
        "open_rss_kb": open_kb,
        "after_rss_kb": after_kb,
        "peak_rss_kb": peak_kb,
        "streams": held,
        "fds": [fds_idle, fds_open, fds_after],
        "open_streams_gauge": [open_gauge, after_gauge],
    })
}

/// Redis rotation against memory rotation, same enterprise binary and MySQL store.
fn enterprise(
    o: &Opts,
    work: &Path,
    bin: &Path,
    up_port: u16,
    direct: &Target,
    ceiling: &dyn Fn(Route) -> f64,
    pin: &Pins,
) -> Value {
    let mysql_ok = Command::new("mysql")
        .args(["-h127.0.0.1", "-uroot", "-e", "SELECT 1"])
        .output()
        .is_ok_and(|out| out.status.success());
    let redis_ok = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "ping"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "PONG");
    if !mysql_ok || !redis_ok {
        log("enterprise: MariaDB or Redis not reachable on 127.0.0.1: pending");
        return json!({"status": "pending", "reason": format!("mysql reachable: {mysql_ok}, redis reachable: {redis_ok}")});
    }
    log("enterprise (MySQL store; memory vs Redis rotation)");
    let dbs = ["rotator_bench_mem", "rotator_bench_redis"];
    let sql = |q: String| {
        Command::new("mysql")
            .args(["-h127.0.0.1", "-uroot", "-e", &q])
            .status()
            .is_ok_and(|s| s.success())
    };
    for db in dbs {
        assert!(
            sql(format!(
                "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db} CHARACTER SET utf8mb4"
            )),
            "cannot create database {db}"
        );
    }
    let env = |db: &str, redis: bool| {
        let mut v = vec![
            ("DB_HOST".to_string(), "127.0.0.1".to_string()),
            ("DB_USER".to_string(), "root".to_string()),
            ("DB_NAME".to_string(), db.to_string()),
        ];
        if redis {
            v.push(("REDIS_URL".into(), "redis://127.0.0.1:6379/14".into()));
        }
        v
    };
    let mut procs_ = Vec::new();
    let mut ts = Vec::new();
    for (name, db, redis) in [("ent-memory", dbs[0], false), ("ent-redis", dbs[1], true)] {
        let port = procs::free_port();
        let opts = ProxyOpts {
            name,
            bin,
            port,
            log_level: "warn",
            env: env(db, redis),
            db: work.join("unused.db"),
            cpus: pin.server.as_deref(),
            workers: pin.workers,
        };
        let p = targets::spawn_proxy(&opts, work);
        if let Err(e) = targets::rt().block_on(targets::setup(addr(port), up_port)) {
            return json!({"status": "failed", "reason": format!("setup of {name}: {e}")});
        }
        ts.push(Target {
            name: name.into(),
            kind: Kind::Ours,
            addr: addr(port),
            pid: p.pid,
        });
        procs_.push(p);
    }
    let mut runs = Vec::new();
    let rate = (ceiling(Route::Rest) * 0.5).round().max(100.0);
    for rep in 0..o.reps {
        let mut list: Vec<&Target> = ts.iter().collect();
        let len = list.len();
        list.rotate_left(rep % len);
        for t in list {
            let mut r = throughput(o, work, t, Route::Rest, direct, pin.client.as_deref());
            let spec = targets::request(Kind::Ours, Route::Rest, "");
            let l = openloop::run(
                t.addr,
                &spec,
                rate,
                Duration::from_secs(o.warmup),
                Duration::from_secs(o.seconds),
                o.conns,
            );
            log(&format!(
                "  rep {} {:<10} {:>9.0} req/s; at {:.0}/s p50 {:.3} p99 {:.3} ms",
                rep + 1,
                t.name,
                r["rps"].as_f64().unwrap_or(0.0),
                rate,
                l.latency_us.p50 / 1000.0,
                l.latency_us.p99 / 1000.0
            ));
            r["rep"] = json!(rep + 1);
            r["latency_at_rate"] = json!(l);
            runs.push(r);
        }
    }
    drop(procs_);
    // Start time of the enterprise build (MySQL + Redis).
    let mut starts = Vec::new();
    for _ in 0..3 {
        let opts = ProxyOpts {
            name: "ent-start",
            bin,
            port: procs::free_port(),
            log_level: "warn",
            env: env(dbs[1], true),
            db: work.join("unused.db"),
            cpus: pin.server.as_deref(),
            workers: pin.workers,
        };
        starts.push(time_to_first_request(&opts, work));
    }
    for db in dbs {
        sql(format!("DROP DATABASE IF EXISTS {db}"));
    }
    json!({"status": "measured", "runs": runs, "rate": rate, "start": starts})
}
