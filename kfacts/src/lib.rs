//! Kernel facts: what kstack knows about the Linux kernel (6.1 and later, x86-64)
//! and its object files, each written once.
//!
//! The store, the builder, the run-pre matcher and the host all read the same
//! tables, so they cannot disagree about how long a `__jump_table` entry is, which
//! relocations are PC-relative, how a livepatch symbol is spelt or where a `sympos`
//! counts from. Every constant names the kernel source that defines it.
//!
//! - [`sections`]: the special sections (entry layouts, which field anchors an entry
//!   to its function) and the section names the kernel gives meaning to.
//! - [`reloc`]: x86-64 relocation kinds and their properties.
//! - [`livepatch`]: livepatch names, ELF constants, `klp_*` structure offsets and
//!   the sysfs and procfs paths of the livepatch ABI.
//! - [`paths`]: the `/proc` and `/sys` files kstack reads the running kernel through.
//! - [`modsig`]: the module signature trailer, its PKCS#7 signer, and the keyrings
//!   the kernel checks module signatures against.
//! - [`symbols`]: names of kernel symbols with a fixed meaning (`__fentry__`, the
//!   return thunks, static call prefixes).
//! - [`kallsyms`]: one index of `/proc/kallsyms`, with `sympos` counted as the
//!   livepatch core counts it.
//! - [`x86`]: instruction decoding, through `iced-x86` only.
//! - [`elf`]: one in-memory model of a relocatable x86-64 object.
//! - [`symtab`]: the local symbols of a vmlinux by source file, from its full
//!   symbol table (the exact answer to "which of these same-named statics").
//! - [`system_map`]: the kallsyms a kernel prints, from the `System.map` of its
//!   build.
//!
//! Not here: policy (what the builder refuses, what the matcher accepts). This crate
//! describes; its users decide.

pub mod dwarf;
pub mod elf;
pub mod kallsyms;
pub mod livepatch;
pub mod modsig;
pub mod paths;
pub mod reloc;
pub mod sections;
pub mod symbols;
pub mod symtab;
pub mod system_map;
pub mod x86;
