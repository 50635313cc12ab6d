//! SHA-256 digests: the integrity of the store rests on these, not on Git's SHA-1.
//!
//! Every artifact is named in its manifest by its SHA-256, every manifest in
//! `stack.toml`, and the signature covers the SHA-256 of `stack.toml`. A digest is
//! written as 64 lowercase hex digits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Length of a SHA-256 digest in bytes.
pub const SHA256_LEN: usize = 32;

/// The SHA-256 of some bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest([u8; SHA256_LEN]);

/// A digest that could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("bad SHA-256 {text:?}: expected 64 hex digits")]
    BadHex { text: String },
}

impl Sha256Digest {
    /// Hashes `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Sha256Digest(Sha256::digest(bytes).into())
    }

    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; SHA256_LEN]) -> Self {
        Sha256Digest(bytes)
    }

    /// The raw digest bytes (what the signature covers for `stack.toml`).
    pub fn as_bytes(&self) -> &[u8; SHA256_LEN] {
        &self.0
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, as used in module names (`kstack_<12 hex>`).
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl FromStr for Sha256Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || DigestError::BadHex {
            text: text.to_owned(),
        };
        if text.len() != SHA256_LEN * 2 || text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        let mut out = [0u8; SHA256_LEN];
        hex::decode_to_slice(text, &mut out).map_err(|_| bad())?;
        Ok(Sha256Digest(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(
            Sha256Digest::of(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            Sha256Digest::of(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256Digest::of(b"abc").short(), "ba7816bf8f01");
    }

    #[test]
    fn hex_round_trip_and_rejects() {
        let d = Sha256Digest::of(b"kstack");
        assert_eq!(d.to_hex().parse::<Sha256Digest>().unwrap(), d);
        assert!("abc".parse::<Sha256Digest>().is_err());
        assert!(d.to_hex().to_uppercase().parse::<Sha256Digest>().is_err());
        let mut bad = d.to_hex();
        bad.replace_range(0..1, "g");
        let err = bad.parse::<Sha256Digest>().unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }

    #[test]
    fn serde_as_hex_string() {
        #[derive(Serialize, Deserialize)]
        struct T {
            d: Sha256Digest,
        }
        let t = T {
            d: Sha256Digest::of(b""),
        };
        let text = toml::to_string(&t).unwrap();
        assert_eq!(
            text,
            "d = \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"\n"
        );
        let back: T = toml::from_str(&text).unwrap();
        assert_eq!(back.d, t.d);
    }
}
