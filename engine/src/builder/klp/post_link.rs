//! The post-link rewrite of the module kbuild linked: relocations against livepatch
//! symbols move into `.klp.rela.<object>.<section>` sections flagged
//! `SHF_RELA_LIVEPATCH`, and the symbols get `SHN_LIVEPATCH`, as
//! `Documentation/livepatch/module-elf-format.rst` specifies. The linker cannot keep
//! those flags, so this happens after kbuild.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kstack_kfacts::livepatch::{
    KLP_RELA_PREFIX, KLP_SYM_PREFIX, SHF_RELA_LIVEPATCH, SHN_LIVEPATCH, VMLINUX, klp_symbol_name,
    parse_klp_symbol_name,
};

/// The prefix under which kstack's module template names the unexported vmlinux
/// symbols it uses (`__kstack_ksym_text_poke`): C cannot spell `.klp.sym.` names.
pub const KSYM_PREFIX: &str = "__kstack_ksym_";
use object::Endianness;
use object::build::Id as _;
use object::build::elf as out;
use object::elf;
use object::read::elf::{FileHeader as _, SectionHeader as _};

use super::{KlpError, KlpRelaSection, PostLinked, Result, malformed, read_err};

/// Moves every relocation against a `.klp.sym.*` symbol of the linked module `ko`
/// into `.klp.rela.<object>.<section>` sections and marks those symbols
/// `SHN_LIVEPATCH`, as the kernel's livepatch ELF format requires.
pub fn post_link(ko: &[u8]) -> Result<PostLinked> {
    post_link_applied(ko, &BTreeMap::new())
}

/// [`post_link`], where `applied_with` names, by target section, the patched module
/// whose code the section holds: a livepatch symbol of another module (an export of
/// a module the patched one depends on) is then applied with the patched module's
/// relocations (`.klp.rela.<patched module>.<section>`), when it loads; the livepatch
/// core resolves the symbol in the module the symbol's name says.
pub fn post_link_applied(ko: &[u8], applied_with: &BTreeMap<String, String>) -> Result<PostLinked> {
    const WHAT: &str = "module";
    // A livepatch relocation section is SHF_ALLOC and links the symbol table, which the
    // builder's reader takes for dynamic relocations; check with the plain reader first.
    {
        let header = elf::FileHeader64::<Endianness>::parse(ko).map_err(read_err(WHAT))?;
        let endian = header.endian().map_err(read_err(WHAT))?;
        let sections = header.sections(endian, ko).map_err(read_err(WHAT))?;
        for s in sections.iter() {
            if s.sh_flags(endian).0 & SHF_RELA_LIVEPATCH != 0 {
                let name = sections.section_name(endian, s).map_err(read_err(WHAT))?;
                return Err(KlpError::AlreadyPostLinked {
                    section: String::from_utf8_lossy(name).into_owned(),
                });
            }
        }
    }
    let mut builder = out::Builder::read(ko).map_err(|e| malformed(WHAT, e.to_string()))?;
    if builder.header.e_type != elf::ET_REL || builder.header.e_machine != elf::EM_X86_64 {
        return Err(malformed(WHAT, "not an x86-64 relocatable object"));
    }

    // The livepatch symbols and their objects. Undefined `__kstack_ksym_<name>`
    // symbols (the template's own references to unexported vmlinux symbols) become
    // livepatch symbols of vmlinux.
    let mut klp_objects = HashMap::new();
    let mut klp_names = Vec::new();
    for sym in builder.symbols.iter_mut() {
        let mut name = String::from_utf8_lossy(sym.name.as_slice()).into_owned();
        if let Some(vmlinux_name) = name.strip_prefix(KSYM_PREFIX)
            && sym.section.is_none()
        {
            name = klp_symbol_name(VMLINUX, vmlinux_name, 0)?;
            sym.name = name.clone().into_bytes().into();
        }
        if !name.starts_with(KLP_SYM_PREFIX) {
            continue;
        }
        let (objname, _, _) = parse_klp_symbol_name(&name)?;
        if sym.section.is_some()
            || (sym.st_shndx != elf::SHN_UNDEF && sym.st_shndx.0 != SHN_LIVEPATCH)
        {
            return Err(malformed(
                WHAT,
                format!("livepatch symbol {name} is defined"),
            ));
        }
        sym.section = None;
        sym.st_shndx = elf::SymbolSection(SHN_LIVEPATCH);
        klp_objects.insert(sym.id().index(), objname);
        klp_names.push(name);
    }

    let symtab = builder
        .sections
        .iter()
        .find(|s| matches!(s.data, out::SectionData::Symbol))
        .map(|s| s.id())
        .ok_or_else(|| malformed(WHAT, "no symbol table"))?;

    // Every relocation section must name the section it applies to (SHF_INFO_LINK),
    // or its livepatch relocations could not be moved and would reach the loader.
    for s in builder.sections.iter() {
        if let out::SectionData::Relocation(relocs) = &s.data {
            let klp = relocs.iter().any(|r| {
                r.symbol
                    .is_some_and(|id| klp_objects.contains_key(&id.index()))
            });
            if klp && s.sh_info_section.is_none() {
                return Err(malformed(
                    WHAT,
                    format!(
                        "relocation section {} has livepatch relocations but no target section",
                        String::from_utf8_lossy(s.name.as_slice())
                    ),
                ));
            }
        }
    }

    // The kernel refuses to apply two relocations to one location.
    let mut seen = BTreeSet::new();
    for s in builder.sections.iter() {
        let (out::SectionData::Relocation(relocs), Some(target)) = (&s.data, s.sh_info_section)
        else {
            continue;
        };
        for r in relocs {
            if !seen.insert((target.index(), r.r_offset)) {
                return Err(KlpError::DuplicateRelocation {
                    section: String::from_utf8_lossy(builder.sections.get(target).name.as_slice())
                        .into_owned(),
                    offset: r.r_offset,
                });
            }
        }
    }

    // Split: (object, target) → relocations.
    let names: HashMap<usize, String> = builder
        .sections
        .iter()
        .map(|s| {
            (
                s.id().index(),
                String::from_utf8_lossy(s.name.as_slice()).into_owned(),
            )
        })
        .collect();
    let mut moved: BTreeMap<(String, usize), Vec<out::Relocation>> = BTreeMap::new();
    let mut targets = HashMap::new();
    let mut emptied = Vec::new();
    for s in builder.sections.iter_mut() {
        let Some(target) = s.sh_info_section else {
            continue;
        };
        let out::SectionData::Relocation(relocs) = &mut s.data else {
            continue;
        };
        let (klp, kept): (Vec<_>, Vec<_>) = relocs.drain(..).partition(|r| {
            r.symbol
                .is_some_and(|id| klp_objects.contains_key(&id.index()))
        });
        *relocs = kept;
        if relocs.is_empty() && !klp.is_empty() {
            emptied.push(s.id());
        }
        for r in klp {
            let id = r.symbol.expect("partitioned on a symbol");
            let symbol_object = &klp_objects[&id.index()];
            let object = match applied_with.get(&names[&target.index()]) {
                Some(patched) if symbol_object != VMLINUX => patched.clone(),
                _ => symbol_object.clone(),
            };
            moved.entry((object, target.index())).or_default().push(r);
            targets.insert(target.index(), target);
        }
    }
    for id in emptied {
        builder.sections.get_mut(id).delete = true;
    }

    let mut sections = Vec::new();
    for ((objname, target), mut relocs) in moved {
        let target = targets[&target];
        let target_section = builder.sections.get(target);
        let target_name = String::from_utf8_lossy(target_section.name.as_slice()).into_owned();
        if !target_section.is_alloc() {
            return Err(KlpError::NonAllocTarget {
                section: target_name,
            });
        }
        let name = format!("{KLP_RELA_PREFIX}{objname}.{target_name}");
        relocs.sort_by_key(|r| r.r_offset);
        sections.push(KlpRelaSection {
            name: name.clone(),
            target: target_name,
            relocations: relocs.len(),
        });
        let rela = builder.sections.add();
        rela.name = name.into_bytes().into();
        rela.sh_type = elf::SHT_RELA;
        // SHF_ALLOC: the livepatch core applies relocations for a module target when
        // that module loads, long after the patch module's ELF copy was freed, so the
        // section must be in the module's memory (module-elf-format.rst §3.1).
        rela.sh_flags =
            elf::SectionFlags(SHF_RELA_LIVEPATCH | elf::SHF_ALLOC.0 | elf::SHF_INFO_LINK.0);
        rela.sh_addralign = 8;
        rela.sh_entsize = 24;
        rela.sh_link_section = Some(symtab);
        rela.sh_info_section = Some(target);
        rela.data = out::SectionData::Relocation(relocs);
    }

    let mut buffer = Vec::new();
    builder.write(&mut buffer).map_err(KlpError::Write)?;
    klp_names.sort();
    Ok(PostLinked {
        ko: buffer,
        sections,
        symbols: klp_names,
    })
}
