//! Usage insight as stored: the records (hourly rollups, request log entries), the
//! queries the admin asks, and their SQL, the same text for SQLite and MySQL (the two
//! tables, the rollup upsert, the usage and request-log queries). The backends bind
//! [`Arg`]s and turn rows into [`Bucket`]s and [`LogEntry`]s with the helpers here.

use serde::{Deserialize, Serialize};

/// One hour of one service × key × model × client key. Counts are sums.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollup {
    /// Unix seconds at the start of the hour.
    pub hour: i64,
    pub service_id: i64,
    /// 0 when no key was used (the proxy answered itself).
    pub key_id: i64,
    /// Empty when unknown (and for generic services).
    pub model: String,
    /// 0 when the request came with a global proxy key.
    pub client_key_id: i64,
    pub counts: Counts,
}

/// Declares [`Counts`], its columns ([`COUNT_COLUMNS`]) and its array form from one list
/// of fields, in the store's column order.
macro_rules! counts {
    ($($(#[$doc:meta])* $field:ident),* $(,)?) => {
        /// What a rollup sums.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Counts {
            $($(#[$doc])* pub $field: i64,)*
        }

        /// The counters of a rollup, as columns, in [`Counts::to_array`] order.
        pub const COUNT_COLUMNS: [&str; 12] = [$(stringify!($field)),*];

        impl Counts {
            /// The counts in the order of the store's columns.
            pub fn to_array(&self) -> [i64; 12] {
                [$(self.$field),*]
            }

            /// The counts from the store's columns.
            pub fn from_array(a: [i64; 12]) -> Counts {
                let [$($field),*] = a;
                Counts { $($field),* }
            }

            /// Adds `other` to these counts.
            pub fn add(&mut self, other: &Counts) {
                $(self.$field += other.$field;)*
            }
        }
    };
}

counts! {
    requests,
    successes,
    failures_client,
    failures_rate_limited,
    failures_upstream,
    failures_proxy,
    /// Successful LLM answers whose usage could not be read.
    usage_unknown,
    tokens_in,
    tokens_out,
    tokens_cached,
    latency_ms_sum,
    ttfb_ms_sum,
}

impl Counts {
    /// Failures of every class.
    pub fn failures(&self) -> i64 {
        self.failures_client
            + self.failures_rate_limited
            + self.failures_upstream
            + self.failures_proxy
    }
}

/// One request of the request log, as stored and as the admin API shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Its place in the log (larger is newer); 0 before it is stored.
    #[serde(default)]
    pub id: i64,
    /// Unix ms when the request came.
    pub at: i64,
    pub request_id: String,
    pub service_id: i64,
    pub service: String,
    pub method: String,
    /// Without the query string.
    pub path: String,
    pub status: u16,
    /// `[key id, status]` of each attempt (status 0: no answer).
    pub attempts: Vec<(i64, u16)>,
    /// The key of the last attempt (0: none).
    pub key_id: i64,
    pub key_mask: String,
    pub model: Option<String>,
    /// `None` when the usage is unknown.
    pub tokens_in: Option<i64>,
    pub tokens_out: Option<i64>,
    pub tokens_cached: Option<i64>,
    pub latency_ms: Option<i64>,
    pub ttfb_ms: Option<i64>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub client_ip: String,
    pub error: Option<String>,
    #[serde(default)]
    pub client_key_id: i64,
}

/// What `GET /admin/usage` asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageQuery {
    pub service_id: Option<i64>,
    pub key_id: Option<i64>,
    pub model: Option<String>,
    pub client_key_id: Option<i64>,
    /// Unix seconds, inclusive.
    pub from: i64,
    /// Unix seconds, exclusive.
    pub to: i64,
    /// 3600 or 86400.
    pub bucket: i64,
    /// Which of `service`, `key`, `model`, `client_key` the buckets are split by.
    pub group: Vec<&'static str>,
}

/// One bucket of a usage query.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Bucket {
    /// Unix seconds at the bucket's start.
    pub start: i64,
    pub service_id: Option<i64>,
    pub key_id: Option<i64>,
    pub model: Option<String>,
    pub client_key_id: Option<i64>,
    pub counts: Counts,
}

/// What `GET /admin/requests` asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestQuery {
    /// Entries older than this id (the previous page's cursor).
    pub before: Option<i64>,
    pub limit: usize,
    /// 2, 4 or 5: the status class.
    pub status_class: Option<u16>,
    pub service_id: Option<i64>,
    pub key_id: Option<i64>,
    pub request_id: Option<String>,
    pub client_key_id: Option<i64>,
}

/// Which database the text is for (they differ in types and in the upsert).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Mysql,
}

/// A value to bind.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Int(i64),
    Text(String),
    Null,
}

/// The two tables, created if missing (the original's tables are not touched).
pub fn create_tables(d: Dialect) -> Vec<String> {
    let (id, text, model) = match d {
        Dialect::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT", "TEXT"),
        Dialect::Mysql => (
            "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
            "MEDIUMTEXT",
            "VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        ),
    };
    let counts: String = COUNT_COLUMNS
        .iter()
        .map(|c| format!("{c} BIGINT NOT NULL DEFAULT 0, "))
        .collect();
    let suffix = match d {
        Dialect::Sqlite => "",
        Dialect::Mysql => " DEFAULT CHARSET=utf8mb4",
    };
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS usage_hourly (hour BIGINT NOT NULL, \
             service_id BIGINT NOT NULL, key_id BIGINT NOT NULL, model {model} NOT NULL, \
             client_key_id BIGINT NOT NULL, {counts}\
             PRIMARY KEY (hour, service_id, key_id, model, client_key_id)){suffix}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS request_log (id {id}, at BIGINT NOT NULL, \
             request_id VARCHAR(128) NOT NULL, service_id BIGINT NOT NULL, \
             key_id BIGINT NOT NULL, client_key_id BIGINT NOT NULL, status INT NOT NULL, \
             entry {text} NOT NULL){suffix}"
        ),
    ]
}

/// Indexes of the two tables: `(name, table, columns)`.
pub const INDEXES: &[(&str, &str, &str)] = &[
    ("idx_request_log_request_id", "request_log", "request_id"),
    ("idx_request_log_service", "request_log", "service_id, id"),
    ("idx_request_log_key", "request_log", "key_id, id"),
];

/// Adds a rollup to its row (13 + 12 placeholders: hour, service, key, model, client
/// key, then the counts).
pub fn upsert_rollup(d: Dialect) -> String {
    let cols = COUNT_COLUMNS.join(", ");
    let marks = vec!["?"; 5 + COUNT_COLUMNS.len()].join(", ");
    let update: Vec<String> = COUNT_COLUMNS
        .iter()
        .map(|c| match d {
            Dialect::Sqlite => format!("{c} = {c} + excluded.{c}"),
            Dialect::Mysql => format!("{c} = {c} + VALUES({c})"),
        })
        .collect();
    let conflict = match d {
        Dialect::Sqlite => {
            "ON CONFLICT (hour, service_id, key_id, model, client_key_id) DO UPDATE SET"
        }
        Dialect::Mysql => "ON DUPLICATE KEY UPDATE",
    };
    format!(
        "INSERT INTO usage_hourly (hour, service_id, key_id, model, client_key_id, {cols}) \
         VALUES ({marks}) {conflict} {}",
        update.join(", ")
    )
}

/// Appends an entry: at, request_id, service_id, key_id, client_key_id, status, entry.
pub const INSERT_ENTRY: &str = "INSERT INTO request_log \
    (at, request_id, service_id, key_id, client_key_id, status, entry) VALUES (?, ?, ?, ?, ?, ?, ?)";

/// The arguments of [`INSERT_ENTRY`] for `e`.
pub fn entry_args(e: &LogEntry) -> Vec<Arg> {
    vec![
        Arg::Int(e.at),
        Arg::Text(e.request_id.clone()),
        Arg::Int(e.service_id),
        Arg::Int(e.key_id),
        Arg::Int(e.client_key_id),
        Arg::Int(i64::from(e.status)),
        Arg::Text(serde_json::to_string(e).expect("entries serialise")),
    ]
}

/// The arguments of [`upsert_rollup`] for `r`.
pub fn rollup_args(r: &Rollup) -> Vec<Arg> {
    let mut args = vec![
        Arg::Int(r.hour),
        Arg::Int(r.service_id),
        Arg::Int(r.key_id),
        Arg::Text(r.model.clone()),
        Arg::Int(r.client_key_id),
    ];
    args.extend(r.counts.to_array().into_iter().map(Arg::Int));
    args
}

/// The largest id, to keep the newest `n` entries: delete ids at or below `max - n`.
pub const MAX_ENTRY_ID: &str = "SELECT COALESCE(MAX(id), 0) FROM request_log";
pub const TRIM_LOG: &str = "DELETE FROM request_log WHERE id <= ?";
pub const TRIM_ROLLUPS: &str = "DELETE FROM usage_hourly WHERE hour < ?";

/// `GET /admin/usage`: buckets of `q.bucket` seconds, split by `q.group`. Rows: start,
/// service_id, key_id, model, client_key_id (NULL when not grouped by), then the sums.
pub fn usage_query(q: &UsageQuery, d: Dialect) -> (String, Vec<Arg>) {
    let mut args = vec![Arg::Int(q.from), Arg::Int(q.to)];
    // A number we chose (an hour or a day), written in the text: some MySQL modes refuse
    // a placeholder in a grouped expression.
    let bucket = if q.bucket == 86_400 { 86_400 } else { 3_600 };
    let mut wheres = vec!["hour >= ?".to_string(), "hour < ?".to_string()];
    let mut filter = |col: &str, arg: Option<Arg>| {
        if let Some(a) = arg {
            wheres.push(format!("{col} = ?"));
            args.push(a);
        }
    };
    filter("service_id", q.service_id.map(Arg::Int));
    filter("key_id", q.key_id.map(Arg::Int));
    filter("model", q.model.clone().map(Arg::Text));
    filter("client_key_id", q.client_key_id.map(Arg::Int));
    let mut group = vec!["start".to_string()];
    let split: Vec<String> = ["service_id", "key_id", "model", "client_key_id"]
        .iter()
        .map(|c| {
            if q.group.contains(&group_name(c)) {
                group.push(c.to_string());
                c.to_string()
            } else {
                format!("NULL AS {c}")
            }
        })
        .collect();
    let sums: Vec<String> = COUNT_COLUMNS
        .iter()
        .map(|c| match d {
            Dialect::Sqlite => format!("SUM({c})"),
            Dialect::Mysql => format!("CAST(SUM({c}) AS SIGNED)"),
        })
        .collect();
    let sql = format!(
        "SELECT hour - (hour % {bucket}) AS start, {}, {} FROM usage_hourly WHERE {} \
         GROUP BY {} ORDER BY {} LIMIT 100000",
        split.join(", "),
        sums.join(", "),
        wheres.join(" AND "),
        group.join(", "),
        group.join(", ")
    );
    (sql, args)
}

/// The `group` word of a column.
fn group_name(column: &str) -> &'static str {
    match column {
        "service_id" => "service",
        "key_id" => "key",
        "model" => "model",
        _ => "client_key",
    }
}

/// A row of [`usage_query`].
pub fn bucket(
    start: i64,
    service_id: Option<i64>,
    key_id: Option<i64>,
    model: Option<String>,
    client_key_id: Option<i64>,
    sums: [i64; 12],
) -> Bucket {
    Bucket {
        start,
        service_id,
        key_id,
        model,
        client_key_id,
        counts: Counts::from_array(sums),
    }
}

/// `GET /admin/requests`: the newest entries first. Rows: id, entry.
pub fn requests_query(q: &RequestQuery) -> (String, Vec<Arg>) {
    let mut args = Vec::new();
    let mut wheres = vec!["1 = 1".to_string()];
    if let Some(before) = q.before {
        wheres.push("id < ?".into());
        args.push(Arg::Int(before));
    }
    if let Some(class) = q.status_class {
        wheres.push("status >= ? AND status < ?".into());
        args.push(Arg::Int(i64::from(class) * 100));
        args.push(Arg::Int(i64::from(class) * 100 + 100));
    }
    for (col, v) in [
        ("service_id", q.service_id),
        ("key_id", q.key_id),
        ("client_key_id", q.client_key_id),
    ] {
        if let Some(v) = v {
            wheres.push(format!("{col} = ?"));
            args.push(Arg::Int(v));
        }
    }
    if let Some(id) = &q.request_id {
        wheres.push("request_id = ?".into());
        args.push(Arg::Text(id.clone()));
    }
    args.push(Arg::Int(q.limit as i64));
    let sql = format!(
        "SELECT id, entry FROM request_log WHERE {} ORDER BY id DESC LIMIT ?",
        wheres.join(" AND ")
    );
    (sql, args)
}

/// A row of [`requests_query`]; a row that does not parse (never written by us) is
/// skipped.
pub fn log_entry(id: i64, entry: &str) -> Option<LogEntry> {
    let mut e: LogEntry = serde_json::from_str(entry).ok()?;
    e.id = id;
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upsert_names_every_count_and_as_many_placeholders() {
        for d in [Dialect::Sqlite, Dialect::Mysql] {
            let sql = upsert_rollup(d);
            assert_eq!(sql.matches('?').count(), 17, "{sql}");
            for c in COUNT_COLUMNS {
                assert!(sql.contains(&format!("{c} = {c} + ")), "{c}: {sql}");
            }
        }
    }

    #[test]
    fn usage_queries_bind_what_they_filter_on() {
        let q = UsageQuery {
            service_id: Some(3),
            model: Some("gpt".into()),
            from: 10,
            to: 20,
            bucket: 3600,
            group: vec!["key"],
            ..UsageQuery::default()
        };
        let (sql, args) = usage_query(&q, Dialect::Sqlite);
        assert_eq!(sql.matches('?').count(), args.len());
        assert_eq!(
            args,
            vec![
                Arg::Int(10),
                Arg::Int(20),
                Arg::Int(3),
                Arg::Text("gpt".into())
            ]
        );
        assert!(sql.contains("GROUP BY start, key_id"), "{sql}");
        assert!(sql.contains("hour % 3600"), "{sql}");
        assert!(sql.contains("NULL AS service_id"), "{sql}");
    }

    #[test]
    fn request_queries_bind_what_they_filter_on() {
        let q = RequestQuery {
            before: Some(50),
            limit: 20,
            status_class: Some(5),
            request_id: Some("abc".into()),
            ..RequestQuery::default()
        };
        let (sql, args) = requests_query(&q);
        assert_eq!(sql.matches('?').count(), args.len());
        assert_eq!(args[1], Arg::Int(500));
        assert_eq!(args.last(), Some(&Arg::Int(20)));
    }
}
