//! Usage insight: who used what, and how it went. Every proxied request that reached a
//! service is recorded when its answer ends, off the request path:
//!
//! - into **hourly rollups** per service × key × model × client key (requests, outcomes by
//!   class, tokens, latency and time-to-first-byte sums), kept per shard and written with
//!   the key statistics ([`crate::stats`]);
//! - into the **request log**, the last `REQUEST_LOG_SIZE` requests (never a body);
//! - tokens into `/metrics`.
//!
//! Tokens are read from LLM answers as they stream through ([`tap`], [`scan`]), never
//! buffered. `USAGE_TRACKING=off` turns all of it off.

pub mod fields;
pub mod inline;
pub mod record;
mod rollups;
pub mod scan;
pub mod tap;

pub use record::{Recorder, Text, Trace};
pub use tap::Tokens;

pub use crate::store::usage::{Bucket, Counts, LogEntry, RequestQuery, Rollup, UsageQuery};

/// How an answer went, for the rollups' failure classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 1xx–3xx.
    Success,
    /// 4xx other than 429: the client's request.
    ClientError,
    /// 429.
    RateLimited,
    /// 5xx from the upstream.
    UpstreamError,
    /// An error the proxy answered itself (502 unreachable, 503 no key, 504 timeout), or an
    /// answer cut mid-way.
    ProxyError,
}

impl Outcome {
    /// The class of an answer with `status`, `proxy_made` when the proxy answered itself.
    pub fn of(status: u16, proxy_made: bool) -> Outcome {
        match status {
            _ if proxy_made && status >= 400 => Outcome::ProxyError,
            0..=399 => Outcome::Success,
            429 => Outcome::RateLimited,
            400..=499 => Outcome::ClientError,
            _ => Outcome::UpstreamError,
        }
    }
}
