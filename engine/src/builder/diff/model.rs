//! What the differ sees of an object: kfacts' relocatable-object model, each section
//! classified (code, boot-only code, data, strings, special, ignored), and the
//! special-section entries indexed by the function they point into.

use std::collections::HashMap;

use kstack_kfacts::elf::{ElfError, RelObject, Reloc, Section, Symbol};
use kstack_kfacts::reloc::pc_relative_slack;
use kstack_kfacts::sections::{
    self, ALTINSTR_REPLACEMENT, BOOT_ONLY_TEXT, EntryKind, FREED_AFTER_BOOT_PREFIXES, alt_instr,
    has_prefix, orc, special_section,
};
use object::elf;

use super::{DiffError, Side};

/// What a section holds, as far as the differ cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Text,
    /// Code that runs only while booting (`__init`, `__head`).
    InitText,
    Data,
    InitData,
    /// String literals (`SHF_MERGE | SHF_STRINGS`, `.rodata.str1.*`): compared by
    /// contents where referred to.
    Strings,
    /// A special section, `.orc_unwind` or `.altinstr_replacement`.
    Special,
    /// Not allocated, a build-time annotation or a registration table.
    Ignored,
}

/// What the differ derives per section.
#[derive(Debug)]
pub(super) struct SecInfo {
    pub(super) class: Class,
    /// For `SHF_MERGE` constants (`.rodata.cst16`): the size of one constant.
    pub(super) merge_entsize: Option<u64>,
    /// The places in this section that relocations through its section symbol
    /// refer to, sorted: where anonymous pieces of it begin.
    pub(super) entry_points: Vec<i64>,
}

/// An entry of a special section, with what it refers to.
#[derive(Debug, Clone)]
pub(super) struct Special {
    /// The entry itself, then what it drags along (replacement code, ORC entry).
    pub(super) parts: Vec<Piece>,
    pub(super) target_section: usize,
    pub(super) target: u64,
    /// Byte ranges of the entry (first part) left out of the comparison.
    pub(super) ignored: &'static [(u64, u64)],
}

/// A range of a section: an entity's bytes, or a special entry.
#[derive(Debug, Clone, Copy)]
pub(super) struct Piece {
    pub(super) section: usize,
    pub(super) offset: u64,
    pub(super) size: u64,
}

/// One object as the differ reads it.
#[derive(Debug)]
pub(super) struct Elf<'d> {
    pub(super) side: Side,
    pub(super) obj: RelObject<'d>,
    /// Per section, by ELF index.
    pub(super) info: Vec<SecInfo>,
    /// Per section: its function and object symbols, by address (aliases: the
    /// larger, then the global one first).
    pub(super) by_section: Vec<Vec<usize>>,
    pub(super) specials: Vec<Special>,
    /// Per function section: indices into `specials`.
    pub(super) specials_by_target: HashMap<usize, Vec<usize>>,
}

impl<'d> Elf<'d> {
    pub(super) fn parse(data: &'d [u8], side: Side) -> Result<Self, DiffError> {
        let obj = RelObject::parse(data).map_err(|e| match e {
            ElfError::Read(source) => DiffError::Parse { side, source },
            ElfError::Unsupported { found } => DiffError::Unsupported { side, found },
            ElfError::Malformed { section, detail } => DiffError::Malformed {
                side,
                section,
                detail,
            },
        })?;
        Self::load(obj, side)
    }

    fn load(obj: RelObject<'d>, side: Side) -> Result<Self, DiffError> {
        let mut info: Vec<SecInfo> = obj
            .sections
            .iter()
            .map(|s| SecInfo {
                class: classify(&s.name, s.flags),
                merge_entsize: (s.has(elf::SHF_MERGE) && !s.has(elf::SHF_STRINGS))
                    .then(|| merge_constant_size(&s.name))
                    .flatten(),
                entry_points: Vec::new(),
            })
            .collect();

        let mut entry_points: Vec<Vec<i64>> = vec![Vec::new(); obj.sections.len()];
        for (index, section) in obj.sections.iter().enumerate() {
            if info[index].class == Class::Ignored {
                continue;
            }
            for rel in &section.relocs {
                let Some(sym) = rel.symbol().map(|i| &obj.symbols[i]) else {
                    continue;
                };
                if let (true, Some(target)) = (sym.is_section(), sym.section) {
                    let slack = if section.is_text() {
                        pc_relative_slack(rel.r_type).unwrap_or(0)
                    } else {
                        0
                    };
                    entry_points[target].push(rel.addend + slack);
                }
            }
        }
        for (section, mut points) in info.iter_mut().zip(entry_points) {
            points.sort_unstable();
            points.dedup();
            section.entry_points = points;
        }

        let mut by_section: Vec<Vec<usize>> = vec![Vec::new(); obj.sections.len()];
        for (i, sym) in obj.symbols.iter().enumerate() {
            if let (Some(s), true) = (sym.section, sym.is_func() || sym.is_object()) {
                by_section[s].push(i);
            }
        }
        for list in &mut by_section {
            list.sort_by_key(|&i| {
                let s = &obj.symbols[i];
                (s.value, std::cmp::Reverse(s.size), s.is_local(), i)
            });
        }

        let mut elf = Elf {
            side,
            obj,
            info,
            by_section,
            specials: Vec::new(),
            specials_by_target: HashMap::new(),
        };
        elf.index_specials()?;
        Ok(elf)
    }

    pub(super) fn sec(&self, section: usize) -> &Section<'d> {
        &self.obj.sections[section]
    }

    pub(super) fn sym(&self, sym: usize) -> &Symbol {
        &self.obj.symbols[sym]
    }

    pub(super) fn class(&self, section: usize) -> Class {
        self.info[section].class
    }

    /// A section's bytes; none for sections the differ ignores or `SHT_NOBITS`.
    pub(super) fn data(&self, section: usize) -> &'d [u8] {
        if self.class(section) == Class::Ignored {
            &[]
        } else {
            self.obj.sections[section].data
        }
    }

    /// The relocations of a section in `start..end`; none for ignored sections.
    pub(super) fn relocs_in(&self, section: usize, start: u64, end: u64) -> &[Reloc] {
        if self.class(section) == Class::Ignored {
            return &[];
        }
        self.obj.sections[section].relocs_in(start, end)
    }

    fn section_named(&self, name: &str) -> Option<usize> {
        self.obj.section_named(name)
    }

    /// Finds the entries of every special section and what they point at.
    fn index_specials(&mut self) -> Result<(), DiffError> {
        let orc = self.section_named(orc::ENTRY_SECTION);
        let replacement = self.section_named(ALTINSTR_REPLACEMENT);
        let mut specials = Vec::new();
        for (index, sec) in self.obj.sections.iter().enumerate() {
            let Some(kind) = special_section(&sec.name) else {
                continue;
            };
            let malformed = |detail: String| DiffError::Malformed {
                side: self.side,
                section: sec.name.clone(),
                detail,
            };
            let offsets: Vec<u64> = sec.relocs.iter().map(|r| r.offset).collect();
            let Some(entry_size) = kind.entry_size_in(sec.size, &offsets) else {
                return Err(malformed(format!(
                    "its {} relocations in {:#x} bytes fit no entry layout of the kernel \
                     versions kstack knows (6.1, 6.12)",
                    offsets.len(),
                    sec.size
                )));
            };
            if sec.size % entry_size != 0 {
                return Err(malformed(format!(
                    "size {:#x} is not a multiple of the {}-byte entry this kernel \
                     version uses",
                    sec.size, entry_size
                )));
            }
            for rel in sec.relocs.iter() {
                if rel.offset % entry_size != kind.anchor {
                    continue;
                }
                let entry = rel.offset - kind.anchor;
                let Some((target_section, target)) = self.data_reloc_target(rel) else {
                    continue;
                };
                let mut parts = vec![Piece {
                    section: index,
                    offset: entry,
                    size: entry_size,
                }];
                if kind.kind == EntryKind::OrcIp {
                    let orc =
                        orc.ok_or_else(|| malformed(format!("{} is missing", orc::ENTRY_SECTION)))?;
                    let offset = entry / orc::IP_SIZE * orc::ENTRY_SIZE;
                    if offset + orc::ENTRY_SIZE > self.obj.sections[orc].size {
                        return Err(malformed(format!(
                            "entry {entry:#x} has no {} entry",
                            orc::ENTRY_SECTION
                        )));
                    }
                    parts.push(Piece {
                        section: orc,
                        offset,
                        size: orc::ENTRY_SIZE,
                    });
                }
                if kind.kind == EntryKind::Alternatives {
                    parts.extend(self.alt_replacement(sec, entry, replacement));
                }
                specials.push(Special {
                    parts,
                    target_section,
                    target,
                    ignored: kind.volatile,
                });
            }
        }
        for (i, special) in specials.iter().enumerate() {
            self.specials_by_target
                .entry(special.target_section)
                .or_default()
                .push(i);
        }
        self.specials = specials;
        Ok(())
    }

    /// The replacement instructions that an `.altinstructions` entry uses.
    fn alt_replacement(&self, sec: &Section<'_>, entry: u64, repl: Option<usize>) -> Option<Piece> {
        let repl = repl?;
        let rel = sec
            .relocs
            .iter()
            .find(|r| r.offset == entry + alt_instr::REPL_OFFSET)?;
        let (section, offset) = self.data_reloc_target(rel)?;
        let layout = sec.alt_layout()?;
        let len = *sec
            .data
            .get(usize::try_from(entry + layout.replacementlen).ok()?)?;
        (section == repl && len > 0).then_some(Piece {
            section,
            offset,
            size: u64::from(len),
        })
    }

    /// Section and offset that a relocation in data (`.long sym - .`, `.quad sym`)
    /// points at: there the addend is exact.
    pub(super) fn data_reloc_target(&self, rel: &Reloc) -> Option<(usize, u64)> {
        let sym = &self.obj.symbols[rel.symbol()?];
        let section = sym.section?;
        let offset = u64::try_from(sym.value as i64 + rel.addend).ok()?;
        Some((section, offset))
    }

    /// The function or object symbol of `section` that holds offset `at`. A
    /// PC-relative field in code is followed by up to 4 bytes of immediate, so
    /// `slack` lets the target start up to that many bytes after `at`; failing
    /// both, the symbol that ends at `at`.
    pub(super) fn symbol_at(&self, section: usize, at: i64, slack: i64) -> Option<usize> {
        let list = &self.by_section[section];
        let holds = |&i: &usize| {
            let s = &self.obj.symbols[i];
            let start = s.value as i64;
            start <= at && at < start + (s.size.max(1) as i64)
        };
        if let Some(&i) = list.iter().rev().find(|i| holds(i)) {
            return Some(i);
        }
        (1..=slack)
            .find_map(|k| {
                list.iter()
                    .copied()
                    .find(|&i| self.obj.symbols[i].value as i64 == at + k)
            })
            // One past the end of an array (`arr + ARRAY_SIZE(arr)`).
            .or_else(|| {
                list.iter()
                    .copied()
                    .find(|&i| self.obj.symbols[i].end() as i64 == at)
            })
    }
}

/// Classifies a section by its flags and the names the kernel gives meaning to.
pub(super) fn classify(name: &str, sh_flags: u64) -> Class {
    let has = |flag: elf::SectionFlags| sh_flags & flag.0 != 0;
    if !has(elf::SHF_ALLOC)
        || has_prefix(name, sections::ANNOTATION_PREFIXES)
        || has_prefix(name, sections::REGISTRATION_TABLE_PREFIXES)
    {
        return Class::Ignored;
    }
    if special_section(name).is_some() || sections::is_special_companion(name) {
        return Class::Special;
    }
    if has(elf::SHF_EXECINSTR) {
        return if BOOT_ONLY_TEXT.contains(&name) {
            Class::InitText
        } else {
            Class::Text
        };
    }
    if has(elf::SHF_MERGE) && has(elf::SHF_STRINGS) {
        return Class::Strings;
    }
    if has_prefix(name, FREED_AFTER_BOOT_PREFIXES) {
        Class::InitData
    } else {
        Class::Data
    }
}

/// GCC names its merged constant pools `.rodata.cst<size>`.
fn merge_constant_size(name: &str) -> Option<u64> {
    name.rsplit_once(".cst")
        .and_then(|(_, n)| n.parse().ok())
        .filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_classified_by_flags_and_kernel_names() {
        let ax = elf::SHF_ALLOC.0 | elf::SHF_EXECINSTR.0;
        let a = elf::SHF_ALLOC.0;
        let ams = a | elf::SHF_MERGE.0 | elf::SHF_STRINGS.0;
        assert_eq!(classify(".text.foo", ax), Class::Text);
        // 6.12's record of the function padding (`CONFIG_CALL_PADDING`): unused on x86.
        let wal = a | elf::SHF_WRITE.0 | elf::SHF_LINK_ORDER.0;
        assert_eq!(
            classify("__patchable_function_entries", wal),
            Class::Ignored
        );
        assert_eq!(classify(".sched.text", ax), Class::Text);
        assert_eq!(classify(".init.text", ax), Class::InitText);
        assert_eq!(classify(".rodata.foo.str1.8", ams), Class::Strings);
        assert_eq!(classify(".init.rodata", a), Class::InitData);
        assert_eq!(classify("__bug_table", a), Class::Special);
        assert_eq!(classify(".altinstr_replacement", ax), Class::Special);
        assert_eq!(classify(".discard.addressable", a), Class::Ignored);
        assert_eq!(classify(".initcall5.init", a), Class::Ignored);
        assert_eq!(classify(".debug_info", 0), Class::Ignored);
        assert_eq!(classify(".data..read_mostly", a), Class::Data);
    }
}
