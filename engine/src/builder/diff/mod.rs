//! The ELF differ: compares the "pre" and "post" relocatable objects of one
//! translation unit and says which functions changed, which are new, and what must
//! be refused.
//!
//! Both objects are x86-64 `.o` files compiled with the kernel's flags plus
//! `-ffunction-sections -fdata-sections`, so (nearly) every function and data object
//! has its own section. The differ
//!
//! 1. correlates functions and data objects by name with compiler suffixes removed
//!    (`.constprop.N`, `.isra.N`, `.part.N`, numbered static locals, the counter of
//!    `__UNIQUE_ID_*`), pairing same-named candidates by content and by who refers
//!    to them; `foo.cold` is a part of `foo`, not a function of its own;
//! 2. compares a pair by its bytes with every relocated field zeroed, and by what each
//!    relocation refers to (a correlated symbol, the contents of a string literal),
//!    never by offsets that the layout of the rest of the object decides;
//! 3. counts the special-section entries that point into a function (`__bug_table`,
//!    `__jump_table`, `.altinstructions`, ORC, ...) as part of it, except a WARN's or
//!    BUG's line number;
//! 4. refuses what a live patch cannot do: changed data, changed `__init` code, and
//!    changed functions that ftrace cannot redirect (no `call __fentry__`).
//!
//! When in doubt a function is "changed": a false "unchanged" would ship a patch that
//! silently misses part of the fix. The result is a [`DiffReport`] whose findings
//! carry stable keys (`function:changed:foo`, `refuse:data:bar`) so that callers can
//! filter and tests can snapshot it.
//!
//! Submodules, in the order a comparison uses them: `model` (the object as the
//! differ classifies it), `names`, `entities`, `shape` (what an entity is, for
//! comparing), `correlate` (pairing and the report), `compare` (reasons).
//!
//! Not here: building the output object ([`super::klp`]) and resolving symbols
//! against the running kernel.

mod compare;
mod correlate;
mod entities;
mod model;
mod names;
mod shape;

use std::collections::BTreeSet;
use std::fmt;

use kstack_kfacts::dwarf::TypeLayouts;
use serde::Serialize;

pub use names::normalize_name;

use correlate::Differ;
use model::Elf;

/// Which object an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Pre,
    Post,
    /// The object given to [`special_entries`].
    Object,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Pre => "pre",
            Side::Post => "post",
            Side::Object => "the",
        })
    }
}

/// Why two objects could not be compared.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{side} object is not a readable ELF object: {source}")]
    Parse {
        side: Side,
        #[source]
        source: object::Error,
    },
    #[error("{side} object is {found}; expected an x86-64 relocatable object (.o)")]
    Unsupported { side: Side, found: String },
    #[error("{side} object, section {section}: {detail}")]
    Malformed {
        side: Side,
        section: String,
        detail: String,
    },
}

/// What the caller allows beyond the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiffOptions {
    /// Data objects whose change a hook of the patch handles (by pre or post
    /// symbol name, or the name without compiler suffixes): reported as changed but
    /// not refused.
    pub allowed_data: BTreeSet<String>,
    /// The object's `__init` code has run and is gone (vmlinux, after boot): a call
    /// from it is no caller to patch. A module's `__init` code runs when the module
    /// loads, and a call from it to a function patched through its callers would
    /// reach the old code, so such a function is refused.
    pub init_code_ran: bool,
}

/// How a function or data object differs between pre and post.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Unchanged,
    Changed,
    /// Only in post.
    New,
    /// Only in pre.
    Removed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unchanged => "unchanged",
            Status::Changed => "changed",
            Status::New => "new",
            Status::Removed => "removed",
        }
    }
}

/// One symbol as it is in one of the objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SymbolInfo {
    /// The symbol's name in that object (for pre: its name in vmlinux).
    pub name: String,
    /// The section that holds it.
    pub section: String,
    /// `static`: not visible outside the translation unit.
    pub local: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub weak: bool,
    /// Its size in bytes.
    pub size: u64,
}

/// One function of the translation unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FunctionReport {
    /// `function:<status>:<name>`.
    pub key: String,
    pub status: Status,
    /// The post name, or the pre name of a removed function.
    pub name: String,
    /// What differs (empty unless changed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre: Option<SymbolInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post: Option<SymbolInfo>,
    /// The post `.cold` parts that GCC split off the function: they go with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub post_parts: Vec<SymbolInfo>,
    /// For a changed function that ftrace cannot redirect (no fentry call: an
    /// `inline` function emitted out of line, a `SYSCALL_DEFINE` body): the callers,
    /// patched instead, that reach its new version. The function itself is carried
    /// in the patch module but not redirected.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reached_through: Vec<String>,
}

impl FunctionReport {
    /// The patch module redirects the kernel's version of this function to its own
    /// (changed, with an fentry call); otherwise it only carries the new version.
    pub fn is_redirected(&self) -> bool {
        self.status == Status::Changed && self.reached_through.is_empty()
    }
}

/// One data object of the translation unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataReport {
    /// `data:<status>:<name>`.
    pub key: String,
    pub status: Status,
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre: Option<SymbolInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post: Option<SymbolInfo>,
    /// Changed, and [`DiffOptions::allowed_data`] says a hook handles it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allowed: bool,
    /// Paired by a guess: another same-named object of the unit has the same
    /// contents and the same referrers (two `_rs` rate-limit states of one
    /// function), so which running object the post one is cannot be known.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub indistinct: bool,
}

/// Why a patch cannot be built from this diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RefusalKind {
    /// Initialised data, read-only data or a `.bss` object's size changed.
    Data,
    /// `__init` code or data changed: it ran at boot and was freed.
    Init,
    /// A changed function has no fentry call: ftrace cannot redirect it.
    Notrace,
    /// A struct, union or enum the unit defines has another layout after the change.
    Layout,
}

impl RefusalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Data => "data",
            RefusalKind::Init => "init",
            RefusalKind::Notrace => "notrace",
            RefusalKind::Layout => "layout",
        }
    }
}

/// A finding that refuses the patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// `refuse:<kind>:<symbol>`.
    pub key: String,
    pub kind: RefusalKind,
    pub symbol: String,
    /// What changed.
    pub reason: String,
    /// What to do instead.
    pub remedy: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.symbol, self.reason, self.remedy)
    }
}

/// The findings of one pre/post comparison, sorted by key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffReport {
    pub functions: Vec<FunctionReport>,
    pub data: Vec<DataReport>,
    pub refusals: Vec<Refusal>,
}

impl DiffReport {
    /// No finding refuses the patch.
    pub fn is_patchable(&self) -> bool {
        self.refusals.is_empty()
    }

    /// The functions a patch must carry: changed and new ones.
    pub fn patched_functions(&self) -> impl Iterator<Item = &FunctionReport> {
        self.functions
            .iter()
            .filter(|f| matches!(f.status, Status::Changed | Status::New))
    }

    /// Every finding's key, in report order.
    pub fn keys(&self) -> Vec<&str> {
        let functions = self.functions.iter().map(|f| f.key.as_str());
        let data = self.data.iter().map(|d| d.key.as_str());
        let refusals = self.refusals.iter().map(|r| r.key.as_str());
        functions.chain(data).chain(refusals).collect()
    }

    /// Whether a finding with this key exists.
    pub fn has(&self, key: &str) -> bool {
        self.keys().contains(&key)
    }
}

/// An entry of a special section that belongs to a function: the output object
/// must carry it with the function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecialEntry {
    /// The special section (`__bug_table`, `.orc_unwind`, `.altinstr_replacement`).
    pub section: String,
    pub section_index: usize,
    /// Where the entry starts in that section.
    pub offset: u64,
    /// Its size: the struct's size, or for `.altinstr_replacement` the length of
    /// the replacement instructions.
    pub size: u64,
    /// The offset in the function's section that the entry refers to.
    pub target: u64,
}

/// Compares the pre and post objects of one translation unit.
pub fn diff_objects(pre: &[u8], post: &[u8], opts: &DiffOptions) -> Result<DiffReport, DiffError> {
    let pre_elf = Elf::parse(pre, Side::Pre)?;
    let post_elf = Elf::parse(post, Side::Post)?;
    let mut report = Differ::new(&pre_elf, &post_elf).report(opts);
    let layouts = |data: &[u8], side| {
        TypeLayouts::from_object(data).map_err(|e| DiffError::Malformed {
            side,
            section: ".debug_info".into(),
            detail: e.to_string(),
        })
    };
    let changes = layouts(pre, Side::Pre)?.changes_to(&layouts(post, Side::Post)?);
    for change in changes {
        let symbol = format!("{} {}", change.kind.keyword(), change.name);
        report.refusals.push(Refusal {
            key: format!("refuse:{}:{symbol}", RefusalKind::Layout.as_str()),
            kind: RefusalKind::Layout,
            symbol,
            reason: format!("its layout changes ({})", change.detail),
            remedy: "objects of the type already in memory keep the old layout, and so does \
                     the code the patch leaves in place: keep the type as it is, and keep new \
                     fields in a shadow variable (kstack_shadow_attach, kmod/include/kstack/hooks.h)"
                .into(),
        });
    }
    report.refusals.sort_by(|x, y| x.key.cmp(&y.key));
    Ok(report)
}

/// The special-section entries that point into section `function_section` (an ELF
/// index) of `object`, in
/// section order, then entry order. `.altinstructions` entries are followed by the
/// `.altinstr_replacement` bytes they use and `.orc_unwind_ip` entries by their
/// `.orc_unwind` entry.
pub fn special_entries(
    object: &[u8],
    function_section: usize,
) -> Result<Vec<SpecialEntry>, DiffError> {
    let elf = Elf::parse(object, Side::Object)?;
    let mut out = Vec::new();
    for special in elf.specials.iter() {
        if special.target_section != function_section {
            continue;
        }
        for part in &special.parts {
            out.push(SpecialEntry {
                section: elf.sec(part.section).name.clone(),
                section_index: part.section,
                offset: part.offset,
                size: part.size,
                target: special.target,
            });
        }
    }
    Ok(out)
}
