//! Signing the modules kstack builds, for hosts that enforce module signatures
//! (`module.sig_enforce=1`, lockdown, UEFI Secure Boot).
//!
//! The signature is the kernel's own: `scripts/sign-file` of the target kernel's
//! headers appends a detached PKCS#7 message, `struct module_signature` and
//! `"~Module signature appended~\n"` to the final module (after the post-link
//! rewrite, so that it covers the bytes the kernel loads), exactly as `make
//! modules_sign` does. kstack passes `-k` when the certificate has a
//! subjectKeyIdentifier: the signature then names the key the way the kernel names it
//! in its keyrings, and a host can tell before loading whether it trusts the key
//! (see `host::signatures`). The signed bytes go into the store as `module.ko`, so
//! the manifest's SHA-256 and the stack's ed25519 signature cover the module
//! signature too.

use std::path::{Path, PathBuf};
use std::process::Command;

use kstack_kfacts::modsig::{self, CertificateInfo, ModSigError};

/// The digest `sign-file` is asked for: what Debian's kernels are configured with
/// (`CONFIG_MODULE_SIG_HASH="sha256"`) and every signing kernel supports.
pub const SIGN_HASH: &str = "sha256";

/// Where a kernel's headers keep the signing tool (`scripts/sign-file`, built by
/// kbuild; Debian ships it in `linux-kbuild-<version>`).
pub const SIGN_FILE: &str = "scripts/sign-file";

/// A key cannot sign, or signing failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("module signing: cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("module signing certificate {path}: {source}")]
    Certificate {
        path: PathBuf,
        #[source]
        source: ModSigError,
    },
    #[error(
        "module signing key {path} can be read by others (mode {mode:o}); a private key must be mode 0600"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("the kernel's signing tool {0} is missing (it comes with the kernel's headers)")]
    NoSignFile(PathBuf),
    #[error("{tool} failed ({status}): {stderr}")]
    SignFile {
        tool: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("the module {tool} signed does not read back as signed by {expected}: {found}")]
    Check {
        tool: PathBuf,
        expected: String,
        found: String,
    },
    #[error("module signing: {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A private key and its certificate, checked, ready to sign modules.
#[derive(Debug, Clone)]
pub struct ModuleSigner {
    /// A PEM private key file, or a `pkcs11:` URI that `sign-file` passes to
    /// OpenSSL's engine.
    pub key: String,
    pub cert_path: PathBuf,
    pub cert: CertificateInfo,
}

impl ModuleSigner {
    /// Reads the certificate and checks that the key file is private (0600).
    pub fn load(key: &Path, cert: &Path) -> Result<ModuleSigner, SignError> {
        let key_text = key.to_string_lossy().into_owned();
        if !key_text.starts_with("pkcs11:") {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(key).map_err(|source| SignError::Read {
                what: "key",
                path: key.to_owned(),
                source,
            })?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(SignError::KeyPermissions {
                    path: key.to_owned(),
                    mode,
                });
            }
        }
        let bytes = std::fs::read(cert).map_err(|source| SignError::Read {
            what: "certificate",
            path: cert.to_owned(),
            source,
        })?;
        let info = modsig::read_certificate(&bytes).map_err(|source| SignError::Certificate {
            path: cert.to_owned(),
            source,
        })?;
        Ok(ModuleSigner {
            key: key_text,
            cert_path: cert.to_owned(),
            cert: info,
        })
    }

    /// How the signer is recorded in a patch's build information: the certificate's
    /// subject and the id the signature names.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.cert.subject, self.cert.signer_id())
    }

    /// Signs `module` with the kernel's `sign-file` from `headers`, working in
    /// `work`, and checks that the result carries a signature by this key over
    /// exactly `module`.
    pub fn sign(&self, module: &[u8], headers: &Path, work: &Path) -> Result<Vec<u8>, SignError> {
        let tool = headers.join(SIGN_FILE);
        if !tool.is_file() {
            return Err(SignError::NoSignFile(tool));
        }
        std::fs::create_dir_all(work).map_err(|source| SignError::Io {
            path: work.to_owned(),
            source,
        })?;
        let unsigned = work.join("module.unsigned.ko");
        let signed = work.join("module.signed.ko");
        std::fs::write(&unsigned, module).map_err(|source| SignError::Io {
            path: unsigned.clone(),
            source,
        })?;
        let mut cmd = Command::new(&tool);
        if self.cert.key_id.is_some() {
            cmd.arg("-k");
        }
        let out = cmd
            .arg(SIGN_HASH)
            .arg(&self.key)
            .arg(&self.cert_path)
            .arg(&unsigned)
            .arg(&signed)
            .output()
            .map_err(|source| SignError::Io {
                path: tool.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(SignError::SignFile {
                tool,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let bytes = std::fs::read(&signed).map_err(|source| SignError::Io {
            path: signed.clone(),
            source,
        })?;
        let expected = self.cert.signer_id();
        let check = |found: String| SignError::Check {
            tool: tool.clone(),
            expected: expected.to_string(),
            found,
        };
        match modsig::read_signature(&bytes) {
            Ok(Some(sig))
                if sig.signer == expected
                    && sig.signed_len == module.len()
                    && bytes[..module.len()] == *module =>
            {
                Ok(bytes)
            }
            Ok(Some(sig)) => Err(check(format!(
                "a signature by {} over {} bytes",
                sig.signer, sig.signed_len
            ))),
            Ok(None) => Err(check("no signature".into())),
            Err(e) => Err(check(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "not a key").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = ModuleSigner::load(&key, &dir.path().join("cert.pem")).unwrap_err();
        assert!(
            matches!(err, SignError::KeyPermissions { mode: 0o644, .. }),
            "{err}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = ModuleSigner::load(&key, &dir.path().join("cert.pem")).unwrap_err();
        assert!(
            matches!(
                err,
                SignError::Read {
                    what: "certificate",
                    ..
                }
            ),
            "{err}"
        );
        std::fs::write(
            dir.path().join("cert.pem"),
            "-----BEGIN CERTIFICATE-----\nxx\n",
        )
        .expect("write");
        let err = ModuleSigner::load(&key, &dir.path().join("cert.pem")).unwrap_err();
        assert!(matches!(err, SignError::Certificate { .. }), "{err}");
    }
}
