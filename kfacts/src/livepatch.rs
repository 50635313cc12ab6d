//! The kernel's livepatch ABI: the names and ELF constants of livepatch modules
//! (`Documentation/livepatch/module-elf-format.rst`), the layout of the `klp_*`
//! structures a module describes itself with (include/linux/livepatch.h), and the
//! sysfs and procfs files through which a patch is driven
//! (`Documentation/ABI/testing/sysfs-kernel-livepatch`).

/// Section index of livepatch symbols: the module loader leaves them alone and the
/// livepatch core resolves them (`include/uapi/linux/elf.h`: `#define SHN_LIVEPATCH
/// 0xff20`).
pub const SHN_LIVEPATCH: u16 = 0xff20;

/// Flag of livepatch relocation sections: the module loader does not apply them as
/// ordinary relocations (`include/uapi/linux/elf.h`: `#define SHF_RELA_LIVEPATCH
/// 0x00100000`).
pub const SHF_RELA_LIVEPATCH: u64 = 0x0010_0000;

/// Prefix of livepatch symbol names, `.klp.sym.<object>.<name>,<sympos>`
/// (module-elf-format.rst §4.2; parsed by `klp_resolve_symbols()` in
/// kernel/livepatch/core.c).
pub const KLP_SYM_PREFIX: &str = ".klp.sym.";

/// Prefix of livepatch relocation section names, `.klp.rela.<object>.<section>`
/// (module-elf-format.rst §3.1; parsed by `klp_apply_section_relocs()`).
pub const KLP_RELA_PREFIX: &str = ".klp.rela.";

/// The object name of the kernel image: `klp_object.name == NULL`, written
/// `vmlinux` in `.klp.sym` names (`klp_resolve_symbols()` compares against it).
pub const VMLINUX: &str = "vmlinux";

/// `MODULE_NAME_LEN` (include/linux/module.h): a module name and its NUL.
pub const MODULE_NAME_LEN: usize = 56;

/// Longest object name the kernel parses: `%55[^.]` in `klp_resolve_symbols()`,
/// `MODULE_NAME_LEN - 1`.
pub const KLP_OBJNAME_MAX: usize = MODULE_NAME_LEN - 1;

/// Longest symbol name the kernel parses: `%511[^,]`, `KSYM_NAME_LEN - 1` (6.1).
pub const KLP_SYMNAME_MAX: usize = 511;

/// Offsets in `struct klp_func` (include/linux/livepatch.h, 64-bit): `const char
/// *old_name; void *new_func; unsigned long old_sympos;`.
pub mod klp_func {
    pub const OLD_NAME: usize = 0;
    pub const NEW_FUNC: usize = 8;
    pub const OLD_SYMPOS: usize = 16;
}

/// Offsets in `struct klp_object`: `const char *name` (NULL for vmlinux), `struct
/// klp_func *funcs`.
pub mod klp_object {
    pub const NAME: usize = 0;
    pub const FUNCS: usize = 8;
}

/// One directory per registered livepatch (the path is one of [`crate::paths`]).
pub const SYSFS_ROOT: &str = crate::paths::SYSFS_LIVEPATCH;
/// `enabled` and `transition` in a patch's directory: `0` or `1`.
pub const SYSFS_ENABLED: &str = "enabled";
pub const SYSFS_TRANSITION: &str = "transition";
/// `patched` in an object's directory (`<patch>/<object>/patched`): `1` while the
/// object is loaded and patched.
pub const SYSFS_PATCHED: &str = "patched";
pub use crate::paths::{PROC_MODULES, PROC_TAINTED};
/// Per-task livepatch state in `/proc/<pid>/task/<tid>/`: -1 no transition, 0
/// unpatched, 1 patched (fs/proc/base.c, `proc_pid_patch_state`).
pub const TASK_PATCH_STATE: &str = "patch_state";
/// The taint flag letter of livepatch modules in `/proc/modules` (`TAINT_LIVEPATCH`,
/// kernel/panic.c).
pub const TAINT_LIVEPATCH_LETTER: char = 'K';

/// A livepatch name the kernel would refuse or misparse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("livepatch name {name:?} would be refused by the kernel: {reason}")]
pub struct BadName {
    pub name: String,
    pub reason: String,
}

/// The livepatch symbol for `name` in `objname`: `.klp.sym.<objname>.<name>,<sympos>`,
/// checked against what the kernel's `sscanf(".klp.sym.%55[^.].%511[^,],%lu")`
/// accepts.
pub fn klp_symbol_name(objname: &str, name: &str, sympos: u64) -> Result<String, BadName> {
    let full = format!("{KLP_SYM_PREFIX}{objname}.{name},{sympos}");
    let bad = |reason: String| BadName {
        name: full.clone(),
        reason,
    };
    check_objname(objname).map_err(bad)?;
    if name.is_empty() {
        return Err(bad("empty symbol name".into()));
    }
    if name.contains(',') {
        return Err(bad(
            "the symbol name contains ',', which ends %511[^,] early".into(),
        ));
    }
    if name.len() > KLP_SYMNAME_MAX {
        return Err(bad(format!(
            "the symbol name is longer than {KLP_SYMNAME_MAX} bytes (KSYM_NAME_LEN)"
        )));
    }
    if name.bytes().any(|b| b.is_ascii_whitespace() || b == 0) {
        return Err(bad("the symbol name contains white space".into()));
    }
    Ok(full)
}

/// Splits a livepatch symbol name into object, symbol and position, accepting what
/// the kernel accepts (a symbol name may contain dots: `foo.isra.0`).
pub fn parse_klp_symbol_name(full: &str) -> Result<(String, String, u64), BadName> {
    let bad = |reason: &str| BadName {
        name: full.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = full
        .strip_prefix(KLP_SYM_PREFIX)
        .ok_or_else(|| bad("no .klp.sym. prefix"))?;
    let (objname, rest) = rest
        .split_once('.')
        .ok_or_else(|| bad("no '.' after the object name"))?;
    let (name, pos) = rest
        .split_once(',')
        .ok_or_else(|| bad("no ',' before the symbol position"))?;
    if pos.is_empty() || !pos.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the symbol position is not a decimal number"));
    }
    let sympos = pos
        .parse()
        .map_err(|_| bad("the symbol position does not fit in 64 bits"))?;
    let canonical = klp_symbol_name(objname, name, sympos)?;
    if canonical != full {
        return Err(bad("not in canonical form"));
    }
    Ok((objname.to_owned(), name.to_owned(), sympos))
}

/// Whether the kernel accepts `objname` as the object of a livepatch name (and as a
/// module name): at most 55 bytes of letters, digits, `_` and `-`.
pub fn check_objname(objname: &str) -> Result<(), String> {
    if objname.is_empty() {
        return Err("empty object name".into());
    }
    if objname.len() > KLP_OBJNAME_MAX {
        return Err(format!(
            "the object name is longer than {KLP_OBJNAME_MAX} bytes (MODULE_NAME_LEN)"
        ));
    }
    if !objname
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(
            "the object name may hold only letters, digits, '_' and '-' ('.' ends %55[^.])".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbol_names_round_trip_as_the_kernel_parses_them() {
        let name = klp_symbol_name("vmlinux", "foo.isra.0", 2).expect("valid");
        assert_eq!(name, ".klp.sym.vmlinux.foo.isra.0,2");
        assert_eq!(
            parse_klp_symbol_name(&name),
            Ok(("vmlinux".into(), "foo.isra.0".into(), 2))
        );
        assert!(klp_symbol_name("nf.tables", "x", 0).is_err());
        assert!(klp_symbol_name("vmlinux", "a,b", 0).is_err());
        assert!(parse_klp_symbol_name(".klp.sym.vmlinux.foo,01").is_err());
        assert!(klp_symbol_name(&"m".repeat(KLP_OBJNAME_MAX + 1), "x", 0).is_err());
    }
}
