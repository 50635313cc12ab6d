//! A module that is not loaded, as it would be once loaded: its `.ko` laid out at
//! addresses of its own, its relocations applied against the kernel's symbols, and
//! its symbols added to kallsyms, so that the matcher proves a patch for it exactly
//! as it proves one for loaded code. The module is not rewritten the way the kernel
//! rewrites code at load (alternatives, static calls, ...): the matcher accepts the
//! original state at every such site, as it does for a kernel image file.

use std::collections::HashMap;

use kstack_kfacts::elf::RelObject;
use kstack_kfacts::kallsyms::{KallsymsIndex, Ksym, module_symbols};
use kstack_kfacts::reloc::RelocKind;
use object::elf;

use super::RunPreError;
use super::text::MemoryText;

/// Where the laid-out module starts: the x86-64 module area (`MODULES_VADDR`,
/// arch/x86/include/asm/pgtable_64_types.h). Nothing else of the kernel is there in
/// an index built for one module.
const BASE: u64 = 0xffff_ffff_a000_0000;
/// Where symbols the kernel's index does not know (another module's exports) are
/// given addresses of their own.
const EXTERNALS: u64 = 0xffff_ffff_9000_0000;

/// The laid-out module: its code and data, and kallsyms with its symbols.
#[derive(Debug)]
pub struct ModuleImage {
    pub text: MemoryText,
    pub symbols: KallsymsIndex,
}

impl ModuleImage {
    /// Lays out `ko`, the `.ko` of module `module`, against `kernel`'s symbols.
    pub fn load(
        ko: &[u8],
        module: &str,
        kernel: &KallsymsIndex,
    ) -> Result<ModuleImage, RunPreError> {
        let bad = |detail: String| RunPreError::BadObject {
            what: format!("module {module}"),
            detail,
        };
        let obj = RelObject::parse(ko).map_err(|e| bad(e.to_string()))?;
        // Allocated sections, one after another, each aligned.
        let mut base: HashMap<usize, u64> = HashMap::new();
        let mut next = BASE;
        for (index, section) in obj.sections.iter().enumerate() {
            if !section.is_alloc() {
                continue;
            }
            let align = section.align.max(1);
            next = next.div_ceil(align) * align;
            base.insert(index, next);
            next += section.size.max(1);
        }
        let mut externals: HashMap<String, u64> = HashMap::new();
        let mut extra: Vec<Ksym> = Vec::new();
        let mut address_of = |sym: usize| -> Option<u64> {
            let s = &obj.symbols[sym];
            if let Some(section) = s.section {
                return base.get(&section).map(|b| b + s.value);
            }
            if s.shndx == elf::SHN_ABS.0 {
                return Some(s.value);
            }
            if s.name.is_empty() {
                return None;
            }
            if let Some(k) = kernel.seen_from(module, &s.name).first() {
                return Some(k.addr);
            }
            let next = EXTERNALS + 16 * externals.len() as u64;
            let addr = *externals.entry(s.name.clone()).or_insert(next);
            if addr == next {
                extra.push(Ksym {
                    addr,
                    kind: 'T',
                    name: s.name.clone(),
                    module: Some("(not loaded)".into()),
                });
            }
            Some(addr)
        };

        let mut text = MemoryText::new();
        for (index, section) in obj.sections.iter().enumerate() {
            let Some(&at) = base.get(&index) else {
                continue;
            };
            if section.is_nobits() {
                continue;
            }
            let mut bytes = section.data.to_vec();
            for rel in &section.relocs {
                let Some(kind) = RelocKind::from_elf(rel.r_type) else {
                    continue;
                };
                let Some(s) = address_of(rel.sym) else {
                    continue;
                };
                let value = s.wrapping_add_signed(rel.addend);
                let place = at + rel.offset;
                let value = if kind.is_pc_relative() {
                    value.wrapping_sub(place)
                } else {
                    value
                };
                let field = value.to_le_bytes();
                let offset = rel.offset as usize;
                let width = kind.width();
                if let Some(dest) = bytes.get_mut(offset..offset + width) {
                    dest.copy_from_slice(&field[..width]);
                }
            }
            text.insert(at, bytes);
        }

        let mut syms: Vec<Ksym> = kernel.entries().to_vec();
        for s in module_symbols(&obj).into_iter().filter(|s| s.core) {
            let Some(addr) = obj.symbols[s.index]
                .section
                .and_then(|sec| base.get(&sec))
                .map(|b| b + obj.symbols[s.index].value)
            else {
                continue;
            };
            syms.push(Ksym {
                addr,
                kind: if s.local {
                    s.kind
                } else {
                    s.kind.to_ascii_uppercase()
                },
                name: s.name,
                module: Some(module.to_owned()),
            });
        }
        syms.extend(extra);
        Ok(ModuleImage {
            text,
            symbols: KallsymsIndex::from_symbols(syms),
        })
    }
}

/// Where the `.ko` files of a kernel's modules are: a `lib/modules/<release>`
/// directory, indexed by `modules.dep` (as `modprobe` finds them).
#[derive(Debug, Clone)]
pub struct ModulesDir {
    dir: std::path::PathBuf,
}

impl ModulesDir {
    pub fn new(dir: impl Into<std::path::PathBuf>) -> ModulesDir {
        ModulesDir { dir: dir.into() }
    }

    /// `/lib/modules/<release>` of the running kernel.
    pub fn running(release: &str) -> ModulesDir {
        ModulesDir::new(std::path::Path::new("/lib/modules").join(release))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.dir
    }

    /// The `.ko` of `module` (`-` and `_` are the same in module names), if the
    /// index has it.
    pub fn ko(&self, module: &str) -> Result<Option<Vec<u8>>, RunPreError> {
        let dep_path = self.dir.join("modules.dep");
        let dep = match std::fs::read_to_string(&dep_path) {
            Ok(text) => text,
            // No modules for this kernel on this host at all.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(RunPreError::Io {
                    path: dep_path,
                    source,
                });
            }
        };
        let wanted = module.replace('-', "_");
        let Some(file) = dep
            .lines()
            .filter_map(|l| l.split_once(':').map(|(path, _)| path.trim()))
            .find(|path| {
                std::path::Path::new(path)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.split('.').next())
                    .is_some_and(|n| n.replace('-', "_") == wanted)
            })
        else {
            return Ok(None);
        };
        // Installed as kbuild compressed it (6.12's packages: `.ko.xz`); modprobe
        // loads the decompressed ELF.
        let path = self.dir.join(file);
        kstack_store::module_file::read_module(&path)
            .map(Some)
            .map_err(|source| RunPreError::Io { path, source })
    }
}
