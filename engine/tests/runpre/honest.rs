//! The honest differences between a pre object and the code a kernel runs, each on
//! small objects compiled by the test: the "running" code is the same source built
//! as the kernel was (without `-ffunction-sections`), linked at kernel addresses
//! and rewritten the way the kernel rewrites itself at boot or later.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use kstack_engine::runpre::{
    self, BeforeImage, Binding, Cause, FentryState, MatchReport, MatchStats, Outcome, SiteKind,
};

use super::link::{self, Kernel};

/// Opcodes of the rewrites below (arch/x86/include/asm/text-patching.h).
const CALL: u8 = 0xe8;
const JMP32: u8 = 0xe9;
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

struct Fixture {
    _dir: tempfile::TempDir,
    pre: Vec<u8>,
    shipped: Vec<u8>,
}

fn fixture(name: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    Fixture {
        pre: link::compile(name, true, dir.path()),
        shipped: link::compile(name, false, dir.path()),
        _dir: dir,
    }
}

fn matched(report: &MatchReport) -> &MatchStats {
    assert!(report.is_match(), "{report}");
    let Outcome::Matched { sympos, .. } = report.outcome else {
        unreachable!()
    };
    report.candidates[sympos - 1].result.as_ref().unwrap()
}

fn check(image: &BeforeImage, kernel: &Kernel) -> MatchReport {
    runpre::match_by_name(image, &kernel.text(), &kernel.kallsyms())
}

#[test]
fn relaxed_branches_and_padding_are_aligned_by_target() {
    let fx = fixture("relax.c");
    let mut kernel = Kernel::new();
    kernel.define("g", 0xffff_ffff_8300_0000, 'D');
    let addrs = kernel.link(&fx.shipped);
    let image = runpre::before_image(&fx.pre, "relax").unwrap();
    // The object has `jmp rel32` to relocations where the shipped code has `jmp
    // rel8`: the streams differ in length after the first one.
    let stats = matched(&check(&image, &kernel)).clone();
    assert!(stats.relaxed >= 2, "{stats:?}");
    // The string literal cannot be located by name: accepted and counted.
    assert!(stats.relocs_unlocated >= 1, "{stats:?}");
    assert!(stats.relocs_checked >= 2, "{stats:?}");
    assert_eq!(stats.fentry, FentryState::Fentry);
    for local in ["helper", "helper2"] {
        let image = runpre::before_image(&fx.pre, local).unwrap();
        assert_eq!(image.binding, Binding::Local);
        matched(&check(&image, &kernel));
    }

    // A tail call that lands in the wrong function is refused.
    let relax = addrs["relax"];
    let code = kernel.peek(relax, 0x40);
    let at = code.windows(2).position(|w| w[0] == 0xeb).unwrap() as u64;
    let mut wrong = code[at as usize + 1] as i8;
    wrong = wrong.wrapping_add(1);
    kernel.poke(relax + at + 1, &[wrong as u8]);
    let report = check(&image, &kernel);
    assert_eq!(report.outcome, Outcome::Differs, "{report}");
    let (_, d) = report.best_divergence().unwrap();
    assert!(
        matches!(d.cause, Cause::Reference | Cause::Branch),
        "{report}"
    );
}

/// `with_sites` of sites.S, linked, with its sites by kind.
struct Sites {
    kernel: Kernel,
    image: BeforeImage,
    func: u64,
    addrs: HashMap<String, u64>,
}

impl Sites {
    fn new() -> Sites {
        let fx = fixture("sites.S");
        let mut kernel = Kernel::new();
        for (i, name) in [
            "alt_helper",
            "real_target",
            "native_fn",
            "srso_return_thunk",
        ]
        .into_iter()
        .enumerate()
        {
            kernel.define(name, 0xffff_ffff_8180_0000 + 0x100 * i as u64, 'T');
        }
        let addrs = kernel.link(&fx.shipped);
        let image = runpre::before_image(&fx.pre, "with_sites").unwrap();
        Sites {
            func: addrs["with_sites"],
            kernel,
            image,
            addrs,
        }
    }

    /// The address of the site of that kind (`nth` of them).
    fn site(&self, kind: &str, nth: usize) -> u64 {
        let site = self
            .image
            .sites
            .iter()
            .filter(|s| site_key(&s.kind) == kind)
            .nth(nth)
            .unwrap_or_else(|| panic!("no {kind} site {nth} in {:?}", self.image.sites));
        self.func + u64::from(site.offset)
    }

    fn poke(&mut self, addr: u64, bytes: &[u8]) {
        self.kernel.poke(addr, bytes);
    }

    fn call_to(&self, at: u64, name: &str) -> [u8; 5] {
        Kernel::branch32(CALL, at, self.kernel.kallsyms().candidates(name)[0])
    }

    fn report(&self) -> MatchReport {
        check(&self.image, &self.kernel)
    }

    /// Everything rewritten as a booted kernel has it.
    fn boot(&mut self) {
        let fentry = self.site("fentry", 0);
        self.poke(fentry, &NOP5);
        // The static key enabled: a jump to its target, `.Lyes` (+0x12).
        let key = self.site("jump-label", 0);
        self.poke(key, &Kernel::branch32(JMP32, key, self.func + 0x12));
        // The CPU has both features: the replacements, padded with no-ops.
        let alt = self.site("alternative", 0);
        let call = self.call_to(alt, "alt_helper");
        self.poke(alt, &call);
        let clac = self.site("alternative", 1);
        self.poke(clac, &[0x0f, 0x01, 0xca]);
        // spectre_v2=off: `call *%rax`, then a 3-byte no-op.
        let retpoline = self.site("retpoline", 0);
        self.poke(retpoline, &[0xff, 0xd0, 0x0f, 0x1f, 0x00]);
        let static_call = self.site("static-call", 0);
        let call = self.call_to(static_call, "real_target");
        self.poke(static_call, &call);
        // A uniprocessor: `ds` instead of `lock`.
        let lock = self.site("smp-lock", 0);
        self.poke(lock, &[0x3e]);
        let pv = self.site("paravirt", 0);
        let call = self.call_to(pv, "native_fn");
        self.poke(pv, &call);
        self.poke(pv + 5, &[0x90]);
        // No return thunk needed: `ret` and int3 padding.
        let ret = self.site("return-thunk", 0);
        self.poke(ret, &[0xc3, 0xcc, 0xcc, 0xcc, 0xcc]);
    }
}

fn site_key(kind: &SiteKind) -> &'static str {
    match kind {
        SiteKind::Fentry => "fentry",
        SiteKind::Endbr => "endbr",
        SiteKind::ReturnThunk => "return-thunk",
        SiteKind::Retpoline => "retpoline",
        SiteKind::SmpLock => "smp-lock",
        SiteKind::JumpLabel { .. } => "jump-label",
        SiteKind::StaticCall { .. } => "static-call",
        SiteKind::Paravirt { .. } => "paravirt",
        SiteKind::Alternative { .. } => "alternative",
    }
}

#[test]
fn the_before_image_keeps_every_site_and_reads_back() {
    let s = Sites::new();
    let kinds: Vec<&str> = s.image.sites.iter().map(|x| site_key(&x.kind)).collect();
    assert_eq!(
        kinds,
        [
            "fentry",
            "jump-label",
            "alternative",
            "alternative",
            "retpoline",
            "static-call",
            "smp-lock",
            "paravirt",
            "return-thunk"
        ]
    );
    let toml = s.image.to_toml().unwrap();
    assert_eq!(BeforeImage::from_toml(&toml).unwrap(), s.image);
    for part in [
        "function = \"with_sites\"",
        "section = \".text.with_sites\"",
        "kind = \"alternative\"",
        "key = \"some_key\"",
        "key = \"__SCK__my_call\"",
        "name = \"__x86_return_thunk\"",
        "code = \"0f01ca\"",
    ] {
        assert!(toml.contains(part), "{part:?} not in:\n{toml}");
    }
}

#[test]
fn an_image_file_matches_as_built() {
    let s = Sites::new();
    let stats = matched(&s.report()).clone();
    assert_eq!(stats.fentry, FentryState::Fentry);
    assert!(stats.rewritten.is_empty(), "{stats:?}");
}

#[test]
fn code_rewritten_at_boot_matches() {
    let mut s = Sites::new();
    s.boot();
    let stats = matched(&s.report()).clone();
    assert_eq!(stats.fentry, FentryState::Nop);
    let seen: Vec<&str> = stats.rewritten.keys().map(String::as_str).collect();
    assert_eq!(
        seen,
        [
            "alternative: replacement",
            "jump-label: jmp",
            "paravirt: direct call",
            "retpoline: indirect",
            "return-thunk: ret",
            "smp-lock: ds",
            "static-call: direct"
        ],
        "{stats:?}"
    );
    assert_eq!(stats.rewritten["alternative: replacement"], 2);
}

#[test]
fn other_states_of_the_same_sites_match() {
    let mut s = Sites::new();
    s.boot();
    // Traced or already live-patched: a call to an ftrace trampoline, anywhere.
    let fentry = s.site("fentry", 0);
    s.poke(
        fentry,
        &Kernel::branch32(CALL, fentry, 0xffff_ffff_c000_1000),
    );
    // spectre_v2=retpoline,lfence.
    let retpoline = s.site("retpoline", 0);
    s.poke(retpoline, &[0x0f, 0xae, 0xe8, 0xff, 0xd0]);
    // Another return thunk (SRSO).
    let ret = s.site("return-thunk", 0);
    let jmp = Kernel::branch32(
        JMP32,
        ret,
        s.kernel.kallsyms().candidates("srso_return_thunk")[0],
    );
    s.poke(ret, &jmp);
    // A static call to nothing, a paravirt op that is a no-op.
    let static_call = s.site("static-call", 0);
    s.poke(static_call, &NOP5);
    let pv = s.site("paravirt", 0);
    s.poke(pv, &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00]);
    // The static key off again, the first alternative not applied.
    let key = s.site("jump-label", 0);
    s.poke(key, &NOP5);
    let alt = s.site("alternative", 0);
    s.poke(alt, &[0x48, 0x89, 0xf8, 0x66, 0x90]);
    let stats = matched(&s.report()).clone();
    assert!(
        matches!(stats.fentry, FentryState::Trampoline(0xffff_ffff_c000_1000)),
        "{stats:?}"
    );
    assert_eq!(
        stats.rewritten.get("return-thunk: srso_return_thunk"),
        Some(&1),
        "{stats:?}"
    );
    assert_eq!(
        stats.rewritten.get("alternative: replacement"),
        Some(&1),
        "{stats:?}"
    );
}

/// New bytes for a site, from the linked kernel and the site's address.
type Rewrite = dyn Fn(&Sites, u64) -> Vec<u8>;

#[test]
fn wrong_code_at_a_site_is_refused() {
    let cases: [(&str, usize, &Rewrite); 5] = [
        // The thunk was for %rax.
        ("retpoline", 0, &|_, _| vec![0xff, 0xd3, 0x0f, 0x1f, 0x00]),
        // A return site that jumps to something that is no return thunk.
        ("return-thunk", 0, &|s, at| {
            Kernel::branch32(JMP32, at, s.addrs["with_sites"]).to_vec()
        }),
        // A static key that jumps where the object's does not.
        ("jump-label", 0, &|s, at| {
            Kernel::branch32(JMP32, at, s.func + 0x17).to_vec()
        }),
        // Neither the original nor the replacement.
        ("alternative", 0, &|_, _| vec![0x48, 0x89, 0xf0, 0x90, 0x90]),
        // The fentry call replaced by a jump.
        ("fentry", 0, &|_, at| {
            Kernel::branch32(JMP32, at, 0xffff_ffff_c000_1000).to_vec()
        }),
    ];
    for (kind, nth, bytes) in cases {
        let mut s = Sites::new();
        s.boot();
        let at = s.site(kind, nth);
        let b = bytes(&s, at);
        s.poke(at, &b);
        let report = s.report();
        assert_eq!(report.outcome, Outcome::Differs, "{kind}: {report}");
        let text = report.to_string();
        assert!(text.starts_with("with_sites: does not match"), "{text}");
        let (_, d) = report.best_divergence().unwrap();
        assert_eq!(u64::from(d.offset) + s.func, at, "{kind}: {report}");
    }
}

#[test]
fn a_weak_function_overridden_elsewhere_is_reported_as_such() {
    let fx = fixture("weak.c");
    let image = runpre::before_image(&fx.pre, "arch_hook").unwrap();
    assert_eq!(image.binding, Binding::Weak);

    // Linked alone, the weak definition is the one that runs.
    let mut kernel = Kernel::new();
    kernel.define("g", 0xffff_ffff_8300_0000, 'D');
    kernel.link(&fx.shipped);
    matched(&check(&image, &kernel));

    // Another file's strong definition won.
    let other = fixture("statics_a.c");
    let mut kernel = Kernel::new();
    kernel.define("g", 0xffff_ffff_8300_0000, 'D');
    let addrs = kernel.link(&other.shipped);
    kernel.define("arch_hook", addrs["use_a"], 'T');
    let report = check(&image, &kernel);
    assert_eq!(
        report.outcome,
        Outcome::Overridden {
            addr: addrs["use_a"]
        },
        "{report}"
    );
}

#[test]
fn a_branch_into_the_middle_of_an_instruction_lands_at_the_same_byte() {
    let fx = fixture("overlap.S");
    let image = runpre::before_image(&fx.pre, "untrain").unwrap();
    let mut kernel = Kernel::new();
    let addrs = kernel.link(&fx.shipped);
    // The jump back lands one byte into the `test` (at `return_thunk`), as built.
    matched(&check(&image, &kernel));
    assert_eq!(addrs["return_thunk"], addrs["untrain"] + 1);

    // The byte offset carries over only into the same instruction: one whose
    // immediate (the `int3` the thunk ends with) differs is not the object's.
    kernel.poke(addrs["untrain"] + 2, &[0xcb]);
    let report = check(&image, &kernel);
    assert_eq!(report.outcome, Outcome::Differs, "{report}");
    let (_, d) = report.best_divergence().unwrap();
    assert_eq!(d.offset, 0, "{report}");
}

#[test]
fn a_weak_function_another_weak_definition_replaced_is_overridden_with_proof() {
    let fx = fixture("weak.c");
    let other = fixture("weak_other.c");
    let image = runpre::before_image(&fx.pre, "arch_hook").unwrap();
    let other_image = runpre::before_image(&other.pre, "arch_hook").unwrap();
    // Both are weak: the linker kept the other file's, which kallsyms lists as `W`.
    let mut kernel = Kernel::new();
    kernel.define("g", 0xffff_ffff_8300_0000, 'D');
    let addrs = kernel.link(&other.shipped);
    let (text, symbols) = (kernel.text(), kernel.kallsyms());
    let report = runpre::match_by_name(&image, &text, &symbols);
    assert_eq!(report.outcome, Outcome::Differs, "{report}");
    let report = runpre::explain_weak(
        report,
        &image,
        std::slice::from_ref(&other_image),
        &text,
        &symbols,
    );
    assert_eq!(
        report.outcome,
        Outcome::Overridden {
            addr: addrs["arch_hook"]
        },
        "{report}"
    );

    // Without another definition that matches there, the difference stands: one
    // that does not match (here the object's own) proves nothing.
    let report = runpre::match_by_name(&image, &text, &symbols);
    let report = runpre::explain_weak(
        report,
        &image,
        std::slice::from_ref(&image),
        &text,
        &symbols,
    );
    assert_eq!(report.outcome, Outcome::Differs, "{report}");
    // Nor does a strong function's difference become an override.
    let mut strong = image.clone();
    strong.binding = Binding::Global;
    let report = runpre::match_by_name(&strong, &text, &symbols);
    let report = runpre::explain_weak(report, &strong, &[other_image], &text, &symbols);
    assert_eq!(report.outcome, Outcome::Differs, "{report}");
}

#[test]
fn the_cold_part_of_an_overridden_weak_function_is_overridden_with_proof() {
    let fx = fixture("weak_cold.c");
    let parent = runpre::before_image(&fx.pre, "setup_hook").unwrap();
    let cold = runpre::before_image(&fx.pre, "setup_hook.cold").unwrap();
    assert_eq!(parent.binding, Binding::Weak);
    let strong = fixture("statics_a.c");
    let mut kernel = Kernel::new();
    kernel.define("g", 0xffff_ffff_8300_0000, 'D');
    let addrs = kernel.link(&fx.shipped);
    let other = kernel.link(&strong.shipped);
    // Linked alone, the weak body and its cold part both match.
    matched(&check(&parent, &kernel));
    matched(&check(&cold, &kernel));

    // Another file's definition won: the weak body keeps its bytes but loses its
    // name, and the cold part's jump back lands in code kallsyms calls something
    // else.
    kernel.forget("setup_hook");
    kernel.define("setup_hook", other["use_a"], 'T');
    let (text, symbols) = (kernel.text(), kernel.kallsyms());
    let report = runpre::match_by_name(&cold, &text, &symbols);
    assert_eq!(report.outcome, Outcome::Differs, "{report}");
    let explained = runpre::explain_cold(report.clone(), &cold, &parent, &text, &symbols);
    assert_eq!(
        explained.outcome,
        Outcome::Overridden {
            addr: addrs["setup_hook.cold"]
        },
        "{explained}"
    );

    // The proof is the parent's code where the jump lands: changed there, the
    // difference stands.
    kernel.poke(addrs["setup_hook"] + 0x12, &[0x31, 0xc0]);
    let (text, symbols) = (kernel.text(), kernel.kallsyms());
    let report = runpre::match_by_name(&cold, &text, &symbols);
    let explained = runpre::explain_cold(report, &cold, &parent, &text, &symbols);
    assert_eq!(explained.outcome, Outcome::Differs, "{explained}");

    // Nor is a strong parent's cold part explained this way.
    let mut strong_parent = parent.clone();
    strong_parent.binding = Binding::Global;
    let report = runpre::match_by_name(&cold, &text, &symbols);
    let explained = runpre::explain_cold(report, &cold, &strong_parent, &text, &symbols);
    assert_eq!(explained.outcome, Outcome::Differs, "{explained}");
}

#[test]
fn same_named_statics_are_told_apart_by_their_code() {
    let a = fixture("statics_a.c");
    let b = fixture("statics_b.c");
    let show_a = runpre::before_image(&a.pre, "show").unwrap();
    let show_b = runpre::before_image(&b.pre, "show").unwrap();

    let mut kernel = Kernel::new();
    kernel.define("g", 0xffff_ffff_8300_0000, 'D');
    let in_b = kernel.link(&b.shipped);
    let in_a = kernel.link(&a.shipped);
    assert_eq!(
        kernel.kallsyms().candidates("show"),
        [in_b["show"], in_a["show"]]
    );
    assert_eq!(
        check(&show_a, &kernel).outcome,
        Outcome::Matched {
            sympos: 2,
            addr: in_a["show"]
        }
    );
    assert_eq!(
        check(&show_b, &kernel).outcome,
        Outcome::Matched {
            sympos: 1,
            addr: in_b["show"]
        }
    );

    // The same file twice: identical code, the match cannot choose.
    let mut kernel = Kernel::new();
    kernel.define("g", 0xffff_ffff_8300_0000, 'D');
    kernel.link(&a.shipped);
    kernel.link(&a.shipped);
    let report = check(&show_a, &kernel);
    assert_eq!(
        report.outcome,
        Outcome::Ambiguous { sympos: vec![1, 2] },
        "{report}"
    );
}

#[test]
fn a_function_that_ends_its_mapping_is_compared_as_far_as_it_goes() {
    // The last function of a module's .text: nothing is mapped after it, and the
    // shipped code is shorter than the object's (relaxed branches).
    let fx = fixture("relax.c");
    let mut kernel = Kernel::new();
    kernel.define("g", 0xffff_ffff_8300_0000, 'D');
    let addrs = kernel.link(&fx.shipped);
    let image = runpre::before_image(&fx.pre, "relax").unwrap();
    let shipped = {
        use object::{Object, ObjectSymbol};
        let file = object::File::parse(&*fx.shipped).unwrap();
        let sym = file.symbols().find(|s| s.name() == Ok("relax")).unwrap();
        sym.size() as usize
    };
    assert!(shipped < image.size as usize, "{shipped} {}", image.size);
    let mut text = runpre::MemoryText::new();
    text.insert(addrs["relax"], kernel.peek(addrs["relax"], shipped));
    let report = runpre::match_by_name(&image, &text, &kernel.kallsyms());
    assert!(report.is_match(), "{report}");

    // Cut inside it, it is shorter than the object's code: not a match.
    let mut text = runpre::MemoryText::new();
    text.insert(addrs["relax"], kernel.peek(addrs["relax"], shipped - 2));
    let report = runpre::match_by_name(&image, &text, &kernel.kallsyms());
    assert_eq!(report.outcome, Outcome::Differs, "{report}");
}

#[test]
fn unreadable_code_is_reported() {
    let s = Sites::new();
    let report = runpre::match_function(
        &s.image,
        &[0xffff_ffff_9000_0000],
        &s.kernel.text(),
        &s.kernel.kallsyms(),
    );
    assert_eq!(report.outcome, Outcome::Unreadable, "{report}");
    assert!(
        report.to_string().contains("cannot") || report.to_string().contains("no segment"),
        "{report}"
    );
}

#[test]
fn calls_within_a_shared_section_are_checked_and_freed_init_code_is_recognised() {
    let fx = fixture("init.c");
    let image = runpre::before_image(&fx.pre, "init_main").unwrap();
    assert_eq!(image.section, ".init.text");
    let implicit: Vec<_> = image.relocs.iter().filter(|r| r.implicit).collect();
    assert!(!implicit.is_empty(), "{:?}", image.relocs);

    let mut kernel = Kernel::new();
    kernel.define("g", 0xffff_ffff_8300_0000, 'D');
    let addrs = kernel.link(&fx.shipped);
    let stats = matched(&check(&image, &kernel)).clone();
    assert!(stats.relocs_checked >= implicit.len(), "{stats:?}");

    // Calling the wrong function of the section is refused.
    let mut wrong = Kernel::new();
    wrong.define("g", 0xffff_ffff_8300_0000, 'D');
    wrong.define("init_helper", 0xffff_ffff_8180_0000, 'T');
    let report = runpre::match_function(
        &image,
        &[addrs["init_main"]],
        &kernel.text(),
        &wrong.kallsyms(),
    );
    assert_eq!(report.outcome, Outcome::Differs, "{report}");

    // After boot the kernel frees __init code and fills it with int3.
    let len = image.size as usize;
    kernel.poke(addrs["init_main"], &vec![0xcc; len]);
    let report = check(&image, &kernel);
    assert_eq!(report.outcome, Outcome::Freed, "{report}");
}

#[test]
fn a_static_tail_call_may_become_a_return() {
    let mut s = Sites::new();
    let image = runpre::before_image(&fixture("sites.S").pre, "tail_static").unwrap();
    assert!(
        image.sites.iter().any(|x| x.kind
            == SiteKind::StaticCall {
                key: "__SCK__my_call".into(),
                tail: true
            }),
        "{:?}",
        image.sites
    );
    let func = s.addrs["tail_static"];
    let site = func + 5;
    s.poke(func, &NOP5);
    // The static call set to NULL: `ret` and padding.
    s.poke(site, &[0xc3, 0xcc, 0xcc, 0xcc, 0xcc]);
    let stats = matched(&check(&image, &s.kernel)).clone();
    assert_eq!(
        stats.rewritten.get("static-call: ret"),
        Some(&1),
        "{stats:?}"
    );
    // A tail call became a call: not what the kernel writes.
    let call = s.call_to(site, "real_target");
    s.poke(site, &call);
    let report = check(&image, &s.kernel);
    assert_eq!(report.outcome, Outcome::Differs, "{report}");
}

/// `with_sites_612` of sites_612.S (6.12's layout: padding, ENDBR, 14-byte
/// alternatives, no objtool sections), linked.
fn sites_612() -> (Kernel, BeforeImage, u64) {
    let fx = fixture("sites_612.S");
    let mut kernel = Kernel::new();
    for (i, name) in ["alt_helper", "real_target"].into_iter().enumerate() {
        kernel.define(name, 0xffff_ffff_8180_0000 + 0x100 * i as u64, 'T');
    }
    let addrs = kernel.link(&fx.shipped);
    let image = runpre::before_image(&fx.pre, "with_sites_612").unwrap();
    (kernel, image, addrs["with_sites_612"])
}

#[test]
fn on_6_12_the_sites_objtool_would_record_are_found_from_the_branches() {
    let (_, image, _) = sites_612();
    let sites: Vec<(u32, &str)> = image
        .sites
        .iter()
        .map(|x| (x.offset, site_key(&x.kind)))
        .collect();
    // endbr64 (4 bytes), then the fentry call; the retpoline site starts at its CS
    // prefix; no section listed the retpoline, static call or return sites.
    assert_eq!(
        sites,
        [
            (0, "endbr"),
            (4, "fentry"),
            (10, "alternative"),
            (15, "alternative"),
            (18, "retpoline"),
            (24, "static-call"),
            (30, "return-thunk"),
        ],
        "{:?}",
        image.sites
    );
    // The 14-byte alternative entries are read with their own layout.
    let lens: Vec<u8> = image
        .sites
        .iter()
        .filter_map(|x| match &x.kind {
            SiteKind::Alternative { len, cpuid, .. } => Some((*len, *cpuid)),
            _ => None,
        })
        .map(|(len, _)| len)
        .collect();
    assert_eq!(lens, [5, 3]);
    assert!(
        image.sites.iter().any(|x| x.kind
            == SiteKind::StaticCall {
                key: "__SCK__my_call".into(),
                tail: false
            }),
        "{:?}",
        image.sites
    );
}

#[test]
fn on_6_12_code_rewritten_at_boot_and_a_sealed_endbr_match() {
    let (mut kernel, image, func) = sites_612();
    let stats = matched(&check(&image, &kernel)).clone();
    assert_eq!(stats.fentry, FentryState::Fentry);
    let at = |kind: &str| {
        func + u64::from(
            image
                .sites
                .iter()
                .find(|x| site_key(&x.kind) == kind)
                .unwrap()
                .offset,
        )
    };
    // IBT on the CPU and nothing reaching the function indirectly: the ENDBR is
    // sealed. ftrace's no-op, `call *%rax` for the retpoline (6 bytes with the
    // prefix), the static call's target, `ret` for the return thunk.
    kernel.poke(at("endbr"), &[0x66, 0x0f, 0x1f, 0x00]);
    kernel.poke(at("fentry"), &NOP5);
    kernel.poke(at("retpoline"), &[0xff, 0xd0, 0x0f, 0x1f, 0x40, 0x00]);
    let site = at("static-call");
    let target = kernel.kallsyms().candidates("real_target")[0];
    kernel.poke(site, &Kernel::branch32(CALL, site, target));
    kernel.poke(at("return-thunk"), &[0xc3, 0xcc, 0xcc, 0xcc, 0xcc]);
    let stats = matched(&check(&image, &kernel)).clone();
    assert_eq!(stats.fentry, FentryState::Nop);
    for seen in [
        "endbr: sealed",
        "retpoline: indirect",
        "return-thunk: ret",
        "static-call: direct",
    ] {
        assert_eq!(stats.rewritten.get(seen), Some(&1), "{seen}: {stats:?}");
    }

    // Anything else at the entry is not the ENDBR.
    kernel.poke(at("endbr"), &[0x90, 0x90, 0x90, 0xcc]);
    let report = check(&image, &kernel);
    assert_eq!(report.outcome, Outcome::Differs, "{report}");
}

/// With call-depth tracking (`retbleed=stuff` on a 6.12 kernel), the kernel writes
/// `sarq $5, %gs:<call depth>` at the end of each callee's padding and points direct
/// calls at it, and points retpoline and return sites at its counting thunks
/// (arch/x86/kernel/callthunks.c, alternative.c `emit_call_track_retpoline`).
#[test]
fn on_6_12_call_depth_tracking_thunks_match() {
    let fx = fixture("sites_612.S");
    let mut kernel = Kernel::new();
    for (i, name) in [
        "alt_helper",
        "real_target",
        "__x86_indirect_call_thunk_rax",
        "__x86_indirect_call_thunk_rbx",
        "call_depth_return_thunk",
    ]
    .into_iter()
    .enumerate()
    {
        kernel.define(name, 0xffff_ffff_8180_0000 + 0x100 * i as u64, 'T');
    }
    let addrs = kernel.link(&fx.shipped);
    let image = runpre::before_image(&fx.pre, "caller_612").unwrap();
    let (caller, callee) = (addrs["caller_612"], addrs["callee_612"]);
    matched(&check(&image, &kernel));
    let symbol = |kernel: &Kernel, name: &str| kernel.kallsyms().candidates(name)[0];
    // endbr64 (4), fentry (5): the direct call at 9, the retpoline at 14, the
    // return site at 20.
    let (call, retpoline, ret) = (caller + 9, caller + 14, caller + 20);
    // The thunk at the end of the callee's 16 bytes of padding: 9 bytes as 6.12
    // writes it (`sarq $5, %gs:disp32(%rip)`, what the running 6.12 kernel showed).
    let thunk = callee - 9;
    kernel.poke(
        thunk,
        &[0x65, 0x48, 0xc1, 0x3d, 0xd0, 0x5a, 0x03, 0x00, 0x05],
    );
    kernel.poke(call, &Kernel::branch32(CALL, call, thunk));
    let rax = symbol(&kernel, "__x86_indirect_call_thunk_rax");
    kernel.poke(retpoline, &[0x2e]);
    kernel.poke(retpoline + 1, &Kernel::branch32(CALL, retpoline + 1, rax));
    let depth_ret = symbol(&kernel, "call_depth_return_thunk");
    kernel.poke(ret, &Kernel::branch32(JMP32, ret, depth_ret));
    let stats = matched(&check(&image, &kernel)).clone();
    for seen in [
        "call-depth: accounting thunk",
        "retpoline: call-depth thunk",
        "return-thunk: call_depth_return_thunk",
    ] {
        assert_eq!(stats.rewritten.get(seen), Some(&1), "{seen}: {stats:?}");
    }

    // Another register's thunk is not this site's.
    let rbx = symbol(&kernel, "__x86_indirect_call_thunk_rbx");
    kernel.poke(retpoline + 1, &Kernel::branch32(CALL, retpoline + 1, rbx));
    let report = check(&image, &kernel);
    assert_eq!(report.outcome, Outcome::Differs, "{report}");
    kernel.poke(retpoline + 1, &Kernel::branch32(CALL, retpoline + 1, rax));
    matched(&check(&image, &kernel));

    // The absolute form of older kernels (10 bytes) is the same thunk.
    let thunk = callee - 10;
    kernel.poke(
        thunk,
        &[0x65, 0x48, 0xc1, 0x3c, 0x25, 0xd0, 0x5a, 0x03, 0x00, 0x05],
    );
    kernel.poke(call, &Kernel::branch32(CALL, call, thunk));
    matched(&check(&image, &kernel));

    // A call into the callee's padding that holds no thunk lands elsewhere.
    kernel.poke(thunk, &[0x90; 10]);
    let report = check(&image, &kernel);
    assert_eq!(report.outcome, Outcome::Differs, "{report}");
    let (_, d) = report.best_divergence().unwrap();
    assert_eq!(d.offset, 9, "{report}");
}

/// 6.12's paravirt calls are alternatives whose replacement (`call BUG_func`) stands
/// for a direct call to what the indirect call loads: the kernel writes that call,
/// or no-ops when the target is `nop_func` (arch/x86/kernel/alternative.c,
/// `alt_replace_call`).
#[test]
fn on_6_12_a_paravirt_call_becomes_a_direct_call_or_no_ops() {
    let fx = fixture("sites_612.S");
    let mut kernel = Kernel::new();
    for (i, name) in ["native_read_cr2", "BUG_func", "pv_ops"]
        .into_iter()
        .enumerate()
    {
        kernel.define(name, 0xffff_ffff_8180_0000 + 0x100 * i as u64, 'T');
    }
    let addrs = kernel.link(&fx.shipped);
    let image = runpre::before_image(&fx.pre, "pv_612").unwrap();
    matched(&check(&image, &kernel));
    // endbr64 (4), fentry (5): the site at 9, 6 bytes.
    let site = addrs["pv_612"] + 9;
    let target = kernel.kallsyms().candidates("native_read_cr2")[0];
    kernel.poke(site, &Kernel::branch32(CALL, site, target));
    kernel.poke(site + 5, &[0x90]);
    let stats = matched(&check(&image, &kernel)).clone();
    assert_eq!(
        stats.rewritten.get("paravirt: direct call"),
        Some(&1),
        "{stats:?}"
    );
    kernel.poke(site, &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00]);
    matched(&check(&image, &kernel));
    // Anything else there is not the site.
    kernel.poke(site, &[0x48, 0x8b, 0x45, 0xf0, 0x90, 0x90]);
    let report = check(&image, &kernel);
    assert_eq!(report.outcome, Outcome::Differs, "{report}");
}
