//! The builder: from a source diff to a livepatch module, Ksplice's and kpatch's
//! method (pre/post differencing of the objects of the translation units a diff
//! touches). It runs on a build machine, never on the patched host.
//!
//! - [`assets`]: the kernels kstack targets, fetched from Debian into a cache.
//! - [`source`]: the change to build (a diff file, or a commit of a kernel Git tree)
//!   and the stack's earlier patches it is built on.
//! - [`tree`]: private work trees of a prepared source, and compiling the touched
//!   translation units with the kernel's flags.
//! - [`kbuild`]: linking a module with the kernel's own kbuild.
//! - [`symbols`]: the target kernel's symbols, as the livepatch writer resolves them.
//! - [`pipeline`]: the whole build of one patch.
//! - [`diff`]: the ELF differ: correlates the pre and post objects and decides which
//!   functions changed, which are new, and what must be refused.
//! - [`klp`]: the output object (the changed and new functions with what they need,
//!   livepatch relocations for what the module loader cannot resolve) and the
//!   post-link step that turns them into `.klp.rela` sections in the final module.

pub mod assets;
pub mod diff;
pub mod kbuild;
pub mod klp;
pub mod pipeline;
pub mod source;
pub mod symbols;
pub mod tree;

/// How the target kernel resolves a symbol that a new function refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Exported (`EXPORT_SYMBOL*`, listed in `Module.symvers`): the module loader
    /// resolves it; a plain undefined symbol.
    Exported,
    /// Known to kallsyms but not exported: a livepatch relocation
    /// (`.klp.sym.<object>.<name>,<sympos>`), resolved by the livepatch core.
    Livepatch { sympos: u64 },
}

/// Why a symbol cannot be resolved in the target kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("symbol {name} is not in the target kernel's symbol table")]
    Missing { name: String },
    #[error(
        "symbol {name} is ambiguous: {candidates} local symbols have that name and the translation unit does not say which ({detail})"
    )]
    Ambiguous {
        name: String,
        candidates: usize,
        detail: String,
    },
}

/// The target kernel's symbols, as the builder needs them.
pub trait SymbolResolver {
    /// How to reach `name`, a symbol the translation unit `tu` (object path in the
    /// tree, e.g. `fs/proc/cmdline.o`) refers to; `local` says whether the object
    /// file defines it as a local (static) symbol, which decides among same-named
    /// statics of several files.
    fn resolve(&self, name: &str, tu: &str, local: bool) -> Result<Resolution, ResolveError>;
}
