//! The secrets of identity: API tokens and device codes. Each is 256 random bits, handed out
//! once, and kept in the database only as its SHA-256 (so a copy of the database holds no
//! usable token). A random secret of that size needs no slow password hash: no dictionary
//! covers it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;

/// What every API token starts with, so one is recognised in a config file (and so a
/// malformed header is refused without a database query).
pub const TOKEN_PREFIX: &str = "halyard_";

/// Random bytes in each secret: 256 bits.
const SECRET_BYTES: usize = 32;

/// The length of an encoded secret after its prefix (base64url, no padding, of 32 bytes).
const ENCODED_LEN: usize = 43;

/// A secret as handed to its owner. `Debug` hides it, so logging one by mistake leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A new API token: `halyard_` and 256 random bits in base64url.
    pub fn new_token() -> Secret {
        Secret::random(TOKEN_PREFIX)
    }

    /// A new device code (the OAuth device flow's secret).
    pub fn new_device_code() -> Secret {
        Secret::random("")
    }

    fn random(prefix: &str) -> Secret {
        let mut bytes = [0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Secret(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// The secret itself, to hand to its owner (and to nothing else).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the database keeps.
    pub fn hash(&self) -> String {
        hash_secret(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The SHA-256 of a presented secret, in lowercase hex: what its row is looked up by.
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Whether `candidate` has the shape of an API token (prefix, length, alphabet). Anything else
/// is refused before any lookup.
pub fn looks_like_token(candidate: &str) -> bool {
    looks_like_secret(candidate.strip_prefix(TOKEN_PREFIX))
}

/// Whether `candidate` has the shape of a device code.
pub fn looks_like_device_code(candidate: &str) -> bool {
    looks_like_secret(Some(candidate))
}

fn looks_like_secret(encoded: Option<&str>) -> bool {
    encoded.is_some_and(|e| {
        e.len() == ENCODED_LEN
            && e
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_random_bits_with_a_prefix_and_hash_to_hex_sha256() {
        let a = Secret::new_token();
        let b = Secret::new_token();
        assert_ne!(a, b);
        assert!(a.expose().starts_with(TOKEN_PREFIX));
        let decoded = URL_SAFE_NO_PAD
            .decode(&a.expose()[TOKEN_PREFIX.len()..])
            .unwrap();
        assert_eq!(decoded.len(), 32);
        assert!(looks_like_token(a.expose()));
        assert_eq!(a.hash().len(), 64);
        assert_eq!(a.hash(), hash_secret(a.expose()));
        // The SHA-256 of "abc" (FIPS 180-2's test vector).
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(format!("{a:?}"), "Secret(..)");
    }

    #[test]
    fn malformed_tokens_are_recognised_without_a_lookup() {
        let good = Secret::new_token();
        let body = &good.expose()[TOKEN_PREFIX.len()..];
        for bad in [
            String::new(),
            "halyard_".to_string(),
            body.to_string(),
            format!("other_{body}"),
            format!("{}x", good.expose()),
            format!("halyard_{}!", &body[1..]),
            format!("halyard_{}é", &body[2..]),
        ] {
            assert!(!looks_like_token(&bad), "{bad:?}");
        }
    }
}
