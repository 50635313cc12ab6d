//! Run-pre matching: proving that a patch was built for the code it is about to
//! replace (Ksplice's `run-pre` check, `kmodsrc/ksplice.c`).
//!
//! The builder keeps, for every function a patch replaces, its "before" image: the
//! bytes the pre object holds for it, its relocation sites and the special-section
//! entries (alternatives, static keys, return and retpoline sites, ...) that let the
//! kernel rewrite it at boot ([`before_image`]). Before loading, the matcher reads
//! the running kernel's code at the kallsyms addresses of that name and compares
//! ([`match_function`]): relocation fields masked and then checked against kallsyms,
//! instruction by instruction (decoded with `iced-x86`), so that the honest
//! differences between a freshly compiled object and a booted kernel pass and
//! everything else is reported with the offset, both byte strings and a likely cause.
//!
//! - [`before`]: the "before" image of a function, from a relocatable object.
//! - [`module`]: a module that is not loaded, laid out as it would be once loaded.
//! - [`text`]: where the running code comes from: `/proc/kcore`, a kernel image file
//!   (offline), or bytes in memory (tests, dumps).
//! - [`sources`]: which of those (or which laid-out module) a function's object is
//!   compared with.
//! - [`matcher`]: the comparison and its report.
//!
//! The verdict ([`Outcome`]) is one of: matched (with the `sympos` that matched,
//! for the caller to check against the patch's), ambiguous (same-named statics
//! with identical code), overridden (a `__weak` definition another file's strong
//! one replaced), freed (`__init` code the kernel poisoned after boot), not found,
//! differs (with a [`Divergence`]: offset, both byte strings and instructions, a
//! likely [`Cause`]), or unreadable.
//!
//! It is not a loader and it does not resolve symbols for the patch: the kernel's
//! livepatch relocations do that. The match is the proof, nothing more.

pub mod before;
pub mod matcher;
pub mod module;
pub mod sources;
pub mod text;

use std::path::PathBuf;

pub use before::{
    BeforeImage, Binding, Referent, RelocKind, RelocSite, RelocTarget, Replacement, Site, SiteKind,
    before_image, before_image_named,
};
pub use kstack_kfacts::kallsyms::{KallsymsError, KallsymsIndex, Ksym};
pub use matcher::{
    CandidateMatch, Cause, Divergence, FentryState, MatchReport, MatchStats, Outcome, explain_cold,
    explain_weak, match_by_name, match_function, read_len,
};
pub use module::{ModuleImage, ModulesDir};
pub use sources::CodeSources;
pub use text::{ImageText, Kcore, KernelText, MemoryText};

/// A patch's `before.toml`: the code each replaced function had in the objects the
/// patch was built from, with its relocation sites. The builder writes it; `kstack
/// sync` and `kstack verify --running` compare it with the running kernel before the
/// patch is loaded.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct BeforeFile {
    #[serde(default, rename = "function")]
    pub functions: Vec<BeforeImage>,
}

impl BeforeFile {
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("before images serialize: plain fields and tables")
    }

    pub fn parse(bytes: &[u8]) -> Result<BeforeFile, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// Everything that can stop run-pre matching before a comparison has a result.
#[derive(Debug, thiserror::Error)]
pub enum RunPreError {
    #[error("{what}: {source}")]
    Object {
        what: String,
        #[source]
        source: kstack_kfacts::elf::ElfError,
    },
    #[error("{what}: {detail}")]
    BadObject { what: String, detail: String },
    #[error("{what}: no function {function} is defined in it")]
    NoSuchFunction { what: String, function: String },
    #[error("before image of {function}: {detail}")]
    BadImage { function: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{source_name}: cannot read {len} bytes at {addr:#x}: {source} (kcore refuses some ranges of kernel text; run as root, and check lockdown)"
    )]
    Read {
        source_name: String,
        addr: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{source_name}: no segment maps {len} bytes at {addr:#x}")]
    Unmapped {
        source_name: String,
        addr: u64,
        len: usize,
    },
    #[error("kernel image {what}: {detail}")]
    Image { what: String, detail: String },
    #[error("kallsyms: {0}")]
    Kallsyms(#[from] KallsymsError),
    #[error("before image TOML: {0}")]
    Toml(String),
}
