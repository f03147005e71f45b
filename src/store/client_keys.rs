//! Client access keys in the store: one row per key, never its secret (only the SHA-256
//! of it, as hex, and a short prefix to show). The SQL is shared by SQLite and MySQL.

use serde::{Deserialize, Serialize};

use super::usage::{Arg, Dialect};

/// What an admin sets on a client key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClientKeyFields {
    pub name: String,
    pub note: String,
    pub is_active: bool,
    /// Unix seconds; `None`: never.
    pub expires_at: Option<i64>,
    /// Service slugs it may call; empty: all.
    pub services: Vec<String>,
    /// Models it may ask for (exact, or `prefix*`); empty: all.
    pub models: Vec<String>,
    /// Requests per minute, per day, tokens per day, open requests at once; `None`: no limit.
    pub rpm: Option<i64>,
    pub rpd: Option<i64>,
    pub tpd: Option<i64>,
    pub max_streams: Option<i64>,
}

/// A client key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKeyRecord {
    pub id: i64,
    pub fields: ClientKeyFields,
    /// The secret's first characters, for people to tell keys apart.
    pub prefix: String,
    /// Lower-case hex SHA-256 of the secret.
    pub hash: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// The table, created if missing.
pub fn create_table(d: Dialect) -> String {
    let (id, text, suffix) = match d {
        Dialect::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT", ""),
        Dialect::Mysql => (
            "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
            "TEXT",
            " DEFAULT CHARSET=utf8mb4",
        ),
    };
    format!(
        "CREATE TABLE IF NOT EXISTS client_keys (id {id}, name VARCHAR(255) NOT NULL, \
         note {text} NOT NULL, prefix VARCHAR(32) NOT NULL, \
         secret_hash CHAR(64) NOT NULL UNIQUE, is_active INT NOT NULL, expires_at BIGINT NULL, \
         services {text} NOT NULL, models {text} NOT NULL, rpm BIGINT NULL, rpd BIGINT NULL, \
         tpd BIGINT NULL, max_streams BIGINT NULL, created_at BIGINT NOT NULL, \
         last_used_at BIGINT NULL){suffix}"
    )
}

/// Every key, in id order. Columns in the order [`record`] reads them.
pub const SELECT_ALL: &str = "SELECT id, name, note, prefix, secret_hash, is_active, \
    expires_at, services, models, rpm, rpd, tpd, max_streams, created_at, last_used_at \
    FROM client_keys ORDER BY id";

pub const INSERT: &str = "INSERT INTO client_keys (name, note, is_active, expires_at, \
    services, models, rpm, rpd, tpd, max_streams, prefix, secret_hash, created_at) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

pub const UPDATE: &str = "UPDATE client_keys SET name = ?, note = ?, is_active = ?, \
    expires_at = ?, services = ?, models = ?, rpm = ?, rpd = ?, tpd = ?, max_streams = ? \
    WHERE id = ?";

pub const EXISTS: &str = "SELECT COUNT(*) FROM client_keys WHERE id = ?";
pub const DELETE: &str = "DELETE FROM client_keys WHERE id = ?";

/// Sets when a key was last used, never moving it back (instances flush at their own
/// pace): the time twice, then the id.
pub const TOUCH: &str = "UPDATE client_keys SET last_used_at = CASE \
    WHEN last_used_at IS NULL OR last_used_at < ? THEN ? ELSE last_used_at END WHERE id = ?";

fn opt(v: Option<i64>) -> Arg {
    v.map_or(Arg::Null, Arg::Int)
}

fn list(v: &[String]) -> Arg {
    Arg::Text(serde_json::to_string(v).expect("a list of strings serialises"))
}

/// The arguments of [`UPDATE`] before the id, and the first ten of [`INSERT`].
fn field_args(f: &ClientKeyFields) -> Vec<Arg> {
    vec![
        Arg::Text(f.name.clone()),
        Arg::Text(f.note.clone()),
        Arg::Int(i64::from(f.is_active)),
        opt(f.expires_at),
        list(&f.services),
        list(&f.models),
        opt(f.rpm),
        opt(f.rpd),
        opt(f.tpd),
        opt(f.max_streams),
    ]
}

/// The arguments of [`INSERT`].
pub fn insert_args(f: &ClientKeyFields, prefix: &str, hash: &str, created_at: i64) -> Vec<Arg> {
    let mut args = field_args(f);
    args.extend([
        Arg::Text(prefix.into()),
        Arg::Text(hash.into()),
        Arg::Int(created_at),
    ]);
    args
}

/// The arguments of [`UPDATE`].
pub fn update_args(id: i64, f: &ClientKeyFields) -> Vec<Arg> {
    let mut args = field_args(f);
    args.push(Arg::Int(id));
    args
}

/// The arguments of [`TOUCH`].
pub fn touch_args(id: i64, at_ms: i64) -> Vec<Arg> {
    vec![Arg::Int(at_ms), Arg::Int(at_ms), Arg::Int(id)]
}

/// A row of [`SELECT_ALL`], read through the backend's column getters.
pub fn record(
    int: impl Fn(usize) -> Option<i64>,
    text: impl Fn(usize) -> Option<String>,
) -> ClientKeyRecord {
    let strings = |i| {
        text(i)
            .and_then(|t| serde_json::from_str::<Vec<String>>(&t).ok())
            .unwrap_or_default()
    };
    ClientKeyRecord {
        id: int(0).unwrap_or(0),
        fields: ClientKeyFields {
            name: text(1).unwrap_or_default(),
            note: text(2).unwrap_or_default(),
            is_active: int(5).unwrap_or(0) != 0,
            expires_at: int(6),
            services: strings(7),
            models: strings(8),
            rpm: int(9),
            rpd: int(10),
            tpd: int(11),
            max_streams: int(12),
        },
        prefix: text(3).unwrap_or_default(),
        hash: text(4).unwrap_or_default(),
        created_at: int(13).unwrap_or(0),
        last_used_at: int(14),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_and_their_arguments_agree() {
        let f = ClientKeyFields {
            name: "app".into(),
            services: vec!["openai".into()],
            rpm: Some(5),
            ..ClientKeyFields::default()
        };
        assert_eq!(
            INSERT.matches('?').count(),
            insert_args(&f, "akr-ab", "00", 1).len()
        );
        assert_eq!(UPDATE.matches('?').count(), update_args(1, &f).len());
        assert_eq!(TOUCH.matches('?').count(), touch_args(1, 2).len());
        assert_eq!(field_args(&f)[4], Arg::Text(r#"["openai"]"#.into()));
        assert_eq!(field_args(&f)[7], Arg::Null);
        for d in [Dialect::Sqlite, Dialect::Mysql] {
            assert!(create_table(d).contains("secret_hash CHAR(64) NOT NULL UNIQUE"));
        }
    }
}
