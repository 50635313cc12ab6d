//! The builder: from a source diff to a livepatch module, Ksplice's and kpatch's
//! method (pre/post differencing of the objects of the translation units a diff
//! touches). It runs on a build machine, never on the patched host.
//!
//! - [`assets`]: the kernels kstack targets, fetched from Debian into a cache.
//! - [`config`]: checking that a prepared tree's configuration is the shipped one.
//! - [`source`]: the change to build (a diff file, or a commit of a kernel Git tree)
//!   and the stack's earlier patches it is built on.
//! - [`tree`]: private work trees of a prepared source, and compiling the touched
//!   translation units with the kernel's flags.
//! - [`deps`]: which translation units a header change reaches.
//! - [`kbuild`]: linking a module with the kernel's own kbuild.
//! - [`modlink`]: linking one again with the commands kbuild ran, without a kbuild pass.
//! - [`symbols`]: the target kernel's symbols, as the livepatch writer resolves them.
//! - [`pipeline`]: the whole build of one patch.
//! - [`sign`]: signing the final module with the kernel's `sign-file`.
//! - [`diff`]: the ELF differ: correlates the pre and post objects and decides which
//!   functions changed, which are new, and what must be refused.
//! - [`klp`]: the output object (the changed and new functions with what they need,
//!   livepatch relocations for what the module loader cannot resolve) and the
//!   post-link step that turns them into `.klp.rela` sections in the final module.

pub mod assets;
pub mod config;
pub mod deps;
pub mod diff;
pub mod kbuild;
pub mod klp;
pub mod modlink;
pub mod pipeline;
pub mod sign;
pub mod source;
pub mod symbols;
pub mod tree;
pub mod units;

/// How the target kernel resolves a symbol that a new function refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Exported (`EXPORT_SYMBOL*`, listed in `Module.symvers`) by vmlinux or by
    /// another module: the module loader resolves it; a plain undefined symbol.
    Exported,
    /// Not exported (or a module's own symbol): a livepatch relocation
    /// (`.klp.sym.<object>.<name>,<sympos>`), resolved by the livepatch core from
    /// `object`'s symbols (vmlinux, or the patched module when it loads).
    Livepatch { object: String, sympos: u64 },
    /// Defined by another file of the same patch: a plain reference, which the
    /// patch module's own link resolves.
    InPatch,
}

/// Why a symbol cannot be resolved in the target kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("symbol {name} is not in the target kernel's symbol table")]
    Missing { name: String },
    #[error("symbol {name} is in neither module {module}'s symbol table nor the kernel's")]
    NotInModule { name: String, module: String },
    #[error(
        "symbol {name} is not exported by module {owner}, and a patch to {module} can reach \
         another module's symbols only through its exports"
    )]
    OtherModule {
        name: String,
        module: String,
        owner: String,
    },
    #[error(
        "symbol {name} is ambiguous: {candidates} local symbols have that name and the translation unit does not say which ({detail})"
    )]
    Ambiguous {
        name: String,
        candidates: usize,
        detail: String,
    },
    #[error(
        "symbol {name} of module {module} is counted differently while the module loads \
         ({loading}) and once it is loaded ({loaded}): a same-named symbol in its init \
         code makes its position depend on when the patch is applied"
    )]
    LoadOrder {
        name: String,
        module: String,
        loading: u64,
        loaded: u64,
    },
}

/// The target kernel's symbols, as the builder needs them.
pub trait SymbolResolver {
    /// How code of `object` (`vmlinux`, or the module it is part of) reaches `name`,
    /// a symbol its translation unit `tu` (object path in the tree, e.g.
    /// `fs/proc/cmdline.o`) refers to; `local` says whether the object file defines
    /// it as a local (static) symbol, which decides among same-named statics of
    /// several files.
    fn resolve(
        &self,
        object: &str,
        name: &str,
        tu: &str,
        local: bool,
    ) -> Result<Resolution, ResolveError>;
}
