//! What a service's stored fields mean: its kind, upstream, allowed methods, where the
//! real key goes and when to try another key. Used both to validate admin input and to
//! build the snapshot, so the two can never disagree.

use http::{HeaderName, Method};

use crate::keys::policy::StatusSet;
use crate::store::ServiceFields;
use crate::upstream::url::{self, Upstream};

/// Longest slug.
pub const MAX_SLUG_LEN: usize = 64;
/// Longest name (the original's column is varchar(100) on MySQL).
pub const MAX_NAME_LEN: usize = 100;
/// Longest `api_key_name` (the original's column is varchar(100) on MySQL).
pub const MAX_KEY_NAME_LEN: usize = 100;
/// Most extra attempts a service may ask for.
pub const MAX_RETRIES_LIMIT: i64 = 10;
/// Extra attempts when the service does not say.
pub const DEFAULT_MAX_RETRIES: u32 = 2;

/// An LLM provider's API dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFormat {
    OpenAi,
    Anthropic,
    Gemini,
}

impl ApiFormat {
    /// Parses the stored name; empty means OpenAI-compatible, as in the original.
    pub fn parse(s: Option<&str>) -> Option<ApiFormat> {
        match s.map(str::trim).unwrap_or("") {
            "" | "openai_compatible" => Some(ApiFormat::OpenAi),
            "anthropic_native" => Some(ApiFormat::Anthropic),
            "gemini_native" => Some(ApiFormat::Gemini),
            _ => None,
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiFormat::OpenAi => "openai_compatible",
            ApiFormat::Anthropic => "anthropic_native",
            ApiFormat::Gemini => "gemini_native",
        }
    }

    /// The header this provider expects its key in by default.
    fn default_key_header(self) -> &'static str {
        match self {
            ApiFormat::OpenAi => "authorization",
            ApiFormat::Anthropic => "x-api-key",
            ApiFormat::Gemini => "x-goog-api-key",
        }
    }
}

/// Generic REST or LLM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Generic,
    Llm(ApiFormat),
}

/// Where the real key goes in the upstream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Nowhere (a generic service without location and name).
    None,
    /// A header; `bearer` prefixes `Bearer ` (only ever for `Authorization`).
    Header { name: HeaderName, bearer: bool },
    /// A query parameter, which replaces a client parameter of the same name.
    Query { name: String },
}

/// When to try another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub on: StatusSet,
}

/// The meaning of a service's fields, validated.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub kind: Kind,
    pub upstream: Upstream,
    /// `None` means every method.
    pub methods: Option<Vec<Method>>,
    pub placement: Placement,
    pub retry: RetryPolicy,
    pub probe_path: Option<String>,
    /// How long an answer's body may go without a byte (zero: never cut); `None` for
    /// the configured default.
    pub idle_timeout: Option<std::time::Duration>,
    /// How often invalid keys are probed in the background; `None`: never.
    pub revalidate: Option<std::time::Duration>,
}

/// A field that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

fn field_err(field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

/// `[a-z0-9][a-z0-9_-]{0,63}`.
pub fn valid_slug(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_SLUG_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Checks the name and slug (the fields the snapshot does not need).
pub fn check_identity(f: &ServiceFields) -> Result<(), FieldError> {
    let name = f.name.trim();
    if name.is_empty() {
        return Err(field_err("name", "name is required"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(field_err(
            "name",
            format!("name is longer than {MAX_NAME_LEN} characters"),
        ));
    }
    if !valid_slug(&f.slug) {
        return Err(field_err(
            "slug",
            "slug must be 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit",
        ));
    }
    Ok(())
}

/// Interprets (and so validates) a service's fields. `config_type` must be `GENERIC` or
/// `LLM`, exactly as the original's proxies look them up.
pub fn spec(f: &ServiceFields) -> Result<ServiceSpec, FieldError> {
    let kind = match f.config_type.as_str() {
        "GENERIC" => Kind::Generic,
        "LLM" => Kind::Llm(ApiFormat::parse(f.api_format.as_deref()).ok_or_else(|| {
            field_err(
                "api_format",
                "api_format must be openai_compatible, anthropic_native or gemini_native",
            )
        })?),
        _ => {
            return Err(field_err(
                "config_type",
                "config_type must be GENERIC or LLM",
            ));
        }
    };
    if let Some(fmt) = non_empty(&f.api_format) {
        if ApiFormat::parse(Some(fmt)).is_none() {
            return Err(field_err(
                "api_format",
                "api_format must be openai_compatible, anthropic_native or gemini_native",
            ));
        }
    }
    let (url_field, url) = match kind {
        Kind::Generic => ("target_url", non_empty(&f.target_url)),
        Kind::Llm(_) => ("target_base_url", non_empty(&f.target_base_url)),
    };
    let url = url.ok_or_else(|| {
        field_err(
            url_field,
            match kind {
                Kind::Generic => "a GENERIC service needs target_url (an http:// or https:// URL)",
                Kind::Llm(_) => "an LLM service needs target_base_url (an http:// or https:// URL)",
            },
        )
    })?;
    let upstream =
        Upstream::parse(url).map_err(|m| field_err(url_field, format!("{url_field} {m}")))?;
    for other in ["target_url", "target_base_url"]
        .into_iter()
        .filter(|o| *o != url_field)
    {
        let value = if other == "target_url" {
            &f.target_url
        } else {
            &f.target_base_url
        };
        if let Some(u) = non_empty(value) {
            url::check_http_url(u).map_err(|m| field_err(other, format!("{other} {m}")))?;
        }
    }
    Ok(ServiceSpec {
        kind,
        upstream,
        methods: methods(f.method.as_deref())?,
        placement: placement(kind, f)?,
        retry: retry(kind, f)?,
        probe_path: non_empty(&f.probe_path).map(|p| p.trim_start_matches('/').to_string()),
        idle_timeout: idle_timeout(f.idle_timeout)?,
        revalidate: revalidate(kind, f)?,
    })
}

/// Fewest and most seconds between re-validations (a minute, a week).
pub const REVALIDATE_RANGE: std::ops::RangeInclusive<i64> = 60..=604_800;

fn revalidate(kind: Kind, f: &ServiceFields) -> Result<Option<std::time::Duration>, FieldError> {
    let secs = match f.revalidate_interval {
        None | Some(0) => return Ok(None),
        Some(s) if REVALIDATE_RANGE.contains(&s) => s,
        Some(_) => {
            return Err(field_err(
                "revalidate_interval",
                format!(
                    "revalidate_interval must be 0 (off) or {} to {} seconds",
                    REVALIDATE_RANGE.start(),
                    REVALIDATE_RANGE.end()
                ),
            ));
        }
    };
    if kind == Kind::Generic && non_empty(&f.probe_path).is_none() {
        return Err(field_err(
            "revalidate_interval",
            "revalidate_interval needs probe_path on a generic service: re-validation only calls \
             a path you chose (free of charge), never the one clients use",
        ));
    }
    Ok(Some(std::time::Duration::from_secs(secs as u64)))
}

/// Most seconds an `idle_timeout` may be (a day).
pub const MAX_IDLE_TIMEOUT: i64 = 86_400;

fn idle_timeout(secs: Option<i64>) -> Result<Option<std::time::Duration>, FieldError> {
    match secs {
        None => Ok(None),
        Some(s @ 0..=MAX_IDLE_TIMEOUT) => Ok(Some(std::time::Duration::from_secs(s as u64))),
        Some(_) => Err(field_err(
            "idle_timeout",
            format!("idle_timeout must be 0 (never) to {MAX_IDLE_TIMEOUT} seconds"),
        )),
    }
}

fn methods(m: Option<&str>) -> Result<Option<Vec<Method>>, FieldError> {
    let m = m.map(str::trim).unwrap_or("");
    if m.is_empty() || m.eq_ignore_ascii_case("ANY") {
        return Ok(None);
    }
    m.split(',')
        .map(|part| {
            let part = part.trim().to_ascii_uppercase();
            Method::from_bytes(part.as_bytes())
                .ok()
                .filter(|_| !part.is_empty() && part.bytes().all(|b| b.is_ascii_uppercase()))
                .ok_or_else(|| {
                    field_err(
                        "method",
                        format!("method '{part}' is not an HTTP method (or use ANY)"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn placement(kind: Kind, f: &ServiceFields) -> Result<Placement, FieldError> {
    let location = non_empty(&f.api_key_location).map(str::to_ascii_lowercase);
    if let Some(l) = &location {
        if l != "header" && l != "query" {
            return Err(field_err(
                "api_key_location",
                "api_key_location must be header or query",
            ));
        }
    }
    let name = non_empty(&f.api_key_name);
    if let Some(n) = name {
        if n.len() > MAX_KEY_NAME_LEN {
            return Err(field_err(
                "api_key_name",
                format!("api_key_name is longer than {MAX_KEY_NAME_LEN} characters"),
            ));
        }
        if HeaderName::from_bytes(n.as_bytes()).is_err() || n.contains(['=', '&', '?', '#']) {
            return Err(field_err(
                "api_key_name",
                format!("api_key_name '{n}' is not a valid header or parameter name"),
            ));
        }
    }
    let in_header = match kind {
        Kind::Generic => location.as_deref() == Some("header") && name.is_some(),
        Kind::Llm(_) => location.as_deref() != Some("query"),
    };
    if let Some(n) = name.filter(|n| in_header && framing_or_routing(n)) {
        return Err(field_err(
            "api_key_name",
            format!(
                "api_key_name '{n}' is a framing, routing or hop-by-hop header; the key cannot go there"
            ),
        ));
    }
    match kind {
        // The original injects for a generic service only when both are set.
        Kind::Generic => Ok(match (location.as_deref(), name) {
            (Some("query"), Some(n)) => Placement::Query {
                name: n.to_string(),
            },
            (Some(_), Some(n)) => Placement::Header {
                name: HeaderName::from_bytes(n.as_bytes()).expect("checked above"),
                bearer: false,
            },
            _ => Placement::None,
        }),
        Kind::Llm(fmt) => {
            let name = name.unwrap_or(fmt.default_key_header());
            if location.as_deref() == Some("query") {
                return Ok(Placement::Query {
                    name: name.to_string(),
                });
            }
            let header = HeaderName::from_bytes(name.as_bytes()).expect("checked above");
            // Only an OpenAI-style Authorization header takes "Bearer " (not Azure's api-key).
            let bearer = fmt == ApiFormat::OpenAi && header == http::header::AUTHORIZATION;
            Ok(Placement::Header {
                name: header,
                bearer,
            })
        }
    }
}

/// Headers the proxy or the connection owns: a key written there would break the
/// request's framing, its routing, or what the upstream learns about the client.
fn framing_or_routing(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "upgrade"
            | "expect"
            | "forwarded"
            | "x-real-ip"
            | "x-proxy-key"
    ) || n.starts_with("proxy-")
        || n.starts_with("x-forwarded-")
}

fn retry(kind: Kind, f: &ServiceFields) -> Result<RetryPolicy, FieldError> {
    let max_retries = match f.max_retries {
        None => DEFAULT_MAX_RETRIES,
        Some(n @ 0..=MAX_RETRIES_LIMIT) => n as u32,
        Some(_) => {
            return Err(field_err(
                "max_retries",
                format!("max_retries must be 0-{MAX_RETRIES_LIMIT}"),
            ));
        }
    };
    let on = match non_empty(&f.retry_on) {
        None => StatusSet::default_for(matches!(kind, Kind::Llm(_))),
        Some(list) => {
            StatusSet::parse(list).map_err(|m| field_err("retry_on", format!("retry_on: {m}")))?
        }
    };
    Ok(RetryPolicy { max_retries, on })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(url: &str) -> ServiceFields {
        ServiceFields {
            name: "W".into(),
            slug: "w".into(),
            config_type: "GENERIC".into(),
            is_active: true,
            target_url: Some(url.into()),
            ..Default::default()
        }
    }

    fn llm(fmt: &str) -> ServiceFields {
        ServiceFields {
            config_type: "LLM".into(),
            target_url: None,
            target_base_url: Some("https://api.openai.com/v1".into()),
            api_format: Some(fmt.into()),
            ..generic("")
        }
    }

    #[test]
    fn slugs() {
        for ok in ["a", "0", "open-ai_2", &"a".repeat(64)] {
            assert!(valid_slug(ok), "{ok}");
        }
        for bad in ["", "-a", "_a", "A", "a b", "a/b", "é", &"a".repeat(65)] {
            assert!(!valid_slug(bad), "{bad}");
        }
    }

    #[test]
    fn generic_placement_needs_location_and_name() {
        let mut f = generic("https://api.weatherstack.com");
        assert_eq!(spec(&f).unwrap().placement, Placement::None);
        f.api_key_location = Some("Query".into());
        f.api_key_name = Some("access_key".into());
        assert_eq!(
            spec(&f).unwrap().placement,
            Placement::Query {
                name: "access_key".into()
            }
        );
        f.api_key_location = Some("header".into());
        f.api_key_name = Some("X-Api-Key".into());
        assert_eq!(
            spec(&f).unwrap().placement,
            Placement::Header {
                name: HeaderName::from_static("x-api-key"),
                bearer: false
            }
        );
    }

    #[test]
    fn llm_default_and_overridden_placement() {
        let p = |f: &ServiceFields| spec(f).unwrap().placement;
        assert_eq!(
            p(&llm("openai_compatible")),
            Placement::Header {
                name: http::header::AUTHORIZATION,
                bearer: true
            }
        );
        assert_eq!(
            p(&llm("anthropic_native")),
            Placement::Header {
                name: HeaderName::from_static("x-api-key"),
                bearer: false
            }
        );
        let mut azure = llm("openai_compatible");
        azure.api_key_name = Some("api-key".into());
        azure.api_key_location = Some("header".into());
        assert_eq!(
            p(&azure),
            Placement::Header {
                name: HeaderName::from_static("api-key"),
                bearer: false
            }
        );
        let mut gq = llm("gemini_native");
        gq.api_key_location = Some("query".into());
        gq.api_key_name = Some("key".into());
        assert_eq!(p(&gq), Placement::Query { name: "key".into() });
        let mut gq2 = llm("gemini_native");
        gq2.api_key_location = Some("query".into());
        assert_eq!(
            p(&gq2),
            Placement::Query {
                name: "x-goog-api-key".into()
            }
        );
    }

    #[test]
    fn validation_names_the_field() {
        let e = |f: ServiceFields| spec(&f).unwrap_err().field;
        assert_eq!(e(generic("")), "target_url");
        assert_eq!(e(generic("ftp://x")), "target_url");
        assert_eq!(
            e(ServiceFields {
                config_type: "llm".into(),
                ..generic("http://x")
            }),
            "config_type"
        );
        assert_eq!(e(llm("openai")), "api_format");
        assert_eq!(
            e(ServiceFields {
                target_base_url: None,
                ..llm("gemini_native")
            }),
            "target_base_url"
        );
        assert_eq!(
            e(ServiceFields {
                api_key_location: Some("body".into()),
                ..generic("http://x")
            }),
            "api_key_location"
        );
        assert_eq!(
            e(ServiceFields {
                method: Some("G3T".into()),
                ..generic("http://x")
            }),
            "method"
        );
        assert_eq!(
            e(ServiceFields {
                max_retries: Some(11),
                ..generic("http://x")
            }),
            "max_retries"
        );
        assert_eq!(
            e(ServiceFields {
                retry_on: Some("42".into()),
                ..generic("http://x")
            }),
            "retry_on"
        );
        assert_eq!(
            e(ServiceFields {
                api_key_name: Some("a b".into()),
                ..generic("http://x")
            }),
            "api_key_name"
        );
        assert_eq!(
            e(ServiceFields {
                api_key_name: Some("x".repeat(101)),
                ..generic("http://x")
            }),
            "api_key_name"
        );
    }

    #[test]
    fn the_key_cannot_go_in_a_framing_or_routing_header() {
        for name in [
            "Host",
            "Content-Length",
            "transfer-encoding",
            "Connection",
            "TE",
            "Upgrade",
            "Keep-Alive",
            "Trailer",
            "Proxy-Authorization",
            "proxy-connection",
            "X-Forwarded-For",
            "x-forwarded-host",
            "Forwarded",
        ] {
            let header = ServiceFields {
                api_key_location: Some("header".into()),
                api_key_name: Some(name.into()),
                ..generic("http://x")
            };
            let err = spec(&header).unwrap_err();
            assert_eq!(err.field, "api_key_name", "{name}");
            assert!(err.message.contains("framing"), "{}", err.message);
            let llm_header = ServiceFields {
                api_key_name: Some(name.into()),
                ..llm("openai_compatible")
            };
            assert!(spec(&llm_header).is_err(), "LLM {name}");
            // As a query parameter, any name is a name.
            let query = ServiceFields {
                api_key_location: Some("query".into()),
                ..header
            };
            assert!(spec(&query).is_ok(), "query {name}");
        }
        for fine in ["X-Api-Key", "Authorization", "api-key", "x-goog-api-key"] {
            let f = ServiceFields {
                api_key_location: Some("header".into()),
                api_key_name: Some(fine.into()),
                ..generic("http://x")
            };
            assert!(spec(&f).is_ok(), "{fine}");
        }
    }

    #[test]
    fn methods_any_and_lists() {
        let m = |s: &str| {
            spec(&ServiceFields {
                method: Some(s.into()),
                ..generic("http://x")
            })
            .unwrap()
            .methods
        };
        assert_eq!(m(""), None);
        assert_eq!(m("any"), None);
        assert_eq!(m("get, post"), Some(vec![Method::GET, Method::POST]));
    }
}
