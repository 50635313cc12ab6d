//! Signing keys, stack signatures and the trust policy.
//!
//! - A public key is one copyable line: `ed25519:<64 hex>`.
//! - A private key is a file holding `ed25519-secret:<64 hex>`, mode 0600, written
//!   atomically and never over an existing file.
//! - `stack.sig` holds one or more ed25519 signatures over the 32-byte SHA-256 of
//!   `stack.toml`, each with its signer's public key: the committer's, then
//!   approvals.
//! - A [`TrustPolicy`] is the list of public keys whose signatures are accepted, how
//!   many distinct ones a commit needs (the threshold), and the revoked keys.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::model::{FORMAT, SIGNATURE_FILE, STACK_FORMAT};

/// Prefix of a public key.
pub const PUBLIC_PREFIX: &str = "ed25519:";
/// Prefix of a private key in its file.
pub const SECRET_PREFIX: &str = "ed25519-secret:";
/// The only signature algorithm.
pub const ALGORITHM: &str = "ed25519";
/// Mode of a private key file.
pub const SECRET_KEY_MODE: u32 = 0o600;

/// Problems with keys, key files and signatures.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("bad public key {text:?}: expected {PUBLIC_PREFIX}<64 hex digits>")]
    BadPublicKey { text: String },
    #[error("{path}: not a kstack private key (expected one line {SECRET_PREFIX}<64 hex digits>)")]
    BadSecretKey { path: PathBuf },
    #[error("{path}: private key is readable by others (mode {mode:04o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no randomness from the operating system: {message}")]
    Random { message: String },
    #[error("{path}: bad signature file: {message}")]
    BadSignatureFile { path: String, message: String },
}

/// An ed25519 public key (checked to be a valid curve point when parsed).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The 32 key bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// A short fingerprint for display: the first 16 hex digits of the key.
    pub fn short(&self) -> String {
        hex::encode(&self.to_bytes()[..8])
    }

    /// Whether `signature` is this key's signature of `digest` (strict verification:
    /// no malleable or small-order forms).
    pub fn verifies(&self, digest: &Sha256Digest, signature: &[u8; 64]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        VerifyingKey::from_bytes(&self.0)
            .is_ok_and(|key| key.verify_strict(digest.as_bytes(), &signature).is_ok())
    }
}

impl PublicKey {
    /// Parses `ed25519:<64 hex>` without checking that it is a curve point (a
    /// costly decompression): for keys that are only displayed or compared, such as
    /// a commit's signer trailer. [`PublicKey::verifies`] still rejects bad points.
    pub(crate) fn parse_unchecked(text: &str) -> Option<PublicKey> {
        let hex_part = text.trim().strip_prefix(PUBLIC_PREFIX)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).ok()?;
        Some(PublicKey(bytes))
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || KeyError::BadPublicKey {
            text: text.to_owned(),
        };
        let hex_part = text.trim().strip_prefix(PUBLIC_PREFIX).ok_or_else(bad)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| bad())?;
        VerifyingKey::from_bytes(&bytes)
            .map(|key| PublicKey(key.to_bytes()))
            .map_err(|_| bad())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // On the stack: `log` shows one key per commit.
        let mut digits = [0u8; 64];
        hex::encode_to_slice(self.0, &mut digits).expect("32 bytes are 64 hex digits");
        f.write_str(PUBLIC_PREFIX)?;
        f.write_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An ed25519 private key. Its `Debug` does not print the key.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public())
    }
}

impl SecretKey {
    /// A new key from 32 bytes of operating-system randomness.
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random {
            message: e.to_string(),
        })?;
        Ok(SecretKey::from_seed(&seed))
    }

    /// The key whose seed is `seed` (tests and benchmarks use fixed seeds).
    pub fn from_seed(seed: &[u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(seed))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `stack.toml` by its digest: a `stack.sig` with this one signature.
    pub fn sign_stack(&self, stack_toml: &[u8]) -> StackSignatures {
        let digest = Sha256Digest::of(stack_toml);
        StackSignatures {
            stack_sha256: digest,
            signatures: vec![self.sign_digest(&digest)],
        }
    }

    /// This key's signature of a `stack.toml` digest (an approval adds one).
    pub fn sign_digest(&self, digest: &Sha256Digest) -> KeySignature {
        KeySignature {
            key: self.public(),
            signature: hex::encode(self.0.sign(digest.as_bytes()).to_bytes()),
        }
    }

    /// The private key file's text.
    fn to_file_text(&self) -> String {
        format!(
            "{SECRET_PREFIX}{}\n# public key: {}\n",
            hex::encode(self.0.to_bytes()),
            self.public()
        )
    }

    /// Reads a private key file, refusing one that others can read.
    pub fn read(path: &Path) -> Result<SecretKey, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let bad = || KeyError::BadSecretKey {
            path: path.to_owned(),
        };
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(bad)?;
        let hex_part = line.strip_prefix(SECRET_PREFIX).ok_or_else(bad)?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut seed).map_err(|_| bad())?;
        Ok(SecretKey::from_seed(&seed))
    }

    /// Writes the key to a new file with mode 0600: to a temporary file in the same
    /// directory, then linked into place, so the file never exists half-written or
    /// with a wider mode, and an existing file is never replaced.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        if path.exists() {
            return Err(KeyError::Exists {
                path: path.to_owned(),
            });
        }
        let write_err = |source| KeyError::Write {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        // NamedTempFile creates its file with mode 0600.
        let mut tmp = tempfile::Builder::new()
            .prefix(".kstack-key")
            .permissions(std::fs::Permissions::from_mode(SECRET_KEY_MODE))
            .tempfile_in(dir)
            .map_err(write_err)?;
        tmp.write_all(self.to_file_text().as_bytes())
            .map_err(write_err)?;
        tmp.as_file().sync_all().map_err(write_err)?;
        tmp.persist_noclobber(path).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_owned(),
                }
            } else {
                write_err(e.error)
            }
        })?;
        Ok(())
    }
}

/// Reads a public key from a file holding either a public key line or a private key
/// (then the matching public key).
pub fn read_public_key(path: &Path) -> Result<PublicKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    if line.starts_with(SECRET_PREFIX) {
        return SecretKey::read(path).map(|k| k.public());
    }
    line.parse()
}

/// Most signatures one `stack.sig` may hold: verifying each costs time, and no
/// threshold needs more.
pub const MAX_SIGNATURES: usize = 32;

/// One key's signature of a `stack.toml` digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySignature {
    pub key: PublicKey,
    /// 128 hex digits.
    pub signature: String,
}

impl KeySignature {
    /// The 64 signature bytes.
    pub fn signature_bytes(&self) -> Option<[u8; 64]> {
        let mut out = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut out).ok()?;
        Some(out)
    }

    /// Whether this is `key`'s valid signature of `digest` (the recomputed SHA-256 of
    /// `stack.toml`).
    pub fn is_valid_for(&self, digest: &Sha256Digest) -> bool {
        match self.signature_bytes() {
            Some(sig) => self.key.verifies(digest, &sig),
            None => false,
        }
    }
}

/// `stack.sig`: the signatures of `stack.toml`, in the order they were made (the
/// committer's first, then approvals).
///
/// Format 2, which kstack writes:
///
/// ```toml
/// format = 2
/// algorithm = "ed25519"
/// stack_sha256 = "<64 hex>"
///
/// [[signature]]
/// key = "ed25519:<64 hex>"
/// signature = "<128 hex>"
/// ```
///
/// Format 1 (one signature: `key` and `signature` at the top) is still read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackSignatures {
    /// The digest that was signed (recomputed, never trusted, when verifying).
    pub stack_sha256: Sha256Digest,
    pub signatures: Vec<KeySignature>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SigFileV1 {
    format: u32,
    algorithm: String,
    key: PublicKey,
    stack_sha256: Sha256Digest,
    signature: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SigFileV2 {
    format: u32,
    algorithm: String,
    stack_sha256: Sha256Digest,
    signature: Vec<KeySignature>,
}

#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

impl StackSignatures {
    /// The bytes stored as `stack.sig` (format 2).
    pub fn to_toml(&self) -> String {
        toml::to_string(&SigFileV2 {
            format: STACK_FORMAT,
            algorithm: ALGORITHM.to_owned(),
            stack_sha256: self.stack_sha256,
            signature: self.signatures.clone(),
        })
        .expect("a stack.sig always serializes")
    }

    /// Parses `stack.sig` of format 1 or 2. Each signature must be 128 hex digits;
    /// whether it is valid is [`StackSignatures::check`]'s question.
    pub fn parse(bytes: &[u8]) -> Result<StackSignatures, KeyError> {
        let bad = |message: String| KeyError::BadSignatureFile {
            path: SIGNATURE_FILE.to_owned(),
            message,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| bad(e.to_string()))?;
        let format = toml::from_str::<FormatOnly>(text)
            .map_err(|e| bad(e.to_string()))?
            .format;
        let (algorithm, parsed) = match format {
            FORMAT => {
                let v1: SigFileV1 = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
                debug_assert_eq!(v1.format, FORMAT);
                let one = KeySignature {
                    key: v1.key,
                    signature: v1.signature,
                };
                (
                    v1.algorithm,
                    StackSignatures {
                        stack_sha256: v1.stack_sha256,
                        signatures: vec![one],
                    },
                )
            }
            STACK_FORMAT => {
                let v2: SigFileV2 = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
                (
                    v2.algorithm,
                    StackSignatures {
                        stack_sha256: v2.stack_sha256,
                        signatures: v2.signature,
                    },
                )
            }
            other => return Err(bad(format!("format {other} not supported"))),
        };
        if algorithm != ALGORITHM {
            return Err(bad(format!("algorithm {algorithm:?} not supported")));
        }
        if parsed.signatures.is_empty() {
            return Err(bad("no signature".to_owned()));
        }
        if parsed.signatures.len() > MAX_SIGNATURES {
            return Err(bad(format!(
                "{} signatures (at most {MAX_SIGNATURES})",
                parsed.signatures.len()
            )));
        }
        if parsed
            .signatures
            .iter()
            .any(|s| s.signature_bytes().is_none())
        {
            return Err(bad("a signature is not 128 hex digits".to_owned()));
        }
        Ok(parsed)
    }

    /// Checks every signature against `digest` (the recomputed SHA-256 of
    /// `stack.toml`): one that does not verify is an error naming its key (a
    /// signature file is never partly good). Returns the signers, each once, in
    /// signing order.
    pub fn check(&self, digest: &Sha256Digest) -> Result<Vec<PublicKey>, PublicKey> {
        let mut signers = Vec::with_capacity(self.signatures.len());
        for sig in &self.signatures {
            if !sig.is_valid_for(digest) {
                return Err(sig.key);
            }
            if !signers.contains(&sig.key) {
                signers.push(sig.key);
            }
        }
        Ok(signers)
    }

    /// The keys of the signatures, in order (a key that signed twice appears twice).
    pub fn keys(&self) -> Vec<PublicKey> {
        self.signatures.iter().map(|s| s.key).collect()
    }
}

/// The keys whose signatures are accepted, how many of them a head needs, and the
/// keys that must no longer count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPolicy {
    pub keys: Vec<PublicKey>,
    /// Valid signatures from this many distinct trusted, unrevoked keys make a commit
    /// trusted (at least 1).
    pub threshold: usize,
    /// Keys whose signatures count for nothing, even if `keys` lists them.
    pub revoked: Vec<PublicKey>,
}

impl Default for TrustPolicy {
    /// Nothing is trusted.
    fn default() -> Self {
        TrustPolicy {
            keys: Vec::new(),
            threshold: 1,
            revoked: Vec::new(),
        }
    }
}

/// Why the signers of a commit do not make it trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shortfall {
    /// No signer counts, and a signer is revoked: that key.
    Revoked(PublicKey),
    /// No signer counts, none is revoked: the first signer.
    Untrusted(PublicKey),
    /// Some count, fewer than the threshold.
    BelowThreshold {
        found: usize,
        threshold: usize,
        /// Each signer with how the policy sees it.
        signers: Vec<(PublicKey, KeyStanding)>,
    },
}

/// How a policy sees one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStanding {
    Trusted,
    Revoked,
    Untrusted,
}

impl fmt::Display for KeyStanding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyStanding::Trusted => "trusted",
            KeyStanding::Revoked => "revoked",
            KeyStanding::Untrusted => "not trusted",
        })
    }
}

impl TrustPolicy {
    /// Parses the config's `[trust] keys` (threshold 1, nothing revoked).
    pub fn from_strings<S: AsRef<str>>(keys: &[S]) -> Result<TrustPolicy, KeyError> {
        Ok(TrustPolicy {
            keys: parse_keys(keys)?,
            ..TrustPolicy::default()
        })
    }

    /// Whether `key` is trusted: listed and not revoked.
    pub fn trusts(&self, key: &PublicKey) -> bool {
        self.keys.contains(key) && !self.revoked.contains(key)
    }

    /// How the policy sees `key`.
    pub fn standing(&self, key: &PublicKey) -> KeyStanding {
        if self.revoked.contains(key) {
            KeyStanding::Revoked
        } else if self.keys.contains(key) {
            KeyStanding::Trusted
        } else {
            KeyStanding::Untrusted
        }
    }

    /// Whether distinct `signers` (of valid signatures) make a commit trusted: at
    /// least `threshold` of them trusted and not revoked. Returns how many count.
    pub fn judge(&self, signers: &[PublicKey]) -> Result<usize, Shortfall> {
        let mut counted: Vec<&PublicKey> = Vec::new();
        for key in signers.iter().filter(|k| self.trusts(k)) {
            if !counted.contains(&key) {
                counted.push(key);
            }
        }
        let found = counted.len();
        if found >= self.threshold.max(1) {
            return Ok(found);
        }
        if found == 0 && self.threshold <= 1 {
            if let Some(revoked) = signers.iter().find(|k| self.revoked.contains(k)) {
                return Err(Shortfall::Revoked(*revoked));
            }
            if let Some(first) = signers.first() {
                return Err(Shortfall::Untrusted(*first));
            }
        }
        Err(Shortfall::BelowThreshold {
            found,
            threshold: self.threshold.max(1),
            signers: signers.iter().map(|k| (*k, self.standing(k))).collect(),
        })
    }
}

/// Parses public key lines.
pub fn parse_keys<S: AsRef<str>>(keys: &[S]) -> Result<Vec<PublicKey>, KeyError> {
    keys.iter().map(|k| k.as_ref().parse()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_line_round_trips() {
        let key = SecretKey::from_seed(&[7; 32]).public();
        let line = key.to_string();
        assert!(
            line.starts_with("ed25519:") && line.len() == 8 + 64,
            "{line}"
        );
        assert_eq!(line.parse::<PublicKey>().unwrap(), key);
        assert!("ed25519:zz".parse::<PublicKey>().is_err());
        assert!(line[8..].parse::<PublicKey>().is_err());
    }

    #[test]
    fn sign_and_verify() {
        let key = SecretKey::from_seed(&[1; 32]);
        let sig = key.sign_stack(b"stack");
        let parsed = StackSignatures::parse(sig.to_toml().as_bytes()).unwrap();
        assert_eq!(parsed, sig);
        let digest = Sha256Digest::of(b"stack");
        assert_eq!(parsed.check(&digest), Ok(vec![key.public()]));
        assert_eq!(parsed.check(&Sha256Digest::of(b"stacK")), Err(key.public()));
        let other = SecretKey::from_seed(&[2; 32]);
        let mut forged = sig.clone();
        forged.signatures[0].key = other.public();
        assert_eq!(forged.check(&digest), Err(other.public()));
        // An approval: a second key, and the first one twice, which counts once.
        let mut approved = sig.clone();
        approved.signatures.push(other.sign_digest(&digest));
        approved.signatures.push(key.sign_digest(&digest));
        let back = StackSignatures::parse(approved.to_toml().as_bytes()).unwrap();
        assert_eq!(back.check(&digest), Ok(vec![key.public(), other.public()]));
        assert_eq!(back.keys().len(), 3);
    }

    #[test]
    fn format_1_signature_files_are_read() {
        let key = SecretKey::from_seed(&[1; 32]);
        let digest = Sha256Digest::of(b"stack");
        let one = key.sign_digest(&digest);
        let v1 = format!(
            "format = 1\nalgorithm = \"ed25519\"\nkey = \"{}\"\nstack_sha256 = \"{}\"\nsignature = \"{}\"\n",
            one.key,
            digest.to_hex(),
            one.signature
        );
        let parsed = StackSignatures::parse(v1.as_bytes()).unwrap();
        assert_eq!(parsed.check(&digest), Ok(vec![key.public()]));
        for bad in [
            v1.replace("ed25519\"\n", "rsa\"\n"),
            v1.replace("format = 1", "format = 3"),
            v1.replace("signature = \"", "signature = \"00"),
            "format = 2\nalgorithm = \"ed25519\"\nstack_sha256 = \"00\"\nsignature = []\n"
                .to_owned(),
        ] {
            assert!(StackSignatures::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_file_is_0600_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let key = SecretKey::generate().unwrap();
        key.write_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(SecretKey::read(&path).unwrap().public(), key.public());
        assert_eq!(read_public_key(&path).unwrap(), key.public());
        let err = SecretKey::generate().unwrap().write_new(&path).unwrap_err();
        assert!(matches!(err, KeyError::Exists { .. }), "{err}");
        assert_eq!(SecretKey::read(&path).unwrap().public(), key.public());
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        SecretKey::generate().unwrap().write_new(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretKey::read(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn trust_policy() {
        let a = SecretKey::from_seed(&[1; 32]).public();
        let b = SecretKey::from_seed(&[2; 32]).public();
        let c = SecretKey::from_seed(&[3; 32]).public();
        let policy = TrustPolicy::from_strings(&[a.to_string()]).unwrap();
        assert!(policy.trusts(&a) && !policy.trusts(&b));
        assert!(TrustPolicy::from_strings(&["ed25519:00"]).is_err());
        assert_eq!(policy.judge(&[b, a]), Ok(1));
        assert_eq!(policy.judge(&[b]), Err(Shortfall::Untrusted(b)));

        // Two of three, one of them revoked.
        let two = TrustPolicy {
            keys: vec![a, b, c],
            threshold: 2,
            revoked: vec![c],
        };
        assert_eq!(two.judge(&[a, b]), Ok(2));
        assert_eq!(two.standing(&c), KeyStanding::Revoked);
        assert!(!two.trusts(&c));
        let Err(Shortfall::BelowThreshold { found, signers, .. }) = two.judge(&[a, c]) else {
            panic!("a revoked key must not count");
        };
        assert_eq!(found, 1);
        assert_eq!(signers[1], (c, KeyStanding::Revoked));
        // The same key twice counts once.
        assert!(two.judge(&[a, a]).is_err());
        let one = TrustPolicy {
            revoked: vec![a],
            ..policy
        };
        assert_eq!(one.judge(&[a]), Err(Shortfall::Revoked(a)));
    }
}
