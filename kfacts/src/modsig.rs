//! Module signatures: the trailer that the kernel's `scripts/sign-file` appends to a
//! module and `module_sig_check()` reads when it loads one (kernel/module/signing.c),
//! the key the PKCS#7 message names as its signer, and how the kernel names an X.509
//! key in its keyrings, so that a signer can be looked for among the keys the kernel
//! trusts.
//!
//! A signed module is laid out as
//!
//! ```text
//! <module ELF> <PKCS#7 SignedData, DER, detached> <struct module_signature> "~Module signature appended~\n"
//! ```
//!
//! This module only reads: signing is `scripts/sign-file`'s (see the builder).

use std::fmt;

use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier};
use der::{Decode, DecodePem, Encode};
use x509_cert::Certificate;
use x509_cert::ext::pkix::SubjectKeyIdentifier;

/// The marker that ends a signed module (include/linux/module_signature.h:
/// `#define MODULE_SIG_STRING "~Module signature appended~\n"`).
pub const MODULE_SIG_STRING: &[u8] = b"~Module signature appended~\n";

/// `sizeof(struct module_signature)` (include/linux/module_signature.h): algo, hash,
/// id_type, signer_len, key_id_len, three bytes of padding, and the big-endian
/// `sig_len`.
pub const MODULE_SIGNATURE_SIZE: usize = 12;

/// `PKEY_ID_PKCS7` of `enum pkey_id_type`: the only kind `mod_check_sig()` accepts.
pub const PKEY_ID_PKCS7: u8 = 2;

/// Where the kernel tells whether it refuses modules without a valid signature
/// (`module.sig_enforce`, kernel/module/signing.c; `Y` or `N`).
pub const SYSFS_SIG_ENFORCE: &str = "sys/module/module/parameters/sig_enforce";

/// The lockdown LSM's state, e.g. `[none] integrity confidentiality`
/// (security/lockdown/lockdown.c); at `integrity` and above, unsigned modules are
/// refused (`security_locked_down(LOCKDOWN_MODULE_SIGNATURE)`).
pub const SECURITYFS_LOCKDOWN: &str = "sys/kernel/security/lockdown";

/// The UEFI `SecureBoot` variable in efivarfs: four bytes of attributes, then one
/// byte, 1 when the firmware booted in Secure Boot mode
/// (`EFI_GLOBAL_VARIABLE_GUID`, include/linux/efi.h).
pub const EFIVARS_SECURE_BOOT: &str =
    "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// The keyrings the module signature check looks in, in its order: the secondary
/// keyring (which links the builtin one and, when the firmware's MOK list is trusted,
/// the machine keyring), then, on `-ENOKEY`, the platform keyring that holds the UEFI
/// `db` certificates (`mod_verify_sig()`, kernel/module/signing.c, Debian 6.1;
/// certs/system_keyring.c; security/integrity/platform_certs/load_uefi.c).
pub const TRUSTED_KEYRINGS: [&str; 4] = [
    ".builtin_trusted_keys",
    ".secondary_trusted_keys",
    ".machine",
    ".platform",
];

/// A signature trailer or a certificate that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModSigError {
    #[error("malformed signature trailer: {0}")]
    Trailer(String),
    #[error("malformed PKCS#7 signature: {0}")]
    Pkcs7(String),
    #[error("not an X.509 certificate (PEM or DER): {0}")]
    Certificate(String),
}

/// The key a signature names, as a PKCS#7 `SignerIdentifier` does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SignerId {
    /// The certificate's subjectKeyIdentifier (`sign-file -k`).
    KeyId(Vec<u8>),
    /// The certificate's issuer and serial number (`sign-file` without `-k`).
    IssuerSerial { issuer: String, serial: Vec<u8> },
}

impl SignerId {
    /// The bytes the kernel writes in hex at the end of the key's description when
    /// the certificate is the one this id names: its subjectKeyIdentifier, else its
    /// serial number (`x509_key_preparse()`, crypto/asymmetric_keys/x509_public_key.c).
    fn description_id(&self) -> &[u8] {
        match self {
            SignerId::KeyId(id) => id,
            SignerId::IssuerSerial { serial, .. } => serial,
        }
    }

    /// Whether a key description (`<subject>: <hex id>`) is that of the key this id
    /// names. Exact for a key id. For issuer and serial it matches certificates that
    /// have no subjectKeyIdentifier only: a certificate with one is described by it,
    /// so a miss does not prove that the kernel lacks the key.
    pub fn matches_description(&self, description: &str) -> bool {
        description
            .strip_suffix(&hex(self.description_id()))
            .is_some_and(|rest| rest.ends_with(": "))
    }

    /// Whether [`SignerId::matches_description`] can prove a key absent.
    pub fn is_conclusive(&self) -> bool {
        matches!(self, SignerId::KeyId(_))
    }
}

impl fmt::Display for SignerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignerId::KeyId(id) => write!(f, "key id {}", hex(id)),
            SignerId::IssuerSerial { issuer, serial } => {
                write!(f, "issuer {issuer:?}, serial {}", hex(serial))
            }
        }
    }
}

/// A module's signature, as far as it can be read without the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSignature {
    /// Length of the module the signature covers (everything before it).
    pub signed_len: usize,
    /// The first signer of the PKCS#7 message (`sign-file` writes one).
    pub signer: SignerId,
    /// The digest algorithm, `sha256` etc. (or the OID when unknown).
    pub digest: String,
}

/// Reads a module's signature trailer: `Ok(None)` when the module does not end with
/// [`MODULE_SIG_STRING`] (unsigned), an error when the trailer or its PKCS#7 message
/// is malformed (the kernel refuses such a module even when it does not enforce
/// signatures: `mod_check_sig()` returns `-EBADMSG`).
pub fn read_signature(module: &[u8]) -> Result<Option<ModuleSignature>, ModSigError> {
    let Some(rest) = module.strip_suffix(MODULE_SIG_STRING) else {
        return Ok(None);
    };
    let trailer = |m: &str| ModSigError::Trailer(m.to_owned());
    if rest.len() <= MODULE_SIGNATURE_SIZE {
        return Err(trailer("too short for struct module_signature"));
    }
    let (before, info) = rest.split_at(rest.len() - MODULE_SIGNATURE_SIZE);
    let [
        algo,
        hash,
        id_type,
        signer_len,
        key_id_len,
        pad0,
        pad1,
        pad2,
        l0,
        l1,
        l2,
        l3,
    ] = info
    else {
        unreachable!("split_at gave MODULE_SIGNATURE_SIZE bytes");
    };
    if *id_type != PKEY_ID_PKCS7 {
        return Err(trailer(&format!(
            "id_type {id_type}, not PKEY_ID_PKCS7 ({PKEY_ID_PKCS7})"
        )));
    }
    if [algo, hash, signer_len, key_id_len, pad0, pad1, pad2]
        .iter()
        .any(|b| **b != 0)
    {
        return Err(trailer(
            "unexpected non-zero fields in struct module_signature",
        ));
    }
    let sig_len = u32::from_be_bytes([*l0, *l1, *l2, *l3]) as usize;
    if sig_len == 0 || sig_len >= before.len() {
        return Err(trailer(&format!(
            "sig_len {sig_len} does not fit a module of {} bytes",
            before.len()
        )));
    }
    let signed_len = before.len() - sig_len;
    let (signer, digest) = pkcs7_signer(&before[signed_len..])?;
    Ok(Some(ModuleSignature {
        signed_len,
        signer,
        digest,
    }))
}

/// The first signer of a DER PKCS#7 `SignedData` message, and its digest algorithm.
pub fn pkcs7_signer(der: &[u8]) -> Result<(SignerId, String), ModSigError> {
    let bad = |e: &dyn fmt::Display| ModSigError::Pkcs7(e.to_string());
    let info = ContentInfo::from_der(der).map_err(|e| bad(&e))?;
    if info.content_type != const_oid::db::rfc5911::ID_SIGNED_DATA {
        return Err(bad(&format!(
            "content type {}, not signedData",
            info.content_type
        )));
    }
    let signed: SignedData = info.content.decode_as().map_err(|e| bad(&e))?;
    let signer = signed
        .signer_infos
        .0
        .iter()
        .next()
        .ok_or_else(|| bad(&"no signer"))?;
    let id = match &signer.sid {
        SignerIdentifier::SubjectKeyIdentifier(skid) => SignerId::KeyId(skid.0.as_bytes().to_vec()),
        SignerIdentifier::IssuerAndSerialNumber(ias) => SignerId::IssuerSerial {
            issuer: ias.issuer.to_string(),
            serial: ias.serial_number.as_bytes().to_vec(),
        },
    };
    Ok((id, digest_name(&signer.digest_alg.oid)))
}

fn digest_name(oid: &der::asn1::ObjectIdentifier) -> String {
    use const_oid::db::rfc5912;
    let known = [
        (rfc5912::ID_SHA_1, "sha1"),
        (rfc5912::ID_SHA_224, "sha224"),
        (rfc5912::ID_SHA_256, "sha256"),
        (rfc5912::ID_SHA_384, "sha384"),
        (rfc5912::ID_SHA_512, "sha512"),
    ];
    known
        .iter()
        .find(|(o, _)| o == oid)
        .map_or_else(|| oid.to_string(), |(_, n)| (*n).to_owned())
}

/// What kstack needs of a signing certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject, as RFC 4514 text.
    pub subject: String,
    pub issuer: String,
    pub serial: Vec<u8>,
    /// The subjectKeyIdentifier extension, when the certificate has one.
    pub key_id: Option<Vec<u8>>,
    /// `rsa`, `ec`, or the public key algorithm's OID.
    pub key_algorithm: String,
    /// The certificate's DER encoding.
    pub der: Vec<u8>,
}

impl CertificateInfo {
    /// The signer id `sign-file` writes for this certificate: its key id when it has
    /// one (kstack passes `-k` then, so that a host can find the key by its kernel
    /// description), else issuer and serial.
    pub fn signer_id(&self) -> SignerId {
        match &self.key_id {
            Some(id) => SignerId::KeyId(id.clone()),
            None => SignerId::IssuerSerial {
                issuer: self.issuer.clone(),
                serial: self.serial.clone(),
            },
        }
    }
}

/// Reads an X.509 certificate, PEM or DER.
pub fn read_certificate(bytes: &[u8]) -> Result<CertificateInfo, ModSigError> {
    let bad = |e: &dyn fmt::Display| ModSigError::Certificate(e.to_string());
    let cert = if bytes.starts_with(b"-----BEGIN") {
        Certificate::from_pem(bytes).map_err(|e| bad(&e))?
    } else {
        Certificate::from_der(bytes).map_err(|e| bad(&e))?
    };
    let tbs = &cert.tbs_certificate;
    let key_id = tbs
        .get::<SubjectKeyIdentifier>()
        .map_err(|e| bad(&e))?
        .map(|(_, skid)| skid.0.as_bytes().to_vec());
    let algorithm = tbs.subject_public_key_info.algorithm.oid;
    let key_algorithm = if algorithm == const_oid::db::rfc5912::RSA_ENCRYPTION {
        "rsa".to_owned()
    } else if algorithm == const_oid::db::rfc5912::ID_EC_PUBLIC_KEY {
        "ec".to_owned()
    } else {
        algorithm.to_string()
    };
    Ok(CertificateInfo {
        subject: tbs.subject.to_string(),
        issuer: tbs.issuer.to_string(),
        serial: tbs.serial_number.as_bytes().to_vec(),
        key_id,
        key_algorithm,
        der: cert.to_der().map_err(|e| bad(&e))?,
    })
}

/// Lowercase hex, as the kernel's `bin2hex()` writes key ids.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailer(pkcs7: &[u8], fields: [u8; 8]) -> Vec<u8> {
        let mut m = b"\x7fELF module body".to_vec();
        m.extend_from_slice(pkcs7);
        m.extend_from_slice(&fields);
        m.extend_from_slice(&(pkcs7.len() as u32).to_be_bytes());
        m.extend_from_slice(MODULE_SIG_STRING);
        m
    }

    #[test]
    fn an_unsigned_module_has_no_signature() {
        assert_eq!(read_signature(b"\x7fELF plain").unwrap(), None);
    }

    #[test]
    fn trailers_are_checked_as_mod_check_sig_does() {
        let err = read_signature(&trailer(b"xx", [0, 0, 1, 0, 0, 0, 0, 0])).unwrap_err();
        assert!(err.to_string().contains("PKEY_ID_PKCS7"), "{err}");
        let err = read_signature(&trailer(b"xx", [1, 0, 2, 0, 0, 0, 0, 0])).unwrap_err();
        assert!(err.to_string().contains("non-zero"), "{err}");
        let mut m = trailer(b"xx", [0, 0, 2, 0, 0, 0, 0, 0]);
        let len_at = m.len() - MODULE_SIG_STRING.len() - 4;
        m[len_at..len_at + 4].copy_from_slice(&10_000u32.to_be_bytes());
        let err = read_signature(&m).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
        let err = read_signature(&trailer(b"not der", [0, 0, 2, 0, 0, 0, 0, 0])).unwrap_err();
        assert!(matches!(err, ModSigError::Pkcs7(_)), "{err}");
        let err = read_signature(MODULE_SIG_STRING).unwrap_err();
        assert!(err.to_string().contains("too short"), "{err}");
    }

    #[test]
    fn key_descriptions_match_by_their_id() {
        let id = SignerId::KeyId(vec![0xb8, 0x52, 0x0b]);
        assert!(id.matches_description("kstack test module signing: b8520b"));
        assert!(id.matches_description("Org: Name: b8520b"));
        assert!(!id.matches_description("kstack: 00b8520b"));
        assert!(!id.matches_description("b8520b"));
        assert!(id.is_conclusive());
        let by_serial = SignerId::IssuerSerial {
            issuer: "CN=x".into(),
            serial: vec![1, 2],
        };
        assert!(by_serial.matches_description("x: 0102"));
        assert!(!by_serial.is_conclusive());
        assert_eq!(by_serial.to_string(), "issuer \"CN=x\", serial 0102");
    }
}
