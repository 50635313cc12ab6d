//! The sites the kernel rewrites (the fentry call, return thunks, retpolines, static
//! keys and calls, paravirt calls, alternatives, `LOCK` prefixes): every state the
//! kernel can leave at a site is tried, and the longest rendering that matches wins.

use iced_x86::{Mnemonic, Register};
use kstack_kfacts::symbols::{
    ALT_CALL_PLACEHOLDER, CALL_DEPTH_CALL_THUNK_PREFIX, CALL_DEPTH_JUMP_THUNK_PREFIX, FENTRY,
    ITS_THUNK_PREFIX, RETURN_THUNKS,
};
use kstack_kfacts::x86::{self, ENDBR_POISON, Insn, NOP5};

use super::super::before::{
    Referent, RelocKind, RelocSite, RelocTarget, Replacement, Site, SiteKind,
};
use super::walk::{Attempt, Code, Diverged, Expect, Walk};
use super::{Cause, FentryState};

impl<'a> Walk<'a> {
    /// Matches the sites starting at `o` (indices `group`); returns the object
    /// offset after them.
    pub(super) fn site(
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
                    if is_direct_call_placeholder(replacement) {
                        // The kernel wrote a call to what the indirect call loads,
                        // or no-ops for `nop_func`.
                        tries.push(Rendering::ParavirtCall);
                        tries.push(Rendering::Nothing { len: window });
                    } else {
                        tries.push(Rendering::Replacement(replacement));
                    }
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
            SiteKind::Endbr => vec![original, Rendering::SealedEndbr],
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
                                learnt: self.learnt[before.learnt..].to_vec(),
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
                self.learnt.extend(a.learnt);
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
                    let fentry = self.symbols.candidates(FENTRY);
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
            Rendering::SealedEndbr => {
                if self.run_bytes(pos0, ENDBR_POISON.len()) == ENDBR_POISON {
                    self.note("endbr: sealed");
                    Ok(pos0 + ENDBR_POISON.len() as u64)
                } else {
                    Err(mismatch(
                        self,
                        "neither endbr64 nor the no-op that seals it",
                    ))
                }
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
            kind: RelocKind::Abs64,
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
            // Call-depth tracking's thunk for the same register, the call or the
            // jump one as the site is.
            let prefix = if op == Mnemonic::Call {
                CALL_DEPTH_CALL_THUNK_PREFIX
            } else {
                CALL_DEPTH_JUMP_THUNK_PREFIX
            };
            let depth = x86::THUNK_REGISTERS.iter().find(|r| {
                self.symbols
                    .candidates(&format!("{prefix}{r}"))
                    .contains(&target)
            });
            if let Some(reg) = depth {
                if thunk.is_none() || x86::thunk_register(reg) != thunk {
                    return Err(mismatch(
                        self,
                        format!(
                            "a retpoline site branches to {prefix}{reg}, another register's thunk"
                        ),
                    ));
                }
                self.note("retpoline: call-depth thunk");
                at += ins.len() as u64;
                return Ok(self.skip_int3(at, end));
            }
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
    fn replacement(&mut self, repl: &'a Replacement, start: u64) -> Result<u64, Diverged> {
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
    /// `endbr64` poisoned by `apply_seal_endbr`.
    SealedEndbr,
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
    Replacement(&'a Replacement),
}

/// Whether an alternative's replacement is `ALT_CALL_INSTR`, the `call BUG_func` that
/// stands for a direct call to whatever the original indirect call loads
/// ([`ALT_CALL_PLACEHOLDER`]).
fn is_direct_call_placeholder(replacement: &Replacement) -> bool {
    replacement.code.len() == 5
        && replacement.code[0] == x86::CALL_REL32
        && matches!(
            replacement.relocs.as_slice(),
            [RelocSite { offset: 1, target: RelocTarget::Symbol { name, .. }, .. }]
                if name == ALT_CALL_PLACEHOLDER
        )
}
