//! Writing what the extractor chose: a layout of output sections, every carried
//! relocation translated (to an output section, or to an undefined symbol the module
//! loader or the livepatch core resolves), the kept special-section entries, and the
//! table of functions with their old positions.

use std::collections::BTreeMap;

use kstack_kfacts::livepatch::{VMLINUX, klp_symbol_name};
use kstack_kfacts::reloc::RelocKind;
use kstack_kfacts::sections::{
    self, ALTINSTR_AUX, ALTINSTR_REPLACEMENT, CODE_AND_DATA_PREFIXES, EntryKind, SPECIAL_SECTIONS,
    has_prefix, orc, paravirt_patch_site,
};
use object::elf;

use kstack_kfacts::elf::Reloc;

use super::extract::{Carried, Extractor, Target};
use super::write::{OutReloc, OutSection, OutSymbol, OutTarget, RelocContext, write_object};
use super::{
    ExternalReference, Extracted, ExtractedFunction, KlpError, Resolution, Result, malformed,
    new_symbol_name,
};

/// Sections whose references to a function say nothing the patch must carry: other
/// code, data (function pointers keep pointing at the old function, which livepatch
/// redirects), exports and other registration tables, debug information, objtool's
/// annotations.
fn is_unrelated_section(name: &str) -> bool {
    has_prefix(name, CODE_AND_DATA_PREFIXES)
        || name.starts_with(sections::DEBUG_PREFIX)
        || has_prefix(name, sections::ANNOTATION_PREFIXES)
        || has_prefix(name, sections::REGISTRATION_TABLE_PREFIXES)
        || has_prefix(name, sections::SUBSYSTEM_TABLE_PREFIXES)
}

impl Extractor<'_, '_> {
    pub(super) fn emit(mut self) -> Result<Extracted> {
        let layout = self.layout()?;
        let mut outs: Vec<OutSection> = layout.sections.clone();
        // (output section, offset, input section, relocation) of every carried relocation.
        let mut work: Vec<(usize, u64, usize, kstack_kfacts::elf::Reloc, RelocContext)> =
            Vec::new();
        for &sec in self.carried.keys() {
            let name = self.input.sections[sec].name.as_str();
            let context = if name == ALTINSTR_REPLACEMENT || name == ALTINSTR_AUX {
                RelocContext::Replacement
            } else {
                RelocContext::Code
            };
            for rel in self.carried_relocs(sec) {
                let (out_index, shift) = layout
                    .locate(sec, rel.offset as i64)
                    .expect("carried relocations lie in carried bytes");
                work.push((
                    out_index,
                    (rel.offset as i64 + shift) as u64,
                    sec,
                    rel,
                    context,
                ));
            }
        }

        // Special sections: the kept entries, concatenated.
        let mut guarded = Vec::new();
        let mut special_names = Vec::new();
        for special in self.carried_specials() {
            let Some(sec) = self.section_named(special.name) else {
                continue;
            };
            let groups = self.kept_groups(sec, special)?;
            if groups.is_empty() {
                continue;
            }
            let stride = self.entry_size(sec, special)?;
            let alt_layout = match special.kind {
                EntryKind::Alternatives => Some(self.alt_layout(sec)?),
                _ => None,
            };
            let section = &self.input.sections[sec];
            let mut data = Vec::new();
            let out_index = outs.len();
            for &(start, len) in &groups {
                let new_start = data.len() as u64;
                data.extend_from_slice(&section.data[start as usize..(start + len) as usize]);
                // Pad a short last entry to a full one, so that entries can be appended.
                data.resize((new_start + stride) as usize, 0);
                for rel in self.group_relocs(sec, start, stride) {
                    work.push((
                        out_index,
                        new_start + rel.offset - start,
                        sec,
                        rel,
                        RelocContext::Special,
                    ));
                }
                let owner = section.relocs.iter().find(|r| r.offset == start).copied();
                match (alt_layout, special.kind, owner) {
                    (Some(layout), EntryKind::Alternatives, Some(o)) => {
                        let len = section.data[(start + layout.instrlen) as usize];
                        guarded.push((o, u64::from(len)));
                    }
                    (_, EntryKind::Paravirt, Some(o)) => {
                        let len = section.data[(start + paravirt_patch_site::LEN) as usize];
                        guarded.push((o, u64::from(len)));
                    }
                    _ => {}
                }
            }
            // The unwind state at the start of a function carried out of a shared
            // section, where objtool wrote no entry (the state did not change from
            // the code before it): a copy of the entry in effect there.
            let mut states: Vec<u64> = groups.iter().map(|&(start, _)| start).collect();
            if special.kind == EntryKind::OrcIp {
                for (state, reloc) in self.orc_function_starts(sec)? {
                    work.push((
                        out_index,
                        data.len() as u64,
                        sec,
                        reloc,
                        RelocContext::Special,
                    ));
                    data.resize(data.len() + stride as usize, 0);
                    states.push(state);
                }
            }
            special_names.push(section.name.clone());
            let section = &self.input.sections[sec];
            outs.push(OutSection::copy_of(section, data));
            if special.kind == EntryKind::OrcIp {
                outs.push(self.orc_entries(sec, &states)?);
                special_names.push(orc::ENTRY_SECTION.to_owned());
            }
        }
        self.check_unknown_special_sections(&layout)?;

        // Ranges of carried code that alternatives and paravirt patching rewrite.
        let guarded: Vec<(usize, i64, i64)> = guarded
            .into_iter()
            .filter_map(|(owner, len)| {
                let sym = &self.input.symbols[owner.sym];
                let t = sym.section?;
                let start = sym.value as i64 + owner.addend;
                let (out, shift) = layout.locate(t, start)?;
                Some((out, start + shift, start + shift + len as i64))
            })
            .collect();

        // Translate.
        let mut externals: BTreeMap<String, ExternalReference> = BTreeMap::new();
        for (out_index, offset, sec, rel, context) in work {
            if rel.r_type == elf::R_X86_64_NONE {
                continue;
            }
            let place = self.input.place(sec, rel.offset);
            if !RelocKind::from_elf(rel.r_type).is_some_and(RelocKind::module_loader_applies) {
                return Err(KlpError::UnsupportedRelocation {
                    tu: self.tu(),
                    place,
                    r_type: rel.r_type.0,
                });
            }
            let target = match self.target(sec, rel, &layout)? {
                Target::Internal(out, addend) => OutTarget::Section(out, addend),
                Target::Named(s, addend) => {
                    let sym = self.input.symbols[s].clone();
                    if let Some(t) = sym.section {
                        let tname = &self.input.sections[t].name;
                        if sections::is_freed_after_boot(tname) {
                            return Err(KlpError::InitReference {
                                tu: self.tu(),
                                place,
                                symbol: sym.name,
                                section: tname.clone(),
                            });
                        }
                    } else if sym.shndx != elf::SHN_UNDEF.0 {
                        return Err(malformed(
                            &self.unit,
                            format!("{place}: reference to {} (absolute or common)", sym.name),
                        ));
                    }
                    if sym.name.is_empty() {
                        return Err(KlpError::NoSymbol {
                            tu: self.tu(),
                            place,
                            section: String::new(),
                            offset: addend,
                        });
                    }
                    let local = sym.is_local();
                    // The name the running kernel's object has (the change may have
                    // renumbered the unit's statics).
                    let kernel_name = if local {
                        self.kernel_name(&sym.name, sym.section, &place)?
                    } else {
                        sym.name.clone()
                    };
                    let resolution = if !local && self.request.provided.contains(&sym.name) {
                        Resolution::InPatch
                    } else {
                        self.resolve(&kernel_name, local, &place)?
                    };
                    let symbol = match resolution {
                        Resolution::Exported | Resolution::InPatch => sym.name.clone(),
                        Resolution::Livepatch { ref object, sympos } => {
                            let klp = klp_symbol_name(object, &kernel_name, sympos)?;
                            self.check_module_klp(
                                object, &klp, &place, context, out_index, offset, &guarded,
                            )?;
                            klp
                        }
                    };
                    externals
                        .entry(symbol.clone())
                        .or_insert_with(|| ExternalReference {
                            symbol: symbol.clone(),
                            name: kernel_name.clone(),
                            resolution,
                        });
                    OutTarget::External(symbol, addend)
                }
            };
            outs[out_index].relocs.push(OutReloc {
                offset,
                r_type: rel.r_type,
                target,
            });
        }

        // Functions and their old positions.
        let mut functions = Vec::new();
        for f in self.request.functions {
            let (symbol, old_sympos) = if f.new {
                (f.post_name.clone(), None)
            } else {
                let sym = self
                    .input
                    .function(&f.post_name)
                    .expect("seed() found every function");
                let local = self.input.symbols[sym].is_local();
                let place = format!("the old version of {}", f.post_name);
                let sympos = match self.resolve(&f.old_name, local, &place)? {
                    Resolution::Exported | Resolution::InPatch => 0,
                    Resolution::Livepatch { object, sympos } if object == self.request.objname => {
                        sympos
                    }
                    Resolution::Livepatch { object, .. } => {
                        return Err(KlpError::WrongObject {
                            tu: self.tu(),
                            function: f.old_name.clone(),
                            objname: self.request.objname.to_owned(),
                            found: object,
                        });
                    }
                };
                (new_symbol_name(&f.old_name)?, Some(sympos))
            };
            functions.push(ExtractedFunction {
                post_name: f.post_name.clone(),
                old_name: f.old_name.clone(),
                symbol,
                new: f.new,
                old_sympos,
            });
        }

        let object = write_object(outs, &externals)?;
        let mut sections: Vec<String> = self
            .carried
            .keys()
            .map(|&s| self.input.sections[s].name.clone())
            .chain(special_names)
            .collect();
        sections.sort();
        Ok(Extracted {
            object,
            functions,
            references: externals.into_values().collect(),
            sections,
            notes: std::mem::take(&mut self.notes).into_iter().collect(),
        })
    }

    /// Refuses livepatch relocations against a module's symbols where they would be
    /// applied too late: a module object's relocations are applied when the module
    /// loads, after the patch module's own alternatives, jump labels and static calls
    /// were set up (kernel/livepatch/core.c, `klp_apply_object_relocs`).
    #[allow(clippy::too_many_arguments)] // the place of one relocation, in full
    fn check_module_klp(
        &self,
        object: &str,
        klp: &str,
        place: &str,
        context: RelocContext,
        out_index: usize,
        offset: u64,
        guarded: &[(usize, i64, i64)],
    ) -> Result<()> {
        if object == VMLINUX {
            // vmlinux relocations are applied while the patch module loads, before its
            // alternatives, jump labels and static calls (kernel/module/main.c,
            // apply_relocations() → klp_apply_section_relocs()), whatever the target.
            return Ok(());
        }
        let what = match context {
            RelocContext::Special => Some("special sections"),
            RelocContext::Replacement => Some("alternative replacement code"),
            RelocContext::Code => guarded
                .iter()
                .any(|&(o, a, b)| o == out_index && a <= offset as i64 && (offset as i64) < b)
                .then_some("code that alternatives or paravirt patching rewrite"),
        };
        match what {
            Some(what) => Err(KlpError::ModuleSpecialRelocation {
                tu: self.tu(),
                place: place.to_owned(),
                symbol: klp.to_owned(),
                objname: object.to_owned(),
                what,
            }),
            None => Ok(()),
        }
    }

    /// For each function carried out of a shared section whose first instruction has
    /// no `.orc_unwind_ip` entry: the offset of the entry in effect there (the last
    /// one before it), and a relocation for a new entry that points at the start.
    fn orc_function_starts(&self, ip_sec: usize) -> Result<Vec<(u64, Reloc)>> {
        let ip = &self.input.sections[ip_sec];
        // (target section, target offset) → entry offset.
        let mut entries: BTreeMap<(usize, i64), u64> = BTreeMap::new();
        for rel in &ip.relocs {
            let sym = &self.input.symbols[rel.sym];
            if rel.offset % orc::IP_SIZE == 0
                && let Some(t) = sym.section
            {
                entries.insert((t, sym.value as i64 + rel.addend), rel.offset);
            }
        }
        let mut out = Vec::new();
        for (&t, carried) in &self.carried {
            let Carried::Functions(ranges) = carried else {
                continue;
            };
            for &(start, _) in ranges {
                let start = start as i64;
                if entries.contains_key(&(t, start)) {
                    continue;
                }
                let Some((_, &state)) = entries.range((t, i64::MIN)..(t, start)).next_back() else {
                    continue;
                };
                let section_symbol = (1..self.input.symbols.len())
                    .find(|&i| {
                        let s = &self.input.symbols[i];
                        s.is_section() && s.section == Some(t)
                    })
                    .ok_or_else(|| {
                        malformed(
                            &self.unit,
                            format!("no section symbol for {}", self.input.sections[t].name),
                        )
                    })?;
                out.push((
                    state,
                    Reloc {
                        offset: state,
                        sym: section_symbol,
                        r_type: elf::R_X86_64_PC32,
                        addend: start,
                    },
                ));
            }
        }
        Ok(out)
    }

    /// The `.orc_unwind` entries for `.orc_unwind_ip` entries at `starts`, in order.
    fn orc_entries(&self, ip_sec: usize, starts: &[u64]) -> Result<OutSection> {
        let what = format!("{}: {}", self.unit, orc::ENTRY_SECTION);
        let sec = self
            .section_named(orc::ENTRY_SECTION)
            .ok_or_else(|| malformed(&what, "missing, but .orc_unwind_ip is there"))?;
        let orc = &self.input.sections[sec];
        let entries = self.input.sections[ip_sec].size / orc::IP_SIZE;
        if orc.size != entries * orc::ENTRY_SIZE {
            return Err(malformed(
                &what,
                format!("{} bytes for {entries} .orc_unwind_ip entries", orc.size),
            ));
        }
        let mut data = Vec::new();
        for &start in starts {
            let i = (start / orc::IP_SIZE * orc::ENTRY_SIZE) as usize;
            data.extend_from_slice(&orc.data[i..i + orc::ENTRY_SIZE as usize]);
        }
        Ok(OutSection::copy_of(orc, data))
    }

    /// Refuses sections the builder does not know that describe carried functions.
    fn check_unknown_special_sections(&self, layout: &Layout) -> Result<()> {
        for (src, section) in self.input.sections.iter().enumerate() {
            if section.relocs.is_empty()
                || is_unrelated_section(&section.name)
                || self.carried.contains_key(&src)
                || section.name == orc::ENTRY_SECTION
                || SPECIAL_SECTIONS.iter().any(|s| s.name == section.name)
                || self.left_to_objtool(&section.name)
            {
                continue;
            }
            for rel in &section.relocs {
                let sym = &self.input.symbols[rel.sym];
                let Some(t) = sym.section else { continue };
                let at = sym.value as i64 + rel.addend;
                let Ok(end) = u64::try_from(at) else { continue };
                let owner = self
                    .function_starts
                    .range((t, 0)..=(t, end))
                    .next_back()
                    .map(|(_, &f)| f);
                let Some(f) = owner else { continue };
                if layout.locate(t, at).is_some() {
                    return Err(KlpError::UnknownSpecialSection {
                        tu: self.tu(),
                        section: section.name.clone(),
                        function: self.request.functions[f].post_name.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Assigns output sections to what is carried: one per whole section, one per
    /// section's slices, one per function of a shared section.
    fn layout(&self) -> Result<Layout> {
        let mut sections = Vec::new();
        let mut ranges: BTreeMap<usize, Vec<Placed>> = BTreeMap::new();
        for (&sec, carried) in &self.carried {
            let section = &self.input.sections[sec];
            match carried {
                Carried::Whole => {
                    let mut out = OutSection::copy_of(section, section.data.to_vec());
                    if let Some(&f) = self.function_starts.get(&(sec, 0)) {
                        self.name_function(f, 0, &mut out)?;
                    } else {
                        // Keep the local names of `.cold` parts and copied data, for
                        // kallsyms and for whoever reads the module; a new global keeps
                        // its binding, so that the patch's other files reach it.
                        for &s in &section.symbols {
                            let sym = &self.input.symbols[s];
                            let new_global =
                                !sym.is_local() && self.request.new_data.contains(&sym.name);
                            if (sym.is_local() || new_global) && !sym.name.is_empty() {
                                out.symbols.push(OutSymbol {
                                    name: sym.name.clone(),
                                    value: sym.value,
                                    size: sym.size,
                                    kind: sym.kind,
                                    global: new_global,
                                });
                            }
                        }
                    }
                    ranges.entry(sec).or_default().push(Placed {
                        start: 0,
                        end: section.size,
                        out: sections.len(),
                        shift: 0,
                    });
                    sections.push(out);
                }
                Carried::Slices(slices) => {
                    let out_index = sections.len();
                    let mut data = Vec::new();
                    let mut offset = 0u64;
                    for &(a, b) in slices {
                        // Data objects keep their section's alignment; code snippets
                        // are packed as they are.
                        if !section.is_text() {
                            let align = section.align.max(1);
                            offset = offset.div_ceil(align) * align;
                        }
                        ranges.entry(sec).or_default().push(Placed {
                            start: a,
                            end: b,
                            out: out_index,
                            shift: offset as i64 - a as i64,
                        });
                        if !section.is_nobits() {
                            data.resize(offset as usize, 0);
                            data.extend_from_slice(&section.data[a as usize..b as usize]);
                        }
                        offset += b - a;
                    }
                    let mut out = OutSection::copy_of(section, data);
                    out.size = offset;
                    sections.push(out);
                }
                Carried::Functions(functions) => {
                    for &(a, b) in functions {
                        let mut out = OutSection::copy_of(
                            section,
                            section.data[a as usize..b as usize].to_vec(),
                        );
                        if let Some(&f) = self.function_starts.get(&(sec, a)) {
                            self.name_function(f, a, &mut out)?;
                        } else {
                            // A `.cold` part: its own name, local.
                            let part = self
                                .input
                                .symbol_at(sec, a as i64)
                                .map(|s| self.input.symbols[s].name.clone())
                                .unwrap_or_default();
                            out.name = format!(".text.{part}");
                            out.symbols.push(OutSymbol::function(&part, b - a, true));
                        }
                        ranges.entry(sec).or_default().push(Placed {
                            start: a,
                            end: b,
                            out: sections.len(),
                            shift: -(a as i64),
                        });
                        sections.push(out);
                    }
                }
            }
        }
        Ok(Layout { sections, ranges })
    }

    /// Names the output section of requested function `f` and gives it its symbol:
    /// `__kstack_new_<old name>` for a replacement, its own name for a new function.
    /// Names the output section of function `f`, carried from offset `start` of its
    /// input section (before it when its padding came along).
    fn name_function(&self, f: usize, start: u64, out: &mut OutSection) -> Result<()> {
        let spec = &self.request.functions[f];
        let sym = self
            .input
            .function(&spec.post_name)
            .expect("seed() found every function");
        let size = self.input.symbols[sym].size;
        let value = self.input.symbols[sym].value - start;
        if spec.new {
            // A new global function keeps its binding, so that the objects of other
            // files of the patch, linked into the same module, reach it.
            let local = self.input.symbols[sym].is_local();
            out.name = format!(".text.{}", spec.post_name);
            out.symbols.push(OutSymbol {
                value,
                ..OutSymbol::function(&spec.post_name, size, local)
            });
        } else {
            let name = new_symbol_name(&spec.old_name)?;
            out.name = format!(".text.{name}");
            out.symbols.push(OutSymbol {
                value,
                ..OutSymbol::function(&name, size, false)
            });
        }
        Ok(())
    }
}

/// One carried range of an input section and where it went.
#[derive(Debug, Clone, Copy)]
pub(super) struct Placed {
    pub(super) start: u64,
    pub(super) end: u64,
    /// The output section.
    pub(super) out: usize,
    /// Output offset minus input offset.
    pub(super) shift: i64,
}

/// Where every carried input section went.
#[derive(Debug)]
pub(super) struct Layout {
    pub(super) sections: Vec<OutSection>,
    /// Input section → its carried ranges, sorted (a whole section is one).
    pub(super) ranges: BTreeMap<usize, Vec<Placed>>,
}

impl Layout {
    /// The output section and offset shift for `offset` of input section `sec`, if
    /// that byte is carried (or it is the end of a carried range); a range that
    /// starts there wins over one that ends there.
    pub(super) fn locate(&self, sec: usize, offset: i64) -> Option<(usize, i64)> {
        let ranges = self.ranges.get(&sec)?;
        ranges
            .iter()
            .find(|r| r.start as i64 == offset)
            .or_else(|| {
                ranges
                    .iter()
                    .find(|r| r.start as i64 <= offset && offset <= r.end as i64)
            })
            .map(|r| (r.out, r.shift))
    }
}
