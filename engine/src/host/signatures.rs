//! Module signatures before loading: what the kernel will say about each module a
//! plan applies, decided before anything reaches it.
//!
//! One pure function, [`check`], from the kernel's [`Enforcement`], the keys it
//! trusts and the modules' bytes to a [`SignatureReport`]. When the kernel enforces
//! signatures, a module that is unsigned, or signed by a key that none of the trusted
//! keyrings holds, is refused here with that reason instead of failing in
//! `finit_module(2)` with `EKEYREJECTED`. A malformed signature trailer is refused
//! always: the kernel rejects it even when it does not enforce signatures.
//!
//! What cannot be known before loading, and is left to the kernel: whether the
//! signature itself verifies (kstack does not check RSA here: the kernel does, over
//! the very bytes kstack loads, whose SHA-256 the signed stack records), whether a
//! key was revoked through `.blacklist` or `dbx`, and, for a signature that names its
//! key by issuer and serial (not `sign-file -k`), whether that key is trusted when its
//! certificate has a key id (the kernel describes such a key by the key id).

use kstack_kfacts::modsig::{self, SignerId};

use super::kernel::signing::{Enforcement, TrustedKeys};

/// What kstack knows about one module's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Unsigned,
    /// The trailer or its PKCS#7 message cannot be read.
    Malformed(String),
    Signed {
        signer: SignerId,
        trust: Trust,
    },
}

/// Whether the kernel holds the signer's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// In this keyring, with this description.
    Trusted { keyring: String, key: String },
    /// None of the trusted keyrings holds it.
    NotTrusted,
    /// Cannot be told before loading: why.
    Unknown(String),
}

/// One module of a plan and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleCheck {
    pub module: String,
    /// The patch's name, for messages.
    pub patch: String,
    pub verdict: Verdict,
}

impl ModuleCheck {
    /// The verdict in a few words, as `plan` and errors show it.
    pub fn describe(&self) -> String {
        match &self.verdict {
            Verdict::Unsigned => "unsigned".to_owned(),
            Verdict::Malformed(why) => format!("signature malformed: {why}"),
            Verdict::Signed { signer, trust } => match trust {
                Trust::Trusted { keyring, key } => {
                    format!("signed by {key} (trusted: {keyring})")
                }
                Trust::NotTrusted => format!(
                    "signed by {signer}, a key the kernel does not trust (in none of {})",
                    modsig::TRUSTED_KEYRINGS.join(", ")
                ),
                Trust::Unknown(why) => format!("signed by {signer} (trust unknown: {why})"),
            },
        }
    }

    /// Whether the kernel will refuse the module under `enforced`.
    pub fn refused(&self, enforced: bool) -> bool {
        match &self.verdict {
            Verdict::Malformed(_) => true,
            Verdict::Unsigned => enforced,
            Verdict::Signed { trust, .. } => enforced && *trust == Trust::NotTrusted,
        }
    }
}

/// The signature check of a plan's modules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureReport {
    pub enforcement: Enforcement,
    /// One per module the plan applies, in order.
    pub modules: Vec<ModuleCheck>,
}

impl SignatureReport {
    /// The modules the kernel will refuse.
    pub fn refused(&self) -> Vec<&ModuleCheck> {
        let enforced = self.enforcement.enforced();
        self.modules
            .iter()
            .filter(|m| m.refused(enforced))
            .collect()
    }
}

/// Decides, for each `(module, patch, bytes)`, what the kernel will make of its
/// signature.
pub fn check(
    enforcement: &Enforcement,
    keys: &TrustedKeys,
    modules: &[(&str, &str, &[u8])],
) -> SignatureReport {
    let checks = modules
        .iter()
        .map(|(module, patch, bytes)| ModuleCheck {
            module: (*module).to_owned(),
            patch: (*patch).to_owned(),
            verdict: match modsig::read_signature(bytes) {
                Ok(None) => Verdict::Unsigned,
                Err(e) => Verdict::Malformed(e.to_string()),
                Ok(Some(sig)) => Verdict::Signed {
                    trust: trust(&sig.signer, keys),
                    signer: sig.signer,
                },
            },
        })
        .collect();
    SignatureReport {
        enforcement: enforcement.clone(),
        modules: checks,
    }
}

fn trust(signer: &SignerId, keys: &TrustedKeys) -> Trust {
    let keys = match keys {
        TrustedKeys::Known(keys) => keys,
        TrustedKeys::Unknown(why) => return Trust::Unknown(why.clone()),
    };
    match keys
        .iter()
        .find(|k| signer.matches_description(&k.description))
    {
        Some(k) => Trust::Trusted {
            keyring: k.keyring.clone(),
            key: k.description.clone(),
        },
        None if signer.is_conclusive() => Trust::NotTrusted,
        None => Trust::Unknown(
            "the signature names its key by issuer and serial, which the kernel's key \
             descriptions do not show"
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::kernel::signing::TrustedKey;
    use super::*;

    /// A module with a signature trailer around a PKCS#7 message naming `key_id`
    /// (a minimal SignedData, as `sign-file -k` writes it, without the signature
    /// value's bytes mattering here).
    fn signed_module(key_id: &[u8]) -> Vec<u8> {
        use cms::content_info::ContentInfo;
        use cms::signed_data::{
            EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
        };
        use der::asn1::{OctetString, SetOfVec};
        use der::{Any, Encode};
        use x509_cert::ext::pkix::SubjectKeyIdentifier;
        use x509_cert::spki::AlgorithmIdentifierOwned;
        let sha256 = AlgorithmIdentifierOwned {
            oid: const_oid::db::rfc5912::ID_SHA_256,
            parameters: None,
        };
        let signer = SignerInfo {
            version: cms::content_info::CmsVersion::V3,
            sid: SignerIdentifier::SubjectKeyIdentifier(SubjectKeyIdentifier(
                OctetString::new(key_id.to_vec()).expect("short"),
            )),
            digest_alg: sha256.clone(),
            signed_attrs: None,
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: const_oid::db::rfc5912::RSA_ENCRYPTION,
                parameters: None,
            },
            signature: OctetString::new(vec![0; 8]).expect("short"),
            unsigned_attrs: None,
        };
        let signed = SignedData {
            version: cms::content_info::CmsVersion::V3,
            digest_algorithms: SetOfVec::try_from(vec![sha256]).expect("one"),
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: const_oid::db::rfc5911::ID_DATA,
                econtent: None,
            },
            certificates: None,
            crls: None,
            signer_infos: SignerInfos(SetOfVec::try_from(vec![signer]).expect("one")),
        };
        let info = ContentInfo {
            content_type: const_oid::db::rfc5911::ID_SIGNED_DATA,
            content: Any::encode_from(&signed).expect("encodes"),
        };
        let p7 = info.to_der().expect("encodes");
        let mut m = b"\x7fELF the module".to_vec();
        m.extend_from_slice(&p7);
        m.extend_from_slice(&[0, 0, modsig::PKEY_ID_PKCS7, 0, 0, 0, 0, 0]);
        m.extend_from_slice(&(p7.len() as u32).to_be_bytes());
        m.extend_from_slice(modsig::MODULE_SIG_STRING);
        m
    }

    fn enforcing() -> Enforcement {
        Enforcement {
            sig_enforce: Some(true),
            ..Enforcement::default()
        }
    }

    fn keys() -> TrustedKeys {
        TrustedKeys::Known(vec![TrustedKey {
            keyring: ".platform".into(),
            description: "kstack fleet: b852d1".into(),
        }])
    }

    #[test]
    fn under_enforcement_unsigned_and_untrusted_are_refused() {
        let trusted = signed_module(&[0xb8, 0x52, 0xd1]);
        let untrusted = signed_module(&[0x01, 0x02]);
        let report = check(
            &enforcing(),
            &keys(),
            &[
                ("kstack_a", "a", b"\x7fELF plain"),
                ("kstack_b", "b", &trusted),
                ("kstack_c", "c", &untrusted),
            ],
        );
        let verdicts: Vec<String> = report.modules.iter().map(ModuleCheck::describe).collect();
        assert_eq!(
            verdicts,
            [
                "unsigned",
                "signed by kstack fleet: b852d1 (trusted: .platform)",
                "signed by key id 0102, a key the kernel does not trust (in none of \
                 .builtin_trusted_keys, .secondary_trusted_keys, .machine, .platform)",
            ]
        );
        let refused: Vec<&str> = report.refused().iter().map(|m| m.module.as_str()).collect();
        assert_eq!(refused, ["kstack_a", "kstack_c"]);
    }

    #[test]
    fn without_enforcement_only_a_malformed_signature_is_refused() {
        let mut broken = signed_module(&[1]);
        let at = broken.len() - modsig::MODULE_SIG_STRING.len() - 6;
        broken[at] = 1; // id_type
        let report = check(
            &Enforcement::default(),
            &keys(),
            &[("kstack_a", "a", b"\x7fELF"), ("kstack_b", "b", &broken)],
        );
        let refused: Vec<&str> = report.refused().iter().map(|m| m.module.as_str()).collect();
        assert_eq!(refused, ["kstack_b"]);
    }

    #[test]
    fn unknown_keys_refuse_nothing_but_say_why() {
        let signed = signed_module(&[9]);
        let report = check(
            &enforcing(),
            &TrustedKeys::Unknown("cannot read /proc/keys".into()),
            &[("kstack_a", "a", &signed)],
        );
        assert!(report.refused().is_empty());
        assert_eq!(
            report.modules[0].describe(),
            "signed by key id 09 (trust unknown: cannot read /proc/keys)"
        );
    }
}
