//! DSNs (`src/config.rs`): `DATABASE_URL`, `REDIS_URL` and the rest of the configuration
//! from any text: read or refused with a message, never a panic, never the password in it.
#![no_main]

use api_key_rotator::config::{Config, parse_mysql_url};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let _ = parse_mysql_url(&text);
    for name in [
        "DATABASE_URL",
        "REDIS_URL",
        "DATABASE_PATH",
        "GLOBAL_PROXY_KEYS",
        "TRUSTED_PROXIES",
    ] {
        let get = |k: &str| match k {
            "ADMIN_PASSWORD" => Some("fuzz-admin-password".to_string()),
            "JWT_SECRET" => Some("fuzz-jwt-secret-0123456789abcdef0123".to_string()),
            "GLOBAL_PROXY_KEYS" if name != k => Some("pk".to_string()),
            k if k == name => Some(text.clone()),
            _ => None,
        };
        if let Err(e) = Config::from_source(&get) {
            // A DSN's password never shows in an error (other settings are echoed).
            let message = e.to_string();
            if matches!(name, "DATABASE_URL" | "REDIS_URL") && text.contains(":s3cr3t@") {
                assert!(
                    !message.contains("s3cr3t"),
                    "a password in an error: {message}"
                );
            }
        }
    }
});
