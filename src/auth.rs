//! Credentials: proxy keys (constant-time), admin tokens (HS256 JWT) and the login
//! throttle.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::Secret;

fn digest(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
}

/// Compares two digests without an early exit.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Compares two secrets in time that does not depend on where they differ (both are
/// hashed first, so not even on their lengths). For rare checks (the admin login).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    digests_equal(&digest(a.as_bytes()), &digest(b.as_bytes()))
}

/// Whether `candidate` equals `secret`, looking at every byte of `secret` whatever the
/// candidate is: the time depends only on the (fixed) length of the secret, never on the
/// candidate's bytes or length, nor on where they differ.
pub fn equals_secret(secret: &[u8], candidate: &[u8]) -> bool {
    let mut diff = (secret.len() ^ candidate.len()) as u64;
    for (i, s) in secret.iter().enumerate() {
        diff |= u64::from(s ^ candidate.get(i).copied().unwrap_or(!*s));
    }
    std::hint::black_box(diff) == 0
}

/// The `GLOBAL_PROXY_KEYS`. Checked on every proxied request, so without hashing: a
/// constant-time comparison against each key costs tens of instructions, not thousands
/// (docs/BENCHMARKS.md).
pub struct ProxyKeys(Vec<Box<[u8]>>);

impl std::fmt::Debug for ProxyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProxyKeys({} keys, ***)", self.0.len())
    }
}

impl ProxyKeys {
    /// Keeps the configured keys.
    pub fn new(keys: &[Secret]) -> ProxyKeys {
        ProxyKeys(keys.iter().map(|k| k.expose().as_bytes().into()).collect())
    }

    /// Whether `candidate` is one of the keys. Every configured key is compared, in
    /// constant time, whatever matches.
    pub fn check(&self, candidate: &[u8]) -> bool {
        self.0
            .iter()
            .fold(false, |found, k| found | equals_secret(k, candidate))
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer(h: &HeaderMap) -> Option<&str> {
    bearer_bytes(h).and_then(|t| std::str::from_utf8(t).ok())
}

/// [`bearer`] as bytes, for a comparison with the proxy keys (no text check first).
pub fn bearer_bytes(h: &HeaderMap) -> Option<&[u8]> {
    let v = crate::headers::find(h, &http::header::AUTHORIZATION)?
        .as_bytes()
        .trim_ascii();
    let space = v.iter().position(|b| *b == b' ')?;
    let (scheme, token) = (&v[..space], &v[space + 1..]);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
}

/// Failures before the throttle starts.
const FREE_FAILURES: u32 = 5;
/// Longest block after repeated failures.
const MAX_BLOCK_SECS: u64 = 300;
/// Failures are forgotten after this long without a new one.
const FORGET_AFTER_MS: u64 = 15 * 60 * 1000;
/// Addresses tracked at most (oldest forgotten first).
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last_ms: u64,
    blocked_until_ms: u64,
}

/// Per-address login throttle: after 5 attempts that did not succeed, each further one
/// blocks the address for 1 s, 2 s, 4 s… up to 5 min. A success clears the address.
///
/// An attempt is counted when it starts, before its body is read, so sending many login
/// heads first and their bodies afterwards buys no extra guesses. While an address is
/// blocked, no password is looked at, the right one included: a block cannot be used to
/// test guesses, and it ends by itself (at most 5 minutes). Behind a reverse proxy, set
/// `TRUSTED_PROXIES` so the address is the client's, not the proxy's.
#[derive(Debug, Default)]
pub struct LoginThrottle(Mutex<HashMap<IpAddr, Failures>>);

impl LoginThrottle {
    /// Starts a login attempt from `ip`: `Err(seconds)` while the address is blocked;
    /// otherwise the attempt is counted (as a failure until it succeeds), and the block
    /// it starts, if any, is returned.
    pub fn attempt(&self, ip: IpAddr, now_ms: u64) -> Result<Option<u64>, u64> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(&ip).filter(|f| f.blocked_until_ms > now_ms) {
            return Err((f.blocked_until_ms - now_ms).div_ceil(1000));
        }
        if map.len() >= MAX_TRACKED {
            map.retain(|_, f| now_ms.saturating_sub(f.last_ms) < FORGET_AFTER_MS);
            if map.len() >= MAX_TRACKED {
                if let Some(oldest) = map.iter().min_by_key(|(_, f)| f.last_ms).map(|(ip, _)| *ip) {
                    map.remove(&oldest);
                }
            }
        }
        let f = map.entry(ip).or_insert(Failures {
            count: 0,
            last_ms: now_ms,
            blocked_until_ms: 0,
        });
        if now_ms.saturating_sub(f.last_ms) >= FORGET_AFTER_MS {
            *f = Failures {
                count: 0,
                last_ms: now_ms,
                blocked_until_ms: 0,
            };
        }
        f.count += 1;
        f.last_ms = now_ms;
        if f.count < FREE_FAILURES {
            return Ok(None);
        }
        let secs = (1u64 << (f.count - FREE_FAILURES).min(16)).min(MAX_BLOCK_SECS);
        f.blocked_until_ms = now_ms + secs * 1000;
        Ok(Some(secs))
    }

    /// Forgets an address after a successful login.
    pub fn succeeded(&self, ip: IpAddr) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_keys() {
        let keys = ProxyKeys::new(&[Secret::new("alpha"), Secret::new("beta")]);
        assert!(keys.check(b"alpha") && keys.check(b"beta"));
        assert_eq!(format!("{keys:?}"), "ProxyKeys(2 keys, ***)");
        assert!(!keys.check(b"alph") && !keys.check(b"") && !keys.check(b"alphaa"));
        assert!(!keys.check(b"beta\0") && !keys.check(b"Alpha"));
        // A candidate that is the secret's bitwise complement, or padded, never passes.
        assert!(!equals_secret(b"ab", &[!b'a', !b'b']) && !equals_secret(b"ab", b"ab\xff"));
        assert!(secrets_equal("x", "x") && !secrets_equal("x", "y"));
    }

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn throttle_grows_and_resets() {
        let t = LoginThrottle::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..4 {
            assert_eq!(t.attempt(ip, 0), Ok(None));
        }
        assert_eq!(t.attempt(ip, 0), Ok(Some(1)), "the fifth starts a block");
        assert_eq!(t.attempt(ip, 0), Err(1), "blocked: not even counted");
        assert_eq!(t.attempt(ip, 999), Err(1));
        assert_eq!(t.attempt(ip, 1000), Ok(Some(2)));
        assert_eq!(t.attempt(ip, 3000), Ok(Some(4)));
        for i in 0..20 {
            let _ = t.attempt(ip, 10_000_000 + i * 400_000);
        }
        assert_eq!(t.attempt(ip, 17_800_000), Err(100), "capped at 5 min");
        // Another address is not affected; a success clears.
        assert_eq!(t.attempt("10.0.0.2".parse().unwrap(), 3000), Ok(None));
        t.succeeded(ip);
        assert_eq!(t.attempt(ip, 18_000_000), Ok(None));
    }
}
