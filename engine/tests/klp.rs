//! The livepatch output object on real kernel code, end to end.
//!
//! `fs/proc/cmdline.c` of the prepared Debian source tree is changed so that
//! `cmdline_proc_show()` prints a marker before the command line, compiled the way
//! the builder compiles a translation unit, extracted with [`klp::extract`] (which
//! turns the reference to `saved_command_line`, not exported, into a livepatch
//! relocation), linked by kbuild with a small template, rewritten by
//! [`klp::post_link`], and loaded into the real kernel in QEMU: `/proc/cmdline`
//! must show the marker *and* the real command line, which only a resolved livepatch
//! relocation can give.
//!
//! The decoder and the extraction over every function of a few real kernel objects,
//! which need no VM, are tested in `klp_objects.rs`.
//!
//! The kernel, its headers and source tree, QEMU and the static guest binary come
//! from `cargo xtask setup`; without them these tests fail, naming that command.

#![allow(clippy::unwrap_used)] // a test: any failure should stop it loudly

#[path = "klp/common.rs"]
mod common;

use std::path::Path;
use std::process::Command;

use kstack_engine::builder::Resolution;
use kstack_engine::builder::assets::Kernel;
use kstack_engine::builder::klp::{self, ExtractRequest, FunctionSpec};
use kstack_engine::sandbox::{self, Sandbox, SandboxOptions, sections};

use common::{SETUP, TestResolver, kernel, kernel_tree, make_object};

const MODULE: &str = "kstack_klp_e2e";
const MARKER: &str = "kstack-klp: ";

/// Writes `contents` to `path` in the private tree as a new file, so that the shared
/// tree's hard-linked original is left alone.
fn replace_file(path: &Path, contents: &str) {
    use std::os::unix::fs::MetadataExt;
    let tmp = path.with_extension("kstack-new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().nlink(), 1);
}

const NEW_CMDLINE_SHOW: &str = r#"static int cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, "kstack-klp: ");
	seq_puts(m, saved_command_line);
	seq_putc(m, '\n');
	return 0;
}"#;

/// A line that the new `meminfo_proc_show()` prints first.
const MEMINFO_MARKER: &str = "KstackKlp:             1 kB";

/// Replaces the function that starts with `signature` in `source` by `new`.
fn replace_function(source: &str, signature: &str, new: &str) -> String {
    let start = source
        .find(signature)
        .unwrap_or_else(|| panic!("{signature} not found"));
    let end = start + source[start..].find("\n}\n").unwrap() + 2;
    format!("{}{new}{}", &source[..start], &source[end..])
}

/// Extracts one changed function of a kernel object.
fn extract_one(object: &[u8], tu: &str, function: &str, resolver: &TestResolver) -> klp::Extracted {
    let functions = [FunctionSpec {
        post_name: function.into(),
        old_name: function.into(),
        new: false,
    }];
    klp::extract(
        &ExtractRequest {
            object,
            tu,
            objname: klp::VMLINUX,
            functions: &functions,
            new_data: &[],
            provided: &[],
            kernel_names: &std::collections::BTreeMap::new(),
            indistinct: &std::collections::BTreeSet::new(),
            objtool_at_link: false,
        },
        resolver,
    )
    .unwrap_or_else(|e| panic!("{tu}: {e}"))
}

fn livepatch_symbols(extracted: &klp::Extracted) -> Vec<&str> {
    extracted
        .references
        .iter()
        .filter(|r| matches!(r.resolution, Resolution::Livepatch { .. }))
        .map(|r| r.symbol.as_str())
        .collect()
}

/// The template kstack generates, reduced to what this test needs: one `klp_func`
/// per (old name, new symbol, old sympos), all in vmlinux.
fn template(functions: &[(&str, &str, u64)]) -> String {
    let mut text = String::from(
        "// SPDX-License-Identifier: GPL-2.0\n\
         #include <linux/kernel.h>\n\
         #include <linux/livepatch.h>\n\
         #include <linux/module.h>\n\n",
    );
    for (_, symbol, _) in functions {
        text.push_str(&format!("extern char {symbol}[];\n"));
    }
    text.push_str("\nstatic struct klp_func funcs[] = {\n");
    for (old, symbol, sympos) in functions {
        text.push_str(&format!(
            "\t{{ .old_name = \"{old}\", .new_func = {symbol}, .old_sympos = {sympos} }},\n"
        ));
    }
    text.push_str(
        "\t{}\n};\n\n\
         static struct klp_object objs[] = {\n\t{ .funcs = funcs },\n\t{}\n};\n\n\
         static struct klp_patch patch = {\n\t.mod = THIS_MODULE,\n\t.objs = objs,\n};\n\n\
         static int __init e2e_init(void)\n{\n\treturn klp_enable_patch(&patch);\n}\n\n\
         static void __exit e2e_exit(void)\n{\n}\n\n\
         module_init(e2e_init);\nmodule_exit(e2e_exit);\n\
         MODULE_LICENSE(\"GPL\");\nMODULE_INFO(livepatch, \"Y\");\n",
    );
    text
}

/// Links the template and the extracted objects into a module with kbuild: the
/// objects go in as `new<N>.o_shipped` (kbuild's `$(obj)/%: $(src)/%_shipped` rule),
/// and modpost only warns (`KBUILD_MODPOST_WARN=1`) about the `.klp.sym` symbols,
/// which it cannot resolve.
fn build_module(kernel: &Kernel, dir: &Path, template: &str, objects: &[&[u8]]) -> Vec<u8> {
    std::fs::write(dir.join("template.c"), template).unwrap();
    let mut names = vec!["template.o".to_owned()];
    for (i, object) in objects.iter().enumerate() {
        let name = format!("new{i}.o");
        std::fs::write(dir.join(format!("{name}_shipped")), object).unwrap();
        // modpost (6.1) reads every object's `.<object>.cmd` for symbol CRCs, and
        // the `_shipped` rule writes none: an empty one says "exports nothing".
        std::fs::write(dir.join(format!(".{name}.cmd")), "").unwrap();
        names.push(name);
    }
    std::fs::write(
        dir.join("Kbuild"),
        format!("obj-m := {MODULE}.o\n{MODULE}-y := {}\n", names.join(" ")),
    )
    .unwrap();
    let out = Command::new("make")
        .arg("-C")
        .arg(kernel.headers())
        .arg(format!("M={}", dir.display()))
        .arg("KBUILD_MODPOST_WARN=1")
        .arg("modules")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kbuild:\n{stderr}");
    // The one warning expected: the livepatch symbol that modpost cannot find.
    assert!(
        stderr.contains(".klp.sym.vmlinux.saved_command_line,0"),
        "{stderr}"
    );
    let ko = dir.join(format!("{MODULE}.ko"));
    let strip = Command::new("strip")
        .arg("--strip-debug")
        .arg(&ko)
        .status()
        .unwrap();
    assert!(strip.success());
    std::fs::read(ko).unwrap()
}

fn sandbox() -> Sandbox {
    let guest = sandbox::find_guest_binary()
        .unwrap_or_else(|e| panic!("no static kstack for the guest: {e}\nrun `{SETUP}` first"));
    Sandbox::new(SandboxOptions::new(kernel().vmlinuz(), guest))
        .unwrap_or_else(|e| panic!("{e}\nrun `{SETUP}` first"))
}

#[test]
fn changed_functions_of_two_files_load_and_work_in_the_kernel() {
    let kernel = kernel();
    let tree = kernel_tree(&kernel);
    // Originals come from the shared tree: the private copy keeps the last run's edits.
    let shared = kernel.source().expect("kernel_tree() checked it");
    let original = |file: &str| std::fs::read_to_string(shared.join(file)).unwrap();
    // cmdline_proc_show() prints a marker, then saved_command_line (not exported).
    let cmdline_c = tree.path().join("fs/proc/cmdline.c");
    let original_cmdline = original("fs/proc/cmdline.c");
    replace_file(
        &cmdline_c,
        &replace_function(
            &original_cmdline,
            "static int cmdline_proc_show(",
            NEW_CMDLINE_SHOW,
        ),
    );
    // meminfo_proc_show() prints one more line first; the rest of it reads several
    // unexported globals and uses static_cpu_has() (alternatives, .altinstr_aux).
    let meminfo_c = tree.path().join("fs/proc/meminfo.c");
    let original_meminfo = original("fs/proc/meminfo.c");
    let anchor = "\tsi_meminfo(&i);\n";
    assert!(original_meminfo.contains(anchor));
    replace_file(
        &meminfo_c,
        &original_meminfo.replacen(
            anchor,
            &format!("{anchor}\tseq_puts(m, \"{MEMINFO_MARKER}\\n\");\n"),
            1,
        ),
    );
    let cmdline_o = make_object(&tree, "fs/proc/cmdline.o");
    let meminfo_o = make_object(&tree, "fs/proc/meminfo.o");

    // What Module.symvers does not list is a global of vmlinux, unique by name here.
    let resolver = TestResolver::new(&kernel, &[], true);
    let cmdline = extract_one(
        &cmdline_o,
        "fs/proc/cmdline.o",
        "cmdline_proc_show",
        &resolver,
    );
    let f = &cmdline.functions[0];
    assert_eq!(f.symbol, "__kstack_new_cmdline_proc_show");
    assert_eq!(f.old_sympos, Some(0));
    let symbols: Vec<(&str, &Resolution)> = cmdline
        .references
        .iter()
        .map(|r| (r.symbol.as_str(), &r.resolution))
        .collect();
    assert_eq!(
        symbols,
        [
            (
                ".klp.sym.vmlinux.saved_command_line,0",
                &Resolution::Livepatch {
                    object: "vmlinux".into(),
                    sympos: 0
                }
            ),
            ("__fentry__", &Resolution::Exported),
            ("__x86_return_thunk", &Resolution::Exported),
            ("seq_putc", &Resolution::Exported),
            ("seq_puts", &Resolution::Exported),
        ]
    );
    let meminfo = extract_one(
        &meminfo_o,
        "fs/proc/meminfo.o",
        "meminfo_proc_show",
        &resolver,
    );
    let m = &meminfo.functions[0];
    for section in [
        ".altinstr_replacement",
        ".altinstr_aux",
        ".rodata.meminfo_proc_show.str1.1",
    ] {
        assert!(
            meminfo.sections.iter().any(|s| s == section),
            "{:?}",
            meminfo.sections
        );
    }
    let meminfo_klp = livepatch_symbols(&meminfo);
    for expected in [
        ".klp.sym.vmlinux.arch_report_meminfo,0",
        ".klp.sym.vmlinux.hugetlb_report_meminfo,0",
        ".klp.sym.vmlinux.pcpu_nr_pages,0",
        ".klp.sym.vmlinux.vmalloc_nr_pages,0",
    ] {
        assert!(meminfo_klp.contains(&expected), "{meminfo_klp:?}");
    }

    let build = tempfile::tempdir().unwrap();
    let linked = build_module(
        &kernel,
        build.path(),
        &template(&[
            ("cmdline_proc_show", &f.symbol, f.old_sympos.unwrap()),
            ("meminfo_proc_show", &m.symbol, m.old_sympos.unwrap()),
        ]),
        &[&cmdline.object, &meminfo.object],
    );
    let done = klp::post_link(&linked).unwrap();
    let mut names: Vec<(&str, usize)> = done
        .sections
        .iter()
        .map(|s| (s.name.as_str(), s.relocations))
        .collect();
    names.sort();
    assert_eq!(
        names[0],
        (".klp.rela.vmlinux..text.__kstack_new_cmdline_proc_show", 1)
    );
    assert_eq!(
        names[1].0,
        ".klp.rela.vmlinux..text.__kstack_new_meminfo_proc_show"
    );
    let mut all_klp = livepatch_symbols(&cmdline);
    all_klp.extend(livepatch_symbols(&meminfo));
    all_klp.sort();
    all_klp.dedup();
    assert_eq!(done.symbols, all_klp);
    let ko = build.path().join(format!("{MODULE}.ko"));
    std::fs::write(&ko, &done.ko).unwrap();

    let mut vm = sandbox();
    vm.add_host_file(&format!("/root/{MODULE}.ko"), &ko)
        .unwrap();
    let lp = format!("/sys/kernel/livepatch/{MODULE}");
    let script = format!(
        r#"
wait_transition() {{ n=0; while [ -e {lp}/transition ] && [ "$(cat {lp}/transition)" = 1 ]; do
  n=$((n+1)); [ $n -gt 300 ] && {{ echo "transition stuck"; exit 9; }}; sleep 0.1; done; }}
echo "== before"; cat /proc/cmdline
echo "== meminfo before"; head -3 /proc/meminfo
echo "== insmod"; insmod /root/{MODULE}.ko; echo "rc=$?"
wait_transition
echo "== sysfs"; echo "enabled=$(cat {lp}/enabled) transition=$(cat {lp}/transition)"
echo "== patched"; cat /proc/cmdline
echo "== meminfo patched"; head -4 /proc/meminfo
echo "== disable"; echo 0 > {lp}/enabled; echo "rc=$?"
wait_transition
echo "== unpatched"; cat /proc/cmdline
echo "== meminfo unpatched"; head -3 /proc/meminfo
echo "== rmmod"; rmmod {MODULE}; echo "rc=$?"
echo "== dmesg"; dmesg | grep -iE "livepatch|{MODULE}|klp" | tail -20
"#
    );
    let run = vm.run(&script).unwrap();
    let ctx = || {
        format!(
            "status {:?}\nstdout:\n{}\nstderr:\n{}\nconsole:\n{}",
            run.status, run.stdout, run.stderr, run.console
        )
    };
    assert!(run.status.success(), "{}", ctx());
    let s = sections(&run.stdout);
    let before = s["before"].trim();
    assert!(before.contains("console=ttyS0"), "{}", ctx());
    assert_eq!(s["insmod"].trim(), "rc=0", "{}", ctx());
    assert_eq!(s["sysfs"].trim(), "enabled=1 transition=0", "{}", ctx());
    // The new function's own string, then saved_command_line read through the
    // livepatch relocation: the real command line, not garbage or a crash.
    assert_eq!(
        s["patched"].trim(),
        format!("{MARKER}{before}"),
        "{}",
        ctx()
    );
    // The new meminfo_proc_show: the marker, then the same fields as before.
    let meminfo_before: Vec<&str> = s["meminfo before"].lines().collect();
    let meminfo_patched: Vec<&str> = s["meminfo patched"].lines().collect();
    assert_eq!(meminfo_patched[0], MEMINFO_MARKER, "{}", ctx());
    assert_ne!(meminfo_patched[1], MEMINFO_MARKER, "{}", ctx());
    assert!(meminfo_patched[1].starts_with("MemTotal:"), "{}", ctx());
    assert_eq!(meminfo_patched[1], meminfo_before[0], "{}", ctx());
    assert!(meminfo_patched[2].starts_with("MemFree:"), "{}", ctx());
    assert_eq!(s["disable"].trim(), "rc=0", "{}", ctx());
    assert_eq!(s["unpatched"].trim(), before, "{}", ctx());
    assert!(s["meminfo unpatched"].starts_with("MemTotal:"), "{}", ctx());
    assert_eq!(s["rmmod"].trim(), "rc=0", "{}", ctx());
    assert!(!run.console.contains("Oops"), "{}", ctx());
    assert!(!run.console.contains("Call Trace"), "{}", ctx());
}
