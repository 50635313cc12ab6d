//! A kernel in miniature for the matcher's tests: small objects compiled by the
//! test, linked at kernel addresses the way vmlinux is (every allocated section
//! placed, relocations applied, undefined symbols given addresses of their own), a
//! kallsyms text listing what was placed, and the code as bytes that the test then
//! rewrites the way the kernel does at boot.

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use kstack_engine::runpre::{KallsymsIndex, MemoryText};
use object::{
    Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionFlags,
    SymbolKind, elf,
};

/// The flags the kernel compiles with, as far as code generation goes.
pub const KERNEL_CFLAGS: &[&str] = &[
    "-O2",
    "-mcmodel=kernel",
    "-fno-pic",
    "-mfentry",
    "-pg",
    "-mno-red-zone",
    "-fno-asynchronous-unwind-tables",
];
/// Where the kernel's text starts (nokaslr, arch/x86/include/asm/page_64_types.h).
pub const TEXT_BASE: u64 = 0xffff_ffff_8100_0000;
/// Where undefined symbols get their addresses, far from the text.
const EXTERN_BASE: u64 = 0xffff_ffff_8200_0000;

/// Compiles a fixture (`relax.c`, `sites.S`) from `engine/tests/runpre/` with the
/// kernel's flags; `function_sections` as the builder does, without as the
/// shipped kernel was built (`-DSHIPPED` for assembler fixtures).
pub fn compile(fixture: &str, function_sections: bool, out_dir: &Path) -> Vec<u8> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/runpre")
        .join(fixture);
    let out: PathBuf = out_dir.join(format!(
        "{fixture}.{}.o",
        if function_sections { "pre" } else { "shipped" }
    ));
    let mut cmd = Command::new("gcc");
    cmd.args(KERNEL_CFLAGS);
    if function_sections {
        cmd.args(["-ffunction-sections", "-fdata-sections"]);
    } else {
        cmd.arg("-DSHIPPED");
    }
    let status = cmd
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "gcc failed on {}", src.display());
    std::fs::read(out).unwrap()
}

/// Linked objects: the bytes at their addresses, and the symbols.
#[derive(Debug, Default)]
pub struct Kernel {
    /// Address → bytes of each placed section.
    memory: BTreeMap<u64, Vec<u8>>,
    /// kallsyms lines in address order: (address, type, name).
    symbols: Vec<(u64, char, String)>,
    /// Global and undefined names → address.
    globals: HashMap<String, u64>,
    next_extern: u64,
    end: u64,
}

impl Kernel {
    pub fn new() -> Kernel {
        Kernel {
            next_extern: EXTERN_BASE,
            end: TEXT_BASE,
            ..Kernel::default()
        }
    }

    /// Gives an undefined symbol an address (and a kallsyms line of type `kind`).
    pub fn define(&mut self, name: &str, addr: u64, kind: char) {
        self.globals.insert(name.to_owned(), addr);
        self.symbols.push((addr, kind, name.to_owned()));
    }

    /// Drops the kallsyms line of `name` (a definition the linker discarded the
    /// name of, keeping its bytes).
    pub fn forget(&mut self, name: &str) {
        self.symbols.retain(|(_, _, n)| n != name);
        self.globals.remove(name);
    }

    fn extern_address(&mut self, name: &str) -> u64 {
        if let Some(&a) = self.globals.get(name) {
            return a;
        }
        let addr = self.next_extern;
        self.next_extern += 0x40;
        self.define(name, addr, 'T');
        addr
    }

    /// Places every allocated section of `object` after what is already linked and
    /// applies its relocations. Returns the addresses of its symbols by name (the
    /// object's own, locals included).
    pub fn link(&mut self, object: &[u8]) -> HashMap<String, u64> {
        let file = object::File::parse(object).unwrap();
        let mut section_addr = HashMap::new();
        for section in file.sections() {
            let SectionFlags::Elf { sh_flags, .. } = section.flags() else {
                continue;
            };
            if sh_flags.0 & elf::SHF_ALLOC.0 == 0 || section.size() == 0 {
                continue;
            }
            let align = section.align().max(16);
            let addr = self.end.div_ceil(align) * align;
            section_addr.insert(section.index(), addr);
            let bytes = section
                .data()
                .map(<[u8]>::to_vec)
                .unwrap_or_else(|_| vec![0; section.size() as usize]);
            let bytes = if bytes.is_empty() {
                vec![0; section.size() as usize]
            } else {
                bytes
            };
            self.end = addr + bytes.len() as u64;
            self.memory.insert(addr, bytes);
        }
        let mut own = HashMap::new();
        let mut sym_addr = HashMap::new();
        for sym in file.symbols() {
            let Some(index) = sym.section_index() else {
                continue;
            };
            let Some(&base) = section_addr.get(&index) else {
                continue;
            };
            let addr = base + sym.address();
            sym_addr.insert(sym.index(), addr);
            let name = sym.name().unwrap();
            if sym.kind() == SymbolKind::Section || name.is_empty() || name.starts_with(".L") {
                continue;
            }
            let text = sym.kind() == SymbolKind::Text;
            let kind = match (text, sym.is_weak(), sym.is_global()) {
                (true, true, _) => 'W',
                (true, _, true) => 'T',
                (true, _, false) => 't',
                (false, _, true) => 'D',
                (false, _, false) => 'd',
            };
            self.symbols.push((addr, kind, name.to_owned()));
            own.insert(name.to_owned(), addr);
            if sym.is_global() {
                self.globals.insert(name.to_owned(), addr);
            }
        }
        for section in file.sections() {
            let Some(&base) = section_addr.get(&section.index()) else {
                continue;
            };
            for (offset, reloc) in section.relocations() {
                let RelocationTarget::Symbol(index) = reloc.target() else {
                    panic!("relocation without a symbol");
                };
                let sym = file.symbol_by_index(index).unwrap();
                let s = match sym_addr.get(&index) {
                    Some(&a) => a,
                    None => self.extern_address(sym.name().unwrap()),
                };
                let p = base + offset;
                let value = s.wrapping_add_signed(reloc.addend());
                let RelocationFlags::Elf { r_type } = reloc.flags() else {
                    unreachable!()
                };
                match r_type {
                    elf::R_X86_64_64 => self.poke(p, &value.to_le_bytes()),
                    elf::R_X86_64_PC64 => self.poke(p, &value.wrapping_sub(p).to_le_bytes()),
                    elf::R_X86_64_PC32 | elf::R_X86_64_PLT32 => {
                        let v = i32::try_from(value.wrapping_sub(p) as i64).unwrap();
                        self.poke(p, &v.to_le_bytes());
                    }
                    elf::R_X86_64_32S => {
                        let v = i32::try_from(value as i64).unwrap();
                        self.poke(p, &v.to_le_bytes());
                    }
                    elf::R_X86_64_32 => {
                        self.poke(p, &u32::try_from(value).unwrap().to_le_bytes());
                    }
                    other => panic!("relocation type {} in a fixture", other.0),
                }
            }
        }
        own
    }

    /// Writes `bytes` at `addr` (as the kernel's text_poke does).
    pub fn poke(&mut self, addr: u64, bytes: &[u8]) {
        let (&start, region) = self.memory.range_mut(..=addr).next_back().unwrap();
        let at = (addr - start) as usize;
        region[at..at + bytes.len()].copy_from_slice(bytes);
    }

    pub fn peek(&self, addr: u64, len: usize) -> Vec<u8> {
        let (&start, region) = self.memory.range(..=addr).next_back().unwrap();
        let at = (addr - start) as usize;
        region[at..at + len].to_vec()
    }

    /// A `call` or `jmp` with a 32-bit displacement from `at` to `target`.
    pub fn branch32(opcode: u8, at: u64, target: u64) -> [u8; 5] {
        let d = i32::try_from(target.wrapping_sub(at + 5) as i64).unwrap();
        let d = d.to_le_bytes();
        [opcode, d[0], d[1], d[2], d[3]]
    }

    pub fn text(&self) -> MemoryText {
        let mut text = MemoryText::new();
        for (&addr, bytes) in &self.memory {
            // Room after the last section, as the rest of a kernel's text would be.
            let mut bytes = bytes.clone();
            bytes.resize(bytes.len() + 256, 0xcc);
            text.insert(addr, bytes);
        }
        text
    }

    /// kallsyms as the running kernel would print it.
    pub fn kallsyms(&self) -> KallsymsIndex {
        let mut lines = vec![
            (TEXT_BASE, 'T', "_stext".to_owned()),
            (self.end.max(self.next_extern), 'T', "_etext".to_owned()),
        ];
        lines.extend(self.symbols.iter().cloned());
        lines.sort_by_key(|l| l.0);
        let text: String = lines
            .iter()
            .map(|(a, k, n)| format!("{a:016x} {k} {n}\n"))
            .collect();
        KallsymsIndex::parse(&text).unwrap()
    }
}
