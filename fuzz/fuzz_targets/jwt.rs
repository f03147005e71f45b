//! JWTs (`src/jwt.rs`): any token is refused or verified without a panic; a token we
//! issue verifies, and any change to it does not.
#![no_main]

use api_key_rotator::jwt;
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef0123456789";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = jwt::verify(SECRET, &text, 1_800_000_000);
    let _ = jwt::verify_signature(SECRET, &text);
    let sub: String = text.chars().take(64).collect();
    let token = jwt::issue(SECRET, &sub, 1_800_000_000, 3600);
    let claims = jwt::verify(SECRET, &token, 1_800_000_100).expect("our token verifies");
    assert_eq!(claims.sub, sub);
    if let Some(&b) = data.first() {
        let mut changed = token.clone().into_bytes();
        let at = usize::from(b) % changed.len();
        changed[at] = if changed[at] == b'A' { b'B' } else { b'A' };
        if let Ok(changed) = String::from_utf8(changed) {
            if changed != token {
                assert!(
                    jwt::verify(SECRET, &changed, 1_800_000_100).is_err(),
                    "a changed token verified"
                );
            }
        }
    }
});
