//! The object model: what a stack commit's tree holds, and the two TOML files that
//! describe it.
//!
//! ```text
//! stack.toml                      StackFile: build ID, release, ordered patches,
//!                                 each with the SHA-256 of its manifest
//! stack.sig                       Signature over SHA-256(stack.toml) (see `keys`)
//! patches/0001-name/manifest.toml Manifest: SHA-256 of every artifact, functions
//! patches/0001-name/module.ko     the livepatch module
//! patches/0001-name/patch.diff    the source change, when there is one
//! cumulative/manifest.toml        Manifest of the stack's cumulative module, when
//! cumulative/module.ko            it has one: every patch in one livepatch module
//!                                 that replaces whatever runs (`replace = true`)
//! ```
//!
//! These types only parse, print and check their own consistency; reading them out of
//! Git and verifying digests and signatures is `store` and `verify`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::ident::BuildId;
use crate::validity::Validity;

/// Version of the `manifest.toml` format, and the first version of `stack.toml` and
/// `stack.sig` (one signature, no validity window), which kstack still reads.
pub const FORMAT: u32 = 1;
/// Version of the `stack.toml` and `stack.sig` that kstack writes: `stack.toml` has a
/// `[validity]` window, `stack.sig` any number of signatures (approvals).
pub const STACK_FORMAT: u32 = 2;
/// The stack description at the root of a stack commit.
pub const STACK_FILE: &str = "stack.toml";
/// The signature at the root of a stack commit.
pub const SIGNATURE_FILE: &str = "stack.sig";
/// The directory of patches at the root of a stack commit.
pub const PATCHES_DIR: &str = "patches";
/// A patch's manifest, in its directory.
pub const MANIFEST_FILE: &str = "manifest.toml";
/// A patch's livepatch module, in its directory.
pub const MODULE_FILE: &str = "module.ko";
/// A patch's source change, in its directory, when there is one.
pub const DIFF_FILE: &str = "patch.diff";
/// The hook source a patch was built with, in its directory, when there is one.
pub const HOOKS_FILE: &str = "hooks.c";
/// The "before" images of the functions a patch replaces (run-pre matching), in
/// its directory, for patches built from source.
pub const BEFORE_FILE: &str = "before.toml";
/// The directory of the stack's cumulative module, at the root of a stack commit.
pub const CUMULATIVE_DIR: &str = "cumulative";
/// The name the cumulative module's manifest carries.
pub const CUMULATIVE_NAME: &str = "cumulative";
/// Module names kstack gives the patches it builds (`kstack_<12 hex>`), so that the
/// kernel's list of applied patches maps back to the store.
pub const MODULE_PREFIX: &str = "kstack_";
/// Longest stack or patch name.
pub const MAX_NAME_LEN: usize = 64;

/// A malformed `stack.toml` or `manifest.toml`, or a bad name.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "bad {kind} name {name:?}: use 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    BadName { kind: &'static str, name: String },
    #[error("{path}: cannot parse: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: format {found} is not supported (this kstack reads format {FORMAT})")]
    Format { path: String, found: u32 },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("bad function {text:?}: expected NAME, OBJECT:NAME or OBJECT:NAME,SYMPOS")]
    BadFunction { text: String },
}

/// Checks a stack or patch name: it becomes part of a ref name and a directory name.
pub fn check_name(kind: &'static str, name: &str) -> Result<(), ModelError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.contains("..")
        && !name.ends_with(".lock")
        && !name.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(ModelError::BadName {
            kind,
            name: name.to_owned(),
        })
    }
}

/// The directory of the patch at 0-based `index` in a stack: `NNNN-name`.
pub fn patch_dir(index: usize, name: &str) -> String {
    format!("{:04}-{name}", index + 1)
}

/// `stack.toml`: one snapshot of a stack. The signature covers its SHA-256, and
/// through `parent` the whole history before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackFile {
    pub format: u32,
    /// The stack's name, as in `refs/kstack/<build-id>/<name>`.
    pub name: String,
    /// The kernel build this stack is pinned to.
    pub build_id: BuildId,
    /// That kernel's release (`uname -r`); every module's vermagic starts with it.
    pub kernel_release: String,
    /// SHA-256 of the parent commit's `stack.toml`; absent on a stack's first commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Sha256Digest>,
    /// Why this snapshot was made (signed, unlike the Git commit message).
    pub message: String,
    /// Why the stack has no cumulative module, when it cannot have one (a prebuilt
    /// module among its patches, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_cumulative: Option<String>,
    /// When it was signed and until when hosts accept it as the stack's head; every
    /// commit of format 2 has one, format 1 (older kstack) none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity: Option<Validity>,
    /// When this commit promoted another stack's commit (`kstack promote`): which
    /// one. Its patches are then exactly that commit's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<Promotion>,
    /// The stack's cumulative module, when it has one (in [`CUMULATIVE_DIR`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cumulative: Option<CumulativeEntry>,
    /// The patches, in load order.
    #[serde(default, rename = "patch")]
    pub patches: Vec<PatchEntry>,
}

/// The stack commit a promotion took its patches from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promotion {
    /// The source stack's name (same kernel build ID).
    pub stack: String,
    /// The source commit, full hex.
    pub commit: String,
    /// The SHA-256 of the source commit's `stack.toml`.
    pub stack_sha256: Sha256Digest,
}

/// The stack's cumulative module, as `stack.toml` lists it: all its patches in one
/// livepatch module with `replace = true`, which the kernel switches to from whatever
/// runs in a single transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CumulativeEntry {
    /// SHA-256 of `cumulative/manifest.toml`.
    pub manifest_sha256: Sha256Digest,
    /// The SHA-256 of the manifest of each patch it holds, in stack order: exactly
    /// the stack's patches, so a module built for another set can never pass for it.
    pub patches: Vec<Sha256Digest>,
}

/// One patch of a stack, as `stack.toml` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchEntry {
    pub name: String,
    /// Its directory under `patches/`: `NNNN-name`.
    pub dir: String,
    /// SHA-256 of its `manifest.toml`.
    pub manifest_sha256: Sha256Digest,
}

impl StackFile {
    /// The bytes stored as `stack.toml`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a StackFile always serializes: plain strings and tables")
    }

    /// Parses and checks `stack.toml`; `path` names it in errors.
    pub fn parse(bytes: &[u8], path: &str) -> Result<StackFile, ModelError> {
        let stack: StackFile = parse_toml(bytes, path)?;
        stack.check(path)?;
        Ok(stack)
    }

    /// Checks the format, names, directories and order, and the window.
    pub fn check(&self, path: &str) -> Result<(), ModelError> {
        if self.format != FORMAT && self.format != STACK_FORMAT {
            return Err(ModelError::Format {
                path: path.to_owned(),
                found: self.format,
            });
        }
        check_name("stack", &self.name)?;
        let invalid = |message: String| ModelError::Invalid {
            path: path.to_owned(),
            message,
        };
        match (self.format, &self.validity) {
            (FORMAT, Some(_)) => {
                return Err(invalid(format!(
                    "format {FORMAT} has no [validity] (it came with format {STACK_FORMAT})"
                )));
            }
            (FORMAT, None) => {}
            (_, None) => return Err(invalid("no [validity] window".to_owned())),
            (_, Some(window)) => window.check().map_err(|e| invalid(e.to_string()))?,
        }
        if self.kernel_release.is_empty() || self.kernel_release.contains(char::is_whitespace) {
            return Err(invalid(format!(
                "bad kernel release {:?}",
                self.kernel_release
            )));
        }
        let mut seen = HashSet::new();
        for (i, patch) in self.patches.iter().enumerate() {
            check_name("patch", &patch.name)?;
            if !seen.insert(patch.name.as_str()) {
                return Err(invalid(format!("patch {:?} is listed twice", patch.name)));
            }
            let want = patch_dir(i, &patch.name);
            if patch.dir != want {
                return Err(invalid(format!(
                    "patch {} {:?} has directory {:?}, expected {want:?}",
                    i + 1,
                    patch.name,
                    patch.dir
                )));
            }
        }
        if let Some(cumulative) = &self.cumulative {
            if self.no_cumulative.is_some() {
                return Err(invalid(
                    "has both a cumulative module and a reason for having none".to_owned(),
                ));
            }
            let patches: Vec<Sha256Digest> =
                self.patches.iter().map(|p| p.manifest_sha256).collect();
            if patches.is_empty() || cumulative.patches != patches {
                return Err(invalid(
                    "the cumulative module was built for other patches than the stack's".to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// The patch named `name`, with its 0-based index.
    pub fn patch(&self, name: &str) -> Option<(usize, &PatchEntry)> {
        self.patches
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == name)
    }
}

/// Where a patch came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatchSource {
    /// A module built elsewhere and imported with `kstack commit --module`.
    Prebuilt,
    /// Built by kstack from a unified diff.
    Diff,
    /// The stack's cumulative module, linked by kstack from its patches' builds.
    Cumulative,
}

/// `manifest.toml`: everything about one patch, with the SHA-256 of every artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub source: PatchSource,
    /// The file name the module had when it was committed.
    pub module_file: String,
    /// The module's own name (modinfo `name=`), as `/proc/modules` and
    /// `/sys/kernel/livepatch` will show it; kstack-built ones are `kstack_<12 hex>`.
    pub module_name: String,
    /// The module's vermagic, verbatim.
    pub vermagic: String,
    pub kernel_release: String,
    pub build_id: BuildId,
    /// Who committed it (`user@host`) and when (RFC 3339, UTC).
    pub created_by: String,
    pub created_at: String,
    /// How it was built (compiler, flags), when kstack built it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub build: BTreeMap<String, String>,
    /// Every file of the patch's directory except the manifest itself.
    #[serde(rename = "artifact")]
    pub artifacts: Vec<Artifact>,
    /// The functions the patch replaces.
    #[serde(default, rename = "function")]
    pub functions: Vec<FunctionRef>,
}

/// One file of a patch and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Relative to the patch's directory.
    pub path: String,
    pub sha256: Sha256Digest,
    pub size: u64,
}

/// A function replaced by a patch: the object it lives in (`vmlinux` or a module
/// name) and its name, with `sympos` telling apart same-named static functions
/// (0: the name is unique), as in `struct klp_func`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionRef {
    pub object: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sympos: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The object of a function in the kernel image itself.
pub use kstack_kfacts::livepatch::VMLINUX;

impl fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.object, self.name)?;
        if self.sympos != 0 {
            write!(f, ",{}", self.sympos)?;
        }
        Ok(())
    }
}

impl FromStr for FunctionRef {
    type Err = ModelError;

    /// `NAME` (in vmlinux), `OBJECT:NAME` or `OBJECT:NAME,SYMPOS`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ModelError::BadFunction {
            text: text.to_owned(),
        };
        let (object, rest) = match text.split_once(':') {
            Some((o, r)) => (o, r),
            None => (VMLINUX, text),
        };
        let (name, sympos) = match rest.split_once(',') {
            Some((n, p)) => (n, p.parse::<u64>().map_err(|_| bad())?),
            None => (rest, 0),
        };
        let ident = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        };
        if !ident(object) || !ident(name) {
            return Err(bad());
        }
        Ok(FunctionRef {
            object: object.to_owned(),
            name: name.to_owned(),
            sympos,
        })
    }
}

impl Manifest {
    /// The bytes stored as `manifest.toml`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a Manifest always serializes: plain strings and tables")
    }

    /// Parses and checks `manifest.toml`; `path` names it in errors.
    pub fn parse(bytes: &[u8], path: &str) -> Result<Manifest, ModelError> {
        let manifest: Manifest = parse_toml(bytes, path)?;
        manifest.check(path)?;
        Ok(manifest)
    }

    /// Checks the name, the artifact paths and that the module is listed.
    pub fn check(&self, path: &str) -> Result<(), ModelError> {
        if self.format != FORMAT {
            return Err(ModelError::Format {
                path: path.to_owned(),
                found: self.format,
            });
        }
        check_name("patch", &self.name)?;
        let invalid = |message: String| ModelError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut seen = HashSet::new();
        for artifact in &self.artifacts {
            let p = artifact.path.as_str();
            let clean = !p.is_empty()
                && p != MANIFEST_FILE
                && p.split('/')
                    .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
            if !clean {
                return Err(invalid(format!("bad artifact path {p:?}")));
            }
            if !seen.insert(p) {
                return Err(invalid(format!("artifact {p:?} is listed twice")));
            }
        }
        if !seen.contains(MODULE_FILE) {
            return Err(invalid(format!("no {MODULE_FILE} among the artifacts")));
        }
        Ok(())
    }

    /// The digest recorded for the artifact at `path`.
    pub fn artifact(&self, path: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.path == path)
    }
}

fn parse_toml<T: serde::de::DeserializeOwned>(bytes: &[u8], path: &str) -> Result<T, ModelError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ModelError::Parse {
        path: path.to_owned(),
        message: format!("not UTF-8: {e}"),
    })?;
    toml::from_str(text).map_err(|e| ModelError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::validity::Timestamp;

    fn stack() -> StackFile {
        StackFile {
            format: STACK_FORMAT,
            name: "prod".into(),
            build_id: "4a5a9b0affb66c437abcd455d2738af879985fa9".parse().unwrap(),
            kernel_release: "6.1.0-56-cloud-amd64".into(),
            parent: Some(Sha256Digest::of(b"parent")),
            message: "add foo\n\nwith a body".into(),
            no_cumulative: None,
            validity: Some(Validity::starting(
                Timestamp::from_secs(1_700_000_000),
                std::time::Duration::from_secs(86_400),
            )),
            promoted_from: None,
            cumulative: None,
            patches: vec![PatchEntry {
                name: "foo".into(),
                dir: patch_dir(0, "foo"),
                manifest_sha256: Sha256Digest::of(b"m"),
            }],
        }
    }

    #[test]
    fn stack_round_trips() {
        let s = stack();
        let text = s.to_toml();
        assert!(text.contains("[[patch]]"), "{text}");
        assert!(text.contains("dir = \"0001-foo\""), "{text}");
        assert_eq!(StackFile::parse(text.as_bytes(), "stack.toml").unwrap(), s);
    }

    #[test]
    fn a_promotion_round_trips_and_is_absent_otherwise() {
        let mut s = stack();
        assert!(!s.to_toml().contains("promoted_from"));
        s.promoted_from = Some(Promotion {
            stack: "canary".into(),
            commit: "4579399eeb9650bdc9514dcbbd577ed089abe0fc".into(),
            stack_sha256: Sha256Digest::of(b"canary"),
        });
        let text = s.to_toml();
        assert!(text.contains("[promoted_from]"), "{text}");
        assert_eq!(StackFile::parse(text.as_bytes(), "stack.toml").unwrap(), s);
    }

    #[test]
    fn a_cumulative_entry_round_trips_and_must_cover_the_stack() {
        let mut s = stack();
        assert!(!s.to_toml().contains("cumulative"));
        s.cumulative = Some(CumulativeEntry {
            manifest_sha256: Sha256Digest::of(b"c"),
            patches: vec![Sha256Digest::of(b"m")],
        });
        let text = s.to_toml();
        assert!(text.contains("[cumulative]"), "{text}");
        assert_eq!(StackFile::parse(text.as_bytes(), "stack.toml").unwrap(), s);

        let mut other = s.clone();
        other.cumulative.as_mut().unwrap().patches = vec![Sha256Digest::of(b"x")];
        let err = StackFile::parse(other.to_toml().as_bytes(), "stack.toml").unwrap_err();
        assert!(err.to_string().contains("other patches"), "{err}");
        let mut both = s.clone();
        both.no_cumulative = Some("a prebuilt module".into());
        let err = StackFile::parse(both.to_toml().as_bytes(), "stack.toml").unwrap_err();
        assert!(err.to_string().contains("both"), "{err}");
        let mut reason = stack();
        reason.no_cumulative = Some("patch foo is a prebuilt module".into());
        let text = reason.to_toml();
        assert_eq!(
            StackFile::parse(text.as_bytes(), "stack.toml").unwrap(),
            reason
        );
    }

    #[test]
    fn stack_checks_dirs_and_duplicates() {
        let mut s = stack();
        s.patches[0].dir = "0002-foo".into();
        let err = StackFile::parse(s.to_toml().as_bytes(), "stack.toml").unwrap_err();
        assert!(err.to_string().contains("expected \"0001-foo\""), "{err}");
        let mut s = stack();
        s.patches.push(PatchEntry {
            dir: patch_dir(1, "foo"),
            ..s.patches[0].clone()
        });
        let err = StackFile::parse(s.to_toml().as_bytes(), "stack.toml").unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
    }

    #[test]
    fn unknown_fields_and_formats_are_refused() {
        let text = stack().to_toml() + "extra = 1\n";
        let err = StackFile::parse(text.as_bytes(), "stack.toml").unwrap_err();
        assert!(
            err.to_string().starts_with("stack.toml: cannot parse"),
            "{err}"
        );
        let mut s = stack();
        s.format = 9;
        let err = StackFile::parse(s.to_toml().as_bytes(), "stack.toml").unwrap_err();
        assert!(err.to_string().contains("format 9"), "{err}");
        // Format 1 (before windows) is read; a window in it, or none in format 2, is not.
        let mut s = stack();
        s.validity = None;
        assert!(StackFile::parse(s.to_toml().as_bytes(), "stack.toml").is_err());
        s.format = FORMAT;
        StackFile::parse(s.to_toml().as_bytes(), "stack.toml").unwrap();
        s.validity = stack().validity;
        assert!(StackFile::parse(s.to_toml().as_bytes(), "stack.toml").is_err());
        let mut s = stack();
        s.validity = Some(Validity {
            signed_at: Timestamp::from_secs(10),
            expires: Timestamp::from_secs(9),
        });
        let err = StackFile::parse(s.to_toml().as_bytes(), "stack.toml").unwrap_err();
        assert!(err.to_string().contains("before it starts"), "{err}");
    }

    #[test]
    fn names() {
        for ok in ["a", "fix-cve-2024.1", "A_b", "0001"] {
            check_name("patch", ok).unwrap();
        }
        for bad in [
            "",
            "-a",
            ".a",
            "a/b",
            "a..b",
            "a.lock",
            "a.",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(check_name("patch", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn function_refs() {
        let f: FunctionRef = "cmdline_proc_show".parse().unwrap();
        assert_eq!(f.to_string(), "vmlinux:cmdline_proc_show");
        let f: FunctionRef = "ext4:ext4_fill_super,2".parse().unwrap();
        assert_eq!((f.object.as_str(), f.sympos), ("ext4", 2));
        assert_eq!(f.to_string(), "ext4:ext4_fill_super,2");
        assert!("a:b:c".parse::<FunctionRef>().is_err());
        assert!("a,x".parse::<FunctionRef>().is_err());
    }

    #[test]
    fn manifest_requires_the_module() {
        let m = Manifest {
            format: FORMAT,
            name: "foo".into(),
            source: PatchSource::Prebuilt,
            module_file: "foo.ko".into(),
            module_name: "kstack_0123456789ab".into(),
            vermagic: "6.1.0-56-cloud-amd64 SMP preempt mod_unload modversions ".into(),
            kernel_release: "6.1.0-56-cloud-amd64".into(),
            build_id: "00ff".parse().unwrap(),
            created_by: "root@host".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            build: BTreeMap::new(),
            artifacts: vec![Artifact {
                path: DIFF_FILE.into(),
                sha256: Sha256Digest::of(b""),
                size: 0,
            }],
            functions: vec![],
        };
        let err = Manifest::parse(m.to_toml().as_bytes(), "p/manifest.toml").unwrap_err();
        assert!(err.to_string().contains("no module.ko"), "{err}");
        let mut m2 = m.clone();
        m2.artifacts[0].path = "../x".into();
        assert!(Manifest::parse(m2.to_toml().as_bytes(), "m").is_err());
        let mut m3 = m;
        m3.artifacts[0].path = MODULE_FILE.into();
        m3.functions.push("f".parse().unwrap());
        let text = m3.to_toml();
        assert!(text.contains("[[function]]"), "{text}");
        assert_eq!(Manifest::parse(text.as_bytes(), "m").unwrap(), m3);
    }
}
