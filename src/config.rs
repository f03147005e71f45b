//! Configuration: environment variables (and `./.env`), parsed once into typed values.
//!
//! Parsing goes through a lookup function, so tests pass a map instead of touching the
//! process environment. Secrets are wrapped in [`Secret`], whose `Debug` never shows them.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::log::Level;

/// A secret string: printed as `***` by `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself; call only where it is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where durable configuration lives.
#[derive(Debug, Clone)]
pub enum DatabaseConfig {
    /// The lightweight default: one SQLite file.
    Sqlite { path: PathBuf },
    /// The enterprise store.
    Mysql(MysqlConfig),
}

impl DatabaseConfig {
    /// `sqlite` or `mysql`, as the start-up line `Database Type: …` says.
    pub fn kind(&self) -> &'static str {
        match self {
            DatabaseConfig::Sqlite { .. } => "sqlite",
            DatabaseConfig::Mysql(_) => "mysql",
        }
    }
}

/// MySQL connection settings, from `DATABASE_URL` or `DB_*`.
#[derive(Debug, Clone, PartialEq)]
pub struct MysqlConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub database: String,
}

/// What opening the store needs, and nothing else: all that `export` and `import` read.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub database: DatabaseConfig,
    /// `RESET_DB_TABLES`: drop and recreate the tables at start.
    pub reset_db_tables: bool,
    /// `ENCRYPTION_KEY`: upstream keys are stored encrypted (see `seal`).
    pub encryption_key: Option<Secret>,
    /// `ENCRYPTION_KEY_PREVIOUS`: the key a `rekey` is moving away from, still read.
    pub encryption_key_previous: Option<Secret>,
}

impl StoreConfig {
    /// Reads the database settings from the environment and `./.env`, without requiring
    /// the serving settings (admin password, JWT secret, proxy keys).
    pub fn from_env() -> Result<StoreConfig, ConfigError> {
        let dotenv = read_dotenv(Path::new(".env"));
        StoreConfig::from_source(&|name| {
            std::env::var(name)
                .ok()
                .or_else(|| dotenv.get(name).cloned())
        })
    }

    /// Parses the database settings from any lookup function.
    pub fn from_source(get: &dyn Fn(&str) -> Option<String>) -> Result<StoreConfig, ConfigError> {
        let vars = Vars { get };
        Ok(StoreConfig {
            database: database_config(&vars)?,
            reset_db_tables: vars.flag("RESET_DB_TABLES")?,
            encryption_key: encryption_key(&vars, "ENCRYPTION_KEY")?,
            encryption_key_previous: encryption_key(&vars, "ENCRYPTION_KEY_PREVIOUS")?,
        })
    }
}

/// `ENCRYPTION_KEY` (or `ENCRYPTION_KEY_PREVIOUS`), when set: at least 32 bytes.
fn encryption_key(vars: &Vars<'_>, name: &'static str) -> Result<Option<Secret>, ConfigError> {
    let Some(key) = vars.get(name).filter(|k| !k.is_empty()) else {
        return Ok(None);
    };
    if key.len() < crate::seal::MIN_SECRET {
        return Err(err(
            name,
            format!(
                "is {} bytes long; it must be {} or more (e.g. ENCRYPTION_KEY=$(openssl rand -hex 32))",
                key.len(),
                crate::seal::MIN_SECRET
            ),
        ));
    }
    Ok(Some(Secret::new(key)))
}

/// Where the hot shared rotation state lives.
#[derive(Debug, Clone)]
pub enum CacheConfig {
    /// Process memory (one instance).
    Memory,
    /// Redis, shared by several instances. The URL may hold a password.
    Redis { url: Secret },
}

impl CacheConfig {
    /// `memory` or `redis`, as the start-up line `Cache Type: …` says.
    pub fn kind(&self) -> &'static str {
        match self {
            CacheConfig::Memory => "memory",
            CacheConfig::Redis { .. } => "redis",
        }
    }
}

/// Every setting the service reads, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub admin_username: String,
    pub admin_password: Secret,
    pub jwt_secret: Secret,
    /// Lifetime of admin tokens.
    pub jwt_ttl: Duration,
    /// `GLOBAL_PROXY_KEYS`, trimmed, empties dropped; never empty.
    pub proxy_keys: Vec<Secret>,
    pub bind_address: IpAddr,
    pub port: u16,
    /// Threads serving requests (`WORKER_THREADS`, default: one per CPU).
    pub worker_threads: usize,
    pub public_base_url: String,
    pub log_level: Level,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    /// How long to wait for upstream response headers.
    pub proxy_timeout: Duration,
    pub connect_timeout: Duration,
    /// Extra CA certificates (PEM) trusted for upstreams, besides the public roots.
    pub upstream_ca_file: Option<PathBuf>,
    pub header_read_timeout: Duration,
    /// How long a shutdown waits for open requests and streams.
    pub shutdown_grace: Duration,
    /// Request bodies up to this size are buffered so a failed attempt can be replayed.
    pub retry_body_limit: usize,
    /// Protects `/metrics`; when unset, an admin token is required instead.
    pub metrics_token: Option<Secret>,
    /// Most re-validation probes at once (`REVALIDATE_CONCURRENCY`).
    pub revalidate_concurrency: usize,
    /// How often the re-validator looks for keys due (`REVALIDATE_TICK_SECONDS`).
    pub revalidate_tick: Duration,
    /// How often per-key statistics are written to the database.
    pub stats_flush_interval: Duration,
    /// LLM error codes that mark the key invalid (`INVALID_KEY_PHRASES`).
    pub invalid_key_phrases: Vec<String>,
    /// How long an upstream answer's body may go without a byte (zero: never cut).
    pub upstream_idle_timeout: Duration,
    /// How long reading the part of a request body that is buffered (and an admin body)
    /// may take.
    pub body_read_timeout: Duration,
    /// Client connections open at most; beyond, new ones get a 503 and are closed.
    pub max_connections: usize,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`TRUSTED_PROXIES`).
    pub trusted_proxies: crate::net::TrustedProxies,
    /// Usage insight on (`USAGE_TRACKING`): tokens, rollups, the request log.
    pub usage_tracking: bool,
    /// Requests kept in the request log (`REQUEST_LOG_SIZE`).
    pub request_log_size: usize,
    /// Days of hourly rollups kept (`USAGE_RETENTION_DAYS`).
    pub usage_retention_days: u64,
    /// Non-fatal problems found while parsing, to be logged loudly at start.
    pub warnings: Vec<String>,
}

/// A configuration problem that stops the start. Names the variable and shows an example.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.var, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// Error codes that mean "this key is dead" for LLM providers. They are looked for only
/// in the provider's error-code fields (`error.code`, `error.type`, `error.status`,
/// `error.details[].reason`), never in free text such as `error.message`, which may quote
/// what the client sent.
pub const DEFAULT_INVALID_KEY_CODES: &[&str] = &[
    "insufficient_quota",
    "invalid_api_key",
    "API_KEY_INVALID",
    "billing_not_active",
    "billing_error",
    "credit_balance_too_low",
    "account_deactivated",
];

/// Values that the original shipped as defaults or examples: accepted, but warned about.
const KNOWN_WEAK: &[&str] = &[
    "admin123",
    "your-secret-key",
    "your_jwt_secret",
    "your_very_long_jwt_secret",
    "your-global-proxy-key",
    "your_proxy_key",
    "your_admin_password",
    "your_password",
    "changeme",
];

struct Vars<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl Vars<'_> {
    /// A variable that is set but empty counts as unset, as in the original.
    fn get(&self, name: &str) -> Option<String> {
        (self.get)(name).filter(|v| !v.trim().is_empty())
    }

    fn required(&self, name: &'static str, example: &str) -> Result<String, ConfigError> {
        self.get(name).ok_or_else(|| {
            err(
                name,
                format!(
                    "is not set. Set it in the environment or in ./.env, e.g. {name}={example}"
                ),
            )
        })
    }

    fn parse<T: std::str::FromStr>(
        &self,
        name: &'static str,
        default: T,
        what: &str,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| err(name, format!("must be {what}, got '{}'", v.trim()))),
        }
    }

    fn seconds(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        let secs: f64 = self.parse(name, default as f64, "a number of seconds")?;
        if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
            return Err(err(
                name,
                format!("must be a positive number of seconds, got {secs}"),
            ));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    /// Seconds where 0 means "never".
    fn seconds_or_zero(
        &self,
        name: &'static str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match self.get(name).map(|v| v.trim().to_string()) {
            Some(v) if v == "0" => Ok(Duration::ZERO),
            Some(_) => self.seconds(name, 1),
            None => Ok(default),
        }
    }

    fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        match self.get(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(false),
            Some(v) if ["true", "1", "yes", "on"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["false", "0", "no", "off"].contains(&v.as_str()) => Ok(false),
            Some(v) => Err(err(name, format!("must be true or false, got '{v}'"))),
        }
    }
}

impl Config {
    /// Reads the process environment, falling back to `./.env` (the real environment wins).
    pub fn from_env() -> Result<Config, ConfigError> {
        let dotenv = read_dotenv(Path::new(".env"));
        Config::from_source(&|name| {
            std::env::var(name)
                .ok()
                .or_else(|| dotenv.get(name).cloned())
        })
    }

    /// Parses configuration from any lookup function (a map in tests).
    pub fn from_source(get: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let vars = Vars { get };
        let mut warnings = Vec::new();

        let admin_password = vars.required("ADMIN_PASSWORD", "'a-long-random-password'")?;
        let jwt_secret = match (vars.get)("JWT_SECRET") {
            Some(v) if v.is_empty() => {
                return Err(err(
                    "JWT_SECRET",
                    "is empty. Set it to 32 or more random bytes, e.g. JWT_SECRET=$(openssl rand -hex 32)",
                ));
            }
            _ => vars.required("JWT_SECRET", "$(openssl rand -hex 32)")?,
        };
        if jwt_secret.len() < 32 {
            warnings.push(format!(
                "JWT_SECRET is only {} bytes long; use 32 or more random bytes (e.g. `openssl rand -hex 32`), or admin tokens can be forged by brute force",
                jwt_secret.len()
            ));
        }
        let proxy_keys: Vec<Secret> = vars
            .required("GLOBAL_PROXY_KEYS", "key1,key2")?
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(Secret::new)
            .collect();
        if proxy_keys.is_empty() {
            return Err(err(
                "GLOBAL_PROXY_KEYS",
                "holds no key (only commas or spaces). Set one or more, e.g. GLOBAL_PROXY_KEYS=key1,key2",
            ));
        }
        for (name, value) in [
            ("ADMIN_PASSWORD", &admin_password),
            ("JWT_SECRET", &jwt_secret),
        ] {
            if KNOWN_WEAK.contains(&value.as_str()) {
                warnings.push(format!("{name} is a well-known example value; change it"));
            }
        }
        if proxy_keys.iter().any(|k| KNOWN_WEAK.contains(&k.expose())) {
            warnings.push("GLOBAL_PROXY_KEYS holds a well-known example value; change it".into());
        }

        let port: u16 = vars.parse("BACKEND_PORT", 8000, "a port number 1-65535")?;
        if port == 0 {
            return Err(err(
                "BACKEND_PORT",
                "must be a port number 1-65535, got '0'",
            ));
        }
        let public_base_url = match vars.get("PROXY_PUBLIC_BASE_URL") {
            None => format!("http://localhost:{port}"),
            Some(u) => {
                let u = u.trim().trim_end_matches('/').to_string();
                crate::upstream::url::check_http_url(&u)
                    .map_err(|m| err("PROXY_PUBLIC_BASE_URL", m))?;
                u
            }
        };
        let log_level = match vars.get("LOG_LEVEL") {
            None => Level::Info,
            Some(v) => Level::parse(&v).ok_or_else(|| {
                err(
                    "LOG_LEVEL",
                    format!("must be error, warn, info or debug, got '{}'", v.trim()),
                )
            })?,
        };

        let proxy_timeout = vars.seconds("PROXY_TIMEOUT", 300)?;
        Ok(Config {
            admin_username: vars.get("ADMIN_USERNAME").unwrap_or_else(|| "admin".into()),
            admin_password: Secret::new(admin_password),
            jwt_secret: Secret::new(jwt_secret),
            jwt_ttl: vars.seconds("JWT_TTL_SECONDS", 24 * 3600)?,
            proxy_keys,
            bind_address: vars.parse(
                "BIND_ADDRESS",
                IpAddr::from([0, 0, 0, 0]),
                "an IP address",
            )?,
            port,
            worker_threads: match vars.parse("WORKER_THREADS", 0usize, "a number of threads")? {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n.min(1024),
            },
            public_base_url,
            log_level,
            store: StoreConfig::from_source(get)?,
            cache: cache_config(&vars)?,
            proxy_timeout,
            connect_timeout: vars.seconds("CONNECT_TIMEOUT", 10)?,
            upstream_ca_file: vars
                .get("UPSTREAM_CA_FILE")
                .map(|p| PathBuf::from(p.trim())),
            header_read_timeout: vars.seconds("HEADER_READ_TIMEOUT", 30)?,
            shutdown_grace: vars.seconds("SHUTDOWN_GRACE_SECONDS", 10)?,
            retry_body_limit: vars.parse("RETRY_BODY_LIMIT", 1 << 20, "a number of bytes")?,
            metrics_token: vars.get("METRICS_TOKEN").map(Secret::new),
            stats_flush_interval: vars.seconds("STATS_FLUSH_SECONDS", 5)?,
            revalidate_concurrency: vars
                .parse("REVALIDATE_CONCURRENCY", 4usize, "a number of probes")?
                .clamp(1, 64),
            revalidate_tick: vars.seconds("REVALIDATE_TICK_SECONDS", 10)?,
            invalid_key_phrases: match vars.get("INVALID_KEY_PHRASES") {
                Some(list) => list
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect(),
                None => DEFAULT_INVALID_KEY_CODES
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
            },
            upstream_idle_timeout: vars.seconds_or_zero("UPSTREAM_IDLE_TIMEOUT", proxy_timeout)?,
            body_read_timeout: vars.seconds("BODY_READ_TIMEOUT", 30)?,
            max_connections: match vars.parse(
                "MAX_CONNECTIONS",
                0usize,
                "a number of connections",
            )? {
                0 => crate::net::default_max_connections(),
                n => n,
            },
            trusted_proxies: match vars.get("TRUSTED_PROXIES") {
                Some(list) => crate::net::TrustedProxies::parse(&list)
                    .map_err(|m| err("TRUSTED_PROXIES", m))?,
                None => crate::net::TrustedProxies::default(),
            },
            usage_tracking: !matches!(
                vars.get("USAGE_TRACKING")
                    .map(|v| v.trim().to_ascii_lowercase())
                    .as_deref(),
                Some("off" | "false" | "0" | "no")
            ),
            request_log_size: vars.parse("REQUEST_LOG_SIZE", 10_000, "a number of requests")?,
            usage_retention_days: vars.parse("USAGE_RETENTION_DAYS", 90, "a number of days")?,
            warnings,
        })
    }
}

fn database_config(vars: &Vars<'_>) -> Result<DatabaseConfig, ConfigError> {
    if let Some(url) = vars
        .get("DATABASE_URL")
        .filter(|u| u.trim().starts_with("mysql://"))
    {
        return parse_mysql_url(url.trim()).map(DatabaseConfig::Mysql);
    }
    let host = vars
        .get("DB_HOST")
        .or_else(|| vars.get("MYSQL_HOST"))
        .or_else(|| vars.get("MYSQL_DB_HOST"));
    if let Some(host) = host {
        return Ok(DatabaseConfig::Mysql(MysqlConfig {
            host: host.trim().to_string(),
            port: vars.parse("DB_PORT", 3306, "a port number")?,
            user: vars.get("DB_USER").unwrap_or_else(|| "root".into()),
            password: Secret::new(vars.get("DB_PASSWORD").unwrap_or_default()),
            database: vars
                .get("DB_NAME")
                .unwrap_or_else(|| "api_key_rotator".into()),
        }));
    }
    let path = vars
        .get("DATABASE_PATH")
        .unwrap_or_else(|| "./data/api_key_rotator.db".into());
    Ok(DatabaseConfig::Sqlite {
        path: PathBuf::from(path.trim()),
    })
}

/// Parses `mysql://user:pass@host:port/db` and the original's Go DSN form
/// `mysql://user:pass@tcp(host:port)/db?charset=utf8mb4&parseTime=True&loc=Local`.
pub fn parse_mysql_url(url: &str) -> Result<MysqlConfig, ConfigError> {
    let bad = |why: &str| {
        err(
            "DATABASE_URL",
            format!("{why}; expected mysql://user:password@host:3306/database"),
        )
    };
    let rest = url
        .strip_prefix("mysql://")
        .ok_or_else(|| bad("must start with mysql://"))?;
    let (userinfo, hostpart) = rest
        .rsplit_once('@')
        .ok_or_else(|| bad("has no user@host"))?;
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (addr, db) = hostpart
        .split_once('/')
        .ok_or_else(|| bad("has no /database"))?;
    let addr = addr
        .strip_prefix("tcp(")
        .and_then(|a| a.strip_suffix(')'))
        .unwrap_or(addr);
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| bad("has a bad port"))?),
        None => (addr, 3306),
    };
    let database = db.split('?').next().unwrap_or("");
    if host.is_empty() || database.is_empty() || user.is_empty() {
        return Err(bad("needs a user, a host and a database"));
    }
    Ok(MysqlConfig {
        host: host.to_string(),
        port,
        user: percent_decode(user),
        password: Secret::new(percent_decode(password)),
        database: database.to_string(),
    })
}

fn cache_config(vars: &Vars<'_>) -> Result<CacheConfig, ConfigError> {
    if let Some(url) = vars.get("REDIS_URL") {
        let url = url.trim().to_string();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(err(
                "REDIS_URL",
                "must start with redis:// or rediss://, e.g. redis://localhost:6379/0",
            ));
        }
        return Ok(CacheConfig::Redis {
            url: Secret::new(url),
        });
    }
    let Some(host) = vars.get("REDIS_HOST") else {
        return Ok(CacheConfig::Memory);
    };
    let port: u16 = vars.parse("REDIS_PORT", 6379, "a port number")?;
    let db: u32 = vars.parse("REDIS_DB", 0, "a database number")?;
    let auth = vars
        .get("REDIS_PASSWORD")
        .map(|p| format!(":{}@", crate::upstream::url::encode_component(&p)))
        .unwrap_or_default();
    Ok(CacheConfig::Redis {
        url: Secret::new(format!("redis://{auth}{}:{port}/{db}", host.trim())),
    })
}

fn percent_decode(s: &str) -> String {
    crate::upstream::url::percent_decode(s.as_bytes())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// Reads `KEY=VALUE` lines (optional `export `, quotes, `#` comments). Missing file → empty.
pub fn read_dotenv(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .map(|text| parse_dotenv(&text))
        .unwrap_or_default()
}

/// Parses the text of a `.env` file.
pub fn parse_dotenv(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or("").to_string(),
            _ => value.split(" #").next().unwrap_or("").trim().to_string(),
        };
        out.insert(key.trim().to_string(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> HashMap<String, String> {
        [
            ("ADMIN_PASSWORD", "pw-123456"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("GLOBAL_PROXY_KEYS", " k1, k2 ,,"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn parse(map: &HashMap<String, String>) -> Result<Config, ConfigError> {
        Config::from_source(&|k| map.get(k).cloned())
    }

    fn with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut m = base();
        for (k, v) in extra {
            m.insert(k.to_string(), v.to_string());
        }
        parse(&m)
    }

    #[test]
    fn defaults() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.admin_username, "admin");
        assert_eq!(c.port, 8000);
        assert_eq!(c.proxy_keys, vec![Secret::new("k1"), Secret::new("k2")]);
        assert_eq!(c.public_base_url, "http://localhost:8000");
        assert_eq!(c.proxy_timeout, Duration::from_secs(300));
        assert_eq!(c.store.database.kind(), "sqlite");
        assert_eq!(c.cache.kind(), "memory");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn missing_required_variables_are_named_with_an_example() {
        for var in ["ADMIN_PASSWORD", "JWT_SECRET", "GLOBAL_PROXY_KEYS"] {
            let mut m = base();
            m.remove(var);
            let e = parse(&m).unwrap_err();
            assert_eq!(e.var, var);
            assert!(e.to_string().contains(&format!("e.g. {var}=")), "{e}");
        }
    }

    #[test]
    fn empty_jwt_secret_is_refused_and_short_one_warned() {
        assert_eq!(with(&[("JWT_SECRET", "")]).unwrap_err().var, "JWT_SECRET");
        let c = with(&[("JWT_SECRET", "short")]).unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("JWT_SECRET is only 5 bytes"))
        );
    }

    #[test]
    fn only_commas_in_proxy_keys_is_refused() {
        assert_eq!(
            with(&[("GLOBAL_PROXY_KEYS", " , ,")]).unwrap_err().var,
            "GLOBAL_PROXY_KEYS"
        );
    }

    #[test]
    fn bad_values_are_named() {
        for (var, value) in [
            ("BACKEND_PORT", "80a"),
            ("BACKEND_PORT", "70000"),
            ("BACKEND_PORT", "0"),
            ("PROXY_PUBLIC_BASE_URL", "ftp://x"),
            ("PROXY_PUBLIC_BASE_URL", "http://"),
            ("LOG_LEVEL", "loud"),
            ("PROXY_TIMEOUT", "-1"),
            ("RESET_DB_TABLES", "maybe"),
            ("REDIS_URL", "localhost:6379"),
            ("DATABASE_URL", "mysql://nohost"),
        ] {
            let e = with(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var, "{var}={value}: {e}");
        }
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let c = with(&[
            ("REDIS_PASSWORD", "redispw"),
            ("REDIS_HOST", "r"),
            ("METRICS_TOKEN", "mt"),
        ])
        .unwrap();
        let dbg = format!("{c:?}");
        for secret in ["pw-123456", "0123456789abcdef", "k1", "redispw", "\"mt\""] {
            assert!(!dbg.contains(secret), "{secret} leaked in {dbg}");
        }
    }

    #[test]
    fn mysql_detection_and_dsn_forms() {
        let c = with(&[(
            "DATABASE_URL",
            "mysql://u:p%40ss@tcp(db:3307)/rot?charset=utf8mb4&parseTime=True",
        )])
        .unwrap();
        let DatabaseConfig::Mysql(m) = c.store.database else {
            panic!()
        };
        assert_eq!(
            (
                m.host.as_str(),
                m.port,
                m.user.as_str(),
                m.database.as_str()
            ),
            ("db", 3307, "u", "rot")
        );
        assert_eq!(m.password.expose(), "p@ss");
        let m = parse_mysql_url("mysql://root@127.0.0.1/test").unwrap();
        assert_eq!((m.port, m.password.expose()), (3306, ""));
        let c = with(&[
            ("DB_HOST", "mysql"),
            ("DB_USER", "app"),
            ("DB_PASSWORD", "x"),
        ])
        .unwrap();
        assert_eq!(c.store.database.kind(), "mysql");
        // A non-MySQL DATABASE_URL keeps SQLite.
        assert_eq!(
            with(&[("DATABASE_URL", "sqlite://x")])
                .unwrap()
                .store
                .database
                .kind(),
            "sqlite"
        );
    }

    #[test]
    fn redis_detection() {
        let c = with(&[
            ("REDIS_HOST", "cache"),
            ("REDIS_PASSWORD", "p@ss"),
            ("REDIS_DB", "2"),
        ])
        .unwrap();
        let CacheConfig::Redis { url } = c.cache else {
            panic!()
        };
        assert_eq!(url.expose(), "redis://:p%40ss@cache:6379/2");
        assert_eq!(
            with(&[("REDIS_URL", "redis://h:1/0")])
                .unwrap()
                .cache
                .kind(),
            "redis"
        );
    }

    #[test]
    fn empty_values_count_as_unset() {
        let c = with(&[("BACKEND_PORT", ""), ("ADMIN_USERNAME", " ")]).unwrap();
        assert_eq!((c.port, c.admin_username.as_str()), (8000, "admin"));
    }

    #[test]
    fn weak_example_values_are_warned_about() {
        let c = with(&[("ADMIN_PASSWORD", "admin123")]).unwrap();
        assert!(c.warnings.iter().any(|w| w.contains("ADMIN_PASSWORD")));
    }

    #[test]
    fn dotenv_parsing() {
        let m = parse_dotenv(
            "# comment\nexport A=1\nB = \"two words\" \nC='x#y'\nD=plain # trailing\n\nbroken\n",
        );
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "two words");
        assert_eq!(m["C"], "x#y");
        assert_eq!(m["D"], "plain");
        assert_eq!(m.len(), 4);
    }
}
