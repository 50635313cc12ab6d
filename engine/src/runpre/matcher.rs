//! Comparing a "before" image with the code a kernel runs.
//!
//! Both sides are decoded and walked together, instruction by instruction:
//!
//! - no-ops are nothing on either side, so alignment padding may differ;
//! - a direct branch matches one with the same mnemonic and the same target, whatever
//!   its encoding: the object's `jmp rel32` to a relocation may be a `jmp rel8` in
//!   the kernel, built without `-ffunction-sections`, so streams are aligned by
//!   target, never by offset; targets inside the function are checked once the
//!   walk knows where each instruction went;
//! - any other instruction matches byte for byte except in relocated fields, and
//!   each relocated field, decoded, must point where kallsyms says its symbol is
//!   (data no name locates is accepted and counted);
//! - at the sites the kernel rewrites, every state the kernel can leave there
//!   matches: the longest one that does wins.
//!
//! The report says which candidate matched (its `sympos`), or where and how the
//! best candidate differs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use iced_x86::{Instruction, Mnemonic, Register};

use super::before::{BeforeImage, Binding, Referent, RelocSite, RelocTarget, Site, SiteKind};
use kstack_kfacts::kallsyms::KallsymsIndex;
use kstack_kfacts::symbols::{ITS_THUNK_PREFIX, POISON_FREE_INITMEM, RETURN_THUNKS};
use kstack_kfacts::x86::{self, Insn, NOP5};

use super::text::KernelText;

/// How many bytes the matcher reads at a candidate for a function of `size` bytes:
/// the running code may be longer than the object's (alignment padding).
pub fn read_len(size: u32) -> usize {
    size as usize + 64 + size as usize / 4
}

/// What one candidate's match found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchStats {
    /// Instructions of the object compared (no-ops aside).
    pub instructions: usize,
    /// Relocated fields whose value is where kallsyms puts their symbol.
    pub relocs_checked: usize,
    /// Of those, how many named a symbol kallsyms has several of (one matched).
    pub relocs_ambiguous: usize,
    /// Relocated fields that no name locates (strings, unnamed data), accepted.
    pub relocs_unlocated: usize,
    /// Branches the two sides encode differently (relaxed by the assembler).
    pub relaxed: usize,
    /// Sites the kernel rewrote, by kind and state (`return-thunk: ret`).
    pub rewritten: BTreeMap<String, usize>,
    pub fentry: FentryState,
}

/// What the running kernel has where the object calls `__fentry__`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FentryState {
    /// No fentry site (a `notrace` function).
    #[default]
    None,
    /// The 5-byte no-op: not traced.
    Nop,
    /// Still `call __fentry__`: an image file, not booted.
    Fentry,
    /// A call elsewhere: traced, or already live-patched (an ftrace trampoline).
    Trampoline(u64),
}

/// Why the running code differs, as best the matcher can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Different instructions.
    Code,
    /// The same instruction with a different constant.
    Constant,
    /// A relocated field points at a different symbol.
    Reference,
    /// A branch lands elsewhere.
    Branch,
    /// A breakpoint (`int3`) sits where the object has an instruction.
    Breakpoint,
    /// The running code ended (or stopped decoding) before the object's did.
    Truncated,
    /// The running code could not be read.
    Unreadable,
}

impl Cause {
    /// A stable key for filters and tests.
    pub fn key(self) -> &'static str {
        match self {
            Cause::Code => "code",
            Cause::Constant => "constant",
            Cause::Reference => "reference",
            Cause::Branch => "branch",
            Cause::Breakpoint => "breakpoint",
            Cause::Truncated => "truncated",
            Cause::Unreadable => "unreadable",
        }
    }

    /// The likely reason, for people.
    pub fn likely(self) -> &'static str {
        match self {
            Cause::Code | Cause::Branch => {
                "the patch was built from a different source tree, configuration or compiler than the running kernel"
            }
            Cause::Constant => {
                "a constant differs (an offset, a size, an immediate): a different configuration, structure layout or generated header (UTS_RELEASE, ...)"
            }
            Cause::Reference => {
                "the code refers to a different symbol: a different source tree or configuration, or a compiler that inlined differently"
            }
            Cause::Breakpoint => {
                "a kprobe or breakpoint sits in the running code (or it is being patched): retry once it is gone"
            }
            Cause::Truncated => {
                "the running function is shorter: not this function (wrong address or sympos), or a different build"
            }
            Cause::Unreadable => "the running code could not be read",
        }
    }
}

/// Where and how a candidate differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// Offset in the object's function.
    pub offset: u32,
    /// The running address compared with it.
    pub address: u64,
    pub expected: Vec<u8>,
    pub found: Vec<u8>,
    pub expected_asm: String,
    pub found_asm: String,
    /// What exactly disagrees.
    pub reason: String,
    pub cause: Cause,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at +{:#x} ({:#x}): {}\n  expected {:<24} {}\n  found    {:<24} {}\n  likely cause: {}",
            self.offset,
            self.address,
            self.reason,
            x86::hex(&self.expected, " "),
            self.expected_asm,
            x86::hex(&self.found, " "),
            self.found_asm,
            self.cause.likely()
        )
    }
}

/// One candidate address and how it compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateMatch {
    /// 1-based position among the kallsyms entries of the name.
    pub sympos: usize,
    pub addr: u64,
    pub result: Result<MatchStats, Divergence>,
}

/// The verdict on a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exactly one candidate matched. `sympos` counts from 1 among the entries of
    /// the name; a patch may say 0 when the name is unique.
    Matched { sympos: usize, addr: u64 },
    /// Several candidates matched (same-named statics with identical code).
    Ambiguous { sympos: Vec<usize> },
    /// The object's definition is `__weak` and kallsyms' is another file's strong
    /// one: the object's code never ran.
    Overridden { addr: u64 },
    /// `__init` code that the running kernel has freed (its bytes are poison):
    /// nothing runs there, so nothing to compare or to patch.
    Freed,
    /// kallsyms has no entry of that name.
    NotFound,
    /// No candidate matched.
    Differs,
    /// No candidate could be read.
    Unreadable,
}

impl Outcome {
    /// A stable key for filters and tests.
    pub fn key(&self) -> &'static str {
        match self {
            Outcome::Matched { .. } => "matched",
            Outcome::Ambiguous { .. } => "ambiguous",
            Outcome::Overridden { .. } => "overridden",
            Outcome::Freed => "freed",
            Outcome::NotFound => "not-found",
            Outcome::Differs => "differs",
            Outcome::Unreadable => "unreadable",
        }
    }
}

/// The matcher's report on one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchReport {
    pub function: String,
    pub outcome: Outcome,
    pub candidates: Vec<CandidateMatch>,
}

impl MatchReport {
    /// Whether loading a patch built from this image is safe: exactly one match.
    pub fn is_match(&self) -> bool {
        matches!(self.outcome, Outcome::Matched { .. })
    }

    /// The divergence of the candidate that went furthest, when none matched.
    pub fn best_divergence(&self) -> Option<(&CandidateMatch, &Divergence)> {
        self.candidates
            .iter()
            .filter_map(|c| c.result.as_ref().err().map(|d| (c, d)))
            .max_by_key(|(_, d)| (d.cause != Cause::Unreadable, d.offset))
    }
}

impl fmt::Display for MatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.function;
        match &self.outcome {
            Outcome::Matched { sympos, addr } => {
                write!(
                    f,
                    "{name}: matches the running code at {addr:#x} (sympos {sympos})"
                )
            }
            Outcome::Ambiguous { sympos } => write!(
                f,
                "{name}: matches the running code at several places (sympos {sympos:?}): the patch must name one"
            ),
            Outcome::Overridden { addr } => write!(
                f,
                "{name}: the built definition is __weak and the running kernel uses another file's ({addr:#x}): it is overridden"
            ),
            Outcome::Freed => write!(
                f,
                "{name}: __init code, freed by the running kernel after boot"
            ),
            Outcome::NotFound => write!(f, "{name}: the running kernel has no symbol of that name"),
            Outcome::Differs | Outcome::Unreadable => {
                write!(f, "{name}: does not match the running code")?;
                if let Some((c, d)) = self.best_divergence() {
                    write!(f, " (sympos {}, {:#x}) {d}", c.sympos, c.addr)?;
                }
                Ok(())
            }
        }
    }
}

/// Compares `image` with the running code at each of `candidates` (the kallsyms
/// addresses of the name, in kallsyms order).
pub fn match_function(
    image: &BeforeImage,
    candidates: &[u64],
    text: &dyn KernelText,
    symbols: &KallsymsIndex,
) -> MatchReport {
    let results: Vec<CandidateMatch> = candidates
        .iter()
        .enumerate()
        .map(|(i, &addr)| CandidateMatch {
            sympos: i + 1,
            addr,
            result: match_at(image, addr, text, symbols).map_err(|d| *d),
        })
        .collect();
    let matched: Vec<&CandidateMatch> = results.iter().filter(|c| c.result.is_ok()).collect();
    let strong = candidates.iter().find(|&&addr| {
        symbols
            .at(&image.function, addr)
            .is_some_and(|s| s.is_strong_global())
    });
    let outcome = match (image.binding, strong, matched.as_slice()) {
        _ if candidates.is_empty() => Outcome::NotFound,
        (Binding::Weak, Some(&addr), _) => Outcome::Overridden { addr },
        (_, _, [one]) => Outcome::Matched {
            sympos: one.sympos,
            addr: one.addr,
        },
        (_, _, []) if kstack_kfacts::sections::is_freed_after_boot(&image.section) && results.iter().all(|c| {
            matches!(&c.result, Err(d) if d.offset == 0 && d.found.first() == Some(&POISON_FREE_INITMEM))
        }) => Outcome::Freed,
        (_, _, []) => {
            if results
                .iter()
                .all(|c| matches!(&c.result, Err(d) if d.cause == Cause::Unreadable))
            {
                Outcome::Unreadable
            } else {
                Outcome::Differs
            }
        }
        (_, _, many) => Outcome::Ambiguous {
            sympos: many.iter().map(|c| c.sympos).collect(),
        },
    };
    MatchReport {
        function: image.function.clone(),
        outcome,
        candidates: results,
    }
}

/// [`match_function`] with the candidates kallsyms lists for the image's name.
pub fn match_by_name(
    image: &BeforeImage,
    text: &dyn KernelText,
    symbols: &KallsymsIndex,
) -> MatchReport {
    match_function(image, &symbols.candidates(&image.function), text, symbols)
}

fn match_at(
    image: &BeforeImage,
    addr: u64,
    text: &dyn KernelText,
    symbols: &KallsymsIndex,
) -> Result<MatchStats, Diverged> {
    let unreadable = |e: super::RunPreError| -> Diverged {
        Box::new(Divergence {
            offset: 0,
            address: addr,
            expected: Vec::new(),
            found: Vec::new(),
            expected_asm: String::new(),
            found_asm: String::new(),
            reason: e.to_string(),
            cause: Cause::Unreadable,
        })
    };
    let want = read_len(image.size);
    let run = match text.read(addr, want) {
        Ok(bytes) => bytes,
        // Near the end of a mapping the slack may not be readable.
        Err(_) => text.read(addr, image.size as usize).map_err(unreadable)?,
    };
    let mut walk = Walk::new(image, addr, run, symbols);
    let mut pos = addr;
    walk.walk(0..image.size, &[], &mut pos)?;
    walk.check_pending()?;
    Ok(walk.stats)
}

/// A divergence on its way up through the walk (boxed: it is large, and rare).
type Diverged = Box<Divergence>;

/// A branch target inside the function, checked once the walk is complete.
#[derive(Debug, Clone)]
struct Pending {
    /// Where the branch is, for the report.
    at: u32,
    run_at: u64,
    /// The target as an offset of the object's function, and the running target.
    target: u32,
    run_target: u64,
}

/// What a relocated field or branch must point to.
enum Expect {
    /// Any of these addresses (same-named symbols).
    Addresses { name: String, addrs: Vec<u64> },
    /// An offset of the function itself (checked at the end).
    Own(i64),
    /// Unknown to kallsyms: accepted.
    Unlocated,
}

/// The code an object-side instruction belongs to: the function, or an
/// alternative's replacement (relocations relative to its own start).
#[derive(Clone, Copy)]
struct Code<'a> {
    bytes: &'a [u8],
    relocs: &'a [RelocSite],
    /// `None` for the function; the running address of the window for a replacement.
    replacement_at: Option<u64>,
}

/// A rendering that matched: where it ended and what it learnt.
struct Attempt {
    end: u64,
    map: Vec<(u32, u64)>,
    pending: Vec<Pending>,
    stats: MatchStats,
}

/// The state that a failed attempt at a site must undo.
#[derive(Clone)]
struct Checkpoint {
    map: usize,
    pending: usize,
    stats: MatchStats,
}

struct Walk<'a> {
    image: &'a BeforeImage,
    symbols: &'a KallsymsIndex,
    base: u64,
    run: Vec<u8>,
    run_cache: HashMap<u64, Option<Instruction>>,
    /// Indices of `image.sites` by offset (`LOCK` prefixes apart).
    sites_at: BTreeMap<u32, Vec<usize>>,
    locks: Vec<u32>,
    /// Object offset → running address, in walk order.
    map: Vec<(u32, u64)>,
    pending: Vec<Pending>,
    stats: MatchStats,
    /// While trying the states of a site: failures need no report.
    quiet: bool,
}

impl<'a> Walk<'a> {
    fn new(
        image: &'a BeforeImage,
        base: u64,
        run: Vec<u8>,
        symbols: &'a KallsymsIndex,
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
            base,
            run,
            run_cache: HashMap::new(),
            sites_at,
            locks,
            map: Vec::new(),
            pending: Vec::new(),
            stats: MatchStats::default(),
            quiet: false,
        }
    }

    fn function(&self) -> Code<'a> {
        Code {
            bytes: &self.image.code,
            relocs: &self.image.relocs,
            replacement_at: None,
        }
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            map: self.map.len(),
            pending: self.pending.len(),
            stats: self.stats.clone(),
        }
    }

    fn restore(&mut self, c: Checkpoint) {
        self.map.truncate(c.map);
        self.pending.truncate(c.pending);
        self.stats = c.stats;
    }

    fn note(&mut self, what: impl Into<String>) {
        *self.stats.rewritten.entry(what.into()).or_default() += 1;
    }

    /// The running instruction at `addr`; `None` past the bytes read or invalid.
    fn run_insn(&mut self, addr: u64) -> Option<Instruction> {
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

    fn run_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let from = (addr.saturating_sub(self.base)) as usize;
        self.run
            .get(from..(from + len).min(self.run.len()))
            .unwrap_or_default()
            .to_vec()
    }

    /// The first running address at or after `addr` that is not a no-op.
    fn skip_run_nops(&mut self, mut addr: u64) -> u64 {
        while let Some(ins) = self.run_insn(addr) {
            if !x86::is_nop(&ins) {
                break;
            }
            addr += ins.len() as u64;
        }
        addr
    }

    fn obj_insn(&self, code: Code, offset: u32) -> Option<Insn> {
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
    fn diverge(
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
    fn walk(
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
    fn compare(&mut self, code: Code, obj: Insn, addr: u64) -> Result<u64, Diverged> {
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

    /// What a relocated field must hold (for a code reference: plus `to_end`, the
    /// distance from the field to the instruction's end).
    fn expect(&self, r: &RelocSite, to_end: i64) -> Expect {
        let add = r.addend + to_end;
        match &r.target {
            RelocTarget::Symbol { name, bias, .. } => {
                let addrs: Vec<u64> = self
                    .symbols
                    .named(name)
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

    fn check_expect(
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
    fn check_pending(&mut self) -> Result<(), Diverged> {
        let mut map: BTreeMap<u32, u64> = BTreeMap::new();
        for &(o, a) in &self.map {
            map.entry(o).or_insert(a);
        }
        for p in std::mem::take(&mut self.pending) {
            let expected = map.range(p.target..).next().map(|(_, &a)| a);
            let found = self.skip_run_nops(p.run_target);
            if expected != Some(found) {
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

    /// Matches the sites starting at `o` (indices `group`); returns the object
    /// offset after them.
    fn site(
        &mut self,
        o: u32,
        group: &[usize],
        exclude: &[usize],
        limit: u32,
        pos: &mut u64,
    ) -> Result<u32, Diverged> {
        let sites: Vec<&'a Site> = group.iter().map(|&i| &self.image.sites[i]).collect();
        let code = &self.image.code;
        let start = self.skip_run_nops(*pos);
        self.map.push((o, start));
        let alternatives: Vec<&'a Site> = sites
            .iter()
            .copied()
            .filter(|s| matches!(s.kind, SiteKind::Alternative { .. }))
            .collect();
        if !alternatives.is_empty() {
            let window = alternatives
                .iter()
                .map(|s| s.len(code))
                .max()
                .unwrap_or(0)
                .min(limit - o);
            let inner: Vec<usize> =
                exclude
                    .iter()
                    .copied()
                    .chain(group.iter().copied().filter(|&i| {
                        matches!(self.image.sites[i].kind, SiteKind::Alternative { .. })
                    }))
                    .collect();
            let mut tries: Vec<Rendering<'a>> = vec![Rendering::Original {
                end: o + window,
                exclude: inner,
            }];
            for s in &alternatives {
                if let SiteKind::Alternative { replacement, .. } = &s.kind {
                    tries.push(Rendering::Replacement(replacement));
                }
            }
            self.render(o, o + window, tries, *pos, start, pos)?;
            return Ok(o + window);
        }
        // One site of the other kinds per offset; should two coincide, the first
        // by kind decides and the others are part of its original code.
        let site = sites[0];
        let obj = self.obj_insn(self.function(), o);
        let end = (o + site.len(code)).min(limit);
        let mut exclude_more = exclude.to_vec();
        exclude_more.extend_from_slice(group);
        let original = Rendering::Original {
            end,
            exclude: exclude_more,
        };
        let tries = match &site.kind {
            SiteKind::Fentry => vec![Rendering::FentryNop, Rendering::FentryCall],
            SiteKind::ReturnThunk => vec![original, Rendering::ReturnThunk { len: end - o }],
            SiteKind::Retpoline => match obj {
                Some(obj) => vec![
                    original,
                    Rendering::Retpoline {
                        obj,
                        thunk: self.thunk_at(obj),
                    },
                ],
                None => vec![original],
            },
            SiteKind::JumpLabel { target, .. } => {
                vec![
                    Rendering::JumpLabel(target),
                    Rendering::Nothing { len: end - o },
                ]
            }
            SiteKind::StaticCall { tail, .. } => vec![
                original,
                Rendering::StaticCall {
                    tail: *tail,
                    len: end - o,
                },
                Rendering::Nothing { len: end - o },
            ],
            SiteKind::Paravirt { .. } => {
                vec![
                    original,
                    Rendering::ParavirtCall,
                    Rendering::Nothing { len: end - o },
                ]
            }
            SiteKind::SmpLock | SiteKind::Alternative { .. } => vec![original],
        };
        self.render(o, end, tries, *pos, start, pos)?;
        Ok(end)
    }

    /// The retpoline thunk an object instruction calls.
    fn thunk_at(&self, obj: Insn) -> Option<Register> {
        self.image
            .relocs
            .iter()
            .filter(|r| (obj.offset..obj.offset + obj.len).contains(&r.offset))
            .find_map(|r| match &r.target {
                RelocTarget::Symbol { name, .. } => x86::thunk_register(name),
                _ => None,
            })
    }

    /// Tries every rendering of a site; keeps the one that consumes the most
    /// running code, or reports the first one's divergence.
    #[allow(clippy::too_many_arguments)]
    fn render(
        &mut self,
        o: u32,
        obj_end: u32,
        tries: Vec<Rendering<'a>>,
        pos0: u64,
        start: u64,
        pos: &mut u64,
    ) -> Result<(), Diverged> {
        let before = self.checkpoint();
        // Preferred: renderings after which the code goes on as the object's does
        // (a site's no-op followed by a call is not the site's own call).
        let mut best: Option<(bool, Attempt)> = None;
        let mut first_err = None;
        // Most attempts fail, and their reports are thrown away: made cheap here,
        // and written in full only for the one that is kept.
        let loud = !self.quiet;
        self.quiet = true;
        for r in &tries {
            match self.try_render(o, r, pos0) {
                Ok(end) => {
                    // What the kernel wrote is padded to the site's length.
                    let end = self.padding(end, pos0 + u64::from(obj_end - o));
                    let fits = self.goes_on(obj_end, end);
                    if best.as_ref().is_none_or(|(f, b)| (fits, end) > (*f, b.end)) {
                        best = Some((
                            fits,
                            Attempt {
                                end,
                                map: self.map[before.map..].to_vec(),
                                pending: self.pending[before.pending..].to_vec(),
                                stats: self.stats.clone(),
                            },
                        ));
                    }
                }
                Err(d) => {
                    first_err.get_or_insert(d);
                }
            }
            self.restore(before.clone());
        }
        self.quiet = !loud;
        if best.is_none()
            && loud
            && let Some(first) = tries.first()
        {
            // Again, to report how the first (the object's own) state differs.
            first_err = self.try_render(o, first, pos0).err().or(first_err);
            self.restore(before.clone());
        }
        match best {
            Some((_, a)) => {
                self.map.extend(a.map);
                self.pending.extend(a.pending);
                self.stats = a.stats;
                *pos = a.end;
                Ok(())
            }
            None => Err(first_err.unwrap_or_else(|| {
                let code = self.function();
                self.diverge(
                    code,
                    None,
                    o,
                    start,
                    "no state of this site matches".into(),
                    Cause::Code,
                )
            })),
        }
    }

    /// Whether the object's next instruction after `obj_end` (no-ops aside) has the
    /// mnemonic of the running one at `run` (a site or the end: no objection).
    fn goes_on(&mut self, obj_end: u32, run: u64) -> bool {
        let code = self.function();
        let mut o = obj_end;
        while o < self.image.size {
            if self.sites_at.contains_key(&o) {
                return true;
            }
            let Some(insn) = self.obj_insn(code, o) else {
                return true;
            };
            if !x86::is_nop(&insn.ins) {
                let run = self.skip_run_nops(run);
                return self
                    .run_insn(run)
                    .is_some_and(|r| r.mnemonic() == insn.ins.mnemonic());
            }
            o += insn.len;
        }
        true
    }

    /// One rendering of a site at object offset `o`; `pos0` is where the running
    /// code stands. Returns the running end.
    fn try_render(&mut self, o: u32, r: &Rendering<'a>, pos0: u64) -> Result<u64, Diverged> {
        let code = self.function();
        let obj = self.obj_insn(code, o);
        // The kernel rewrites a site in place: its new state starts where the
        // site does, never after a no-op (which would be the site itself).
        let at = pos0;
        let run = self.run_insn(at);
        let mismatch =
            |w: &mut Self, why: &str| w.diverge(code, obj, o, at, why.into(), Cause::Code);
        match r {
            Rendering::Original { end, exclude } => {
                let mut pos = pos0;
                self.walk(o..*end, exclude, &mut pos)?;
                Ok(pos)
            }
            // A site turned off is no-ops of its length (or shorter, where the
            // kernel's assembler relaxed a jump), never nothing at all.
            Rendering::Nothing { len } => {
                let mut end = at;
                while let Some(ins) = self.run_insn(end)
                    && x86::is_nop(&ins)
                    && end + ins.len() as u64 <= at + u64::from(*len)
                {
                    end += ins.len() as u64;
                }
                if end == at {
                    return Err(mismatch(self, "no no-op where the site was"));
                }
                Ok(end)
            }
            Rendering::FentryNop => {
                if self.run_bytes(pos0, NOP5.len()) == NOP5 {
                    self.stats.fentry = FentryState::Nop;
                    Ok(pos0 + NOP5.len() as u64)
                } else {
                    Err(mismatch(
                        self,
                        "neither the fentry call nor the 5-byte no-op ftrace writes",
                    ))
                }
            }
            // The fentry call is the function's first instruction: in place.
            Rendering::FentryCall => match self.run_insn(pos0) {
                Some(ins)
                    if ins.mnemonic() == Mnemonic::Call
                        && x86::is_direct_branch(&ins)
                        && ins.len() == 5 =>
                {
                    let target = ins.near_branch_target();
                    let fentry = self.symbols.candidates("__fentry__");
                    self.stats.fentry = if fentry.contains(&target) {
                        FentryState::Fentry
                    } else {
                        FentryState::Trampoline(target)
                    };
                    Ok(pos0 + 5)
                }
                _ => Err(mismatch(
                    self,
                    "neither the fentry call nor the 5-byte no-op ftrace writes",
                )),
            },
            Rendering::ReturnThunk { len } => {
                let Some(ins) = run else {
                    return Err(mismatch(self, "the running code ends at a return site"));
                };
                if ins.mnemonic() == Mnemonic::Jmp && x86::is_direct_branch(&ins) {
                    let target = ins.near_branch_target();
                    let thunk = RETURN_THUNKS
                        .iter()
                        .find(|t| self.symbols.candidates(t).contains(&target));
                    return match thunk {
                        Some(t) => {
                            self.note(format!("return-thunk: {t}"));
                            Ok(at + ins.len() as u64)
                        }
                        None => Err(mismatch(
                            self,
                            "a return site jumps to something that is not a return thunk",
                        )),
                    };
                }
                if ins.mnemonic() == Mnemonic::Ret && ins.len() == 1 {
                    self.note("return-thunk: ret");
                    return Ok(self.skip_int3(at + 1, at + u64::from(*len)));
                }
                Err(mismatch(
                    self,
                    "a return site holds neither a return thunk jump nor ret",
                ))
            }
            Rendering::Retpoline { obj: o_ins, thunk } => self.retpoline(code, *o_ins, *thunk, at),
            Rendering::JumpLabel(target) => {
                let Some(ins) =
                    run.filter(|i| i.mnemonic() == Mnemonic::Jmp && x86::is_direct_branch(i))
                else {
                    return Err(mismatch(
                        self,
                        "a static key site holds neither a no-op nor a jump",
                    ));
                };
                let obj = obj.ok_or_else(|| {
                    mismatch(self, "the object's static key site does not decode")
                })?;
                let expect = self.referent(target);
                self.check_expect(code, obj, at, ins.near_branch_target(), expect, "jumps to")?;
                self.note("jump-label: jmp");
                Ok(at + ins.len() as u64)
            }
            Rendering::StaticCall { tail, len } => {
                let Some(ins) = run else {
                    return Err(mismatch(self, "the running code ends at a static call"));
                };
                let want = if *tail { Mnemonic::Jmp } else { Mnemonic::Call };
                if ins.mnemonic() == want && x86::is_direct_branch(&ins) && ins.len() == 5 {
                    self.note("static-call: direct");
                    return Ok(at + 5);
                }
                if *tail && ins.mnemonic() == Mnemonic::Ret && ins.len() == 1 {
                    self.note("static-call: ret");
                    return Ok(self.skip_int3(at + 1, at + u64::from(*len)));
                }
                Err(mismatch(
                    self,
                    "a static call site holds no call, jump or no-op",
                ))
            }
            Rendering::ParavirtCall => match run {
                Some(ins) if ins.mnemonic() == Mnemonic::Call && x86::is_direct_branch(&ins) => {
                    self.note("paravirt: direct call");
                    Ok(at + ins.len() as u64)
                }
                _ => Err(mismatch(self, "a paravirt site holds no direct call")),
            },
            Rendering::Replacement(repl) => self.replacement(repl, at),
        }
    }

    /// Past the no-ops and `int3`s from `addr` that end by `limit`.
    fn padding(&mut self, mut addr: u64, limit: u64) -> u64 {
        while addr < limit {
            match self.run_insn(addr) {
                Some(ins)
                    if (x86::is_nop(&ins) || ins.mnemonic() == Mnemonic::Int3)
                        && addr + ins.len() as u64 <= limit =>
                {
                    addr += ins.len() as u64;
                }
                _ => break,
            }
        }
        addr
    }

    fn skip_int3(&mut self, mut addr: u64, end: u64) -> u64 {
        while addr < end && self.run_bytes(addr, 1) == [x86::INT3] {
            addr += 1;
        }
        addr
    }

    /// Where a special-section entry points.
    fn referent(&self, r: &Referent) -> Expect {
        let site = RelocSite {
            offset: 0,
            kind: super::before::RelocKind::Abs64,
            addend: r.addend,
            target: r.target.clone(),
            implicit: false,
        };
        self.expect(&site, 0)
    }

    /// A retpoline site as the kernel may leave it (arch/x86/kernel/alternative.c,
    /// `patch_retpoline`): `[jncc.d8 1f] [lfence] call/jmp *%reg [int3] [nops] 1:`,
    /// or a call or jump to an ITS thunk.
    fn retpoline(
        &mut self,
        code: Code,
        obj: Insn,
        thunk: Option<Register>,
        start: u64,
    ) -> Result<u64, Diverged> {
        let end = start + u64::from(obj.len);
        let mismatch = |w: &mut Self, why: String| {
            w.diverge(code, Some(obj), obj.offset, start, why, Cause::Code)
        };
        let mut at = start;
        let mut op = obj.ins.mnemonic();
        if let Some(inverse) = x86::inverse_jcc(obj.ins.mnemonic()) {
            match self.run_insn(at) {
                Some(j) if j.mnemonic() == inverse && j.near_branch_target() == end => {
                    at += j.len() as u64;
                    op = Mnemonic::Jmp;
                }
                _ => {
                    return Err(mismatch(
                        self,
                        "a conditional retpoline site without its inverted short jump".into(),
                    ));
                }
            }
        }
        if let Some(ins) = self.run_insn(at)
            && ins.mnemonic() == Mnemonic::Lfence
        {
            at += ins.len() as u64;
        }
        let Some(ins) = self.run_insn(at) else {
            return Err(mismatch(
                self,
                "the running code ends at a retpoline site".into(),
            ));
        };
        if ins.mnemonic() != op {
            return Err(mismatch(
                self,
                format!("a retpoline site holds {}", x86::disassemble(&ins)),
            ));
        }
        if x86::is_direct_branch(&ins) {
            let target = ins.near_branch_target();
            let its = self
                .symbols
                .symbolize(target)
                .is_some_and(|(s, _)| s.name.starts_with(ITS_THUNK_PREFIX))
                || self.symbols.in_kernel_text(target) == Some(false);
            if !its {
                return Err(mismatch(
                    self,
                    format!(
                        "a retpoline site branches to {}",
                        self.symbols.describe(target)
                    ),
                ));
            }
            self.note("retpoline: its thunk");
        } else if x86::indirect_register(&ins).is_some() && x86::indirect_register(&ins) == thunk {
            self.note("retpoline: indirect");
        } else {
            return Err(mismatch(
                self,
                format!("a retpoline site holds {}", x86::disassemble(&ins)),
            ));
        }
        at += ins.len() as u64;
        Ok(self.skip_int3(at, end))
    }

    /// An alternative's replacement: its instructions (no-ops aside) in order.
    fn replacement(
        &mut self,
        repl: &'a super::before::Replacement,
        start: u64,
    ) -> Result<u64, Diverged> {
        let code = Code {
            bytes: &repl.code,
            relocs: &repl.relocs,
            replacement_at: Some(start),
        };
        let mut pos = start;
        let mut o = 0;
        while (o as usize) < repl.code.len() {
            let Some(insn) = self.obj_insn(code, o) else {
                return Err(self.diverge(
                    code,
                    None,
                    o,
                    pos,
                    "the replacement does not decode".into(),
                    Cause::Code,
                ));
            };
            o += insn.len;
            if x86::is_nop(&insn.ins) {
                continue;
            }
            pos = self.skip_run_nops(pos);
            pos += self.compare(code, insn, pos)?;
        }
        if !repl.code.is_empty() {
            self.note("alternative: replacement");
        }
        Ok(pos)
    }
}

/// The states a site may be in.
enum Rendering<'a> {
    /// The object's own code for the site (its inner sites still apply).
    Original {
        end: u32,
        exclude: Vec<usize>,
    },
    /// Nothing but no-ops, within the site's `len` bytes.
    Nothing {
        len: u32,
    },
    FentryNop,
    FentryCall,
    ReturnThunk {
        len: u32,
    },
    Retpoline {
        obj: Insn,
        thunk: Option<Register>,
    },
    JumpLabel(&'a Referent),
    StaticCall {
        tail: bool,
        len: u32,
    },
    ParavirtCall,
    Replacement(&'a super::before::Replacement),
}

fn format_target(name: &str, offset: i64) -> String {
    match offset {
        0 => name.to_owned(),
        o if o < 0 => format!("{name}-{:#x}", -o),
        o => format!("{name}+{o:#x}"),
    }
}

fn describe_reloc(r: &RelocSite) -> String {
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
