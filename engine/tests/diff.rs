//! The ELF differ, on data: small C files in `tests/diff/` (`<case>.pre.c`,
//! `<case>.post.c`), compiled here with gcc and kernel-like flags, one pair per rule,
//! with the reports snapshotted in `tests/diff/snapshots/`; and real objects of the
//! prepared Debian kernel tree (`cargo xtask setup`), compiled with kbuild in a
//! private copy of that tree.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a test failure

use std::path::{Path, PathBuf};
use std::process::Command;

use kstack_engine::builder::diff::{
    DiffOptions, DiffReport, Status, diff_objects, special_entries,
};
use object::Object;

#[path = "diff/kernel.rs"]
mod kernel;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/diff");

/// The flags of an x86-64 kernel object that matter to the differ: one section per
/// function and object, the kernel code model, an fentry call and its
/// `__mcount_loc` entry, returns and indirect calls through thunks, no unwind
/// tables, no debug info.
const CFLAGS: &[&str] = &[
    "-c",
    "-O2",
    "-std=gnu11",
    "-g0",
    "-ffunction-sections",
    "-fdata-sections",
    "-fno-pic",
    "-mcmodel=kernel",
    "-mno-red-zone",
    "-pg",
    "-mfentry",
    "-mrecord-mcount",
    "-fno-asynchronous-unwind-tables",
    "-fno-common",
    "-fno-jump-tables",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-mindirect-branch=thunk-extern",
    "-mindirect-branch-register",
    "-mfunction-return=thunk-extern",
];

/// Compiles `source` as `<name>.c` in `dir`, so that pre and post see the same
/// `__FILE__`. A first line `/* cflags: ... */` adds flags.
fn compile(source: &Path, dir: &Path, name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(source).unwrap();
    let extra: Vec<&str> = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("/* cflags:"))
        .and_then(|l| l.strip_suffix("*/"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    std::fs::write(dir.join(format!("{name}.c")), &text).unwrap();
    let out = Command::new("gcc")
        .current_dir(dir)
        .args(CFLAGS)
        .args(&extra)
        .arg(format!("-I{FIXTURES}"))
        .arg(format!("{name}.c"))
        .args(["-o", &format!("{name}.o")])
        .output()
        .expect("gcc runs");
    assert!(
        out.status.success(),
        "gcc failed on {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dir.join(format!("{name}.o"))).unwrap()
}

/// The pre and post objects of fixture files `pre` and `post`, both compiled as
/// `<name>.c`.
fn objects(pre: &str, post: &str, name: &str) -> (Vec<u8>, Vec<u8>) {
    let fixtures = PathBuf::from(FIXTURES);
    let pre_dir = tempfile::tempdir().unwrap();
    let post_dir = tempfile::tempdir().unwrap();
    (
        compile(&fixtures.join(pre), pre_dir.path(), name),
        compile(&fixtures.join(post), post_dir.path(), name),
    )
}

fn fixture_with(case: &str, opts: &DiffOptions) -> DiffReport {
    let (pre, post) = objects(&format!("{case}.pre.c"), &format!("{case}.post.c"), case);
    diff_objects(&pre, &post, opts).unwrap()
}

fn fixture(case: &str) -> DiffReport {
    fixture_with(case, &DiffOptions::default())
}

fn snapshot(name: &str, report: &impl serde::Serialize) {
    insta::with_settings!({
        snapshot_path => "diff/snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_json_snapshot!(name, report);
    });
}

/// The status of the post function of that name (or the removed pre one).
fn status(report: &DiffReport, function: &str) -> Status {
    report
        .functions
        .iter()
        .find(|f| f.name == function && f.status != Status::Removed)
        .or_else(|| report.functions.iter().find(|f| f.name == function))
        .unwrap_or_else(|| panic!("no function {function} in {:#?}", report.functions))
        .status
}

#[test]
fn identical_objects_have_no_change() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = PathBuf::from(FIXTURES);
    for case in [
        "changed_data",
        "warn_line",
        "renamed_constprop",
        "changed_init",
    ] {
        let obj = compile(&fixtures.join(format!("{case}.pre.c")), dir.path(), case);
        let report = diff_objects(&obj, &obj, &DiffOptions::default()).unwrap();
        assert!(report.is_patchable(), "{case}: {:#?}", report.refusals);
        assert!(
            report
                .functions
                .iter()
                .all(|f| f.status == Status::Unchanged),
            "{case}: {:#?}",
            report.functions
        );
        assert!(report.data.iter().all(|d| d.status == Status::Unchanged));
    }
}

#[test]
fn changed_code() {
    let report = fixture("changed_code");
    assert!(report.has("function:changed:add"));
    assert!(report.has("function:unchanged:triple"));
    assert!(report.is_patchable());
    snapshot("changed_code", &report);
}

#[test]
fn changed_callee() {
    let report = fixture("changed_callee");
    assert!(report.has("function:changed:forward"));
    assert!(report.has("function:unchanged:unrelated"));
    let forward = &report.functions[0];
    assert!(
        forward
            .reasons
            .iter()
            .any(|r| r == "relocation target helper_a -> helper_b"),
        "{forward:#?}"
    );
    snapshot("changed_callee", &report);
}

#[test]
fn moved_string_is_no_change() {
    let report = fixture("moved_string");
    assert_eq!(status(&report, "hello"), Status::Unchanged);
    assert_eq!(status(&report, "goodbye"), Status::Unchanged);
    assert_eq!(status(&report, "greeting"), Status::New);
    snapshot("moved_string", &report);
}

#[test]
fn warn_line_only_is_no_change_but_flags_are() {
    let report = fixture("warn_line");
    assert_eq!(status(&report, "checked"), Status::Unchanged);
    assert_eq!(status(&report, "flagged"), Status::Changed);
    snapshot("warn_line", &report);
}

#[test]
fn renumbered_constprop_is_the_same_function() {
    let report = fixture("renamed_constprop");
    // The pre scale.constprop.0 is gone; the post one is the pre scale.constprop.1.
    assert!(report.has("function:removed:scale.constprop.0"));
    let clone = report
        .functions
        .iter()
        .find(|f| f.key == "function:unchanged:scale.constprop.0")
        .unwrap();
    assert_eq!(clone.pre.as_ref().unwrap().name, "scale.constprop.1");
    assert_eq!(status(&report, "scale_by_200"), Status::Unchanged);
    assert_eq!(status(&report, "scale_by_three"), Status::Changed);
    snapshot("renamed_constprop", &report);
}

#[test]
fn new_function() {
    let report = fixture("new_function");
    assert!(report.has("function:new:clamp"));
    assert!(report.has("function:changed:compute"));
    let mut patched: Vec<&str> = report
        .patched_functions()
        .map(|f| f.name.as_str())
        .collect();
    patched.sort();
    assert_eq!(patched, ["clamp", "compute"]);
    snapshot("new_function", &report);
}

/// 6.12, a unit objtool processed (a one-file module): the `__pfx_` symbol of a new
/// function is its padding, which comes along with it, not a function of its own.
/// Taken for one, it was carried as a second copy of the padding, and the new
/// function's `__mcount_loc` entry pointed at no-ops (`ftrace_bug` at load).
#[test]
fn a_new_functions_prefix_symbol_is_not_a_function() {
    let report = fixture("new_function_prefix");
    assert!(report.has("function:new:clamp"));
    assert!(report.has("function:changed:compute"));
    let mut patched: Vec<&str> = report
        .patched_functions()
        .map(|f| f.name.as_str())
        .collect();
    patched.sort();
    assert_eq!(patched, ["clamp", "compute"]);
}

#[test]
fn changed_data_is_refused() {
    let report = fixture("changed_data");
    assert!(report.has("data:changed:limits"));
    assert!(report.has("data:unchanged:counter"));
    assert!(report.has("data:unchanged:names"));
    assert!(report.has("refuse:data:limits"));
    assert!(report.has("function:unchanged:lookup"));
    assert!(!report.is_patchable());
    assert!(report.refusals[0].remedy.contains("shadow variable"));
    snapshot("changed_data", &report);
}

#[test]
fn changed_data_allowed_by_a_hook() {
    let opts = DiffOptions {
        allowed_data: ["limits".to_owned()].into(),
        ..DiffOptions::default()
    };
    let report = fixture_with("changed_data", &opts);
    assert!(report.has("data:changed:limits"));
    assert!(report.data.iter().any(|d| d.name == "limits" && d.allowed));
    assert!(report.is_patchable(), "{:#?}", report.refusals);
    snapshot("changed_data_allowed", &report);
}

#[test]
fn changed_bss_size_is_refused() {
    let report = fixture("changed_bss");
    assert!(report.has("data:changed:history"));
    assert!(report.has("data:unchanged:depth"));
    assert!(report.has("refuse:data:history"));
    assert!(report.has("function:unchanged:record"));
    snapshot("changed_bss", &report);
}

#[test]
fn changed_cold_part_changes_its_function() {
    let report = fixture("cold_part");
    let f = &report.functions[0];
    assert_eq!(f.key, "function:changed:checked_div");
    assert_eq!(f.post_parts[0].name, "checked_div.cold");
    assert!(f.reasons[0].starts_with("cold part: "), "{f:#?}");
    assert!(report.is_patchable(), "{:#?}", report.refusals);
    snapshot("cold_part", &report);
}

#[test]
fn changed_init_is_refused() {
    let report = fixture("changed_init");
    assert!(report.has("function:changed:setup_thing"));
    assert!(report.has("refuse:init:setup_thing"));
    assert!(report.has("function:unchanged:runtime_path"));
    snapshot("changed_init", &report);
}

#[test]
fn changed_notrace_is_refused() {
    let report = fixture("notrace");
    assert!(report.has("refuse:notrace:fast_path"));
    assert!(report.has("function:changed:traced_path"));
    assert!(!report.has("refuse:notrace:traced_path"));
    snapshot("notrace", &report);
}

/// The report's function of that name (the post one, or the removed pre one).
fn function<'r>(
    report: &'r DiffReport,
    name: &str,
) -> &'r kstack_engine::builder::diff::FunctionReport {
    report
        .functions
        .iter()
        .find(|f| f.name == name || f.name.split('.').next() == Some(name))
        .unwrap_or_else(|| panic!("no function {name} in {:#?}", report.functions))
}

#[test]
fn untraceable_bodies_are_reached_through_their_callers() {
    let opts = DiffOptions {
        init_code_ran: true,
        ..DiffOptions::default()
    };
    let report = fixture_with("untraceable", &opts);
    assert!(report.is_patchable(), "{:#?}", report.refusals);
    let body = function(&report, "body");
    assert_eq!(body.status, Status::Changed);
    assert!(!body.is_redirected());
    // `relay` is unchanged but calls `body` and has no fentry either: it is carried
    // too, and `outer`, which calls it, is patched in its place.
    assert_eq!(
        body.reached_through,
        ["__ia32_sys_thing", "__x64_sys_thing", "relay"]
    );
    let relay = function(&report, "relay");
    assert_eq!(relay.status, Status::Changed);
    assert_eq!(relay.reached_through, ["outer"]);
    for caller in ["__x64_sys_thing", "__ia32_sys_thing", "outer"] {
        let f = function(&report, caller);
        assert!(f.is_redirected(), "{caller}: {f:#?}");
        assert!(
            f.reasons.iter().any(|r| r.contains("no fentry call")),
            "{f:#?}"
        );
    }
    assert_eq!(status(&report, "unrelated"), Status::Unchanged);
    snapshot("untraceable", &report);

    // In a module, __init code runs when the module loads: a call from it would
    // reach the old body.
    let report = fixture("untraceable");
    let refusal = report
        .refusals
        .iter()
        .find(|r| r.symbol.starts_with("body"))
        .unwrap_or_else(|| panic!("{:#?}", report.refusals));
    assert!(
        refusal
            .reason
            .contains("boot_setup calls it from __init code"),
        "{refusal}"
    );
}

#[test]
fn an_untraceable_body_whose_address_is_taken_is_refused() {
    let report = fixture("address_taken");
    let refusal = report
        .refusals
        .iter()
        .find(|r| r.symbol.starts_with("body"))
        .unwrap_or_else(|| panic!("{:#?}", report.refusals));
    assert!(refusal.reason.contains("address is taken"), "{refusal}");
    assert!(
        refusal.reason.contains("no call to __fentry__"),
        "{refusal}"
    );
}

#[test]
fn calls_the_assembler_resolved_in_a_shared_section_are_no_change() {
    let report = fixture("shared_section");
    assert!(report.is_patchable(), "{:#?}", report.refusals);
    // `first` grew, so `middle`'s call to it has another offset; that is layout.
    assert_eq!(status(&report, "first"), Status::Changed);
    assert_eq!(status(&report, "middle"), Status::Unchanged);
    assert_eq!(status(&report, "last"), Status::Unchanged);
}

#[test]
fn an_empty_alternative_replacement_does_not_take_in_the_next_functions() {
    let report = fixture("alt_empty_replacement");
    assert!(report.is_patchable(), "{:#?}", report.refusals);
    // `first`'s empty replacement sits where `second`'s begins; only `second`
    // changed.
    assert_eq!(status(&report, "first"), Status::Unchanged);
    assert_eq!(status(&report, "second"), Status::Changed);
}

#[test]
fn changed_type_layouts_are_refused() {
    let report = fixture("layout");
    let layout: Vec<(&str, &str)> = report
        .refusals
        .iter()
        .filter(|r| r.key.starts_with("refuse:layout:"))
        .map(|r| (r.symbol.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        layout,
        [
            (
                "enum state",
                "its layout changes (enumerator values change: BUSY 1 → 2, DONE 2 → 3)"
            ),
            (
                "struct session",
                "its layout changes (added extra@4: int(4))"
            ),
        ]
    );
    assert!(
        report
            .refusals
            .iter()
            .all(|r| r.remedy.contains("shadow variable"))
    );
}

#[test]
fn a_zero_initialisation_the_configuration_already_does_is_no_change() {
    let report = fixture("zero_init");
    assert_eq!(status(&report, "sum"), Status::Unchanged);
    assert!(report.patched_functions().next().is_none());
    assert!(report.is_patchable());
}

#[test]
fn renumbered_static_local_is_the_same_object() {
    let report = fixture("static_local");
    assert_eq!(status(&report, "count_calls"), Status::Unchanged);
    assert_eq!(status(&report, "count_other"), Status::New);
    assert!(report.is_patchable(), "{:#?}", report.refusals);
    snapshot("static_local", &report);
}

/// The data symbol that function `function` of an object refers to.
fn data_used_by(object: &[u8], function: &str) -> String {
    use object::{ObjectSection, ObjectSymbol};
    let file = object::File::parse(object).unwrap();
    let section = file
        .section_by_name(&format!(".text.{function}"))
        .unwrap_or_else(|| panic!("no .text.{function}"));
    section
        .relocations()
        .filter_map(|(_, r)| match r.target() {
            object::RelocationTarget::Symbol(i) => file.symbol_by_index(i).ok(),
            _ => None,
        })
        .map(|sym| match sym.kind() {
            // GCC refers to a static through its section: name the object there.
            object::SymbolKind::Section => {
                let index = sym.section_index().unwrap();
                file.symbols()
                    .find(|s| {
                        s.section_index() == Some(index) && s.kind() == object::SymbolKind::Data
                    })
                    .map(|s| s.name().unwrap().to_owned())
                    .unwrap_or_default()
            }
            _ => sym.name().unwrap().to_owned(),
        })
        .find(|n| n.starts_with("hits"))
        .unwrap_or_else(|| panic!("{function} refers to no hits"))
}

/// A change that adds a same-named static renumbers the unit's others: each old
/// static is paired with its running object by its user, never by its post name,
/// and a new twin that nothing tells apart from an old one (same contents, same
/// user) is marked as a guess.
#[test]
fn renumbered_statics_keep_their_running_names_and_twins_are_guesses() {
    let (pre, post) = objects(
        "renumbered_twins.pre.c",
        "renumbered_twins.post.c",
        "renumbered_twins",
    );
    let report = diff_objects(&pre, &post, &DiffOptions::default()).unwrap();
    let hits: Vec<_> = report
        .data
        .iter()
        .filter(|d| d.name.starts_with("hits"))
        .collect();
    assert_eq!(hits.len(), 3, "{hits:#?}");
    // second's static: paired with the one second used before, under its new name.
    let (second_pre, second_post) = (data_used_by(&pre, "second"), data_used_by(&post, "second"));
    assert_ne!(second_pre, second_post, "the fixture no longer renumbers");
    let second = hits
        .iter()
        .find(|d| d.post.as_ref().is_some_and(|p| p.name == second_post))
        .unwrap();
    assert_eq!(second.pre.as_ref().unwrap().name, second_pre);
    assert_eq!(second.status, Status::Unchanged);
    assert!(!second.indistinct, "{second:#?}");
    // first's two: one paired by a guess, one new.
    let first: Vec<_> = hits
        .iter()
        .filter(|d| d.post.as_ref().is_some_and(|p| p.name != second_post))
        .collect();
    assert_eq!(
        first.iter().filter(|d| d.status == Status::New).count(),
        1,
        "{first:#?}"
    );
    assert_eq!(
        first.iter().filter(|d| d.indistinct).count(),
        1,
        "{first:#?}"
    );
}

/// Where the change leaves a group's numbering as it was, same-named statics pair
/// by name, and none is a guess.
#[test]
fn undisturbed_same_named_statics_pair_by_name() {
    // Before: the twins as renumbered_twins ends; after: second changed.
    let (pre, post) = objects(
        "renumbered_twins.post.c",
        "twins_unchanged.post.c",
        "renumbered_twins",
    );
    let report = diff_objects(&pre, &post, &DiffOptions::default()).unwrap();
    assert_eq!(status(&report, "second"), Status::Changed);
    let hits: Vec<_> = report
        .data
        .iter()
        .filter(|d| d.name.starts_with("hits"))
        .collect();
    assert_eq!(hits.len(), 3, "{hits:#?}");
    for d in hits {
        assert!(!d.indistinct, "{d:#?}");
        assert_eq!(d.status, Status::Unchanged, "{d:#?}");
        assert_eq!(
            d.pre.as_ref().unwrap().name,
            d.post.as_ref().unwrap().name,
            "{d:#?}"
        );
    }
}

#[test]
fn special_entries_of_a_function() {
    let dir = tempfile::tempdir().unwrap();
    let source = PathBuf::from(FIXTURES).join("warn_line.post.c");
    let obj = compile(&source, dir.path(), "warn_line");
    let file = object::File::parse(&*obj).unwrap();
    let section = file.section_by_name(".text.flagged").unwrap();
    let entries = special_entries(&obj, object::ObjectSection::index(&section).0).unwrap();
    let mut sections: Vec<(&str, u64)> = entries
        .iter()
        .map(|e| (e.section.as_str(), e.size))
        .collect();
    sections.sort();
    assert_eq!(sections, [("__bug_table", 12), ("__mcount_loc", 8)]);
    let entry = |name: &str| entries.iter().find(|e| e.section == name).unwrap();
    // The bug entry points at the ud2 (0f 0b) in the function, the mcount entry at
    // the fentry call.
    let code = object::ObjectSection::data(&section).unwrap();
    let ud2 = entry("__bug_table").target as usize;
    assert_eq!(&code[ud2..ud2 + 2], [0x0f, 0x0b]);
    assert_eq!(entry("__mcount_loc").target, 0);
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let err = diff_objects(b"not an object", b"", &DiffOptions::default()).unwrap_err();
    assert!(err.to_string().contains("pre object"), "{err}");
}

// Real translation units of the prepared kernel tree. Their snapshots hold the keys
// of the findings only: sizes and offsets follow the kernel release that
// `cargo xtask setup` resolved.

fn changed_keys(report: &DiffReport) -> Vec<&str> {
    let unchanged = |k: &&str| k.contains(":unchanged:");
    report
        .keys()
        .into_iter()
        .filter(|k| !unchanged(k))
        .collect()
}

fn kernel_diff(unit: &str, edit: impl Fn(&str) -> String) -> (DiffReport, Vec<u8>) {
    let (pre, post) = kernel::tree().pre_post(unit, edit);
    let report = diff_objects(&pre, &post, &DiffOptions::default()).unwrap();
    (report, post)
}

#[test]
fn kernel_cmdline_proc_show_changed() {
    let (report, post) = kernel_diff("fs/proc/cmdline.c", |s| {
        s.replace("seq_putc(m, '\\n');", "seq_puts(m, \" kstack\\n\");")
    });
    assert!(report.has("function:unchanged:proc_cmdline_init"));
    assert!(report.is_patchable(), "{:#?}", report.refusals);
    let show = &report.functions[0];
    assert_eq!(show.key, "function:changed:cmdline_proc_show");
    assert_eq!(show.pre.as_ref().unwrap().name, "cmdline_proc_show");
    assert!(show.post.as_ref().unwrap().local);
    for reason in [
        "new reference \" kstack\\n\"",
        "new callee seq_puts",
        "no longer calls seq_putc",
    ] {
        assert!(
            show.reasons.iter().any(|r| r == reason),
            "{reason}: {show:#?}"
        );
    }
    snapshot("kernel_cmdline", &changed_keys(&report));

    // What the output object must carry along with the function.
    let file = object::File::parse(&*post).unwrap();
    let section = file.section_by_name(".text.cmdline_proc_show").unwrap();
    let entries = special_entries(&post, object::ObjectSection::index(&section).0).unwrap();
    let sections: Vec<&str> = entries.iter().map(|e| e.section.as_str()).collect();
    for needed in [
        "__mcount_loc",
        ".return_sites",
        ".orc_unwind_ip",
        ".orc_unwind",
    ] {
        assert!(sections.contains(&needed), "{needed}: {entries:#?}");
    }
    let mcount = entries
        .iter()
        .find(|e| e.section == "__mcount_loc")
        .unwrap();
    assert_eq!((mcount.size, mcount.target), (8, 0));
    for orc in entries
        .iter()
        .filter(|e| e.section.starts_with(".orc_unwind"))
    {
        assert_eq!(orc.size, if orc.section == ".orc_unwind" { 6 } else { 4 });
    }
}

#[test]
fn kernel_version_proc_show_changed() {
    let (report, _) = kernel_diff("fs/proc/version.c", |s| {
        s.replacen(
            "\treturn 0;\n}",
            "\tseq_puts(m, \"patched by kstack\\n\");\n\treturn 0;\n}",
            1,
        )
    });
    assert!(report.has("function:changed:version_proc_show"));
    assert!(report.has("function:unchanged:proc_version_init"));
    assert!(report.is_patchable(), "{:#?}", report.refusals);
    snapshot("kernel_version", &changed_keys(&report));
}

/// Every `__LINE__` of a file with WARNs, BUGs and pr_debug()s moves: nothing
/// changes (the bug table's lines and the `_ddebug` line numbers are no change).
#[test]
fn kernel_moved_lines_are_no_change() {
    let (report, _) = kernel_diff("kernel/module/main.c", |s| {
        s.replacen("\n", "\n/* kstack: moves every __LINE__ */\n\n", 1)
    });
    assert!(report.functions.len() > 50);
    assert!(
        changed_keys(&report).is_empty(),
        "{:#?}",
        changed_keys(&report)
    );
}

#[test]
fn kernel_changed_table_is_refused() {
    let (report, _) = kernel_diff("fs/proc/base.c", |s| {
        s.replacen(
            "REG(\"environ\",    S_IRUSR, proc_environ_operations),",
            "REG(\"environ\",    S_IRUSR|S_IRGRP, proc_environ_operations),",
            1,
        )
    });
    assert!(!report.is_patchable());
    snapshot("kernel_base_table", &changed_keys(&report));
}
