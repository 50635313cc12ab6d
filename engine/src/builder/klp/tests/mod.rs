//! The livepatch writer's unit tests, and their helpers: gcc with kernel-like
//! flags, `ld -r`, a resolver from a table.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;

use object::read::elf::ElfFile64;
use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

pub(crate) use std::collections::HashMap;

pub(crate) use kstack_kfacts::livepatch::{
    KLP_SYM_PREFIX, SHF_RELA_LIVEPATCH, SHN_LIVEPATCH, klp_symbol_name, parse_klp_symbol_name,
};
pub(crate) use object::{Endianness, elf};

use super::*;
use crate::builder::{ResolveError, SymbolResolver};

mod extract;
mod post_link;
mod special;

/// The kernel's code generation flags that matter for the object's shape.
pub(crate) const KERNEL_LIKE_FLAGS: &[&str] = &[
    "-O2",
    "-ffunction-sections",
    "-fdata-sections",
    "-mcmodel=kernel",
    "-fno-pic",
    "-mfentry",
    "-pg",
    "-mrecord-mcount",
    "-mno-red-zone",
    "-fno-asynchronous-unwind-tables",
    "-fno-jump-tables",
    "-fno-common",
    "-c",
];

pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/klp")
        .join(name)
}

/// Compiles `engine/tests/klp/<name>` with gcc and kernel-like flags.
pub(crate) fn compile(name: &str, extra: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let obj = dir.path().join("out.o");
    let out = Command::new("gcc")
        .args(KERNEL_LIKE_FLAGS)
        .args(extra)
        .arg(fixture(name))
        .arg("-o")
        .arg(&obj)
        .output()
        .expect("gcc runs");
    assert!(
        out.status.success(),
        "gcc {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(obj).unwrap()
}

/// Assembles or compiles `engine/tests/klp/<name>` with plain flags.
pub(crate) fn compile_plain(name: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let obj = dir.path().join("out.o");
    let out = Command::new("gcc")
        .args(["-O2", "-c"])
        .arg(fixture(name))
        .arg("-o")
        .arg(&obj)
        .output()
        .expect("gcc runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(obj).unwrap()
}

/// Links relocatable objects into one with `ld -r`, as kbuild links a module.
pub(crate) fn link(objects: &[&[u8]]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("ld");
    cmd.args(["-r", "-m", "elf_x86_64", "-o"])
        .arg(dir.path().join("linked.o"));
    for (i, o) in objects.iter().enumerate() {
        let path = dir.path().join(format!("{i}.o"));
        std::fs::write(&path, o).unwrap();
        cmd.arg(path);
    }
    let out = cmd.output().expect("ld runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dir.path().join("linked.o")).unwrap()
}

/// A resolver from a table; records every question.
#[derive(Debug, Default)]
pub(crate) struct FakeResolver {
    table: HashMap<&'static str, Option<u64>>,
    asked: RefCell<Vec<(String, bool)>>,
}

impl FakeResolver {
    pub(crate) fn new(entries: &[(&'static str, Option<u64>)]) -> Self {
        FakeResolver {
            table: entries.iter().map(|&(n, pos)| (n, pos)).collect(),
            asked: RefCell::default(),
        }
    }
    pub(crate) fn asked_local(&self, name: &str) -> Option<bool> {
        self.asked
            .borrow()
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, l)| l)
    }
}

impl SymbolResolver for FakeResolver {
    fn resolve(
        &self,
        object: &str,
        name: &str,
        _tu: &str,
        local: bool,
    ) -> Result<Resolution, ResolveError> {
        self.asked.borrow_mut().push((name.to_owned(), local));
        // Every symbol the table has is the referring object's own.
        match self.table.get(name) {
            Some(None) => Ok(Resolution::Exported),
            Some(Some(sympos)) => Ok(Resolution::Livepatch {
                object: object.to_owned(),
                sympos: *sympos,
            }),
            None => Err(ResolveError::Missing { name: name.into() }),
        }
    }
}

pub(crate) fn changed(name: &str) -> FunctionSpec {
    FunctionSpec {
        post_name: name.into(),
        old_name: name.into(),
        new: false,
    }
}

/// What the kernel of `basic.c`'s tests resolves: `None` exported, else the sympos.
pub(crate) const BASIC_SYMBOLS: &[(&str, Option<u64>)] = &[
    ("__fentry__", None),
    ("printk", None),
    ("report_failure", None),
    ("jiffies", None),
    ("saved_command_line", Some(0)),
    ("counter", Some(0)),
    ("helper", Some(1)),
    ("shared_table", Some(0)),
    ("once_a", Some(0)),
    ("once_b", Some(0)),
    ("patched", Some(2)),
    ("callee", Some(0)),
];

pub(crate) fn basic_resolver() -> FakeResolver {
    FakeResolver::new(BASIC_SYMBOLS)
}

static NO_KERNEL_NAMES: std::collections::BTreeMap<String, String> =
    std::collections::BTreeMap::new();
static NO_GUESSES: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();

/// The request for `functions` of `basic.c`'s object (vmlinux code, no new data).
pub(crate) fn basic_request<'a>(
    object: &'a [u8],
    functions: &'a [FunctionSpec],
) -> ExtractRequest<'a> {
    ExtractRequest {
        object,
        tu: "test/basic.o",
        objname: VMLINUX,
        functions,
        new_data: &[],
        provided: &[],
        kernel_names: &NO_KERNEL_NAMES,
        indistinct: &NO_GUESSES,
        objtool_at_link: false,
    }
}

pub(crate) fn extract_basic(functions: &[FunctionSpec]) -> (Extracted, FakeResolver) {
    let object = compile("basic.c", &[]);
    let resolver = basic_resolver();
    let extracted = extract(&basic_request(&object, functions), &resolver).unwrap();
    (extracted, resolver)
}

/// Every relocation of section `name` as (offset, target name, addend), where a
/// section symbol is named by its section.
pub(crate) fn relocs(elf: &ElfFile64<'_>, name: &str) -> Vec<(u64, String, i64)> {
    let section = elf
        .section_by_name(name)
        .unwrap_or_else(|| panic!("no {name}"));
    let mut out: Vec<_> = section
        .relocations()
        .map(|(offset, r)| {
            let target = match r.target() {
                RelocationTarget::Symbol(i) => {
                    let sym = elf.symbol_by_index(i).unwrap();
                    if sym.kind() == object::SymbolKind::Section {
                        let s = elf.section_by_index(sym.section_index().unwrap()).unwrap();
                        s.name().unwrap().to_owned()
                    } else {
                        sym.name().unwrap().to_owned()
                    }
                }
                other => panic!("{other:?}"),
            };
            (offset, target, r.addend())
        })
        .collect();
    out.sort();
    out
}
