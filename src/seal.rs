//! Upstream keys at rest (`ENCRYPTION_KEY`): AES-256-GCM under a key derived with
//! HKDF-SHA256 from `ENCRYPTION_KEY` and a random salt kept in the database (one per
//! install), a fresh 96-bit nonce per value, and the row's service bound in as associated
//! data, so a value moved to another service's row does not decrypt. A keyed HMAC-SHA256
//! of each value (`key_lookup`) finds and dedupes keys without decrypting anything.
//!
//! A stored value reads `v1:<key id>:<base64 of nonce, ciphertext and tag>`; the key id
//! (8 hex digits, derived too) names the encryption key, so a value sealed under another
//! `ENCRYPTION_KEY` is told apart from a damaged one. Everything comes from `ring`,
//! already in the tree through rustls.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{aead, hkdf, hmac};

/// Shortest `ENCRYPTION_KEY` accepted, in bytes.
pub const MIN_SECRET: usize = 32;
const PREFIX: &str = "v1:";
const NONCE: usize = 12;

/// Seals, opens and fingerprints key values under one `ENCRYPTION_KEY` and salt.
pub struct Sealer {
    key: aead::LessSafeKey,
    lookup: hmac::Key,
    id: String,
    rng: SystemRandom,
    /// `ENCRYPTION_KEY_PREVIOUS`, during a `rekey`: values sealed with it still open, and
    /// duplicates are still found by its lookups; nothing new is sealed with it.
    previous: Option<Box<Sealer>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(key id {}, ***)", self.id)
    }
}

/// Why a stored value did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Not a sealed value (plain text).
    NotSealed,
    /// Sealed under another `ENCRYPTION_KEY` (or another install's salt).
    OtherKey,
    /// Tampered with, cut, or moved from another service's row.
    Damaged,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpenError::NotSealed => "not encrypted",
            OpenError::OtherKey => "encrypted under another ENCRYPTION_KEY",
            OpenError::Damaged => "damaged, or moved from another service",
        })
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// `len` bytes of HKDF output for `label`.
fn derive(prk: &hkdf::Prk, label: &[u8], out: &mut [u8]) {
    prk.expand(&[b"api-key-rotator", label], Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF-SHA256 gives up to 8 160 bytes");
}

/// Overwrites key material (or a plain key value) before it goes out of scope.
pub fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

/// A plain key value held briefly, wiped when it goes.
pub struct WipedString(pub String);

impl Drop for WipedString {
    fn drop(&mut self) {
        // SAFETY: zero bytes keep the string valid UTF-8.
        wipe(unsafe { self.0.as_bytes_mut() });
    }
}

/// The associated data of a value in a row of service `service_id`.
fn aad(service_id: i64) -> [u8; 16] {
    let mut a = *b"svc:\0\0\0\0\0\0\0\0\0\0\0\0";
    a[8..].copy_from_slice(&service_id.to_be_bytes());
    a
}

impl Sealer {
    /// The sealer of `secret` (`ENCRYPTION_KEY`, at least [`MIN_SECRET`] bytes) and this
    /// install's `salt`.
    pub fn new(secret: &[u8], salt: &[u8]) -> Result<Sealer, String> {
        if secret.len() < MIN_SECRET {
            return Err(format!(
                "ENCRYPTION_KEY is {} bytes long; it must be {MIN_SECRET} or more \
                 (e.g. ENCRYPTION_KEY=$(openssl rand -hex 32))",
                secret.len()
            ));
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(secret);
        let (mut enc, mut mac, mut id) = ([0u8; 32], [0u8; 32], [0u8; 4]);
        derive(&prk, b"aes-256-gcm", &mut enc);
        derive(&prk, b"lookup", &mut mac);
        derive(&prk, b"key id", &mut id);
        let key = aead::UnboundKey::new(&aead::AES_256_GCM, &enc).expect("a 32-byte key");
        let sealer = Sealer {
            key: aead::LessSafeKey::new(key),
            lookup: hmac::Key::new(hmac::HMAC_SHA256, &mac),
            id: hex(&id),
            rng: SystemRandom::new(),
            previous: None,
        };
        wipe(&mut enc);
        wipe(&mut mac);
        Ok(sealer)
    }

    /// A new random salt for an install.
    pub fn new_salt() -> Result<String, String> {
        let mut salt = [0u8; 32];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| "no system randomness for the encryption salt".to_string())?;
        Ok(hex(&salt))
    }

    /// This sealer, also opening what `previous` sealed (`ENCRYPTION_KEY_PREVIOUS`).
    pub fn with_previous(mut self, previous: Sealer) -> Sealer {
        self.previous = Some(Box::new(previous));
        self
    }

    /// The key id of the previous key, if any.
    pub fn previous_id(&self) -> Option<&str> {
        self.previous.as_deref().map(Sealer::id)
    }

    /// The key id: the same for the same `ENCRYPTION_KEY` and salt, and nothing about
    /// the key can be learnt from it. Kept in the database to check instances agree.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `plain`, sealed for a row of service `service_id`.
    pub fn seal(&self, plain: &str, service_id: i64) -> Result<String, String> {
        let mut nonce = [0u8; NONCE];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| "no system randomness for a nonce".to_string())?;
        let mut data = Vec::with_capacity(NONCE + plain.len() + 16);
        data.extend_from_slice(&nonce);
        data.extend_from_slice(plain.as_bytes());
        let (head, body) = data.split_at_mut(NONCE);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(head.try_into().expect("12 bytes")),
                aead::Aad::from(aad(service_id)),
                body,
            )
            .map_err(|_| "encryption failed".to_string())?;
        data.extend_from_slice(tag.as_ref());
        Ok(format!("{PREFIX}{}:{}", self.id, B64.encode(&data)))
    }

    /// The plain value of `stored`, read from a row of service `service_id`.
    pub fn open(&self, stored: &str, service_id: i64) -> Result<String, OpenError> {
        let (id, body) = split(stored).ok_or(OpenError::NotSealed)?;
        if id != self.id {
            return match &self.previous {
                Some(p) if p.id == id => p.open(stored, service_id),
                _ => Err(OpenError::OtherKey),
            };
        }
        let mut data = B64.decode(body).map_err(|_| OpenError::Damaged)?;
        if data.len() < NONCE + 16 {
            return Err(OpenError::Damaged);
        }
        let (nonce, rest) = data.split_at_mut(NONCE);
        let nonce =
            aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Damaged)?;
        let plain = self
            .key
            .open_in_place(nonce, aead::Aad::from(aad(service_id)), rest)
            .map_err(|_| OpenError::Damaged)?;
        let text = std::str::from_utf8(plain)
            .map_err(|_| OpenError::Damaged)?
            .to_string();
        wipe(&mut data);
        Ok(text)
    }

    /// The keyed fingerprint of `plain` (hex HMAC-SHA256): equal values, equal
    /// fingerprints, and nothing learnt about the value without `ENCRYPTION_KEY`.
    pub fn lookup(&self, plain: &str) -> String {
        hex(hmac::sign(&self.lookup, plain.as_bytes()).as_ref())
    }

    /// Every fingerprint `plain` may be stored under: this key's, and the previous key's.
    pub fn lookups(&self, plain: &str) -> Vec<String> {
        let mut all = vec![self.lookup(plain)];
        all.extend(self.previous.as_ref().map(|p| p.lookup(plain)));
        all
    }
}

/// `(key id, body)` of a sealed value.
fn split(stored: &str) -> Option<(&str, &str)> {
    let rest = stored.strip_prefix(PREFIX)?;
    let (id, body) = rest.split_once(':')?;
    (id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !body.is_empty())
        .then_some((id, body))
}

/// Whether a stored value is sealed (`v1:<8 hex digits>:…`).
pub fn is_sealed(stored: &str) -> bool {
    split(stored).is_some()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_value_opens_only_with_its_key_salt_and_service() {
        let s = Sealer::new(SECRET, b"salt-1").unwrap();
        let sealed = s.seal("sk-live-123", 7).unwrap();
        assert!(
            is_sealed(&sealed) && !sealed.contains("sk-live"),
            "{sealed}"
        );
        assert_ne!(
            sealed,
            s.seal("sk-live-123", 7).unwrap(),
            "a fresh nonce each time"
        );
        assert_eq!(s.open(&sealed, 7).unwrap(), "sk-live-123");
        assert_eq!(
            s.open(&sealed, 8),
            Err(OpenError::Damaged),
            "another service's row"
        );
        let other_key = Sealer::new(b"another-secret-of-32-bytes-or-more!", b"salt-1").unwrap();
        assert_eq!(other_key.open(&sealed, 7), Err(OpenError::OtherKey));
        let other_salt = Sealer::new(SECRET, b"salt-2").unwrap();
        assert_eq!(other_salt.open(&sealed, 7), Err(OpenError::OtherKey));
        assert_eq!(s.open("sk-plain", 7), Err(OpenError::NotSealed));
        // Any changed character breaks it.
        let body_at = sealed.rfind(':').unwrap() + 1;
        for i in body_at..sealed.len() {
            let mut b = sealed.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(b).unwrap();
            assert!(s.open(&t, 7).is_err(), "changed at {i}");
        }
        assert_eq!(
            s.open(&sealed[..sealed.len() - 4], 7),
            Err(OpenError::Damaged)
        );
    }

    #[test]
    fn a_previous_key_still_opens_what_it_sealed() {
        let old = Sealer::new(SECRET, b"salt").unwrap();
        let sealed_old = old.seal("sk-1", 3).unwrap();
        let new = Sealer::new(b"the-new-key-of-32-bytes-or-more-0001", b"salt").unwrap();
        let old_id = old.id().to_string();
        let both = new.with_previous(Sealer::new(SECRET, b"salt").unwrap());
        assert_eq!(both.open(&sealed_old, 3).unwrap(), "sk-1");
        assert_eq!(both.previous_id(), Some(old_id.as_str()));
        let sealed_new = both.seal("sk-1", 3).unwrap();
        assert!(sealed_new.starts_with(&format!("v1:{}:", both.id())));
        assert_eq!(old.open(&sealed_new, 3), Err(OpenError::OtherKey));
        assert_eq!(
            both.lookups("sk-1"),
            vec![both.lookup("sk-1"), old.lookup("sk-1")]
        );
    }

    #[test]
    fn lookups_match_equal_values_only_and_short_secrets_are_refused() {
        let s = Sealer::new(SECRET, b"salt").unwrap();
        assert_eq!(s.lookup("k1"), s.lookup("k1"));
        assert_ne!(s.lookup("k1"), s.lookup("k2"));
        assert_eq!(s.lookup("k1").len(), 64);
        let e = Sealer::new(b"short", b"salt").unwrap_err();
        assert!(e.contains("32 or more"), "{e}");
        assert_eq!(s.id().len(), 8);
        assert_eq!(format!("{s:?}"), format!("Sealer(key id {}, ***)", s.id()));
    }
}
