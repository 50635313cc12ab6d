//! What the running kernel requires of a module's signature, and which keys it
//! trusts for module signatures.
//!
//! Enforcement: `module.sig_enforce` (sysfs), the lockdown LSM's mode (securityfs)
//! and, for the record, whether the firmware booted with UEFI Secure Boot (efivarfs;
//! Debian's kernels lock down to `integrity` then). Each reads as unknown when its
//! file system is not mounted.
//!
//! Trusted keys: the asymmetric keys in the keyrings that `mod_verify_sig()` checks
//! ([`TRUSTED_KEYRINGS`]), found by name in `/proc/keys` and listed with
//! `keyctl(KEYCTL_READ)` and `keyctl(KEYCTL_DESCRIBE)`, as `keyctl list
//! %:.platform` does. Root can read them; an unprivileged user, a kernel without
//! `CONFIG_KEYS`, or a seccomp filter make the list unknown, and then nothing is
//! concluded about trust.

use std::collections::BTreeSet;
use std::path::Path;

use nix::libc;

use kstack_kfacts::modsig::{
    EFIVARS_SECURE_BOOT, SECURITYFS_LOCKDOWN, SYSFS_SIG_ENFORCE, TRUSTED_KEYRINGS,
};

pub use kstack_kfacts::paths::PROC_KEYS;

/// `keyctl(2)` commands (include/uapi/linux/keyctl.h).
const KEYCTL_DESCRIBE: libc::c_long = 6;
const KEYCTL_READ: libc::c_long = 11;

/// A directory sysfs always has: present when sysfs is mounted.
const SYSFS_MODULE_DIR: &str = "sys/module";

/// securityfs' list of the active LSMs (security/inode.c): readable when securityfs
/// is mounted, with or without the lockdown LSM.
const SECURITYFS_LSM: &str = "sys/kernel/security/lsm";

/// What the kernel enforces for module signatures.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Enforcement {
    /// `module.sig_enforce`; `false` also when the kernel has no module signing
    /// (`CONFIG_MODULE_SIG` unset: the parameter does not exist and no signature is
    /// checked); `None` when sysfs is not mounted.
    pub sig_enforce: Option<bool>,
    /// The lockdown mode in force: `none`, `integrity` or `confidentiality`;
    /// `none` also without the lockdown LSM; `None` when securityfs is not mounted.
    pub lockdown: Option<String>,
    /// Whether the firmware booted with Secure Boot; `None` when not known (not a
    /// UEFI boot, or efivarfs not mounted).
    pub secure_boot: Option<bool>,
}

impl Enforcement {
    /// The running kernel's.
    pub fn read() -> Enforcement {
        Enforcement::read_from(Path::new("/"))
    }

    /// Reads the files below `root` (`/` for the running kernel; tests give a copy).
    pub fn read_from(root: &Path) -> Enforcement {
        let text = |rel: &str| std::fs::read_to_string(root.join(rel)).ok();
        let sig_enforce = match text(SYSFS_SIG_ENFORCE) {
            Some(t) => Some(t.trim() == "Y" || t.trim() == "1"),
            None => root.join(SYSFS_MODULE_DIR).is_dir().then_some(false),
        };
        // "[none] integrity confidentiality": the mode in force is bracketed.
        let lockdown = match text(SECURITYFS_LOCKDOWN) {
            Some(t) => (|| {
                let start = t.find('[')?;
                let end = t[start..].find(']')?;
                Some(t[start + 1..start + end].to_owned())
            })(),
            None => text(SECURITYFS_LSM).map(|_| "none".to_owned()),
        };
        // Four bytes of attributes, then the value.
        let secure_boot = std::fs::read(root.join(EFIVARS_SECURE_BOOT))
            .ok()
            .and_then(|b| b.get(4).map(|v| *v == 1));
        Enforcement {
            sig_enforce,
            lockdown,
            secure_boot,
        }
    }

    /// Whether the kernel refuses a module that has no valid signature by a key it
    /// trusts: `module.sig_enforce`, or lockdown at `integrity` or above
    /// (`module_sig_check()`, kernel/module/signing.c).
    pub fn enforced(&self) -> bool {
        self.sig_enforce == Some(true)
            || self.lockdown.as_deref().is_some_and(|mode| mode != "none")
    }

    /// Whether the answer of [`Enforcement::enforced`] is known: it is when a source
    /// enforces, or when every source that could (sig_enforce, lockdown) was read.
    pub fn known(&self) -> bool {
        self.enforced() || (self.sig_enforce.is_some() && self.lockdown.is_some())
    }

    /// The files that could not be read, as absolute paths (empty when
    /// [`Enforcement::known`] holds because everything was read).
    pub fn unreadable(&self) -> Vec<String> {
        [
            (self.sig_enforce.is_none(), SYSFS_SIG_ENFORCE),
            (self.lockdown.is_none(), SECURITYFS_LOCKDOWN),
        ]
        .into_iter()
        .filter(|(missing, _)| *missing)
        .map(|(_, rel)| format!("/{rel}"))
        .collect()
    }

    /// Why signatures are enforced, in words (empty when they are not).
    pub fn reasons(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.sig_enforce == Some(true) {
            out.push("module.sig_enforce=1".to_owned());
        }
        if let Some(mode) = self.lockdown.as_deref().filter(|m| *m != "none") {
            let because = if self.secure_boot == Some(true) {
                " (UEFI Secure Boot)"
            } else {
                ""
            };
            out.push(format!("lockdown={mode}{because}"));
        }
        out
    }
}

/// An asymmetric key in one of the keyrings module signatures are checked against.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TrustedKey {
    /// The keyring that holds it (`.builtin_trusted_keys`, `.platform`, ...).
    pub keyring: String,
    /// The kernel's description of the key: `<subject>: <hex key id>`.
    pub description: String,
}

/// The keys the kernel trusts for module signatures, or why they are not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustedKeys {
    Known(Vec<TrustedKey>),
    Unknown(String),
}

impl TrustedKeys {
    /// Lists the running kernel's trusted keys.
    pub fn read() -> TrustedKeys {
        let text = match std::fs::read_to_string(PROC_KEYS) {
            Ok(text) => text,
            Err(e) => return TrustedKeys::Unknown(format!("cannot read {PROC_KEYS}: {e}")),
        };
        let keyrings = keyrings_in_proc_keys(&text);
        if keyrings.is_empty() {
            return TrustedKeys::Unknown(format!(
                "{PROC_KEYS} shows none of the keyrings {} (not root?)",
                TRUSTED_KEYRINGS.join(", ")
            ));
        }
        let mut keys = Vec::new();
        let mut seen = BTreeSet::new();
        for (serial, name) in keyrings {
            if let Err(e) = collect_keys(serial, &name, &mut keys, &mut seen, 0) {
                return TrustedKeys::Unknown(format!("keyctl on keyring {name}: {e}"));
            }
        }
        TrustedKeys::Known(keys)
    }
}

/// The serials and names of the trusted keyrings that a `/proc/keys` text lists:
/// lines `serial flags usage expiry perm uid gid keyring <name>: <count>`.
pub fn keyrings_in_proc_keys(text: &str) -> Vec<(i32, String)> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(7) != Some(&"keyring") {
                return None;
            }
            let name = fields.get(8)?.trim_end_matches(':');
            let serial = u32::from_str_radix(fields[0], 16).ok()? as i32;
            TRUSTED_KEYRINGS
                .contains(&name)
                .then(|| (serial, name.to_owned()))
        })
        .collect()
}

/// Adds the asymmetric keys of a keyring (and of the keyrings it links) to `out`.
fn collect_keys(
    keyring: i32,
    name: &str,
    out: &mut Vec<TrustedKey>,
    seen: &mut BTreeSet<i32>,
    depth: usize,
) -> std::io::Result<()> {
    // The kernel nests system keyrings two deep (secondary -> builtin, machine).
    if depth > 4 || !seen.insert(keyring) {
        return Ok(());
    }
    let raw = keyctl_buffer(KEYCTL_READ, keyring)?;
    for chunk in raw.chunks_exact(4) {
        let member = i32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let Ok(text) = keyctl_buffer(KEYCTL_DESCRIBE, member) else {
            continue;
        };
        // "type;uid;gid;perm;description\0"
        let text = String::from_utf8_lossy(&text);
        let mut parts = text.trim_end_matches('\0').splitn(5, ';');
        let kind = parts.next().unwrap_or("");
        let description = parts.nth(3).unwrap_or("").to_owned();
        match kind {
            "keyring" => collect_keys(member, &description, out, seen, depth + 1)?,
            "asymmetric" if seen.insert(member) => out.push(TrustedKey {
                keyring: name.to_owned(),
                description,
            }),
            _ => {}
        }
    }
    Ok(())
}

/// A `keyctl(2)` call that fills a buffer (`KEYCTL_READ`, `KEYCTL_DESCRIBE`),
/// growing it until the kernel's answer fits.
fn keyctl_buffer(command: libc::c_long, id: i32) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which is
        // valid for that many; it returns the full length it needed.
        let n = unsafe {
            libc::syscall(
                libc::SYS_keyctl,
                command,
                libc::c_long::from(id),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        if n <= buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(n, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforcement_reads_sysfs_securityfs_and_efivars() {
        let root = tempfile::tempdir().expect("tempdir");
        let write = |rel: &str, bytes: &[u8]| {
            let path = root.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
            std::fs::write(path, bytes).expect("write");
        };
        // Nothing mounted: nothing known.
        assert_eq!(Enforcement::read_from(root.path()), Enforcement::default());
        assert!(!Enforcement::default().enforced());
        assert!(!Enforcement::default().known());
        // sysfs and securityfs mounted, but a kernel without module signing and
        // without the lockdown LSM: known not to enforce.
        std::fs::create_dir_all(root.path().join(SYSFS_MODULE_DIR)).expect("mkdir");
        write(SECURITYFS_LSM, b"capability,yama,apparmor");
        let e = Enforcement::read_from(root.path());
        assert_eq!(e.sig_enforce, Some(false));
        assert_eq!(e.lockdown.as_deref(), Some("none"));
        assert!(e.known() && !e.enforced());
        assert!(e.unreadable().is_empty());
        write(SYSFS_SIG_ENFORCE, b"N\n");
        write(SECURITYFS_LOCKDOWN, b"[none] integrity confidentiality\n");
        let e = Enforcement::read_from(root.path());
        assert_eq!(e.sig_enforce, Some(false));
        assert_eq!(e.lockdown.as_deref(), Some("none"));
        assert!(!e.enforced());
        assert!(e.reasons().is_empty());
        write(SECURITYFS_LOCKDOWN, b"none [integrity] confidentiality\n");
        write(EFIVARS_SECURE_BOOT, &[6, 0, 0, 0, 1]);
        let e = Enforcement::read_from(root.path());
        assert!(e.enforced());
        assert_eq!(e.secure_boot, Some(true));
        assert_eq!(e.reasons(), ["lockdown=integrity (UEFI Secure Boot)"]);
        write(SYSFS_SIG_ENFORCE, b"Y\n");
        write(SECURITYFS_LOCKDOWN, b"[none] integrity confidentiality\n");
        let e = Enforcement::read_from(root.path());
        assert!(e.enforced());
        assert_eq!(e.reasons(), ["module.sig_enforce=1"]);
    }

    #[test]
    fn without_securityfs_a_kernel_that_does_not_enforce_sig_enforce_is_unknown() {
        // Lockdown could still refuse unsigned modules: nothing says it does not.
        let root = tempfile::tempdir().expect("tempdir");
        let path = root.path().join(SYSFS_SIG_ENFORCE);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(&path, b"N\n").expect("write");
        let e = Enforcement::read_from(root.path());
        assert_eq!(e.sig_enforce, Some(false));
        assert_eq!(e.lockdown, None);
        assert!(!e.enforced());
        assert!(!e.known());
        assert_eq!(e.unreadable(), ["/sys/kernel/security/lockdown"]);
    }

    #[test]
    fn proc_keys_names_the_trusted_keyrings() {
        // As a 6.1 guest booted under OVMF shows it.
        let text = "\
01581568 I--Q---     2 perm 1f3f0000     0 65534 keyring   _uid.0: empty
1b3780b2 I------     1 perm 1f030000     0     0 asymmetri Build time autogenerated kernel key: cf735cef: X509.rsa 524668e2 []
2999938d I------     2 perm 1f0b0000     0     0 keyring   .builtin_trusted_keys: 1
2a67bd73 I------     1 perm 1f0f0000     0     0 keyring   .secondary_trusted_keys: 2
393206cc I------     1 perm 0f0b0000     0     0 keyring   .blacklist: empty
3e2736fa I------     1 perm 1f0b0000     0     0 keyring   .platform: 1
3fde176f I------     2 perm 1f0b0000     0     0 keyring   .machine: empty
";
        assert_eq!(
            keyrings_in_proc_keys(text),
            [
                (0x2999938d, ".builtin_trusted_keys".to_owned()),
                (0x2a67bd73, ".secondary_trusted_keys".to_owned()),
                (0x3e2736fa, ".platform".to_owned()),
                (0x3fde176f, ".machine".to_owned()),
            ]
        );
    }
}
