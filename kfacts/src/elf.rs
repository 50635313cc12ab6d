//! One in-memory model of a relocatable x86-64 ELF object (`.o`), as the kernel's
//! build writes them: sections with their bytes and relocations, symbols with their
//! binding and type, read once into plain structures indexed by ELF index.
//!
//! The differ, the livepatch writer and the run-pre extractor all read objects
//! through it. Relocations of debug sections are not read: nothing in kstack
//! follows them, and they are most of an object's relocations.

use object::Endianness;
use object::elf;
use object::read::elf::{FileHeader as _, Rela as _, SectionHeader as _, Sym as _};

use crate::reloc;
use crate::sections::{DEBUG_PREFIX, alt_instr};

/// Why an object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("not a readable ELF object: {0}")]
    Read(#[from] object::read::Error),
    #[error("{found}; expected an x86-64 relocatable object (.o)")]
    Unsupported { found: String },
    #[error("section {section}: {detail}")]
    Malformed { section: String, detail: String },
}

/// One section.
#[derive(Debug, Clone)]
pub struct Section<'d> {
    pub name: String,
    pub sh_type: u32,
    pub flags: u64,
    pub align: u64,
    pub entsize: u64,
    pub size: u64,
    /// The bytes; empty for `SHT_NOBITS`.
    pub data: &'d [u8],
    /// The relocations that apply to this section, sorted by offset (none for debug
    /// sections).
    pub relocs: Vec<Reloc>,
    /// Named symbols defined here (neither section nor file symbols), sorted by
    /// value, then index.
    pub symbols: Vec<usize>,
}

impl Section<'_> {
    pub fn has(&self, flag: elf::SectionFlags) -> bool {
        self.flags & flag.0 != 0
    }

    /// `SHF_ALLOC`: part of the kernel's memory.
    pub fn is_alloc(&self) -> bool {
        self.has(elf::SHF_ALLOC)
    }

    /// `SHF_EXECINSTR`.
    pub fn is_text(&self) -> bool {
        self.has(elf::SHF_EXECINSTR)
    }

    pub fn is_nobits(&self) -> bool {
        self.sh_type == elf::SHT_NOBITS.0
    }

    /// String literals (`SHF_MERGE | SHF_STRINGS`, `.rodata.str1.*`).
    pub fn is_strings(&self) -> bool {
        self.has(elf::SHF_MERGE) && self.has(elf::SHF_STRINGS)
    }

    /// The layout of the entries of this `.altinstructions` section, from where its
    /// relocations are ([`alt_instr::layout_of`]); `None` when no layout kstack knows
    /// fits.
    pub fn alt_layout(&self) -> Option<alt_instr::Layout> {
        let offsets: Vec<u64> = self.relocs.iter().map(|r| r.offset).collect();
        alt_instr::layout_of(self.size, &offsets)
    }

    /// The relocations with an offset in `start..end`.
    pub fn relocs_in(&self, start: u64, end: u64) -> &[Reloc] {
        let lo = self.relocs.partition_point(|r| r.offset < start);
        let hi = self.relocs.partition_point(|r| r.offset < end);
        &self.relocs[lo..hi]
    }
}

/// One relocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloc {
    pub offset: u64,
    /// The symbol's ELF index; 0 (the null symbol) for an absolute value.
    pub sym: usize,
    pub r_type: elf::RelocationType,
    pub addend: i64,
}

impl Reloc {
    /// The symbol it refers to; `None` for an absolute value.
    pub fn symbol(&self) -> Option<usize> {
        (self.sym != 0).then_some(self.sym)
    }
}

/// One symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    /// The defining section, for symbols defined in one.
    pub section: Option<usize>,
    /// The raw `st_shndx` (`SHN_UNDEF`, `SHN_ABS`, `SHN_LIVEPATCH`, ...).
    pub shndx: u16,
    pub value: u64,
    pub size: u64,
    /// `STB_*`.
    pub bind: u8,
    /// `STT_*`.
    pub kind: u8,
}

impl Symbol {
    pub fn is_local(&self) -> bool {
        self.bind == elf::STB_LOCAL.0
    }
    pub fn is_weak(&self) -> bool {
        self.bind == elf::STB_WEAK.0
    }
    pub fn is_global(&self) -> bool {
        self.bind == elf::STB_GLOBAL.0
    }
    /// A function (`STT_FUNC`, or `STT_GNU_IFUNC`).
    pub fn is_func(&self) -> bool {
        self.kind == elf::STT_FUNC.0 || self.kind == elf::STT_GNU_IFUNC.0
    }
    /// A data object (`STT_OBJECT`, or `STT_COMMON`).
    pub fn is_object(&self) -> bool {
        self.kind == elf::STT_OBJECT.0 || self.kind == elf::STT_COMMON.0
    }
    pub fn is_section(&self) -> bool {
        self.kind == elf::STT_SECTION.0
    }
    pub fn is_file(&self) -> bool {
        self.kind == elf::STT_FILE.0
    }
    /// Defined in a section of the object.
    pub fn is_defined(&self) -> bool {
        self.section.is_some()
    }
    /// Where it ends in its section (saturating: a malformed object may say
    /// anything).
    pub fn end(&self) -> u64 {
        self.value.saturating_add(self.size)
    }
}

/// A relocatable object, indexed by ELF section and symbol index (0 is the null
/// entry of each).
#[derive(Debug, Clone)]
pub struct RelObject<'d> {
    pub sections: Vec<Section<'d>>,
    pub symbols: Vec<Symbol>,
}

impl<'d> RelObject<'d> {
    /// Reads an x86-64 relocatable object.
    pub fn parse(data: &'d [u8]) -> Result<RelObject<'d>, ElfError> {
        let header = elf::FileHeader64::<Endianness>::parse(data)?;
        let endian = header.endian()?;
        if header.e_type(endian) != elf::ET_REL || header.e_machine(endian) != elf::EM_X86_64 {
            return Err(ElfError::Unsupported {
                found: format!(
                    "ELF type {} for machine {}",
                    header.e_type(endian),
                    header.e_machine(endian)
                ),
            });
        }
        let table = header.sections(endian, data)?;
        let symtab = table.symbols(endian, data, elf::SHT_SYMTAB)?;
        let malformed = |section: &str, detail: String| ElfError::Malformed {
            section: section.to_owned(),
            detail,
        };

        let mut sections = Vec::with_capacity(table.len());
        for header in table.iter() {
            let name = table.section_name(endian, header)?;
            let sh_type = header.sh_type(endian).0;
            let section_data = if sh_type == elf::SHT_NOBITS.0 {
                &[][..]
            } else {
                header.data(endian, data)?
            };
            sections.push(Section {
                name: String::from_utf8_lossy(name).into_owned(),
                sh_type,
                flags: header.sh_flags(endian).0,
                align: header.sh_addralign(endian),
                entsize: header.sh_entsize(endian),
                size: header.sh_size(endian),
                data: section_data,
                relocs: Vec::new(),
                symbols: Vec::new(),
            });
        }

        let mut symbols = Vec::with_capacity(symtab.len());
        for (index, sym) in symtab.enumerate() {
            let name = symtab.symbol_name(endian, sym)?;
            let section = symtab.symbol_section(endian, sym, index)?.map(|s| s.0);
            if let Some(s) = section
                && s >= sections.len()
            {
                return Err(malformed(
                    ".symtab",
                    format!("symbol {index} in section {s}"),
                ));
            }
            symbols.push(Symbol {
                name: String::from_utf8_lossy(name).into_owned(),
                section,
                shndx: sym.st_shndx(endian).0,
                value: sym.st_value(endian),
                size: sym.st_size(endian),
                bind: sym.st_bind().0,
                kind: sym.st_type().0,
            });
        }
        for (index, sym) in symbols.iter().enumerate().skip(1) {
            if let Some(s) = sym.section
                && !sym.is_section()
                && !sym.is_file()
            {
                sections[s].symbols.push(index);
            }
        }

        for header in table.iter() {
            let Some((relas, link)) = header.rela(endian, data)? else {
                continue;
            };
            let name = table.section_name(endian, header)?;
            let name = String::from_utf8_lossy(name);
            if link != symtab.section() {
                return Err(malformed(
                    &name,
                    "relocations against another symbol table".into(),
                ));
            }
            let target = header.sh_info(endian) as usize;
            if target == 0 || target >= sections.len() {
                return Err(malformed(
                    &name,
                    format!("relocation section for section {target}"),
                ));
            }
            if sections[target].name.starts_with(DEBUG_PREFIX) {
                continue;
            }
            for rela in relas {
                let sym = rela.r_sym(endian, false) as usize;
                let offset = rela.r_offset(endian);
                let r_type = rela.r_type(endian, false);
                if sym >= symbols.len() {
                    return Err(malformed(
                        &sections[target].name,
                        format!("relocation at {offset:#x} names no symbol ({sym})"),
                    ));
                }
                let target_section = &sections[target];
                if !target_section.is_nobits()
                    && offset.saturating_add(reloc::field_size(r_type))
                        > target_section.data.len() as u64
                {
                    return Err(malformed(
                        &target_section.name,
                        format!("relocation at {offset:#x} is outside the section"),
                    ));
                }
                sections[target].relocs.push(Reloc {
                    offset,
                    sym,
                    r_type,
                    addend: rela.r_addend(endian),
                });
            }
        }
        for section in &mut sections {
            section.relocs.sort_by_key(|r| r.offset);
            section
                .symbols
                .sort_by(|a, b| symbols[*a].value.cmp(&symbols[*b].value).then(a.cmp(b)));
        }
        Ok(RelObject { sections, symbols })
    }

    /// The section of that name (the first, if several).
    pub fn section_named(&self, name: &str) -> Option<usize> {
        self.sections.iter().position(|s| s.name == name)
    }

    /// The defined function symbol of that name.
    pub fn function(&self, name: &str) -> Option<usize> {
        self.symbols
            .iter()
            .position(|s| s.is_func() && s.is_defined() && s.name == name)
    }

    /// A symbol's name for people: a section symbol goes by its section's name.
    pub fn display_name(&self, sym: usize) -> &str {
        let s = &self.symbols[sym];
        match (s.is_section(), s.section) {
            (true, Some(section)) => &self.sections[section].name,
            _ => &s.name,
        }
    }

    /// The named symbol that `offset` in section `sec` belongs to: the one that
    /// contains it, else a zero-sized one there, else the one that ends there (a
    /// pointer one past an array, which compilers form for loop bounds). Among
    /// aliases, a sized, then a global symbol.
    pub fn symbol_at(&self, sec: usize, offset: i64) -> Option<usize> {
        let syms = &self.sections[sec].symbols;
        // Wide enough that no value or size, however malformed, overflows.
        let offset = i128::from(offset);
        let start = |s: usize| i128::from(self.symbols[s].value);
        let end = |s: usize| start(s) + i128::from(self.symbols[s].size);
        let pick = |f: &dyn Fn(usize) -> bool| {
            syms.iter().copied().filter(|&s| f(s)).min_by_key(|&s| {
                let sym = &self.symbols[s];
                (sym.size == 0, sym.is_local(), s)
            })
        };
        pick(&|s| start(s) <= offset && offset < end(s))
            .or_else(|| pick(&|s| self.symbols[s].size == 0 && start(s) == offset))
            .or_else(|| pick(&|s| end(s) == offset))
    }

    /// `function+0xoff` (or `section+0xoff`) for a place in a section.
    pub fn place(&self, sec: usize, offset: u64) -> String {
        let section = &self.sections[sec];
        let func = section
            .symbols
            .iter()
            .rev()
            .find(|&&s| self.symbols[s].is_func() && self.symbols[s].value <= offset);
        match func {
            Some(&f) => format!(
                "{}+{:#x}",
                self.symbols[f].name,
                offset - self.symbols[f].value
            ),
            None => format!("{}+{offset:#x}", section.name),
        }
    }
}
