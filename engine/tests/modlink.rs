//! Linking a module with the commands a kbuild link recorded ([`modlink`]), against
//! the test kernel's real headers: the module is the one kbuild links, byte for byte
//! but for its build ID; a record that no longer works falls back to kbuild.
//!
//! The kernel and its headers come from `cargo xtask setup`; without them this test
//! fails, naming that command.

#![allow(clippy::unwrap_used)] // a test: any failure should stop it loudly

#[path = "klp/common.rs"]
mod common;

use std::path::{Path, PathBuf};

use kstack_engine::builder::assets::{Cache, Kernel};
use kstack_engine::builder::kbuild::{self, Linked, ModuleSpec, Options};
use kstack_engine::builder::modlink::LinkRecords;

/// A module like a livepatch module: a generated C file, a header beside it in an
/// include directory of the tree, and a prebuilt object (compiled by gcc here).
fn module_in(tree: &Path, name: &str) -> ModuleSpec {
    let src = tree.join(".kstack/module");
    std::fs::create_dir_all(src.join("include")).unwrap();
    std::fs::write(src.join("include/answer.h"), "#define ANSWER 42\n").unwrap();
    let main = src.join(format!("{name}_main.c"));
    std::fs::write(
        &main,
        "#include <linux/module.h>\n#include <answer.h>\n\
         extern int unit_answer(void);\n\
         static int __init m_init(void) { return unit_answer() == ANSWER ? 0 : -EINVAL; }\n\
         static void __exit m_exit(void) {}\n\
         module_init(m_init);\nmodule_exit(m_exit);\nMODULE_LICENSE(\"GPL\");\n",
    )
    .unwrap();
    let unit_c = src.join("unit.c");
    std::fs::write(&unit_c, "int unit_answer(void) { return 42; }\n").unwrap();
    let shipped = src.join("kstack_unit0.o_shipped");
    let status = std::process::Command::new("gcc")
        .args(["-c", "-O2", "-mcmodel=kernel", "-fno-pic", "-o"])
        .arg(&shipped)
        .arg(&unit_c)
        .status()
        .unwrap();
    assert!(status.success());
    ModuleSpec {
        name: name.to_owned(),
        sources: vec![main, shipped],
        ccflags: vec![format!("-I{}", src.join("include").display())],
    }
}

fn link(
    kernel: &Kernel,
    records: &LinkRecords,
    name: &str,
    replay: bool,
) -> (Vec<u8>, Linked, PathBuf) {
    let tree = tempfile::tempdir().unwrap();
    let spec = module_in(tree.path(), name);
    let (ko, linked) = kbuild::link_module(
        &kernel.headers(),
        &spec,
        &tree.path().join(".kstack/kbuild"),
        &Options { modpost_warn: true },
        tree.path(),
        records,
        replay,
    )
    .unwrap_or_else(|e| panic!("{e}\n(headers missing? run `{}`)", common::SETUP));
    (std::fs::read(&ko).unwrap(), linked, tree.keep())
}

/// The module's bytes with its build ID zeroed (the linker's hash of every byte), and
/// the contents of its `.BTF`, where kbuild made one: pahole encodes with several
/// threads (`-j`), and the order of the types it writes differs from run to run, for
/// kbuild's own links too. Its size does not.
fn without_build_id(module: &[u8]) -> Vec<u8> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(module).unwrap();
    let mut bytes = module.to_vec();
    for name in [".note.gnu.build-id", ".BTF"] {
        if let Some((start, len)) = file.section_by_name(name).and_then(|s| s.file_range()) {
            bytes[start as usize..(start + len) as usize].fill(0);
        }
    }
    bytes
}

#[test]
fn a_recorded_link_builds_what_kbuild_builds_and_a_broken_record_falls_back() {
    recorded_link_on(&common::kernel());
}

/// The same on Debian's 6.12 kernel, whose headers run objtool at link time through
/// a wrapper that needs kbuild's `SRCARCH`.
#[test]
fn on_6_12_a_recorded_link_builds_what_kbuild_builds() {
    let kernel = Cache::from_env()
        .kernels()
        .into_iter()
        .filter(|k| {
            k.line()
                .is_some_and(|l| l.line == "6.12" && l.flavour == "cloud-amd64")
        })
        .max_by_key(|k| k.version())
        .unwrap_or_else(|| panic!("no 6.12 cloud kernel\nrun `{}` first", common::SETUP));
    recorded_link_on(&kernel);
}

fn recorded_link_on(kernel: &Kernel) {
    let cache = tempfile::tempdir().unwrap();
    let records = LinkRecords::new(cache.path());

    // No record: kbuild links, and its commands are recorded.
    let (by_kbuild, linked, tree) = link(kernel, &records, "kstack_aaaaaaaaaaaa", true);
    assert_eq!(linked, Linked::Kbuild);
    std::fs::remove_dir_all(tree).unwrap();
    let recipe = records.recipe().expect("kbuild's link was recorded");
    let text = std::fs::read_to_string(cache.path().join("units/module-link")).unwrap();
    assert!(!text.contains("kstack_aaaaaaaaaaaa"), "{text}");

    // Another module in another tree, with the record: the same bytes.
    let (by_record, linked, tree) = link(kernel, &records, "kstack_aaaaaaaaaaaa", true);
    assert_eq!(linked, Linked::Recorded);
    assert_eq!(
        without_build_id(&by_kbuild),
        without_build_id(&by_record),
        "the recorded link built another module than kbuild"
    );
    // The object's dependency record is written as kbuild's rule writes it.
    let cmd = std::fs::read_to_string(tree.join(".kstack/kbuild/.kstack_aaaaaaaaaaaa_main.o.cmd"))
        .unwrap();
    assert!(cmd.contains("answer.h"), "{cmd}");
    std::fs::remove_dir_all(tree).unwrap();
    let (other, linked, tree) = link(kernel, &records, "kstack_bbbbbbbbbbbb", true);
    assert_eq!(linked, Linked::Recorded);
    assert!(
        other.windows(19).any(|w| w == b"kstack_bbbbbbbbbbbb"),
        "the module is named by this link"
    );
    std::fs::remove_dir_all(tree).unwrap();

    // Without replay (`--no-cache`), kbuild.
    let (_, linked, tree) = link(kernel, &records, "kstack_aaaaaaaaaaaa", false);
    assert_eq!(linked, Linked::Kbuild);
    std::fs::remove_dir_all(tree).unwrap();

    // A record whose compile no longer works: kbuild links, and says why.
    let broken = text.replace("compile := ", "compile := exit 3; ");
    std::fs::write(cache.path().join("units/module-link"), broken).unwrap();
    let (after, linked, tree) = link(kernel, &records, "kstack_aaaaaaaaaaaa", true);
    match linked {
        Linked::KbuildAfter(why) => assert!(why.contains("compile"), "{why}"),
        other => panic!("linked {other:?}"),
    }
    assert_eq!(without_build_id(&after), without_build_id(&by_kbuild));
    std::fs::remove_dir_all(tree).unwrap();
    // ... and its commands replace the broken record.
    assert_eq!(records.recipe(), Some(recipe));
}
