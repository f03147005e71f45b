//! HS256 JSON Web Tokens for admin sessions (RFC 7519), written against RFC 8725's advice:
//! the algorithm is pinned (the header's `alg` must be `HS256`, nothing else is tried),
//! the signature is verified in constant time before the claims are read, `exp` is
//! required and strict (this service issues and checks its own tokens, so there is no
//! issuer clock to forgive), `nbf`/`iat` get a 60 s leeway for the clocks of several
//! instances, and an audience claim keeps
//! any other token from passing as an admin session.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The audience every admin token carries.
pub const AUDIENCE: &str = "api-key-rotator/admin";
/// Allowed clock skew for `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = 60;
/// Tokens longer than this are refused before any work.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The claims of an admin session token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub aud: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
}

/// Why a token was refused. Deliberately coarse: callers answer 401 for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    Malformed,
    Algorithm,
    Signature,
    Expired,
    NotYetValid,
    Audience,
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JwtError::Malformed => "malformed token",
            JwtError::Algorithm => "token algorithm not accepted",
            JwtError::Signature => "bad token signature",
            JwtError::Expired => "token expired",
            JwtError::NotYetValid => "token not yet valid",
            JwtError::Audience => "token not meant for this service",
        })
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length")
}

/// Signs `claims` with HS256.
pub fn sign(secret: &[u8], claims: &Claims) -> String {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialise"));
    let signing_input = format!("{header}.{payload}");
    let mut m = mac(secret);
    m.update(signing_input.as_bytes());
    let sig = B64.encode(m.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

/// Verifies the signature of a compact JWS with HS256 only, returning the decoded payload.
pub fn verify_signature(secret: &[u8], token: &str) -> Result<Vec<u8>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Header = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Malformed)?;
    if header.alg != "HS256"
        || header
            .typ
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("JWT"))
    {
        return Err(JwtError::Algorithm);
    }
    let sig = B64.decode(s).map_err(|_| JwtError::Malformed)?;
    let mut m = mac(secret);
    m.update(h.as_bytes());
    m.update(b".");
    m.update(p.as_bytes());
    m.verify_slice(&sig).map_err(|_| JwtError::Signature)?;
    B64.decode(p).map_err(|_| JwtError::Malformed)
}

/// Verifies an admin token: signature, then `aud`, `exp`, `nbf` and `iat` against `now`.
pub fn verify(secret: &[u8], token: &str, now: u64) -> Result<Claims, JwtError> {
    let payload = verify_signature(secret, token)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| JwtError::Malformed)?;
    if claims.aud != AUDIENCE {
        return Err(JwtError::Audience);
    }
    if now >= claims.exp {
        return Err(JwtError::Expired);
    }
    if now.saturating_add(LEEWAY_SECS) < claims.nbf || now.saturating_add(LEEWAY_SECS) < claims.iat
    {
        return Err(JwtError::NotYetValid);
    }
    Ok(claims)
}

/// Issues an admin token for `sub`, valid from `now` for `ttl_secs`.
pub fn issue(secret: &[u8], sub: &str, now: u64, ttl_secs: u64) -> String {
    sign(
        secret,
        &Claims {
            sub: sub.to_string(),
            aud: AUDIENCE.to_string(),
            iat: now,
            nbf: now,
            exp: now + ttl_secs,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    /// RFC 7515 appendix A.1: the HS256 example, with its JWK `k` as the key.
    #[test]
    fn rfc7515_a1_vector() {
        let key = B64
            .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
            .unwrap();
        let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let payload = verify_signature(&key, token).unwrap();
        assert!(
            String::from_utf8(payload)
                .unwrap()
                .contains("\"iss\":\"joe\"")
        );
        // One flipped signature character fails.
        let bad = format!("{}A", &token[..token.len() - 1]);
        assert_eq!(verify_signature(&key, &bad), Err(JwtError::Signature));
    }

    #[test]
    fn issue_then_verify() {
        let t = issue(SECRET, "admin", NOW, 3600);
        let c = verify(SECRET, &t, NOW + 10).unwrap();
        assert_eq!((c.sub.as_str(), c.exp), ("admin", NOW + 3600));
    }

    fn forge(header: &str, claims: &Claims, secret: &[u8]) -> String {
        let h = B64.encode(header);
        let p = B64.encode(serde_json::to_vec(claims).unwrap());
        let mut m = mac(secret);
        m.update(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", B64.encode(m.finalize().into_bytes()))
    }

    fn claims() -> Claims {
        Claims {
            sub: "admin".into(),
            aud: AUDIENCE.into(),
            iat: NOW,
            nbf: NOW,
            exp: NOW + 60,
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let h = B64.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let p = B64.encode(serde_json::to_vec(&claims()).unwrap());
        assert_eq!(
            verify(SECRET, &format!("{h}.{p}."), NOW),
            Err(JwtError::Algorithm)
        );
        assert_eq!(
            verify(SECRET, &format!("{h}.{p}"), NOW),
            Err(JwtError::Malformed)
        );
    }

    #[test]
    fn other_algorithms_are_refused_even_when_signed_with_the_secret() {
        for alg in ["HS512", "HS384", "RS256", "hs256"] {
            let t = forge(
                &format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#),
                &claims(),
                SECRET,
            );
            assert_eq!(verify(SECRET, &t, NOW), Err(JwtError::Algorithm), "{alg}");
        }
    }

    #[test]
    fn tampered_payload_is_refused() {
        let t = issue(SECRET, "admin", NOW, 60);
        let parts: Vec<&str> = t.split('.').collect();
        let mut c = claims();
        c.exp = NOW + 999_999;
        let p = B64.encode(serde_json::to_vec(&c).unwrap());
        let forged = format!("{}.{}.{}", parts[0], p, parts[2]);
        assert_eq!(verify(SECRET, &forged, NOW), Err(JwtError::Signature));
    }

    #[test]
    fn strict_expiry_and_not_before_with_leeway() {
        let t = issue(SECRET, "admin", NOW, 60);
        assert!(verify(SECRET, &t, NOW + 59).is_ok());
        assert_eq!(verify(SECRET, &t, NOW + 60), Err(JwtError::Expired));
        assert!(verify(SECRET, &t, NOW - LEEWAY_SECS).is_ok());
        assert_eq!(
            verify(SECRET, &t, NOW - LEEWAY_SECS - 1),
            Err(JwtError::NotYetValid)
        );
    }

    #[test]
    fn wrong_secret_and_audience_are_refused() {
        let t = issue(SECRET, "admin", NOW, 60);
        assert_eq!(
            verify(b"another-secret-another-secret-xx", &t, NOW),
            Err(JwtError::Signature)
        );
        let mut c = claims();
        c.aud = "someone-else".into();
        let t = forge(r#"{"alg":"HS256","typ":"JWT"}"#, &c, SECRET);
        assert_eq!(verify(SECRET, &t, NOW), Err(JwtError::Audience));
    }

    #[test]
    fn missing_exp_is_refused() {
        let h = B64.encode(r#"{"alg":"HS256"}"#);
        let p = B64.encode(format!(
            r#"{{"sub":"admin","aud":"{AUDIENCE}","iat":{NOW},"nbf":{NOW}}}"#
        ));
        let mut m = mac(SECRET);
        m.update(format!("{h}.{p}").as_bytes());
        let t = format!("{h}.{p}.{}", B64.encode(m.finalize().into_bytes()));
        assert_eq!(verify(SECRET, &t, NOW), Err(JwtError::Malformed));
    }

    #[test]
    fn bad_base64_and_missing_segments() {
        let t = issue(SECRET, "admin", NOW, 60);
        let parts: Vec<&str> = t.split('.').collect();
        for bad in [
            String::new(),
            "a.b".to_string(),
            format!("{}.{}", parts[0], parts[1]),
            format!("{t}.extra"),
            format!("!!!.{}.{}", parts[1], parts[2]),
            format!("{}.{}.***", parts[0], parts[1]),
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            "x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(verify(SECRET, &bad, NOW).is_err(), "{bad}");
        }
    }
}
