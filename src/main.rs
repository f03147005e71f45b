//! The `api-key-rotator` binary: `serve` (the default), `healthcheck`, `export`, `import`.

use std::process::ExitCode;

mod container;

use api_key_rotator::config::{DatabaseConfig, StoreConfig};
use api_key_rotator::log::{self, Level};
use api_key_rotator::{Config, config, server};

/// musl's own allocator cost the static binary a fifth of its throughput
/// (docs/BENCHMARKS.md).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const USAGE: &str = "\
api-key-rotator: a fast, self-hosted proxy that rotates pools of API keys

Usage:
  api-key-rotator [serve]          run the service (configuration from the environment and ./.env)
  api-key-rotator healthcheck      exit 0 when the local instance answers GET /health with 200
  api-key-rotator export [--reveal]
                                   write every service and key as JSON to stdout (key values
                                   masked unless --reveal; only a revealed export imports)
  api-key-rotator import <file>    merge an export (\"-\" for stdin) into the configured database
  api-key-rotator encrypt          encrypt every stored key value with ENCRYPTION_KEY
  api-key-rotator decrypt          store every key value in plain text again (needs ENCRYPTION_KEY)
  api-key-rotator rekey --from OLD --to NEW
                                   encrypt every key value again with NEW (resumable)
  api-key-rotator --version

serve needs ADMIN_PASSWORD, JWT_SECRET and GLOBAL_PROXY_KEYS; export and import need only the
database settings (DATABASE_PATH, or DATABASE_URL / DB_*). See README.md for every variable.";

fn main() -> ExitCode {
    tune_malloc();
    cap_mysql_buffers();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str);
    if let Err(code) = start_in_container(command) {
        return code;
    }
    let code = match command {
        None | Some("serve") => with_runtime(serve()),
        Some("healthcheck") => healthcheck(),
        Some("export") => match args.get(1).map(String::as_str) {
            None => with_runtime(export(false)),
            Some("--reveal") => with_runtime(export(true)),
            Some(_) => fail("usage: api-key-rotator export [--reveal]"),
        },
        Some("encrypt") => with_runtime(convert(false)),
        Some("decrypt") => with_runtime(convert(true)),
        Some("rekey") => match (args.get(1), args.get(2), args.get(3), args.get(4)) {
            (Some(f), Some(old), Some(t), Some(new)) if f == "--from" && t == "--to" => {
                with_runtime(rekey(old.clone(), new.clone()))
            }
            _ => fail("usage: api-key-rotator rekey --from OLD --to NEW"),
        },
        Some("import") => match args.get(1) {
            Some(path) => with_runtime(import(path.clone())),
            None => fail("usage: api-key-rotator import <file>"),
        },
        Some("--version" | "-V" | "version") => {
            println!(
                "api-key-rotator {} ({} build)",
                env!("CARGO_PKG_VERSION"),
                build_kind()
            );
            ExitCode::SUCCESS
        }
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => fail(&format!("unknown command '{other}'\n\n{USAGE}")),
    };
    log::flush();
    code
}

/// Run first, while the process has one thread: when started as root with `RUN_AS` set
/// (the images), makes the SQLite directory usable and drops to that user for good.
fn start_in_container(command: Option<&str>) -> Result<(), ExitCode> {
    let dotenv = config::read_dotenv(std::path::Path::new(".env"));
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .or_else(|| dotenv.get(name).cloned())
    };
    let uses_data = matches!(
        command,
        None | Some("serve" | "export" | "import" | "encrypt" | "decrypt" | "rekey")
    );
    let data_file = match StoreConfig::from_source(&var) {
        Ok(StoreConfig {
            database: DatabaseConfig::Sqlite { path },
            ..
        }) if uses_data => Some(path),
        _ => None,
    };
    match container::start(var("RUN_AS").as_deref(), data_file.as_deref()) {
        Ok(started) => {
            for note in started.notes {
                log::line(Level::Info, &note);
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(2))
        }
    }
}

fn build_kind() -> &'static str {
    if cfg!(all(feature = "mysql", feature = "redis")) {
        "enterprise"
    } else {
        "lightweight"
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("{message}");
    ExitCode::FAILURE
}

fn with_runtime(fut: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(fut),
        Err(e) => fail(&format!("cannot start the async runtime: {e}")),
    }
}

fn load_config() -> Result<Config, ExitCode> {
    let config = Config::from_env().map_err(|e| {
        eprintln!("Configuration error: {e}");
        ExitCode::from(2)
    })?;
    log::set_level(config.log_level);
    for w in &config.warnings {
        log::line(Level::Warn, &format!("!!! {w}"));
    }
    Ok(config)
}

async fn serve() -> ExitCode {
    let config = match load_config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let addr = std::net::SocketAddr::new(config.bind_address, config.port);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            log::line(
                Level::Error,
                &format!("Failed to start server: cannot listen on {addr}: {e}"),
            );
            return ExitCode::FAILURE;
        }
    };
    match api_key_rotator::start(config, listener, server::shutdown_signal()).await {
        Ok(running) => {
            log::line(
                Level::Info,
                &format!(
                    "api-key-rotator {} ({} build) listening on http://{}",
                    env!("CARGO_PKG_VERSION"),
                    build_kind(),
                    running.addr
                ),
            );
            running.wait().await;
            log::line(Level::Info, "stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::line(Level::Error, &e);
            ExitCode::FAILURE
        }
    }
}

/// Asks the local instance for `/health` (used by container HEALTHCHECKs). Needs only
/// `BACKEND_PORT`, so it never opens the database itself.
fn healthcheck() -> ExitCode {
    use std::io::{Read, Write};
    use std::time::Duration;
    let dotenv = config::read_dotenv(std::path::Path::new(".env"));
    let port = std::env::var("BACKEND_PORT")
        .ok()
        .or_else(|| dotenv.get("BACKEND_PORT").cloned())
        .and_then(|p| p.trim().parse::<u16>().ok())
        .unwrap_or(8000);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let result = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })();
    match result {
        Ok(text) if text.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(text) => fail(&format!("unhealthy: {}", text.lines().next().unwrap_or(""))),
        Err(e) => fail(&format!("unhealthy: {addr}: {e}")),
    }
}

/// The database settings alone: what `export` and `import` need.
fn load_store_config() -> Result<StoreConfig, ExitCode> {
    StoreConfig::from_env().map_err(|e| {
        eprintln!("Configuration error: {e}");
        ExitCode::from(2)
    })
}

async fn export(reveal: bool) -> ExitCode {
    let config = match load_store_config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match api_key_rotator::migrate::export(&config, reveal).await {
        Ok(json) => {
            println!("{json}");
            if !reveal {
                eprintln!(
                    "key values are masked; for a backup that `import` takes, use `export --reveal`"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("export failed: {e}")),
    }
}

/// `encrypt` or (`to_plain`) `decrypt`.
async fn convert(to_plain: bool) -> ExitCode {
    let config = match load_store_config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    if config.encryption_key.is_none() {
        return fail("ENCRYPTION_KEY is not set: it is needed to encrypt or decrypt the keys");
    }
    let verb = if to_plain { "decrypted" } else { "encrypted" };
    let done = api_key_rotator::migrate::convert(&config, to_plain, |n| {
        eprintln!("{verb} {n} keys so far");
    })
    .await;
    match done {
        Ok(n) => {
            eprintln!(
                "{verb} {n} keys; every stored key value is now {}",
                match to_plain {
                    true => "in plain text: unset ENCRYPTION_KEY",
                    false => "encrypted: keep ENCRYPTION_KEY set (and safe) for every instance",
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!(
            "{} stopped (the keys converted so far are kept; run it again to go on): {e}",
            if to_plain { "decrypt" } else { "encrypt" }
        )),
    }
}

/// `rekey --from OLD --to NEW`.
async fn rekey(old: String, new: String) -> ExitCode {
    let mut config = match load_store_config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    if new.len() < api_key_rotator::seal::MIN_SECRET {
        return fail(&format!(
            "--to is {} bytes long; it must be {} or more",
            new.len(),
            api_key_rotator::seal::MIN_SECRET
        ));
    }
    config.encryption_key = Some(config::Secret::new(old));
    let done = api_key_rotator::migrate::rekey(&config, config::Secret::new(new), |n| {
        eprintln!("rekeyed {n} keys so far");
    })
    .await;
    match done {
        Ok(n) => {
            eprintln!("rekeyed {n} keys; set ENCRYPTION_KEY to the new key on every instance");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!(
            "rekey stopped (the keys rekeyed so far are kept; run it again to go on): {e}"
        )),
    }
}

async fn import(path: String) -> ExitCode {
    let config = match load_store_config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let text = if path == "-" {
        let mut s = String::new();
        match std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
            Ok(_) => Ok(s),
            Err(e) => Err(e),
        }
    } else {
        std::fs::read_to_string(&path)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => return fail(&format!("cannot read {path}: {e}")),
    };
    match api_key_rotator::migrate::import(&config, &text).await {
        Ok(o) => {
            eprintln!(
                "imported: {} services created, {} updated; {} keys created, {} updated",
                o.services_created, o.services_updated, o.keys_created, o.keys_updated
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("import failed (nothing was changed): {e}")),
    }
}

/// Two glibc allocator settings, for a flat RSS under steady traffic (the soak test):
/// - glibc gives each thread that meets a busy arena a new one, up to eight per core, and
///   memory freed in one arena is not reused by the others: the RSS of a 2-core run grew
///   to 3x the memory in use (20 -> 56 MB in 8 minutes). One arena per core held it at
///   18-30 MB.
/// - a large block (a statistics write's rows) is mapped on its own and given back when
///   freed, but freeing one raises glibc's threshold for that to the block's size, so the
///   next ones came from the heap and stayed in the RSS. The threshold is kept at 256 KiB.
///
/// `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_` or `GLIBC_TUNABLES` still win when set.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let unset = |name: &str| std::env::var_os(name).is_none();
        if !unset("GLIBC_TUNABLES") {
            return;
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
        unsafe {
            if unset("MALLOC_ARENA_MAX") {
                libc::mallopt(libc::M_ARENA_MAX, cores.clamp(2, 64) as libc::c_int);
            }
            if unset("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
            }
        }
    }
}

/// mysql_async keeps up to 128 spare buffers of up to 4 MiB each for the life of the
/// process: a long run of statistics and request-log writes grew the enterprise build's
/// memory by tens of MB (the soak test). 16 buffers of up to 256 KiB are plenty here;
/// the variables still win when set.
fn cap_mysql_buffers() {
    #[cfg(feature = "mysql")]
    for (name, value) in [
        ("MYSQL_ASYNC_BUFFER_POOL_CAP", "16"),
        ("MYSQL_ASYNC_BUFFER_SIZE_CAP", "262144"),
    ] {
        if std::env::var_os(name).is_none() {
            // SAFETY: the first thing `main` does, while this is the only thread.
            unsafe { std::env::set_var(name, value) };
        }
    }
}
