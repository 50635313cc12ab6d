//! The "before" image of a function: what the builder compiled for it, kept with the
//! patch so that the target can prove it runs the same code.
//!
//! Taken from the pre object of a translation unit compiled with
//! `-ffunction-sections`: the function's bytes, its relocation sites and what each
//! refers to (by symbol name, since addresses are the target's business), and the
//! entries of the special sections through which the kernel rewrites that code at
//! boot or later (alternatives, paravirt, retpoline and return-thunk sites, static
//! keys, static calls, `LOCK` prefixes, the fentry call). Serialised as TOML, one
//! file per function; the code is a hex string.

use std::collections::BTreeMap;

use iced_x86::Mnemonic;
use object::elf;
use serde::{Deserialize, Serialize};

use kstack_kfacts::elf::{RelObject, Reloc};

use kstack_kfacts::livepatch::VMLINUX;
pub use kstack_kfacts::reloc::RelocKind;
use kstack_kfacts::sections::{
    SITE_OFFSET_SIZE, alt_instr, jump_entry, paravirt_patch_site, static_call_site,
};
use kstack_kfacts::symbols::{
    FENTRY, RETPOLINE_THUNK_PREFIX, RETURN_THUNKS, STATIC_CALL_KEY_PREFIX, STATIC_CALL_TRAMP_PREFIX,
};
use kstack_kfacts::{sections, x86};

use super::RunPreError;

/// How a symbol is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Binding {
    Local,
    Global,
    /// `__weak`: another file's strong definition may win at link time.
    Weak,
}

/// What a relocation refers to: `S` in `S + A`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "kebab-case")]
pub enum RelocTarget {
    /// A symbol by name: `S` is its kallsyms address plus `bias` (a section-relative
    /// reference is anchored at a symbol of that section: the bias is minus that
    /// symbol's offset in the section).
    Symbol {
        name: String,
        #[serde(default, skip_serializing_if = "is_zero")]
        bias: i64,
        /// Defined as a static in the object: several kallsyms entries may share
        /// the name.
        #[serde(default, skip_serializing_if = "is_false")]
        local: bool,
    },
    /// The function's own code: `S` is the function's address plus `bias`.
    Own {
        #[serde(default, skip_serializing_if = "is_zero")]
        bias: i64,
    },
    /// Data no kallsyms name locates (a string literal, `.altinstr_aux`, an
    /// unnamed constant): accepted without a check, and counted.
    Anonymous {
        section: String,
        /// The string, when the section holds strings.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        string: Option<String>,
    },
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn vmlinux() -> String {
    VMLINUX.to_owned()
}

fn is_vmlinux(object: &str) -> bool {
    object == VMLINUX
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// A relocated field in the code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelocSite {
    /// From the start of the code it belongs to.
    pub offset: u32,
    pub kind: RelocKind,
    pub addend: i64,
    pub target: RelocTarget,
    /// Not a relocation of the object: a reference the assembler resolved itself,
    /// to another function of the same section (`.init.text` holds many), which the
    /// kernel's link may place differently.
    #[serde(default, skip_serializing_if = "is_false")]
    pub implicit: bool,
}

impl RelocSite {
    pub fn width(&self) -> usize {
        self.kind.width()
    }
}

/// An address a special-section entry refers to: `S + addend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referent {
    pub target: RelocTarget,
    pub addend: i64,
}

/// An alternative's replacement code (from `.altinstr_replacement`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replacement {
    #[serde(with = "hex_bytes")]
    pub code: Vec<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relocs: Vec<RelocSite>,
}

/// A place the kernel may rewrite, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SiteKind {
    /// `call __fentry__`: a 5-byte nop once ftrace initialised, or a call to an
    /// ftrace trampoline while traced or live-patched.
    Fentry,
    /// `endbr64` at a function's entry (`CONFIG_X86_KERNEL_IBT`): kept, or sealed
    /// (a 4-byte no-op) when nothing reaches the function indirectly and the CPU
    /// has IBT.
    Endbr,
    /// `jmp __x86_return_thunk`: another return thunk, or `ret; int3...`.
    ReturnThunk,
    /// A call or jump through `__x86_indirect_thunk_<reg>`: the indirect branch
    /// itself (maybe after `lfence`), or an ITS thunk.
    Retpoline,
    /// A `LOCK` prefix byte: a `DS` prefix on a uniprocessor.
    SmpLock,
    /// A static key: a nop or a `jmp` to `target`, 2 or 5 bytes.
    JumpLabel { target: Referent, key: String },
    /// A static call: a call or tail jump to the current function, or a nop.
    StaticCall { key: String, tail: bool },
    /// A paravirt call site of `len` bytes: a direct call, or nothing.
    Paravirt { len: u8, pv_type: u8 },
    /// `len` bytes that become `replacement` when the CPU has feature `cpuid`
    /// (bit 15 inverts; arch/x86/include/asm/alternative.h `ALTINSTR_FLAG_INV`).
    Alternative {
        len: u8,
        cpuid: u16,
        replacement: Replacement,
    },
}

/// A site at an offset of the function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub offset: u32,
    #[serde(flatten)]
    pub kind: SiteKind,
}

impl Site {
    /// The bytes of the function the site covers (at least), from its offset.
    pub fn len(&self, code: &[u8]) -> u32 {
        match &self.kind {
            SiteKind::SmpLock => 1,
            SiteKind::Paravirt { len, .. } | SiteKind::Alternative { len, .. } => u32::from(*len),
            _ => code
                .get(self.offset as usize..)
                .and_then(|c| x86::decode_one(c, 0))
                .map_or(1, |i| i.len() as u32),
        }
    }
}

/// The "before" image of one function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeforeImage {
    pub function: String,
    /// The livepatch object the function is in: `vmlinux` or a module's name.
    #[serde(default = "vmlinux", skip_serializing_if = "is_vmlinux")]
    pub object: String,
    /// The section the object holds it in (`.text.<function>`).
    pub section: String,
    pub binding: Binding,
    pub size: u32,
    #[serde(with = "hex_bytes")]
    pub code: Vec<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relocs: Vec<RelocSite>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<Site>,
}

impl BeforeImage {
    pub fn to_toml(&self) -> Result<String, RunPreError> {
        toml::to_string(self).map_err(|e| RunPreError::Toml(e.to_string()))
    }

    pub fn from_toml(text: &str) -> Result<BeforeImage, RunPreError> {
        let image: BeforeImage =
            toml::from_str(text).map_err(|e| RunPreError::Toml(e.to_string()))?;
        image.check()?;
        Ok(image)
    }

    /// Whether the fields agree with each other (a hand-edited or damaged file).
    fn check(&self) -> Result<(), RunPreError> {
        let bad = |detail: String| RunPreError::BadImage {
            function: self.function.clone(),
            detail,
        };
        if self.code.len() != self.size as usize {
            return Err(bad(format!(
                "{} bytes of code, size {}",
                self.code.len(),
                self.size
            )));
        }
        for r in &self.relocs {
            if r.offset as usize + r.width() > self.code.len() {
                return Err(bad(format!(
                    "relocation at {:#x} beyond the code",
                    r.offset
                )));
            }
        }
        for s in &self.sites {
            if s.offset >= self.size {
                return Err(bad(format!("site at {:#x} beyond the code", s.offset)));
            }
        }
        Ok(())
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&kstack_kfacts::x86::hex(bytes, ""))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        // Digits are taken as bytes, not as a string slice: a multi-byte
        // character must be an error, never a split inside it (found by fuzzing).
        let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if !digits.len().is_multiple_of(2) {
            return Err(serde::de::Error::custom("odd number of hex digits"));
        }
        let nibble = |b: u8| {
            (b as char)
                .to_digit(16)
                .ok_or_else(|| serde::de::Error::custom(format!("bad hex digit {:?}", b as char)))
        };
        digits
            .chunks_exact(2)
            .map(|pair| Ok((nibble(pair[0])? * 16 + nibble(pair[1])?) as u8))
            .collect()
    }
}

/// The object being read (through kstack's one model of a relocatable object, as
/// the differ and the livepatch writer read theirs), with what the extraction needs
/// at hand.
struct Obj<'d> {
    file: RelObject<'d>,
    what: String,
}

/// Where a function is in the object: its section's ELF index, value and size.
#[derive(Clone, Copy)]
struct Func {
    section: usize,
    value: u64,
    size: u64,
}

impl<'d> Obj<'d> {
    fn bad(&self, detail: String) -> RunPreError {
        RunPreError::BadObject {
            what: self.what.clone(),
            detail,
        }
    }

    fn section_name(&self, index: usize) -> String {
        self.file
            .sections
            .get(index)
            .map_or_else(|| format!("section #{index}"), |s| s.name.clone())
    }

    /// The relocations of a section, by offset.
    fn relocations(&self, index: usize) -> &[Reloc] {
        self.file.sections.get(index).map_or(&[][..], |s| &s.relocs)
    }

    /// A relocation's symbol: its section, its value, and (for a named symbol that
    /// is not a section symbol) its name and whether it is local.
    fn target_symbol(&self, reloc: &Reloc) -> Result<TargetSym, RunPreError> {
        let Some(index) = reloc.symbol() else {
            return Err(self.bad(format!(
                "relocation at {:#x} to an absolute value, not a symbol",
                reloc.offset
            )));
        };
        let sym = &self.file.symbols[index];
        let named = !sym.is_section() && !sym.name.is_empty();
        Ok(TargetSym {
            section: sym.section,
            value: sym.value,
            name: named.then(|| sym.name.clone()),
            local: sym.is_local(),
        })
    }

    /// The offset in `func` that a data field (`label - .` or an absolute address)
    /// refers to, if it refers into `func`.
    fn offset_in(&self, func: Func, reloc: &Reloc) -> Result<Option<u32>, RunPreError> {
        let t = self.target_symbol(reloc)?;
        if t.section != Some(func.section) {
            return Ok(None);
        }
        let at = (t.value as i64).wrapping_add(reloc.addend) - func.value as i64;
        Ok((0..func.size as i64).contains(&at).then_some(at as u32))
    }

    /// What a relocation refers to, where `referent` is the offset it means in
    /// the target's section (the addend, adjusted for PC-relative code fields).
    fn resolve(
        &self,
        func: Func,
        reloc: &Reloc,
        referent: i64,
    ) -> Result<RelocTarget, RunPreError> {
        let t = self.target_symbol(reloc)?;
        let at = t.value as i64 + referent;
        if t.section == Some(func.section) {
            let inside = (func.value as i64..(func.value + func.size) as i64).contains(&at);
            // Another function of the same section (`.init.text`) is named.
            let other = (!inside).then(|| self.anchor(func.section, at)).flatten();
            return Ok(match other {
                Some((name, value, local)) => RelocTarget::Symbol {
                    name,
                    bias: t.value as i64 - value as i64,
                    local,
                },
                None => RelocTarget::Own {
                    bias: t.value as i64 - func.value as i64,
                },
            });
        }
        if let Some(name) = t.name {
            return Ok(RelocTarget::Symbol {
                name,
                bias: 0,
                local: t.local,
            });
        }
        let Some(section) = t.section else {
            return Err(self.bad("relocation to an unnamed symbol outside any section".into()));
        };
        if let Some((name, value, local)) = self.anchor(section, at) {
            return Ok(RelocTarget::Symbol {
                name,
                bias: -(value as i64),
                local,
            });
        }
        let sec = &self.file.sections[section];
        let string = sec
            .has(elf::SHF_STRINGS)
            .then(|| {
                let tail = sec.data.get(usize::try_from(at).ok()?..)?;
                let end = tail.iter().position(|&b| b == 0)?;
                Some(String::from_utf8_lossy(&tail[..end]).into_owned())
            })
            .flatten();
        Ok(RelocTarget::Anonymous {
            section: self.section_name(section),
            string,
        })
    }

    /// A named symbol of `section` to anchor a section-relative reference at: the
    /// one that holds offset `at`, else any, globals first.
    fn anchor(&self, section: usize, at: i64) -> Option<(String, u64, bool)> {
        let mut best: Option<(u8, String, u64, bool)> = None;
        // In symbol table order: among equals, the first wins.
        for sym in self.file.symbols.iter().skip(1) {
            if sym.section != Some(section) || sym.is_section() {
                continue;
            }
            let name = &sym.name;
            if name.is_empty() || name.starts_with(".L") {
                continue;
            }
            let holds = (sym.value as i64..(sym.value + sym.size.max(1)) as i64).contains(&at);
            let rank = u8::from(!holds) * 2 + u8::from(sym.is_local());
            if best.as_ref().is_none_or(|b| rank < b.0) {
                best = Some((rank, name.clone(), sym.value, sym.is_local()));
            }
        }
        best.map(|(_, n, v, l)| (n, v, l))
    }

    /// The relocation sites of `code`, which starts at `start` in section `index`.
    fn code_relocs(
        &self,
        func: Func,
        index: usize,
        start: u64,
        code: &[u8],
    ) -> Result<Vec<RelocSite>, RunPreError> {
        let end = start + code.len() as u64;
        let insns = x86::decode_all(code, 0);
        let mut out = Vec::new();
        for reloc in self.relocations(index) {
            let (off, r_type) = (reloc.offset, reloc.r_type);
            if off < start || off >= end {
                continue;
            }
            // R_X86_64_NONE changes no byte: it only keeps a symbol referenced.
            if r_type == elf::R_X86_64_NONE {
                continue;
            }
            let offset = (off - start) as u32;
            let kind = RelocKind::from_elf(r_type).ok_or_else(|| {
                self.bad(format!(
                    "relocation type {} at {:#x} of {} is not supported",
                    r_type.0,
                    offset,
                    self.section_name(index)
                ))
            })?;
            // A PC-relative field is relative to its own address: what it means is
            // relative to the instruction's end, which may follow the field.
            let referent = if kind.is_pc_relative() {
                let insn_end = insns
                    .iter()
                    .find(|i| i.offset <= offset && offset < i.offset + i.len)
                    .map_or(offset + kind.width() as u32, |i| i.offset + i.len);
                reloc.addend + i64::from(insn_end - offset)
            } else {
                reloc.addend
            };
            out.push(RelocSite {
                offset,
                kind,
                addend: reloc.addend,
                target: self.resolve(func, reloc, referent)?,
                implicit: false,
            });
        }
        Ok(out)
    }

    /// The layout of the object's `.altinstructions` entries (6.1's or 6.12's),
    /// `None` without the section.
    fn alt_layout(&self) -> Result<Option<alt_instr::Layout>, RunPreError> {
        let Some(section) = self.file.section_named(alt_instr::SECTION) else {
            return Ok(None);
        };
        let section = &self.file.sections[section];
        if section.relocs.is_empty() {
            return Ok(None);
        }
        section.alt_layout().map(Some).ok_or_else(|| {
            self.bad(format!(
                "{}: its entries fit no layout of the kernel versions kstack knows (6.1, 6.12)",
                alt_instr::SECTION
            ))
        })
    }

    fn entries(&self, name: &str, entry: u64) -> Result<Option<(Vec<u8>, Entries)>, RunPreError> {
        let Some(section) = self.file.section_named(name) else {
            return Ok(None);
        };
        let data = self.file.sections[section].data.to_vec();
        let mut by_entry: Entries = BTreeMap::new();
        for reloc in self.relocations(section) {
            by_entry
                .entry(reloc.offset / entry)
                .or_default()
                .push((reloc.offset % entry, *reloc));
        }
        Ok(Some((data, by_entry)))
    }
}

/// A special section's relocations by entry index: `(field offset, relocation)`.
type Entries = BTreeMap<u64, Vec<(u64, Reloc)>>;

struct TargetSym {
    section: Option<usize>,
    value: u64,
    name: Option<String>,
    local: bool,
}

fn field(fields: &[(u64, Reloc)], at: u64) -> Option<&Reloc> {
    fields.iter().find(|(f, _)| *f == at).map(|(_, r)| r)
}

/// The "before" image of `function` in a relocatable x86-64 object.
pub fn before_image(object: &[u8], function: &str) -> Result<BeforeImage, RunPreError> {
    before_image_named(object, function, "object")
}

/// [`before_image`], naming the object in errors (its path).
pub fn before_image_named(
    object: &[u8],
    function: &str,
    what: &str,
) -> Result<BeforeImage, RunPreError> {
    // Also refuses what is not an x86-64 relocatable object.
    let file = RelObject::parse(object).map_err(|source| RunPreError::Object {
        what: what.to_owned(),
        source,
    })?;
    let obj = Obj {
        file,
        what: what.to_owned(),
    };
    let (sym, section) = obj
        .file
        .symbols
        .iter()
        .find_map(|s| match s.section {
            Some(section) if s.is_func() && s.name == function => Some((s, section)),
            _ => None,
        })
        .ok_or_else(|| RunPreError::NoSuchFunction {
            what: what.to_owned(),
            function: function.to_owned(),
        })?;
    let func = Func {
        section,
        value: sym.value,
        size: sym.size,
    };
    let binding = if sym.is_weak() {
        Binding::Weak
    } else if !sym.is_local() {
        Binding::Global
    } else {
        Binding::Local
    };
    let data = obj.file.sections[section].data;
    let code = usize::try_from(func.value)
        .ok()
        .and_then(|v| data.get(v..v.checked_add(usize::try_from(func.size).ok()?)?))
        .ok_or_else(|| obj.bad(format!("{function} extends beyond its section")))?
        .to_vec();
    let mut relocs = obj.code_relocs(func, section, func.value, &code)?;
    relocs.extend(implicit_relocs(&obj, func, &code, &relocs));
    relocs.sort_by_key(|r| r.offset);
    let mut sites = special_sites(&obj, func)?;
    // The fentry call, also where `__mcount_loc` is absent (not built with
    // -mrecord-mcount).
    for r in &relocs {
        if matches!(&r.target, RelocTarget::Symbol { name, .. } if name == FENTRY)
            && r.offset >= 1
            && code.get(r.offset as usize - 1) == Some(&x86::CALL_REL32)
            && !sites
                .iter()
                .any(|s| s.offset == r.offset - 1 && s.kind == SiteKind::Fentry)
        {
            sites.push(Site {
                offset: r.offset - 1,
                kind: SiteKind::Fentry,
            });
        }
    }
    sites.extend(objtool_sites(&code, &relocs, &sites));
    if code.starts_with(&x86::ENDBR64) {
        sites.push(Site {
            offset: 0,
            kind: SiteKind::Endbr,
        });
    }
    if let Some(call) = function.strip_prefix(STATIC_CALL_TRAMP_PREFIX)
        && code.first() == Some(&x86::JMP_REL32)
    {
        sites.push(Site {
            offset: 0,
            kind: SiteKind::StaticCall {
                key: format!("{STATIC_CALL_KEY_PREFIX}{call}"),
                tail: true,
            },
        });
    }
    sites.sort_by_key(|s| s.offset);
    let image = BeforeImage {
        function: function.to_owned(),
        object: VMLINUX.to_owned(),
        section: obj.section_name(section),
        binding,
        size: code.len() as u32,
        code,
        relocs,
        sites,
    };
    image.check()?;
    Ok(image)
}

/// The sites objtool records from the branches themselves (tools/objtool/check.c:
/// every `jmp` to a return thunk in `.return_sites`, every call or jump through a
/// retpoline thunk in `.retpoline_sites`, every call or jump to a static call
/// trampoline in `.static_call_sites`), for an object objtool has not processed:
/// 6.12's configuration (`CONFIG_X86_KERNEL_IBT`) runs objtool on vmlinux.o and on
/// linked modules only (`delay-objtool`, scripts/Makefile.lib), so a unit compiled
/// alone has none of those sections, while the kernel still rewrites the sites.
/// Sites already listed (objtool ran, as on 6.1) are not repeated.
fn objtool_sites(code: &[u8], relocs: &[RelocSite], known: &[Site]) -> Vec<Site> {
    let mut out = Vec::new();
    for insn in x86::decode_all(code, 0) {
        if !x86::is_direct_branch(&insn.ins)
            || known.iter().any(|s| s.offset == insn.offset)
            || !matches!(insn.ins.mnemonic(), Mnemonic::Call | Mnemonic::Jmp)
        {
            continue;
        }
        let tail = insn.ins.mnemonic() == Mnemonic::Jmp;
        let field = insn.offset + insn.len - 4;
        let Some(RelocTarget::Symbol { name, .. }) = relocs
            .iter()
            .find(|r| r.offset == field && !r.implicit)
            .map(|r| &r.target)
        else {
            continue;
        };
        let kind = if tail && RETURN_THUNKS.contains(&name.as_str()) {
            SiteKind::ReturnThunk
        } else if name.starts_with(RETPOLINE_THUNK_PREFIX) {
            SiteKind::Retpoline
        } else if let Some(call) = name.strip_prefix(STATIC_CALL_TRAMP_PREFIX) {
            SiteKind::StaticCall {
                key: format!("{STATIC_CALL_KEY_PREFIX}{call}"),
                tail,
            }
        } else {
            continue;
        };
        out.push(Site {
            offset: insn.offset,
            kind,
        });
    }
    out
}

/// References out of the function that the assembler resolved without a relocation
/// because the target is in the same section (several functions share
/// `.init.text`): branches, and `%rip`-relative operands. Named after the
/// function they reach, they are checked like relocations.
fn implicit_relocs(obj: &Obj, func: Func, code: &[u8], relocs: &[RelocSite]) -> Vec<RelocSite> {
    let mut out = Vec::new();
    for insn in x86::decode_all(code, 0) {
        let range = insn.offset..insn.offset + insn.len;
        if relocs.iter().any(|r| range.contains(&r.offset)) {
            continue;
        }
        let (field, size, target) = if x86::is_direct_branch(&insn.ins) {
            let size = if insn.len >= 5 { 4 } else { 1 };
            (insn.len - size, size, insn.ins.near_branch_target() as i64)
        } else if let Some((at, size)) = x86::displacement_field(&code[insn.offset as usize..]) {
            (
                at as u32,
                size as u32,
                insn.ins.ip_rel_memory_address() as i64,
            )
        } else {
            continue;
        };
        if (0..func.size as i64).contains(&target) {
            continue;
        }
        let in_section = func.value as i64 + target;
        let Some((name, value, local)) = obj.anchor(func.section, in_section) else {
            continue;
        };
        let to_end = i64::from(insn.len - field);
        out.push(RelocSite {
            offset: insn.offset + field,
            kind: if size == 1 {
                RelocKind::Pc8
            } else {
                RelocKind::Pc32
            },
            addend: in_section - to_end,
            target: RelocTarget::Symbol {
                name,
                bias: -(value as i64),
                local,
            },
            implicit: true,
        });
    }
    out
}

/// The special-section entries that touch `func`.
fn special_sites(obj: &Obj, func: Func) -> Result<Vec<Site>, RunPreError> {
    use sections::{MCOUNT_LOC, MCOUNT_LOC_SIZE, RETPOLINE_SITES, RETURN_SITES, SMP_LOCKS};
    let mut sites = Vec::new();
    let mut push = |offset: Option<u32>, kind: SiteKind| {
        if let Some(offset) = offset {
            sites.push(Site { offset, kind });
        }
    };
    for (name, kind) in [
        (RETURN_SITES, SiteKind::ReturnThunk),
        (RETPOLINE_SITES, SiteKind::Retpoline),
        (SMP_LOCKS, SiteKind::SmpLock),
    ] {
        if let Some((_, entries)) = obj.entries(name, SITE_OFFSET_SIZE)? {
            for fields in entries.values() {
                if let Some(r) = field(fields, 0) {
                    push(obj.offset_in(func, r)?, kind.clone());
                }
            }
        }
    }
    if let Some((_, entries)) = obj.entries(MCOUNT_LOC, MCOUNT_LOC_SIZE)? {
        for fields in entries.values() {
            if let Some(r) = field(fields, 0) {
                push(obj.offset_in(func, r)?, SiteKind::Fentry);
            }
        }
    }
    if let Some((_, entries)) = obj.entries(jump_entry::SECTION, jump_entry::SIZE)? {
        for fields in entries.values() {
            let (Some(code), Some(target), Some(key)) = (
                field(fields, jump_entry::CODE),
                field(fields, jump_entry::TARGET),
                field(fields, jump_entry::KEY),
            ) else {
                continue;
            };
            let Some(at) = obj.offset_in(func, code)? else {
                continue;
            };
            let key_sym = obj.target_symbol(key)?;
            push(
                Some(at),
                SiteKind::JumpLabel {
                    target: Referent {
                        target: obj.resolve(func, target, target.addend)?,
                        addend: target.addend,
                    },
                    key: key_sym.name.unwrap_or_else(|| "?".into()),
                },
            );
        }
    }
    if let Some((_, entries)) = obj.entries(static_call_site::SECTION, static_call_site::SIZE)? {
        for fields in entries.values() {
            let (Some(addr), Some(key)) = (
                field(fields, static_call_site::ADDR),
                field(fields, static_call_site::KEY),
            ) else {
                continue;
            };
            let Some(at) = obj.offset_in(func, addr)? else {
                continue;
            };
            let flags = key.addend & static_call_site::FLAGS;
            push(
                Some(at),
                SiteKind::StaticCall {
                    key: obj.target_symbol(key)?.name.unwrap_or_else(|| "?".into()),
                    tail: flags & static_call_site::TAIL != 0,
                },
            );
        }
    }
    if let Some((data, entries)) =
        obj.entries(paravirt_patch_site::SECTION, paravirt_patch_site::SIZE)?
    {
        for (index, fields) in &entries {
            let Some(instr) = field(fields, paravirt_patch_site::INSTR) else {
                continue;
            };
            let Some(at) = obj.offset_in(func, instr)? else {
                continue;
            };
            let base = (index * paravirt_patch_site::SIZE) as usize;
            let (Some(&pv_type), Some(&len)) = (
                data.get(base + paravirt_patch_site::TYPE as usize),
                data.get(base + paravirt_patch_site::LEN as usize),
            ) else {
                return Err(obj.bad(format!(
                    "{} entry {index} is truncated",
                    paravirt_patch_site::SECTION
                )));
            };
            push(Some(at), SiteKind::Paravirt { len, pv_type });
        }
    }
    if let Some(layout) = obj.alt_layout()?
        && let Some((data, entries)) = obj.entries(alt_instr::SECTION, layout.size)?
    {
        for (index, fields) in &entries {
            let (Some(instr), Some(repl)) = (
                field(fields, alt_instr::INSTR_OFFSET),
                field(fields, alt_instr::REPL_OFFSET),
            ) else {
                continue;
            };
            let Some(at) = obj.offset_in(func, instr)? else {
                continue;
            };
            let base = (index * layout.size) as usize;
            let cpuid_at = base + alt_instr::CPUID as usize;
            let (Some(cpuid), Some(&len), Some(&repl_len)) = (
                data.get(cpuid_at..cpuid_at + 2),
                data.get(base + layout.instrlen as usize),
                data.get(base + layout.replacementlen as usize),
            ) else {
                return Err(obj.bad(format!("{} entry {index} is truncated", alt_instr::SECTION)));
            };
            let cpuid = u16::from_le_bytes([cpuid[0], cpuid[1]]);
            let replacement = replacement(obj, func, repl, repl_len)?;
            push(
                Some(at),
                SiteKind::Alternative {
                    len,
                    cpuid,
                    replacement,
                },
            );
        }
    }
    Ok(sites)
}

/// The replacement code an `.altinstructions` entry points at, with its relocations.
fn replacement(obj: &Obj, func: Func, repl: &Reloc, len: u8) -> Result<Replacement, RunPreError> {
    let t = obj.target_symbol(repl)?;
    let section = t
        .section
        .ok_or_else(|| obj.bad("alternative replacement outside any section".into()))?;
    let start = (t.value as i64 + repl.addend) as u64;
    let data = obj.file.sections[section].data;
    let code = usize::try_from(start)
        .ok()
        .and_then(|s| data.get(s..s + usize::from(len)))
        .ok_or_else(|| {
            obj.bad(format!(
                "alternative replacement at {start:#x} of {} is truncated",
                obj.section_name(section)
            ))
        })?
        .to_vec();
    let relocs = obj.code_relocs(func, section, start, &code)?;
    Ok(Replacement { code, relocs })
}
