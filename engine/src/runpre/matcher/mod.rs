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

mod sites;
mod walk;

use std::collections::BTreeMap;
use std::fmt;

use kstack_kfacts::kallsyms::KallsymsIndex;
use kstack_kfacts::symbols::POISON_FREE_INITMEM;
use kstack_kfacts::x86;

use super::before::{BeforeImage, Binding};
use super::text::KernelText;
use walk::{Diverged, Walk};

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
    /// The object's definition is `__weak` and kallsyms' is another file's: a strong
    /// one, or (shown by [`explain_weak`]) another weak one the linker kept. The
    /// object's code never ran.
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
            .named_in(&image.object, &image.function)
            .find(|s| s.addr == addr)
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

/// [`match_function`] with the candidates kallsyms lists for the image's name in its
/// object (vmlinux or a module).
pub fn match_by_name(
    image: &BeforeImage,
    text: &dyn KernelText,
    symbols: &KallsymsIndex,
) -> MatchReport {
    let candidates: Vec<u64> = symbols
        .named_in(&image.object, &image.function)
        .map(|s| s.addr)
        .collect();
    match_function(image, &candidates, text, symbols)
}

/// Explains a `__weak` definition whose code is not at its name: when every
/// definition of a name is weak (a header declares it `__weak`, as
/// `include/linux/perf_event.h` does `arch_perf_update_userpage`), kallsyms lists
/// the one the linker kept, the first in link order, as `W`, and that may be another
/// file's. `others` are the before images of the name's other definitions (other
/// objects of the same livepatch object); the first that matches where `report`'s
/// candidate is makes the outcome [`Outcome::Overridden`]. Any other report is
/// returned as it is: without that proof the difference stands.
pub fn explain_weak(
    report: MatchReport,
    image: &BeforeImage,
    others: &[BeforeImage],
    text: &dyn KernelText,
    symbols: &KallsymsIndex,
) -> MatchReport {
    if image.binding != Binding::Weak || report.outcome != Outcome::Differs {
        return report;
    }
    let weak_here = |addr: u64| {
        symbols
            .named_in(&image.object, &image.function)
            .any(|s| s.addr == addr && s.kind == 'W')
    };
    let kept = others
        .iter()
        .filter(|o| o.function == image.function && o.object == image.object)
        .find_map(|other| match match_by_name(other, text, symbols).outcome {
            Outcome::Matched { addr, .. } if weak_here(addr) => Some(addr),
            _ => None,
        });
    match kept {
        Some(addr) => MatchReport {
            outcome: Outcome::Overridden { addr },
            ..report
        },
        None => report,
    }
}

/// Explains the cold part of an overridden `__weak` function. GCC moves a
/// function's unlikely paths into a separate local function, `name.cold`, which
/// jumps back into the body. When another file's definition overrides the weak
/// one, the linker keeps the weak body in `.text` without a name (kallsyms counts
/// its bytes to the symbol before it) while `name.cold` keeps its own: its jumps
/// back then land in code kallsyms calls something else (`acpi_s2idle_setup.cold`
/// of `drivers/acpi/sleep.o`, whose `__init` override is in
/// `drivers/acpi/x86/s2idle.o`). `parent` is the weak definition from the same
/// object; when kallsyms' `name` is not its code, and the cold part matches with
/// its references to `name` all landing at one address where `parent`'s own code
/// matches, the cold part is [`Outcome::Overridden`] at its address: neither ever
/// runs. Any other report is returned as it is.
pub fn explain_cold(
    report: MatchReport,
    cold: &BeforeImage,
    parent: &BeforeImage,
    text: &dyn KernelText,
    symbols: &KallsymsIndex,
) -> MatchReport {
    let is_cold_part = cold
        .function
        .strip_suffix(".cold")
        .is_some_and(|name| name == parent.function);
    if !is_cold_part
        || report.outcome != Outcome::Differs
        || parent.binding != Binding::Weak
        || parent.object != cold.object
        || !matches!(
            match_by_name(parent, text, symbols).outcome,
            Outcome::Overridden { .. } | Outcome::Differs
        )
    {
        return report;
    }
    let proven = report.candidates.iter().find_map(|c| {
        let (_, body) =
            match_at_learning(cold, c.addr, text, symbols, Some(&parent.function)).ok()?;
        let body = body?;
        match_at(parent, body, text, symbols).ok()?;
        Some(c.addr)
    });
    match proven {
        Some(addr) => MatchReport {
            outcome: Outcome::Overridden { addr },
            ..report
        },
        None => report,
    }
}

/// The longest readable run of at most `len` bytes at `addr`, if any byte is.
fn readable_prefix(text: &dyn KernelText, addr: u64, len: usize) -> Option<Vec<u8>> {
    let (mut good, mut bad) = (0, len);
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if text.read(addr, mid).is_ok() {
            good = mid;
        } else {
            bad = mid;
        }
    }
    (good > 0).then(|| text.read(addr, good).ok()).flatten()
}

fn match_at(
    image: &BeforeImage,
    addr: u64,
    text: &dyn KernelText,
    symbols: &KallsymsIndex,
) -> Result<MatchStats, Diverged> {
    match_at_learning(image, addr, text, symbols, None).map(|(stats, _)| stats)
}

/// [`match_at`], learning where the symbol `learn` is from the code's references
/// to it (none, or the one address they all imply).
fn match_at_learning(
    image: &BeforeImage,
    addr: u64,
    text: &dyn KernelText,
    symbols: &KallsymsIndex,
    learn: Option<&str>,
) -> Result<(MatchStats, Option<u64>), Diverged> {
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
        // Near the end of a mapping the slack may not be readable, nor all of the
        // object's length: the last function of a module's `.text` ends the
        // section, and its shipped code is shorter where the assembler relaxed
        // branches. Whatever is readable is compared (too little is `Truncated`).
        Err(e) => readable_prefix(text, addr, want).ok_or_else(|| unreadable(e))?,
    };
    let mut walk = Walk::new(image, addr, run, symbols, text);
    walk.learn = learn;
    let mut pos = addr;
    walk.walk(0..image.size, &[], &mut pos)?;
    walk.check_pending()?;
    let learnt = walk.learnt.first().copied();
    if let Some(&other) = walk.learnt.iter().find(|&&a| Some(a) != learnt) {
        let code = walk.function();
        let reason = format!(
            "its references to {} disagree on where it is ({:#x}, {other:#x})",
            learn.unwrap_or_default(),
            learnt.unwrap_or_default()
        );
        return Err(walk.diverge(code, None, 0, addr, reason, Cause::Reference));
    }
    Ok((walk.stats, learnt))
}
