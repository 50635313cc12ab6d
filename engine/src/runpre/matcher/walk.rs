//! The walk: the object's function and the running code, instruction by
//! instruction, with relocated fields checked against kallsyms and branch targets
//! inside the function checked once the walk knows where everything went.

use std::collections::{BTreeMap, HashMap};

use iced_x86::{Instruction, Mnemonic, Register};
use kstack_kfacts::kallsyms::KallsymsIndex;
use kstack_kfacts::x86::{self, Insn};

use super::super::before::{BeforeImage, RelocSite, RelocTarget, SiteKind};
use super::super::text::KernelText;
use super::{Cause, Divergence, MatchStats};

/// A divergence on its way up through the walk (boxed: it is large, and rare).
pub(super) type Diverged = Box<Divergence>;

/// A branch target inside the function, checked once the walk is complete.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    /// Where the branch is, for the report.
    pub(super) at: u32,
    pub(super) run_at: u64,
    /// The target as an offset of the object's function, and the running target.
    pub(super) target: u32,
    pub(super) run_target: u64,
}

/// What a relocated field or branch must point to.
pub(super) enum Expect {
    /// Any of these addresses (same-named symbols).
    Addresses { name: String, addrs: Vec<u64> },
    /// An offset of the function itself (checked at the end).
    Own(i64),
    /// Unknown to kallsyms: accepted.
    Unlocated,
    /// The symbol the walk learns ([`Walk::learn`]) plus this offset: the field
    /// says where the symbol is, and every such field must agree.
    Learn(i64),
}

/// The code an object-side instruction belongs to: the function, or an
/// alternative's replacement (relocations relative to its own start).
#[derive(Clone, Copy)]
pub(super) struct Code<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) relocs: &'a [RelocSite],
    /// `None` for the function; the running address of the window for a replacement.
    pub(super) replacement_at: Option<u64>,
}

/// A rendering that matched: where it ended and what it learnt.
pub(super) struct Attempt {
    pub(super) end: u64,
    pub(super) map: Vec<(u32, u64)>,
    pub(super) pending: Vec<Pending>,
    pub(super) learnt: Vec<u64>,
    pub(super) stats: MatchStats,
}

/// The state that a failed attempt at a site must undo.
#[derive(Clone)]
pub(super) struct Checkpoint {
    pub(super) map: usize,
    pub(super) pending: usize,
    pub(super) learnt: usize,
    pub(super) stats: MatchStats,
}

pub(super) struct Walk<'a> {
    pub(super) image: &'a BeforeImage,
    pub(super) symbols: &'a KallsymsIndex,
    /// The running kernel's text beyond the function (what a call lands on).
    pub(super) text: &'a dyn KernelText,
    pub(super) base: u64,
    pub(super) run: Vec<u8>,
    pub(super) run_cache: HashMap<u64, Option<Instruction>>,
    /// Indices of `image.sites` by offset (`LOCK` prefixes apart).
    pub(super) sites_at: BTreeMap<u32, Vec<usize>>,
    pub(super) locks: Vec<u32>,
    /// Object offset → running address, in walk order.
    pub(super) map: Vec<(u32, u64)>,
    pub(super) pending: Vec<Pending>,
    /// A symbol whose address the walk learns from the code instead of from
    /// kallsyms (code kallsyms has no name for, [`super::explain_cold`]), and the
    /// addresses each reference to it implies.
    pub(super) learn: Option<&'a str>,
    pub(super) learnt: Vec<u64>,
    pub(super) stats: MatchStats,
    /// While trying the states of a site: failures need no report.
    pub(super) quiet: bool,
}

impl<'a> Walk<'a> {
    pub(super) fn new(
        image: &'a BeforeImage,
        base: u64,
        run: Vec<u8>,
        symbols: &'a KallsymsIndex,
        text: &'a dyn KernelText,
    ) -> Walk<'a> {
        let mut sites_at: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        let mut locks = Vec::new();
        for (i, s) in image.sites.iter().enumerate() {
            if s.kind == SiteKind::SmpLock {
                locks.push(s.offset);
            } else {
                sites_at.entry(s.offset).or_default().push(i);
            }
        }
        Walk {
            image,
            symbols,
            text,
            base,
            run,
            run_cache: HashMap::new(),
            sites_at,
            locks,
            map: Vec::new(),
            pending: Vec::new(),
            learn: None,
            learnt: Vec::new(),
            stats: MatchStats::default(),
            quiet: false,
        }
    }

    pub(super) fn function(&self) -> Code<'a> {
        Code {
            bytes: &self.image.code,
            relocs: &self.image.relocs,
            replacement_at: None,
        }
    }

    pub(super) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            map: self.map.len(),
            pending: self.pending.len(),
            learnt: self.learnt.len(),
            stats: self.stats.clone(),
        }
    }

    pub(super) fn restore(&mut self, c: Checkpoint) {
        self.map.truncate(c.map);
        self.pending.truncate(c.pending);
        self.learnt.truncate(c.learnt);
        self.stats = c.stats;
    }

    pub(super) fn note(&mut self, what: impl Into<String>) {
        *self.stats.rewritten.entry(what.into()).or_default() += 1;
    }

    /// The running instruction at `addr`; `None` past the bytes read or invalid.
    pub(super) fn run_insn(&mut self, addr: u64) -> Option<Instruction> {
        if let Some(i) = self.run_cache.get(&addr) {
            return *i;
        }
        let ins = addr
            .checked_sub(self.base)
            .and_then(|o| self.run.get(usize::try_from(o).ok()?..))
            .and_then(|b| x86::decode_one(b, addr));
        self.run_cache.insert(addr, ins);
        ins
    }

    pub(super) fn run_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let from = (addr.saturating_sub(self.base)) as usize;
        self.run
            .get(from..(from + len).min(self.run.len()))
            .unwrap_or_default()
            .to_vec()
    }

    /// The first running address at or after `addr` that is not a no-op.
    pub(super) fn skip_run_nops(&mut self, mut addr: u64) -> u64 {
        while let Some(ins) = self.run_insn(addr) {
            if !x86::is_nop(&ins) {
                break;
            }
            addr += ins.len() as u64;
        }
        addr
    }

    pub(super) fn obj_insn(&self, code: Code, offset: u32) -> Option<Insn> {
        let bytes = code.bytes.get(offset as usize..)?;
        let ins = x86::decode_one(bytes, u64::from(offset))?;
        Some(Insn {
            offset,
            len: ins.len() as u32,
            ins,
        })
    }

    /// A divergence between an object instruction (or none) and the running code
    /// at `addr`.
    pub(super) fn diverge(
        &mut self,
        code: Code,
        obj: Option<Insn>,
        at: u32,
        addr: u64,
        reason: String,
        cause: Cause,
    ) -> Diverged {
        if self.quiet {
            return Box::new(Divergence {
                offset: at,
                address: addr,
                expected: Vec::new(),
                found: Vec::new(),
                expected_asm: String::new(),
                found_asm: String::new(),
                reason,
                cause,
            });
        }
        let (expected, expected_asm) = match obj {
            Some(i) => {
                let bytes = code.bytes[i.offset as usize..(i.offset + i.len) as usize].to_vec();
                let relocs: Vec<String> = code
                    .relocs
                    .iter()
                    .filter(|r| (i.offset..i.offset + i.len).contains(&r.offset))
                    .map(describe_reloc)
                    .collect();
                let mut asm = x86::disassemble(&i.ins);
                if !relocs.is_empty() {
                    asm = format!("{asm}  # {}", relocs.join(", "));
                }
                (bytes, asm)
            }
            None => (Vec::new(), String::new()),
        };
        let (found, found_asm) = match self.run_insn(addr) {
            Some(ins) => {
                let mut asm = x86::disassemble(&ins);
                if x86::is_direct_branch(&ins) {
                    asm = format!(
                        "{asm}  # {}",
                        self.symbols.describe(ins.near_branch_target())
                    );
                } else if ins.is_ip_rel_memory_operand() {
                    asm = format!(
                        "{asm}  # {}",
                        self.symbols.describe(ins.ip_rel_memory_address())
                    );
                }
                (self.run_bytes(addr, ins.len()), asm)
            }
            None => (self.run_bytes(addr, expected.len().max(1)), "(bad)".into()),
        };
        let cause = if cause != Cause::Truncated
            && found.first() == Some(&x86::INT3)
            && expected.first() != Some(&x86::INT3)
        {
            Cause::Breakpoint
        } else {
            cause
        };
        Box::new(Divergence {
            offset: at,
            address: addr,
            expected,
            found,
            expected_asm,
            found_asm,
            reason,
            cause,
        })
    }

    /// Walks the object's function over `range`, the running code from `*pos`.
    /// Sites in `exclude` are being rendered by the caller (their original code).
    pub(super) fn walk(
        &mut self,
        range: std::ops::Range<u32>,
        exclude: &[usize],
        pos: &mut u64,
    ) -> Result<(), Diverged> {
        let code = self.function();
        let mut o = range.start;
        while o < range.end {
            let group: Vec<usize> = self
                .sites_at
                .get(&o)
                .map(|v| v.iter().copied().filter(|i| !exclude.contains(i)).collect())
                .unwrap_or_default();
            if !group.is_empty() {
                let end = self.site(o, &group, exclude, range.end, pos)?;
                o = end;
                continue;
            }
            let Some(insn) = self.obj_insn(code, o) else {
                return Err(self.diverge(
                    code,
                    None,
                    o,
                    *pos,
                    "the object's code does not decode here".into(),
                    Cause::Code,
                ));
            };
            if x86::is_nop(&insn.ins) {
                o += insn.len;
                continue;
            }
            *pos = self.skip_run_nops(*pos);
            self.map.push((o, *pos));
            let len = self.compare(code, insn, *pos)?;
            self.stats.instructions += 1;
            o += insn.len;
            *pos += len;
        }
        Ok(())
    }

    /// Compares one object instruction with the running one at `addr`; returns the
    /// running instruction's length.
    pub(super) fn compare(&mut self, code: Code, obj: Insn, addr: u64) -> Result<u64, Diverged> {
        let Some(run) = self.run_insn(addr) else {
            return Err(self.diverge(
                code,
                Some(obj),
                obj.offset,
                addr,
                "the running code ends or does not decode here".into(),
                Cause::Truncated,
            ));
        };
        let relocs: Vec<&RelocSite> = code
            .relocs
            .iter()
            .filter(|r| (obj.offset..obj.offset + obj.len).contains(&r.offset))
            .collect();
        if x86::is_direct_branch(&obj.ins) {
            if !x86::is_direct_branch(&run) || run.mnemonic() != obj.ins.mnemonic() {
                return Err(self.diverge(
                    code,
                    Some(obj),
                    obj.offset,
                    addr,
                    "a different instruction".into(),
                    Cause::Code,
                ));
            }
            let target = run.near_branch_target();
            if run.len() as u32 != obj.len {
                self.stats.relaxed += 1;
            }
            let expect = match relocs.first() {
                Some(r) => {
                    let to_end = i64::from(obj.offset + obj.len - r.offset);
                    self.expect(r, to_end)
                }
                None => match code.replacement_at {
                    None => Expect::Own(obj.ins.near_branch_target() as i64),
                    Some(start) => Expect::Addresses {
                        name: "the replacement".into(),
                        addrs: vec![start.wrapping_add(obj.ins.near_branch_target())],
                    },
                },
            };
            let target = match &expect {
                Expect::Addresses { addrs, .. }
                    if run.mnemonic() == Mnemonic::Call && !addrs.contains(&target) =>
                {
                    match self.call_depth_thunk(target) {
                        Some(callee) if addrs.contains(&callee) => {
                            self.note("call-depth: accounting thunk");
                            callee
                        }
                        _ => target,
                    }
                }
                _ => target,
            };
            self.check_expect(code, obj, addr, target, expect, "branches to")?;
            return Ok(run.len() as u64);
        }
        if run.len() as u32 != obj.len {
            let cause = if run.mnemonic() == obj.ins.mnemonic() {
                Cause::Constant
            } else {
                Cause::Code
            };
            return Err(self.diverge(
                code,
                Some(obj),
                obj.offset,
                addr,
                "a different instruction".into(),
                cause,
            ));
        }
        let found = self.run_bytes(addr, obj.len as usize);
        for i in 0..obj.len {
            let at = obj.offset + i;
            if relocs
                .iter()
                .any(|r| (r.offset..r.offset + r.width() as u32).contains(&at))
            {
                continue;
            }
            let (e, f) = (code.bytes[at as usize], found[i as usize]);
            let lock = code.replacement_at.is_none() && self.locks.contains(&at);
            if e == f || (lock && e == x86::LOCK_PREFIX && f == x86::DS_PREFIX) {
                if lock && e != f {
                    self.note("smp-lock: ds");
                }
                continue;
            }
            let cause =
                if run.mnemonic() == obj.ins.mnemonic() && run.op_count() == obj.ins.op_count() {
                    Cause::Constant
                } else {
                    Cause::Code
                };
            let reason =
                format!("byte +{i} of the instruction differs ({e:02x} expected, {f:02x} found)");
            return Err(self.diverge(code, Some(obj), obj.offset, addr, reason, cause));
        }
        for r in relocs {
            let field_at = addr + u64::from(r.offset - obj.offset);
            let start = (r.offset - obj.offset) as usize;
            let Some(value) = r.kind.decode(&found[start..start + r.width()], field_at) else {
                continue;
            };
            // A field inside the function's own code means an offset of it.
            let to_end = i64::from(obj.offset + obj.len - r.offset);
            let expect = self.expect(r, if r.kind.is_pc_relative() { to_end } else { 0 });
            let value = if r.kind.is_pc_relative() {
                value.wrapping_add(to_end as u64)
            } else {
                value
            };
            self.check_expect(code, obj, addr, value, expect, "refers to")?;
        }
        Ok(run.len() as u64)
    }

    /// The function a call-depth accounting thunk at `at` goes on into. With
    /// call-depth tracking (`retbleed=stuff`, `X86_FEATURE_CALL_DEPTH`) the kernel
    /// writes `INCREMENT_CALL_DEPTH` (`sarq $5, %gs:<call depth>`, RIP-relative
    /// since 6.9's percpu rework, 9 bytes; absolute before, 10) at the end of a
    /// callee's padding and points each direct call at it (arch/x86/kernel/
    /// callthunks.c, `patch_dest`, `patch_call`): the thunk falls through into the
    /// callee, which is the call's target.
    pub(super) fn call_depth_thunk(&self, at: u64) -> Option<u64> {
        let bytes = self.text.read(at, 16).ok()?;
        let ins = x86::decode_one(&bytes, at)?;
        (ins.mnemonic() == Mnemonic::Sar
            && ins.segment_prefix() == Register::GS
            && matches!(ins.memory_base(), Register::None | Register::RIP)
            && ins.memory_size().size() == 8
            && ins.immediate8() == 5)
            .then(|| at + ins.len() as u64)
    }

    /// What a relocated field must hold (for a code reference: plus `to_end`, the
    /// distance from the field to the instruction's end).
    pub(super) fn expect(&self, r: &RelocSite, to_end: i64) -> Expect {
        let add = r.addend + to_end;
        match &r.target {
            RelocTarget::Symbol { name, bias, .. } if self.learn == Some(name.as_str()) => {
                Expect::Learn(bias + add)
            }
            RelocTarget::Symbol { name, bias, .. } => {
                let addrs: Vec<u64> = self
                    .symbols
                    .seen_from(&self.image.object, name)
                    .iter()
                    .map(|s| s.addr.wrapping_add_signed(bias + add))
                    .collect();
                if addrs.is_empty() {
                    Expect::Unlocated
                } else {
                    Expect::Addresses {
                        name: format_target(name, bias + add),
                        addrs,
                    }
                }
            }
            RelocTarget::Own { bias } => Expect::Own(bias + add),
            RelocTarget::Anonymous { .. } => Expect::Unlocated,
        }
    }

    pub(super) fn check_expect(
        &mut self,
        code: Code,
        obj: Insn,
        addr: u64,
        value: u64,
        expect: Expect,
        verb: &str,
    ) -> Result<(), Diverged> {
        match expect {
            Expect::Unlocated => self.stats.relocs_unlocated += 1,
            Expect::Learn(offset) => self.learnt.push(value.wrapping_add_signed(-offset)),
            Expect::Addresses { name, addrs } => {
                if !addrs.contains(&value) {
                    let reason = format!(
                        "{verb} {} where the build {verb} {name}",
                        self.symbols.describe(value)
                    );
                    return Err(self.diverge(
                        code,
                        Some(obj),
                        obj.offset,
                        addr,
                        reason,
                        Cause::Reference,
                    ));
                }
                self.stats.relocs_checked += 1;
                if addrs.len() > 1 {
                    self.stats.relocs_ambiguous += 1;
                }
            }
            Expect::Own(target) => {
                let Ok(target) = u32::try_from(target) else {
                    let reason = format!("{verb} {target:#x} of the function, outside it");
                    return Err(self.diverge(
                        code,
                        Some(obj),
                        obj.offset,
                        addr,
                        reason,
                        Cause::Code,
                    ));
                };
                self.pending.push(Pending {
                    at: obj.offset,
                    run_at: addr,
                    target,
                    run_target: value,
                });
            }
        }
        Ok(())
    }

    /// Branch targets inside the function: each must land where the walk put the
    /// object's target (no-ops aside).
    pub(super) fn check_pending(&mut self) -> Result<(), Diverged> {
        let mut map: BTreeMap<u32, u64> = BTreeMap::new();
        for &(o, a) in &self.map {
            map.entry(o).or_insert(a);
        }
        for p in std::mem::take(&mut self.pending) {
            let expected = self
                .inside_instruction(&map, p.target)
                .or_else(|| map.range(p.target..).next().map(|(_, &a)| a));
            let found = self.skip_run_nops(p.run_target);
            if expected != Some(found) && expected != Some(p.run_target) {
                let code = self.function();
                let obj = self.obj_insn(code, p.at);
                let reason = format!(
                    "lands at {} where the build's target (+{:#x}) is at {}",
                    self.symbols.describe(p.run_target),
                    p.target,
                    expected.map_or("no instruction".into(), |a| format!("{a:#x}"))
                );
                return Err(self.diverge(code, obj, p.at, p.run_at, reason, Cause::Branch));
            }
        }
        Ok(())
    }
}

impl Walk<'_> {
    /// Where a branch into the middle of an instruction lands: hand-written code
    /// overlaps instructions on purpose (`retbleed_untrain_ret`'s `test` holds
    /// `retbleed_return_thunk`'s `ret`, `srso_untrain_ret`'s `movabs` holds
    /// `srso_safe_ret`; arch/x86/lib/retpoline.S). The byte offset carries over only
    /// when the running instruction is the object's, byte for byte.
    fn inside_instruction(&self, map: &BTreeMap<u32, u64>, target: u32) -> Option<u64> {
        let (&start, &addr) = map.range(..target).next_back()?;
        let insn = self.obj_insn(self.function(), start)?;
        if start + insn.len <= target {
            return None;
        }
        let object = self
            .image
            .code
            .get(start as usize..(start + insn.len) as usize)?;
        (self.run_bytes(addr, object.len()) == object).then(|| addr + u64::from(target - start))
    }
}

pub(super) fn format_target(name: &str, offset: i64) -> String {
    match offset {
        0 => name.to_owned(),
        o if o < 0 => format!("{name}-{:#x}", -o),
        o => format!("{name}+{o:#x}"),
    }
}

pub(super) fn describe_reloc(r: &RelocSite) -> String {
    let target = match &r.target {
        RelocTarget::Symbol { name, bias, .. } => format_target(name, *bias + r.addend),
        RelocTarget::Own { bias } => format_target("<self>", *bias + r.addend),
        RelocTarget::Anonymous { section, string } => match string {
            Some(s) => format!("{section} {s:?}"),
            None => format_target(section, r.addend),
        },
    };
    format!("{} {target}", r.kind.elf_name())
}
