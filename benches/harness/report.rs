//! The markdown report of a run: medians over repeats, ratios, and the targets.

use std::fmt::Write as _;

use serde_json::Value;

use crate::stats::Spread;

/// `YYYY-MM-DDTHHMMZ` (UTC) for file names.
pub fn stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60
    )
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Values of `field` over the runs matching `pred`.
fn pick(runs: &Value, pred: impl Fn(&Value) -> bool, field: impl Fn(&Value) -> f64) -> Vec<f64> {
    runs.as_array()
        .map(|a| a.iter().filter(|r| pred(r)).map(&field).collect())
        .unwrap_or_default()
}

fn med(v: &[f64]) -> f64 {
    Spread::of(v).median
}

fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn ms(us: f64) -> String {
    if !us.is_finite() {
        return "–".into();
    }
    let v = us / 1000.0;
    if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b != 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

fn mb(kb: f64) -> String {
    if kb.is_finite() {
        format!("{:.1} MB", kb / 1024.0)
    } else {
        "–".into()
    }
}

fn yes(ok: bool) -> &'static str {
    if ok { "✅ met" } else { "❌ not met" }
}

fn rps(raw: &Value, route: &str, target: &str) -> Spread {
    let v = pick(
        &raw["throughput"],
        |r| r["route"] == route && r["target"] == target,
        |r| f(&r["rps"]),
    );
    Spread::of(&v)
}

fn cpu(raw: &Value, route: &str, target: &str) -> f64 {
    med(&pick(
        &raw["throughput"],
        |r| r["route"] == route && r["target"] == target,
        |r| f(&r["cpu_us_per_req"]),
    ))
}

/// Median over repeats of one latency percentile.
fn lat(raw: &Value, route: &str, frac: f64, target: &str, p: &str) -> f64 {
    med(&pick(
        &raw["latency"],
        |r| r["route"] == route && r["target"] == target && f(&r["load_fraction"]) == frac,
        |r| f(&r["result"]["latency_us"][p]),
    ))
}

/// Median over repeats of the load generator's p99 send lag while it loaded `target`: how
/// late requests left their schedule, mostly waiting for one of the connections to be free,
/// which takes a stall of the target (or of the whole machine) longer than the connections
/// cover.
fn lag(raw: &Value, route: &str, frac: f64, target: &str) -> f64 {
    med(&pick(
        &raw["latency"],
        |r| r["route"] == route && r["target"] == target && f(&r["load_fraction"]) == frac,
        |r| f(&r["result"]["dispatch_lag_us"]["p99"]),
    ))
}

/// Median over repeats of (target − direct) for one percentile, paired by repeat.
fn added(raw: &Value, route: &str, frac: f64, target: &str, p: &str) -> f64 {
    let of = |t: &str| {
        pick(
            &raw["latency"],
            |r| r["route"] == route && r["target"] == t && f(&r["load_fraction"]) == frac,
            |r| f(&r["result"]["latency_us"][p]),
        )
    };
    let (a, d) = (of(target), of("direct"));
    let diffs: Vec<f64> = a.iter().zip(&d).map(|(x, y)| x - y).collect();
    med(&diffs)
}

fn rate(raw: &Value, route: &str, frac: f64) -> f64 {
    med(&pick(
        &raw["latency"],
        |r| r["route"] == route && f(&r["load_fraction"]) == frac,
        |r| f(&r["result"]["rate"]),
    ))
}

fn sse(raw: &Value, target: &str, field: &str, p: &str) -> Vec<f64> {
    pick(
        &raw["sse"],
        |r| r["target"] == target,
        |r| f(&r["result"][field][p]),
    )
}

fn pm(s: &Spread) -> String {
    format!("{} ±{:.0}%", thousands(s.median), s.pm_pct())
}

pub fn markdown(raw: &Value) -> String {
    let mut o = String::new();
    let c = &raw["conditions"];
    let _ = writeln!(o, "## Results {}\n", c["date_utc"].as_str().unwrap_or(""));
    let _ = writeln!(
        o,
        "Conditions: {} × {} ({} cores), Linux {}, {}, {}; 1-minute load average {:.2} before the run \
         ({:.2} at its end: the run itself keeps both cores busy); \
         {} interleaved repeats of {} s (+{} s warm-up) per measurement, {} keep-alive connections; \
         CPU pinning: {}; the whole run took {} s. Proxy: {} shard thread(s) ({}), {}; \
         nginx: `worker_processes {}`. Medians over repeats; ± is half the range.\n",
        c["cores"],
        c["cpu"].as_str().unwrap_or("?"),
        c["cores"],
        c["kernel"].as_str().unwrap_or("?"),
        c["nginx"].as_str().unwrap_or("nginx ?"),
        c["wrk"].as_str().unwrap_or("wrk ?"),
        f(&c["loadavg_start"]),
        f(&c["loadavg_end"]),
        c["reps"],
        c["seconds"],
        c["warmup_seconds"],
        c["connections"],
        match c["pin"].as_str() {
            Some("split") =>
                "the server under test (nginx or the proxy) alone on CPU 0, upstream and load generators on CPU 1 (`taskset`)",
            _ => "none, everything shares both cores",
        },
        c["seconds_total"],
        c["proxy_workers"],
        if c["workers_set"].as_bool() == Some(true) {
            "`--workers`: `WORKER_THREADS` for the proxy, as many workers for nginx"
        } else {
            "`WORKER_THREADS` default: one per CPU it may use"
        },
        match c["proxy_build"].as_str() {
            Some("pgo") => "a profile-guided release build (`scripts/pgo.sh`)",
            Some("plain") => "a plain release build (no PGO)",
            _ => "a plain release build (runs before PGO)",
        },
        c["nginx_workers"],
    );

    // Headline table.
    let _ = writeln!(o, "### Summary\n");
    let _ = writeln!(
        o,
        "| measurement | direct | nginx | ours | ours ÷ nginx | ours ÷ direct |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
    for (route, label) in [
        ("rest", "/proxy GET tiny JSON"),
        ("llm", "/llm POST 1 KB JSON"),
    ] {
        let (d, n, u) = (
            rps(raw, route, "direct"),
            rps(raw, route, "nginx"),
            rps(raw, route, "ours"),
        );
        let _ = writeln!(
            o,
            "| {label}: req/s at saturation (wrk -c{}) | {} | {} | {} | **{}** | {} |",
            c["connections"],
            pm(&d),
            pm(&n),
            pm(&u),
            ratio(u.median, n.median),
            ratio(u.median, d.median)
        );
        for frac in [0.25, 0.5] {
            let cell = |t: &str| {
                format!(
                    "{} / {} / {}",
                    ms(lat(raw, route, frac, t, "p50")),
                    ms(lat(raw, route, frac, t, "p99")),
                    ms(lat(raw, route, frac, t, "p999"))
                )
            };
            let r = |p: &str| {
                ratio(
                    lat(raw, route, frac, "ours", p),
                    lat(raw, route, frac, "nginx", p),
                )
            };
            let rd = |p: &str| {
                ratio(
                    lat(raw, route, frac, "ours", p),
                    lat(raw, route, frac, "direct", p),
                )
            };
            let _ = writeln!(
                o,
                "| {label}: latency p50 / p99 / p99.9 ms at {} req/s ({:.0} % of nginx) | {} | {} | {} | {} / {} | {} / {} |",
                thousands(rate(raw, route, frac)),
                frac * 100.0,
                cell("direct"),
                cell("nginx"),
                cell("ours"),
                r("p50"),
                r("p99"),
                rd("p50"),
                rd("p99"),
            );
        }
        let _ = writeln!(
            o,
            "| {label}: latency added over direct at 50 %, p50 / p99 ms | – | {} / {} | **{} / {}** | | |",
            ms(added(raw, route, 0.5, "nginx", "p50")),
            ms(added(raw, route, 0.5, "nginx", "p99")),
            ms(added(raw, route, 0.5, "ours", "p50")),
            ms(added(raw, route, 0.5, "ours", "p99")),
        );
        let _ = writeln!(
            o,
            "| {label}: send lag at 50 % (intended send → on a free connection; part of the latency above), p99 ms | {} | {} | {} | | |",
            ms(lag(raw, route, 0.5, "direct")),
            ms(lag(raw, route, 0.5, "nginx")),
            ms(lag(raw, route, 0.5, "ours")),
        );
        let _ = writeln!(
            o,
            "| {label}: CPU µs per request at saturation (server process only) | {:.1} | {:.1} | {:.1} | {} | |",
            cpu(raw, route, "direct"),
            cpu(raw, route, "nginx"),
            cpu(raw, route, "ours"),
            ratio(cpu(raw, route, "ours"), cpu(raw, route, "nginx")),
        );
    }
    let info = rps(raw, "rest", "ours-info");
    let warn = rps(raw, "rest", "ours");
    let _ = writeln!(
        o,
        "| /proxy GET with `LOG_LEVEL=info` (one access-log line per request): req/s | | | {} | {} | {} of `warn` |",
        pm(&info),
        ratio(info.median, rps(raw, "rest", "nginx").median),
        ratio(info.median, warn.median)
    );
    let ttfb = |t: &str| med(&sse(raw, t, "ttfb_us", "p50"));
    let worst =
        |t: &str, field: &str, p: &str| sse(raw, t, field, p).into_iter().fold(f64::NAN, f64::max);
    let _ = writeln!(
        o,
        "| SSE: time to first event, p50 ms | {} | {} | {} | added {} ms | added **{} ms** |",
        ms(ttfb("direct")),
        ms(ttfb("nginx")),
        ms(ttfb("ours")),
        ms(ttfb("nginx") - ttfb("direct")),
        ms(ttfb("ours") - ttfb("direct")),
    );
    let _ = writeln!(
        o,
        "| SSE: event delivery delay p99 / max ms | {} / {} | {} / {} | {} / {} | | |",
        ms(med(&sse(raw, "direct", "delay_us", "p99"))),
        ms(worst("direct", "delay_us", "max")),
        ms(med(&sse(raw, "nginx", "delay_us", "p99"))),
        ms(worst("nginx", "delay_us", "max")),
        ms(med(&sse(raw, "ours", "delay_us", "p99"))),
        ms(worst("ours", "delay_us", "max")),
    );
    let gap = |t: &str| worst(t, "gap_us", "max") - 20_000.0;
    let _ = writeln!(
        o,
        "| SSE: largest gap between events beyond the upstream's 20 ms, ms | {} | {} | **{}** | | |",
        ms(gap("direct")),
        ms(gap("nginx")),
        ms(gap("ours")),
    );
    let m = &raw["memory"];
    let mem = |t: &str, k: &str| f(&m[t][k]);
    let _ = writeln!(
        o,
        "| RSS idle (fresh process; nginx: master + workers after the run) | | {} | **{}** | {} | |",
        mb(mem("nginx", "idle_rss_kb")),
        mb(mem("ours", "idle_rss_kb")),
        ratio(mem("ours", "idle_rss_kb"), mem("nginx", "idle_rss_kb"))
    );
    let _ = writeln!(
        o,
        "| RSS with {} open SSE streams ({} / {} opened) | | {} | **{}** | {} | |",
        m["ours"]["streams"]["opened"].as_u64().unwrap_or(0),
        m["ours"]["streams"]["opened"].as_u64().unwrap_or(0),
        m["nginx"]["streams"]["opened"].as_u64().unwrap_or(0),
        mb(mem("nginx", "open_rss_kb")),
        mb(mem("ours", "open_rss_kb")),
        ratio(mem("ours", "open_rss_kb"), mem("nginx", "open_rss_kb"))
    );
    let _ = writeln!(
        o,
        "| RSS 2 s after the streams closed | | {} | {} | | |",
        mb(mem("nginx", "after_rss_kb")),
        mb(mem("ours", "after_rss_kb")),
    );
    let light = f(&raw["sizes"]["lightweight_bytes"]);
    let ent = f(&raw["sizes"]["enterprise_bytes"]);
    let _ = writeln!(
        o,
        "| Release binary, lightweight / enterprise | | | **{}** / {} | | |",
        mb(light / 1024.0),
        mb(ent / 1024.0)
    );
    let start_ms = med(&pick(
        &raw["start"]["lightweight"],
        |_| true,
        |r| f(&r["ms_to_first_request"]),
    ));
    let idle_after_start = med(&pick(
        &raw["start"]["lightweight"],
        |_| true,
        |r| f(&r["idle_rss_kb"]),
    ));
    let e = &raw["enterprise"];
    let ent_start = med(&pick(
        &e["start"],
        |_| true,
        |r| f(&r["ms_to_first_request"]),
    ));
    let _ = writeln!(
        o,
        "| Start → first proxied request served, ms (lightweight / enterprise with MySQL + Redis) | | | {} / {} | | |",
        ms(start_ms * 1000.0),
        ms(ent_start * 1000.0)
    );
    let ent_rps = |t: &str| Spread::of(&pick(&e["runs"], |r| r["target"] == t, |r| f(&r["rps"])));
    let (em, er) = (ent_rps("ent-memory"), ent_rps("ent-redis"));
    let redis_ratio = er.median / em.median;
    if e["status"] == "measured" {
        let el = |t: &str, p: &str| {
            med(&pick(
                &e["runs"],
                |r| r["target"] == t,
                |r| f(&r["latency_at_rate"]["latency_us"][p]),
            ))
        };
        let _ = writeln!(
            o,
            "| Enterprise /proxy GET req/s: memory rotation / Redis rotation (MySQL store) | | | {} / {} | | Redis ÷ memory **{:.2}×** |",
            pm(&em),
            pm(&er),
            redis_ratio
        );
        let _ = writeln!(
            o,
            "| Enterprise latency p50 / p99 ms at {} req/s: memory / Redis | | | {} / {} — {} / {} | | |",
            thousands(f(&e["rate"])),
            ms(el("ent-memory", "p50")),
            ms(el("ent-memory", "p99")),
            ms(el("ent-redis", "p50")),
            ms(el("ent-redis", "p99")),
        );
    } else {
        let _ = writeln!(
            o,
            "| Enterprise: Redis ÷ memory rotation | | | pending: {} | | |",
            e["reason"].as_str().unwrap_or("?")
        );
    }

    litellm(&mut o, raw);
    tracking(&mut o, raw);
    client_keys(&mut o, raw);
    o.push_str(&large_pool_md(raw));

    // Targets.
    let _ = writeln!(o, "\n### Targets\n");
    let _ = writeln!(o, "| target | measured | |");
    let _ = writeln!(o, "|---|---|---|");
    for (route, label) in [("rest", "/proxy"), ("llm", "/llm")] {
        let r = rps(raw, route, "ours").median / rps(raw, route, "nginx").median;
        let _ = writeln!(
            o,
            "| throughput ≥ 1.0× nginx ({label}) | {r:.2}× | {} |",
            yes(r >= 1.0)
        );
        let (p50, p99) = (
            added(raw, route, 0.5, "ours", "p50"),
            added(raw, route, 0.5, "ours", "p99"),
        );
        let _ = writeln!(
            o,
            "| added latency at 50 % load ({label}): p50 ≤ 0.1 ms | {} ms | {} |",
            ms(p50),
            yes(p50 <= 100.0)
        );
        let _ = writeln!(
            o,
            "| added latency at 50 % load ({label}): p99 ≤ 1 ms | {} ms | {} |",
            ms(p99),
            yes(p99 <= 1000.0)
        );
    }
    let added_ttfb = ttfb("ours") - ttfb("direct");
    let _ = writeln!(
        o,
        "| SSE added TTFB ≤ 1 ms | {} ms | {} |",
        ms(added_ttfb),
        yes(added_ttfb <= 1000.0)
    );
    let _ = writeln!(
        o,
        "| no Nagle/delayed-ACK stalls (largest extra gap < 5 ms) | {} ms | {} |",
        ms(gap("ours")),
        yes(gap("ours") < 5000.0)
    );
    let idle = mem("ours", "idle_rss_kb").max(idle_after_start);
    let _ = writeln!(
        o,
        "| idle RSS ≤ 10 MB | {} | {} |",
        mb(idle),
        yes(idle <= 10.0 * 1024.0)
    );
    let open = mem("ours", "open_rss_kb");
    let _ = writeln!(
        o,
        "| 1,000 open streams ≤ 50 MB | {} | {} |",
        mb(open),
        yes(open <= 50.0 * 1024.0 && m["ours"]["streams"]["opened"].as_u64() == Some(1000))
    );
    let _ = writeln!(
        o,
        "| lightweight binary ≤ 10 MB | {} | {} |",
        mb(light / 1024.0),
        yes(light <= 10.0 * 1024.0 * 1024.0)
    );
    if e["status"] == "measured" {
        let _ = writeln!(
            o,
            "| Redis mode ≥ 0.8× memory mode | {redis_ratio:.2}× | {} |",
            yes(redis_ratio >= 0.8)
        );
    } else {
        let _ = writeln!(o, "| Redis mode ≥ 0.8× memory mode | pending | |");
    }
    o
}

/// The /llm route against LiteLLM's proxy, measured in its own phase (ours again, so the
/// ratio comes from the same minutes).
/// The usage-tracking phase alone, as markdown.
pub fn tracking_md(raw: &Value) -> String {
    let mut o = String::new();
    tracking(&mut o, raw);
    o
}

/// Usage tracking on against off, the same build in the same run.
fn tracking(o: &mut String, raw: &Value) {
    let t = &raw["tracking"];
    let (Some(on), Some(off)) = (t["on"].as_str(), t["off"].as_str()) else {
        return;
    };
    let rps = |route: &str, who: &str| {
        Spread::of(&pick(
            &t["throughput"],
            |r| r["route"] == route && r["target"] == who,
            |r| f(&r["rps"]),
        ))
    };
    let p50 = |who: &str| {
        med(&pick(
            &t["latency"],
            |r| r["target"] == who,
            |r| f(&r["result"]["latency_us"]["p50"]),
        ))
    };
    let ttfe = |who: &str| {
        med(&pick(
            &t["sse"],
            |r| r["target"] == who,
            |r| f(&r["result"]["ttfb_us"]["p50"]),
        ))
    };
    let _ = writeln!(
        o,
        "\n### Usage tracking on ÷ off (/llm, the same build side by side)\n"
    );
    let _ = writeln!(o, "| measurement | off | on | on ÷ off |");
    let _ = writeln!(o, "|---|---:|---:|---:|");
    for (route, label) in [
        ("llm", "req/s, POST 1 KB JSON"),
        ("sse", "req/s, SSE of 20 events"),
    ] {
        let (a, b) = (rps(route, off), rps(route, on));
        let _ = writeln!(
            o,
            "| {label} | {} | {} | **{:.2}×** |",
            pm(&a),
            pm(&b),
            b.median / a.median
        );
    }
    for (label, off_us, on_us) in [
        ("p50 ms at a quarter of off's rate", p50(off), p50(on)),
        ("SSE time to first event p50, ms", ttfe(off), ttfe(on)),
    ] {
        let (a, b) = (off_us / 1000.0, on_us / 1000.0);
        let _ = writeln!(o, "| {label} | {a:.3} | {b:.3} | {:+.3} ms |", b - a);
    }
}

/// A client key with a per-minute limit against a global proxy key, the same proxy.
fn client_keys(o: &mut String, raw: &Value) {
    let c = &raw["client_keys"];
    if c["status"] != "measured" {
        return;
    }
    let rps = |who: &str| {
        Spread::of(&pick(
            &c["throughput"],
            |r| r["caller"] == who,
            |r| f(&r["rps"]),
        ))
    };
    let (g, k) = (rps("global"), rps("client"));
    let _ = writeln!(
        o,
        "\n### Client key ÷ global proxy key (/llm POST 1 KB JSON, the same proxy)\n"
    );
    let _ = writeln!(
        o,
        "| global proxy key | client key with rpm | client ÷ global |"
    );
    let _ = writeln!(o, "|---:|---:|---:|");
    let _ = writeln!(
        o,
        "| {} | {} | **{:.2}×** |",
        pm(&g),
        pm(&k),
        k.median / g.median
    );
}

/// A pool of 100,000 keys against issue 26's targets.
pub fn large_pool_md(raw: &Value) -> String {
    let mut o = String::new();
    let p = &raw["large_pool"];
    if p["status"] != "measured" {
        let _ = writeln!(
            o,
            "\nLarge pool: not measured ({}).",
            p["reason"].as_str().unwrap_or("?")
        );
        return o;
    }
    let rps = |which: &str| {
        Spread::of(&pick(
            &p["throughput"],
            |r| r["pool"] == which,
            |r| f(&r["rps"]),
        ))
    };
    let (pool, small) = (rps("pool"), rps("small"));
    let l = &p["listing"];
    let kb = |v: &Value| f(v);
    let stream = kb(&l["rss_after_whole_list_kb"]) - kb(&l["rss_before_kb"]);
    let paged = kb(&l["rss_after_pages_kb"]) - kb(&l["rss_before_kb"]);
    let ms = |k: &str| {
        format!(
            "{:.1} ms (max {:.1})",
            f(&p["admin"][k]["p50_ms"]),
            f(&p["admin"][k]["max_ms"])
        )
    };
    let _ = writeln!(o, "\n### A pool of {} keys (SQLite)\n", p["keys"]);
    let _ = writeln!(o, "| measurement | result | target |");
    let _ = writeln!(o, "|---|---:|---|");
    let _ = writeln!(
        o,
        "| one page of 100 keys, p50 | {} | ≤ 20 ms |",
        ms("page_of_100")
    );
    let _ = writeln!(
        o,
        "| add one key, snapshot included, p50 | {} | ≤ 20 ms |",
        ms("add_one")
    );
    let _ = writeln!(
        o,
        "| delete one key, snapshot included, p50 | {} | ≤ 20 ms |",
        ms("delete_one")
    );
    let _ = writeln!(
        o,
        "| RSS added: whole list streamed ({} MB of JSON) | {:+.1} MB | ≤ 10 MB |",
        (f(&l["whole_list_bytes"]) / 1e6).round(),
        stream / 1024.0
    );
    let _ = writeln!(
        o,
        "| RSS added: then every page of 1,000 | {:+.1} MB | ≤ 10 MB |",
        paged / 1024.0
    );
    let _ = writeln!(o, "| idle RSS | {} | ≤ 40 MB |", mb(f(&p["idle_rss_kb"])));
    let _ = writeln!(
        o,
        "| /proxy req/s: {} keys ÷ 3 keys | {} ÷ {} = **{:.2}×** | ≥ 0.97× |",
        p["keys"],
        pm(&pool),
        pm(&small),
        pool.median / small.median
    );
    let (by_rep, cpu) = (paired(p, "rps"), paired(p, "cpu_us_per_req"));
    let _ = writeln!(
        o,
        "| the same, repeat by repeat (the two back to back): median (range) | {:.2}× ({:.2}–{:.2}×) | |",
        by_rep.median, by_rep.min, by_rep.max
    );
    let _ = writeln!(
        o,
        "| proxy CPU per request, {} keys ÷ 3 keys, repeat by repeat | {:.2}× ({:.2}–{:.2}×) | |",
        p["keys"], cpu.median, cpu.min, cpu.max
    );
    o
}

/// The large pool's `field` ÷ the small pool's, one ratio per repeat (the two ran back
/// to back, so a slow spell of the machine touches both): steadier than the ratio of
/// the medians when the machine's speed drifts.
fn paired(p: &Value, field: &str) -> Spread {
    let of = |which: &str| pick(&p["throughput"], |r| r["pool"] == which, |r| f(&r[field]));
    let ratios: Vec<f64> = of("pool")
        .iter()
        .zip(of("small"))
        .map(|(a, b)| a / b)
        .collect();
    Spread::of(&ratios)
}

fn litellm(o: &mut String, raw: &Value) {
    let l = &raw["litellm"];
    if l["status"] != "measured" {
        let _ = writeln!(
            o,
            "\nLiteLLM: not measured ({}).",
            l["reason"].as_str().unwrap_or("?")
        );
        return;
    }
    let spread =
        |t: &str, k: &str| Spread::of(&pick(&l["throughput"], |r| r["target"] == t, |r| f(&r[k])));
    let (ours, lite) = (spread("ours", "rps"), spread("litellm", "rps"));
    let (oc, lc) = (
        spread("ours", "cpu_us_per_req").median,
        spread("litellm", "cpu_us_per_req").median,
    );
    let _ = writeln!(
        o,
        "\n### Against LiteLLM ({}, {} worker processes), /llm POST 1 KB JSON\n",
        l["version"].as_str().unwrap_or("?"),
        l["workers"]
    );
    let _ = writeln!(o, "| measurement | LiteLLM | ours | ours ÷ LiteLLM |");
    let _ = writeln!(o, "|---|---:|---:|---:|");
    let _ = writeln!(
        o,
        "| req/s at saturation | {} | {} | **{:.1}×** |",
        pm(&lite),
        pm(&ours),
        ours.median / lite.median
    );
    let _ = writeln!(
        o,
        "| CPU µs per request | {lc:.0} | {oc:.1} | {:.3}× |",
        oc / lc
    );
    let _ = writeln!(
        o,
        "| RSS idle / after the load (LiteLLM: every process) | {} / {} | {} | |",
        mb(f(&l["idle_rss_kb"])),
        mb(f(&l["loaded_rss_kb"])),
        mb(f(&raw["memory"]["ours"]["idle_rss_kb"]))
    );
}
