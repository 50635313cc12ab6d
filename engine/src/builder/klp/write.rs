//! The output object, written with `object`'s ELF builder: the sections the extractor
//! laid out, one symbol per section (which the relocations use), the carried
//! functions and data, and the undefined references.

use std::collections::{BTreeMap, HashMap};

use kstack_kfacts::elf::Section;
use object::Endianness;
use object::build::elf as out;
use object::elf;

use super::{ExternalReference, KlpError, Result};

/// Writes the output object: the sections, one symbol per section (which the
/// relocations use), the carried functions and data, the undefined references.
pub(super) fn write_object(
    outs: Vec<OutSection>,
    externals: &BTreeMap<String, ExternalReference>,
) -> Result<Vec<u8>> {
    let mut builder = out::Builder::new(Endianness::Little, true);
    builder.header.e_type = elf::ET_REL;
    builder.header.e_machine = elf::EM_X86_64;

    let mut ids = Vec::new();
    for o in &outs {
        let s = builder.sections.add();
        s.name = o.name.clone().into_bytes().into();
        s.sh_type = elf::SectionType(o.sh_type);
        s.sh_flags = elf::SectionFlags(o.flags);
        s.sh_addralign = o.align.max(1);
        s.sh_entsize = o.entsize;
        s.data = if o.sh_type == elf::SHT_NOBITS.0 {
            out::SectionData::UninitializedData(o.size)
        } else {
            out::SectionData::Data(o.data.clone().into())
        };
        ids.push(s.id());
    }
    // ld warns about, and newer binutils refuse, objects without this note.
    let note = builder.sections.add();
    note.name = b".note.GNU-stack"[..].into();
    note.sh_type = elf::SHT_PROGBITS;
    note.sh_addralign = 1;
    let symtab = builder.sections.add();
    symtab.name = b".symtab"[..].into();
    symtab.sh_type = elf::SHT_SYMTAB;
    symtab.sh_addralign = 8;
    symtab.sh_entsize = 24;
    symtab.data = out::SectionData::Symbol;
    let symtab_id = symtab.id();
    let strtab = builder.sections.add();
    strtab.name = b".strtab"[..].into();
    strtab.sh_type = elf::SHT_STRTAB;
    strtab.sh_addralign = 1;
    strtab.data = out::SectionData::String;
    let shstrtab = builder.sections.add();
    shstrtab.name = b".shstrtab"[..].into();
    shstrtab.sh_type = elf::SHT_STRTAB;
    shstrtab.sh_addralign = 1;
    shstrtab.data = out::SectionData::SectionString;

    // Symbols: one per output section (relocations use them), the carried
    // functions and data, and the undefined references.
    let mut section_syms = Vec::new();
    for &id in &ids {
        let sym = builder.symbols.add();
        sym.section = Some(id);
        sym.set_st_info(elf::STB_LOCAL, elf::STT_SECTION);
        section_syms.push(sym.id());
    }
    for (o, &id) in outs.iter().zip(&ids) {
        for s in &o.symbols {
            let sym = builder.symbols.add();
            sym.name = s.name.clone().into_bytes().into();
            sym.section = Some(id);
            sym.st_value = s.value;
            sym.st_size = s.size;
            let bind = if s.global {
                elf::STB_GLOBAL
            } else {
                elf::STB_LOCAL
            };
            sym.set_st_info(bind, elf::SymbolType(s.kind));
        }
    }
    let mut external_syms = HashMap::new();
    for name in externals.keys() {
        let sym = builder.symbols.add();
        sym.name = name.clone().into_bytes().into();
        sym.set_st_info(elf::STB_GLOBAL, elf::STT_NOTYPE);
        sym.st_shndx = elf::SHN_UNDEF;
        external_syms.insert(name.clone(), sym.id());
    }

    for (o, &id) in outs.iter().zip(&ids) {
        if o.relocs.is_empty() {
            continue;
        }
        let mut relocs: Vec<out::Relocation> = o
            .relocs
            .iter()
            .map(|r| {
                let (symbol, addend) = match &r.target {
                    OutTarget::Section(s, addend) => (section_syms[*s], *addend),
                    OutTarget::External(name, addend) => (external_syms[name], *addend),
                };
                out::Relocation {
                    r_offset: r.offset,
                    symbol: Some(symbol),
                    r_type: r.r_type,
                    r_addend: addend,
                }
            })
            .collect();
        relocs.sort_by_key(|r| r.r_offset);
        let rela = builder.sections.add();
        rela.name = format!(".rela{}", o.name).into_bytes().into();
        rela.sh_type = elf::SHT_RELA;
        rela.sh_flags = elf::SHF_INFO_LINK;
        rela.sh_addralign = 8;
        rela.sh_entsize = 24;
        rela.sh_link_section = Some(symtab_id);
        rela.sh_info_section = Some(id);
        rela.data = out::SectionData::Relocation(relocs);
    }

    let mut buffer = Vec::new();
    builder.write(&mut buffer).map_err(KlpError::Write)?;
    Ok(buffer)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RelocContext {
    Code,
    Replacement,
    Special,
}

#[derive(Debug, Clone)]
pub(super) struct OutSection {
    pub(super) name: String,
    pub(super) sh_type: u32,
    pub(super) flags: u64,
    pub(super) align: u64,
    pub(super) entsize: u64,
    pub(super) size: u64,
    pub(super) data: Vec<u8>,
    pub(super) symbols: Vec<OutSymbol>,
    pub(super) relocs: Vec<OutReloc>,
}

impl OutSection {
    pub(super) fn copy_of(section: &Section<'_>, data: Vec<u8>) -> Self {
        let size = if section.sh_type == elf::SHT_NOBITS.0 {
            section.size
        } else {
            data.len() as u64
        };
        OutSection {
            name: section.name.clone(),
            sh_type: section.sh_type,
            flags: section.flags & !elf::SHF_GROUP.0,
            align: section.align,
            entsize: section.entsize,
            size,
            data,
            symbols: Vec::new(),
            relocs: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct OutSymbol {
    pub(super) name: String,
    pub(super) value: u64,
    pub(super) size: u64,
    pub(super) kind: u8,
    pub(super) global: bool,
}

impl OutSymbol {
    pub(super) fn function(name: &str, size: u64, local: bool) -> Self {
        OutSymbol {
            name: name.to_owned(),
            value: 0,
            size,
            kind: elf::STT_FUNC.0,
            global: !local,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct OutReloc {
    pub(super) offset: u64,
    pub(super) r_type: elf::RelocationType,
    pub(super) target: OutTarget,
}

#[derive(Debug, Clone)]
pub(super) enum OutTarget {
    /// An output section's symbol, plus addend.
    Section(usize, i64),
    /// An undefined symbol, plus addend.
    External(String, i64),
}
