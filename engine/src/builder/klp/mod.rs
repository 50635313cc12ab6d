//! The livepatch output object, and the post-link step that finishes the module.
//!
//! [`extract`] takes the "post" object of one translation unit (compiled with the
//! kernel's flags plus `-ffunction-sections -fdata-sections`) and the functions the
//! differ chose, and writes a new relocatable object with only what those functions
//! need: their code (and `.cold` parts), the read-only data that belongs to them,
//! the special-section entries that describe them (bug table, exception table, jump
//! labels, alternatives, paravirt sites, static calls, return and retpoline sites,
//! ORC unwind entries, `__mcount_loc`) and a relocation for every reference. A
//! reference to something the object does not carry becomes, through the
//! [`SymbolResolver`], either a plain undefined symbol (exported: the module loader
//! resolves it) or a livepatch symbol `.klp.sym.<object>.<name>,<sympos>` (resolved
//! by the livepatch core from kallsyms). kbuild links that object with the template.
//!
//! [`post_link`] then rewrites the linked `.ko`: relocations against livepatch
//! symbols move into `.klp.rela.<object>.<section>` sections flagged
//! `SHF_RELA_LIVEPATCH`, and the symbols get `SHN_LIVEPATCH`, as
//! `Documentation/livepatch/module-elf-format.rst` specifies. The linker cannot keep
//! those flags, so this happens after kbuild (kpatch's `create-klp-module` and
//! upstream's `objtool klp post-link` do the same).
//!
//! Not here: deciding which functions changed (`diff`), resolving names against the
//! target kernel (the resolver), generating and building the template (the pipeline).
//! Only x86-64 is supported, with the layouts of Linux 6.1's special sections.

mod emit;
mod extract;
mod post_link;
#[cfg(test)]
mod tests;
mod write;

use std::collections::{BTreeMap, BTreeSet};

use kstack_kfacts::livepatch::BadName;

pub use extract::extract;
pub use kstack_kfacts::livepatch::VMLINUX;
pub use post_link::{post_link, post_link_applied};

use super::{Resolution, ResolveError};

/// Prefix of the global symbol a changed function gets in the output object, which
/// the generated template names in `.new_func`.
pub const NEW_SYMBOL_PREFIX: &str = "__kstack_new_";

/// One function to carry into the output object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSpec {
    /// Its symbol in the post object (`foo`, `foo.isra.0`).
    pub post_name: String,
    /// Its name in the running kernel, which the `klp_func` table patches; for a new
    /// function, usually the same as `post_name`.
    pub old_name: String,
    /// A function that the running kernel does not have: carried, not patched.
    pub new: bool,
}

/// What [`extract`] needs.
#[derive(Debug, Clone)]
pub struct ExtractRequest<'a> {
    /// The post object's bytes.
    pub object: &'a [u8],
    /// The object's path in the tree (`fs/proc/cmdline.o`): names it in errors and
    /// tells the resolver which file's statics are meant.
    pub tu: &'a str,
    /// The patched object: `vmlinux` or a module name (`ext4`).
    pub objname: &'a str,
    pub functions: &'a [FunctionSpec],
    /// Data objects of this object (post names) the patch module has its own copy
    /// of, because the running kernel has none or must not share it: new data, and
    /// once-only flags (`__already_done`, ...). Carried when carried code refers to
    /// them; a new global among them is carried in any case (another file of the
    /// patch may use it).
    pub new_data: &'a [String],
    /// Globals that other files of the same patch define (their new functions and
    /// data): plain references, which the module's own link resolves.
    pub provided: &'a [String],
    /// The running kernel's names of the post object's local symbols that the
    /// change renumbered (post `_rs.6` → `_rs.5`), from the differ's pairing: a
    /// reference is resolved by the name the kernel's object has, never by a post
    /// name that may be another object's in the kernel.
    pub kernel_names: &'a BTreeMap<String, String>,
    /// Post local data the differ paired with a running object by a guess (same
    /// name, contents and referrers as another: [`crate::builder::diff::DataReport::indistinct`]):
    /// a reference to it is refused unless the patch has its own copy or it is
    /// read-only.
    pub indistinct: &'a BTreeSet<String>,
    /// The patch module's link runs objtool on the linked module (6.12: see
    /// [`kstack_kfacts::sections::OBJTOOL_SECTIONS`]): the unit's objtool sections are
    /// left to it, not carried.
    pub objtool_at_link: bool,
}

/// One function of the output object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractedFunction {
    pub post_name: String,
    pub old_name: String,
    /// Its symbol in the output object: `__kstack_new_<old name>` (dots made `__`),
    /// global, for a changed function; for a new one, its post name and binding (a
    /// new global function can be called from the patch's other files).
    pub symbol: String,
    pub new: bool,
    /// The position of the old function among same-named kallsyms entries
    /// (`klp_func.old_sympos`); `None` for a new function.
    pub old_sympos: Option<u64>,
}

/// A symbol that the output object leaves undefined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalReference {
    /// The symbol's name in the output object (the plain name, or the `.klp.sym` name).
    pub symbol: String,
    /// The name it has in the target kernel.
    pub name: String,
    pub resolution: Resolution,
}

/// The output object and what the template needs to know about it.
#[derive(Debug, Clone)]
pub struct Extracted {
    /// A relocatable x86-64 ELF object.
    pub object: Vec<u8>,
    pub functions: Vec<ExtractedFunction>,
    /// Every undefined symbol, sorted by name.
    pub references: Vec<ExternalReference>,
    /// Names of the post object's sections that the output carries, whole or in part
    /// (special sections: some of their entries), sorted.
    pub sections: Vec<String>,
    /// What the output leaves out on purpose and the patch's user should know.
    pub notes: Vec<String>,
}

/// One livepatch relocation section that [`post_link`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KlpRelaSection {
    pub name: String,
    /// The section its relocations apply to.
    pub target: String,
    pub relocations: usize,
}

/// The rewritten module.
#[derive(Debug, Clone)]
pub struct PostLinked {
    pub ko: Vec<u8>,
    pub sections: Vec<KlpRelaSection>,
    /// The livepatch symbols, now `SHN_LIVEPATCH`.
    pub symbols: Vec<String>,
}

/// Why the output object or the post-link rewrite could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KlpError {
    #[error("{what}: cannot read the ELF file: {source}")]
    Read {
        what: String,
        #[source]
        source: object::read::Error,
    },
    #[error("{what}: {source}")]
    Object {
        what: String,
        #[source]
        source: kstack_kfacts::elf::ElfError,
    },
    #[error("{what}: {detail}")]
    Malformed { what: String, detail: String },
    #[error("{tu}: no function symbol {name}")]
    NoSuchFunction { tu: String, name: String },
    #[error("{tu}: function {name} is in section {section}, which is not code, or has no size")]
    NotBundled {
        tu: String,
        name: String,
        section: String,
    },
    #[error("{tu}: {place} refers to {symbol}, which the target kernel does not resolve: {source}")]
    Resolve {
        tu: String,
        place: String,
        symbol: String,
        #[source]
        source: Box<ResolveError>,
    },
    #[error("{tu}: {place} refers to {section}+{offset:#x}, where no symbol is defined")]
    NoSymbol {
        tu: String,
        place: String,
        section: String,
        offset: i64,
    },
    #[error(
        "{tu}: {place} refers into {section}, and kstack cannot tell which object is meant \
         (the instruction could not be decoded: {detail})"
    )]
    Ambiguous {
        tu: String,
        place: String,
        section: String,
        detail: String,
    },
    #[error(
        "{tu}: {place} refers to {symbol}, one of several statics named {base} in \
         this file that the change renumbered and that have the same contents and \
         the same users: which of the running kernel's it is cannot be known (give \
         the new one another name, or keep the old ones' order)"
    )]
    IndistinctStatic {
        tu: String,
        place: String,
        symbol: String,
        base: String,
    },
    #[error("{tu}: {place} refers to {symbol} in {section}, which the kernel frees after boot")]
    InitReference {
        tu: String,
        place: String,
        symbol: String,
        section: String,
    },
    #[error(
        "{tu}: {place} reaches {symbol}, elsewhere in {section}, with a short jump the \
         assembler resolved; a one-byte offset cannot reach the function's new place, so \
         it cannot be carried out of its shared section"
    )]
    ShortReference {
        tu: String,
        place: String,
        symbol: String,
        section: String,
    },
    #[error("{tu}: {place}: relocation type {r_type} is not supported")]
    UnsupportedRelocation {
        tu: String,
        place: String,
        r_type: u32,
    },
    #[error(
        "{tu}: section {section} has entries for the carried function {function}, and kstack \
         does not know how to carry them; refusing rather than dropping them"
    )]
    UnknownSpecialSection {
        tu: String,
        section: String,
        function: String,
    },
    #[error(
        "{tu}: {place} needs a livepatch relocation ({symbol}), but {objname} is a module: \
         those are applied after the patch module's alternatives, jump labels and static \
         calls were set up, so they cannot appear in {what}"
    )]
    ModuleSpecialRelocation {
        tu: String,
        place: String,
        symbol: String,
        objname: String,
        what: &'static str,
    },
    #[error(
        "{tu}: the old version of {function} is a symbol of {found}, but the translation \
         unit is part of {objname}"
    )]
    WrongObject {
        tu: String,
        function: String,
        objname: String,
        found: String,
    },
    #[error("livepatch name {name:?} would be refused by the kernel: {reason}")]
    BadKlpName { name: String, reason: String },
    #[error("cannot name the new version of {old_name} {symbol:?}: {reason}")]
    BadNewName {
        old_name: String,
        symbol: String,
        reason: String,
    },
    #[error(
        "the module already has livepatch relocation sections ({section}); post_link runs \
         once, on the module kbuild linked"
    )]
    AlreadyPostLinked { section: String },
    #[error(
        "two relocations apply to {section}+{offset:#x}; the kernel refuses to relocate a \
         location twice (x86 apply_relocate_add wants it zero)"
    )]
    DuplicateRelocation { section: String, offset: u64 },
    #[error("livepatch relocations against {section}, which is not loaded into memory")]
    NonAllocTarget { section: String },
    #[error("cannot write the ELF file: {0}")]
    Write(#[source] object::build::Error),
}

type Result<T, E = KlpError> = std::result::Result<T, E>;

fn read_err(what: &str) -> impl FnOnce(object::read::Error) -> KlpError + '_ {
    move |source| KlpError::Read {
        what: what.to_owned(),
        source,
    }
}

fn malformed(what: &str, detail: impl Into<String>) -> KlpError {
    KlpError::Malformed {
        what: what.to_owned(),
        detail: detail.into(),
    }
}

impl From<BadName> for KlpError {
    fn from(e: BadName) -> KlpError {
        KlpError::BadKlpName {
            name: e.name,
            reason: e.reason,
        }
    }
}

/// The global symbol for the new version of `old_name`: `__kstack_new_<old_name>`,
/// with each `.` of a compiler suffix made `__` so that C can name it.
pub fn new_symbol_name(old_name: &str) -> Result<String> {
    let symbol = format!("{NEW_SYMBOL_PREFIX}{}", old_name.replace('.', "__"));
    if old_name.is_empty()
        || !symbol
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(KlpError::BadNewName {
            old_name: old_name.to_owned(),
            symbol,
            reason: "not a C identifier".into(),
        });
    }
    Ok(symbol)
}
