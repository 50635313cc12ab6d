//! The builder through `kstack commit`, with no VM: a commit of a kernel Git tree,
//! two builds at once, and changes refused for what they are (a file the
//! configuration does not build, a struct layout change, a header too broad). Building, applying and checking the example patches in
//! the VM is `vm_build`. (The first build for a kernel boots it once, to capture its
//! kallsyms; later builds read them from the cache.)

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a test failure

use kstack_tests::{CliStore, example_patch, kernel};

/// `kstack commit --git REPO REV`: the diff of a commit of a kernel Git tree.
#[test]
fn a_commit_of_a_kernel_git_tree_builds() {
    let tree = kernel().source().expect("run `cargo xtask setup`");
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(repo.path())
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .expect("git (run `cargo xtask setup`)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    let file = repo.path().join("fs/proc/loadavg.c");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let original = std::fs::read_to_string(tree.join("fs/proc/loadavg.c")).unwrap();
    std::fs::write(&file, &original).unwrap();
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "import loadavg.c"]);
    std::fs::write(
        &file,
        original.replacen(
            "\treturn 0;\n}\n",
            "\tseq_puts(m, \"from-git\\n\");\n\treturn 0;\n}\n",
            1,
        ),
    )
    .unwrap();
    git(&[
        "commit",
        "-q",
        "-a",
        "-m",
        "loadavg: say where the fix came from",
    ]);

    let store = CliStore::new();
    let out = kstack_tests::run_ok(
        kstack_tests::kstack_cli()
            .arg("--store")
            .arg(&store.store)
            .args(["--json", "commit", "--git"])
            .arg(repo.path())
            .args(["HEAD", "--stack", "git", "--key"])
            .arg(&store.key),
    );
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // The schema of docs/json.md, `kstack commit` (the same as for --module, which
    // cli/tests/json_output.rs snapshots); `notes` is there only when the build has
    // something to say (a tree prepared before a configuration check, for one), and
    // holds sentences.
    if let Some(notes) = report.get("notes") {
        assert!(
            notes
                .as_array()
                .is_some_and(|n| !n.is_empty() && n.iter().all(|s| s.is_string())),
            "{report}"
        );
    }
    let keys = |v: &serde_json::Value| -> std::collections::BTreeSet<String> {
        v.as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "notes")
            .cloned()
            .collect()
    };
    let expected = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        keys(&report),
        expected(&[
            "commit",
            "parent",
            "stack",
            "kernel_release",
            "patch",
            "signer",
            "validity",
            "cumulative"
        ]),
        "{report}"
    );
    assert_eq!(
        keys(&report["patch"]),
        expected(&["name", "dir", "module_name", "manifest_sha256", "functions"]),
        "{report}"
    );
    // The stack's cumulative module: built from the one patch, the same function.
    assert_eq!(
        keys(&report["cumulative"]),
        expected(&["module_name", "patches", "functions", "none_reason"]),
        "{report}"
    );
    assert_eq!(
        report["cumulative"]["functions"], report["patch"]["functions"],
        "{report}"
    );
    assert!(report["cumulative"]["none_reason"].is_null(), "{report}");
    assert_eq!(report["parent"], serde_json::Value::Null, "a new stack");
    assert_eq!(report["kernel_release"], kernel().release, "{report}");
    assert!(
        report["patch"]["module_name"]
            .as_str()
            .unwrap()
            .starts_with("kstack_"),
        "{report}"
    );
    assert_eq!(
        report["patch"]["name"],
        "loadavg-say-where-the-fix-came-from"
    );
    assert_eq!(
        report["patch"]["functions"],
        serde_json::json!(["vmlinux:loadavg_proc_show"])
    );
}

/// Two builds at the same time share nothing: each module holds its own functions.
#[test]
fn two_builds_at_once_do_not_mix() {
    let a = CliStore::new();
    let b = CliStore::new();
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.commit_diff("x", &example_patch("0001-proc-version-banner.diff")));
        let tb =
            s.spawn(|| b.commit_diff("x", &example_patch("0004-loadavg-running-percent.diff")));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert_eq!(
        ra["patch"]["functions"],
        serde_json::json!(["vmlinux:version_proc_show"])
    );
    assert_eq!(
        rb["patch"]["functions"],
        serde_json::json!(["vmlinux:loadavg_proc_show"])
    );
}

/// A fix to a file this kernel's configuration does not build (a DRM driver the
/// cloud kernel leaves out) is refused with that reason (exit 65), not with make's
/// output.
#[test]
fn a_file_the_configuration_does_not_build_is_refused_with_that_reason() {
    let tree = kernel().source().expect("run `cargo xtask setup`");
    let file = "drivers/gpu/drm/i915/i915_driver.c";
    let text = std::fs::read_to_string(tree.join(file)).unwrap();
    let first = text.lines().next().unwrap();
    let diff = format!(
        "i915: a fix to a driver this kernel does not build\n\n\
         --- a/{file}\n+++ b/{file}\n@@ -1,1 +1,2 @@\n {first}\n+/* kstack */\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i915.diff");
    std::fs::write(&path, diff).unwrap();
    let store = CliStore::new();
    let out = kstack_tests::kstack_cli()
        .arg("--store")
        .arg(&store.store)
        .args(["commit", "--stack", "drm", "--key"])
        .arg(&store.key)
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(
        stderr.contains("drivers/gpu/drm/i915/i915_driver.o is not built for kernel"),
        "{stderr}"
    );
    assert!(!stderr.contains("No rule to make target"), "{stderr}");
}

/// A module fix builds into a patch whose functions are named with their module,
/// and `kstack verify --image` proves it offline against the image package's `.ko`.
#[test]
fn a_module_fix_builds_and_is_proven_against_the_image_packages_ko() {
    let store = CliStore::new();
    let diff = kstack_tests::workspace_root().join("examples/modules/xfs-stats-marker.diff");
    let report = store.commit_diff("mods", &diff);
    assert_eq!(
        report["patch"]["functions"],
        serde_json::json!(["xfs:xfs_stats_format"]),
        "{report}"
    );
    let config = store.dir.path().join("host.toml");
    std::fs::write(
        &config,
        store.config(Some("mods"), None, "15s").replace(
            kstack_tests::stack::GUEST_STORE,
            &store.store.display().to_string(),
        ),
    )
    .unwrap();
    let out = kstack_tests::run_ok(
        kstack_tests::kstack_cli()
            .arg("--config")
            .arg(&config)
            .args(["verify", "mods", "--image"])
            .arg(kernel().vmlinuz()),
    );
    assert!(out.contains("xfs_stats_format: matches"), "{out}");
}

/// A unified diff of `file` of the kernel source, with `from` replaced by `to`.
fn source_diff(message: &str, file: &str, from: &str, to: &str) -> tempfile::NamedTempFile {
    let tree = kernel().source().expect("run `cargo xtask setup`");
    let before = std::fs::read_to_string(tree.join(file)).unwrap();
    assert!(before.contains(from), "{file} has no {from:?}");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, &before).unwrap();
    std::fs::write(&b, before.replacen(from, to, 1)).unwrap();
    let out = std::process::Command::new("diff")
        .args([
            "-u",
            "--label",
            &format!("a/{file}"),
            "--label",
            &format!("b/{file}"),
        ])
        .args([&a, &b])
        .output()
        .unwrap();
    let diff = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        diff.path(),
        format!("{message}\n\n{}", String::from_utf8_lossy(&out.stdout)),
    )
    .unwrap();
    diff
}

/// `kstack commit` of a diff that must be refused: its exit status and stderr.
fn commit_refused(diff: &std::path::Path) -> (Option<i32>, String) {
    let store = CliStore::new();
    let out = kstack_tests::kstack_cli()
        .arg("--store")
        .arg(&store.store)
        .args(["commit", "--stack", "refused", "--key"])
        .arg(&store.key)
        .arg(diff)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A new member of a struct the running kernel already has objects of is refused
/// (exit 65), naming the type and pointing to shadow variables: the DWARF of the
/// compiled units says the layout changed.
#[test]
fn a_struct_layout_change_is_refused_with_the_type_named() {
    let diff = source_diff(
        "proc: remember close-on-exec with each fd entry",
        "fs/proc/fd.c",
        "struct fd_data {\n\tfmode_t mode;\n\tunsigned fd;\n};",
        "struct fd_data {\n\tfmode_t mode;\n\tunsigned fd;\n\tbool cloexec;\n};",
    );
    let (code, stderr) = commit_refused(diff.path());
    assert_eq!(code, Some(65), "{stderr}");
    assert!(
        stderr.contains("struct fd_data: its layout changes"),
        "{stderr}"
    );
    assert!(
        stderr.contains("added cloexec@8: bool=_Bool(1)"),
        "{stderr}"
    );
    assert!(stderr.contains("shadow variable"), "{stderr}");
}

/// A header that more units include than a live patch should rebuild is refused
/// (exit 65) with the count kbuild's preprocessing confirmed, not compiled.
#[test]
fn a_header_too_many_units_include_is_refused() {
    let diff = source_diff(
        "utsname: a change every user of utsname() would see",
        "include/linux/utsname.h",
        "static inline struct new_utsname *utsname(void)\n{",
        "static inline struct new_utsname *utsname(void)\n{\n\tbarrier();",
    );
    let (code, stderr) = commit_refused(diff.path());
    assert_eq!(code, Some(65), "{stderr}");
    assert!(
        stderr.contains("the diff changes header include/linux/utsname.h, which at least 33"),
        "{stderr}"
    );
    assert!(stderr.contains("may reach 32"), "{stderr}");
}

/// A change that compiles to the code the kernel already runs (a zero-initialisation
/// that `CONFIG_INIT_STACK_ALL_ZERO` already does) makes no patch: exit status 3, and
/// a message that says so.
#[test]
fn a_change_that_compiles_to_identical_code_makes_no_patch() {
    let diff = source_diff(
        "loadavg: initialise the averages",
        "fs/proc/loadavg.c",
        "\tunsigned long avnrun[3];\n",
        "\tunsigned long avnrun[3] = {};\n",
    );
    let (code, stderr) = commit_refused(diff.path());
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("compiles to the same code as before"),
        "{stderr}"
    );
    assert!(stderr.contains("CONFIG_INIT_STACK_ALL_ZERO"), "{stderr}");
}

/// A unit built once for a kernel is built again from what that build recorded: its
/// pre object (the same for every patch on the same base) and kbuild's compile
/// command, run in a tree of links instead of a full copy; the same change again also
/// takes its post object. The module is the same code as kbuild's, and no build
/// writes into the kernel's prepared tree.
#[test]
fn a_second_build_of_a_unit_reuses_its_records_and_builds_the_same_code() {
    let source = kernel().source().expect("run `cargo xtask setup`");
    let started = std::time::SystemTime::now();
    let patch = example_patch("0004-loadavg-running-percent.diff");
    // The same change in other bytes (a line of this run in the message): a diff no
    // earlier build made a post object for, so the recorded compile runs.
    let dir = tempfile::tempdir().unwrap();
    let variant = new_fix_like(&patch, dir.path());
    let build = |patch: &std::path::Path, extra: &[&str]| {
        let store = CliStore::new();
        let out = store
            .commit_command("reuse")
            .args(extra)
            .arg(patch)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        // What it reports, then `  module   kstack_<hex> for <release>`.
        let text = format!("{stderr}{}", String::from_utf8_lossy(&out.stdout));
        let name = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("module"))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no module named in {text}"))
            .to_owned();
        let module = stored_module(&store.store);
        (text, module, name)
    };
    let (first, kbuild_module, kbuild_name) = build(&patch, &["--no-cache"]);
    assert!(
        first.contains("0 of 1 unit(s) before the change and 0 after it kept")
            && first.contains("compiled by kbuild in a copy of the tree")
            && first.contains("module linked by kbuild"),
        "{first}"
    );
    let (second, recorded_module, recorded_name) = build(&variant, &[]);
    assert!(
        second.contains("1 of 1 unit(s) before the change and 0 after it kept")
            && second.contains("compiled with the commands kbuild ran before")
            && second.contains("module linked with the commands kbuild ran before"),
        "{second}"
    );
    // Another diff is another module name; everything else is the same.
    assert_eq!(
        without_build_id(&kbuild_module),
        renamed(
            &without_build_id(&recorded_module),
            &recorded_name,
            &kbuild_name
        ),
        "the recorded compile and link built other code than kbuild"
    );
    let (third, kept_module, _) = build(&patch, &[]);
    assert!(
        third.contains("1 of 1 unit(s) before the change and 1 after it kept"),
        "{third}"
    );
    assert_eq!(
        without_build_id(&kbuild_module),
        without_build_id(&kept_module),
        "the kept objects built other code than kbuild"
    );
    let written = newer_files(&source, started);
    assert!(
        written.is_empty(),
        "builds wrote into the prepared tree: {written:?}"
    );
}

/// The same change as `patch` in other bytes (a line of this run in its message),
/// written in `dir`: a diff no earlier build made a post object for.
fn new_fix_like(patch: &std::path::Path, dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(patch).unwrap();
    let (subject, rest) = text.split_once("\n\n").unwrap();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let variant = dir.join(patch.file_name().unwrap());
    std::fs::write(
        &variant,
        format!("{subject}\n\nBuilt by the test run {nonce}.\n\n{rest}"),
    )
    .unwrap();
    variant
}

/// `module` with every occurrence of the name `from` written as `to` (same length).
fn renamed(module: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut bytes = module.to_vec();
    let mut at = 0;
    while let Some(pos) = bytes[at..]
        .windows(from.len())
        .position(|w| w == from.as_bytes())
    {
        bytes[at + pos..at + pos + to.len()].copy_from_slice(to.as_bytes());
        at += pos + to.len();
    }
    bytes
}

/// The module of the only patch of the only stack of `store` (not its cumulative one).
fn stored_module(store: &std::path::Path) -> Vec<u8> {
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(store)
            .args(args)
            .output()
            .expect("git (run `cargo xtask setup`)");
        assert!(out.status.success(), "git {args:?}");
        out.stdout
    };
    let refs =
        String::from_utf8(git(&["for-each-ref", "--format=%(refname)", "refs/kstack"])).unwrap();
    let head = refs.lines().next().unwrap().to_owned();
    let files = String::from_utf8(git(&["ls-tree", "-r", "--name-only", &head])).unwrap();
    let module = files
        .lines()
        .find(|f| f.starts_with("patches/") && f.ends_with("/module.ko"))
        .unwrap_or_else(|| panic!("no patch module in {files}"));
    git(&["show", &format!("{head}:{module}")])
}

/// A module's bytes with its build ID zeroed: the linker's hash of every byte,
/// paths of the temporary build directory included.
fn without_build_id(module: &[u8]) -> Vec<u8> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(module).unwrap();
    let mut bytes = module.to_vec();
    if let Some((start, len)) = file
        .section_by_name(".note.gnu.build-id")
        .and_then(|s| s.file_range())
    {
        bytes[start as usize..(start + len) as usize].fill(0);
    }
    bytes
}

/// Files under `dir` modified since `since`.
fn newer_files(dir: &std::path::Path, since: std::time::SystemTime) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.path().symlink_metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.modified().unwrap() >= since {
                found.push(entry.path());
            }
        }
    }
    found
}

/// A recorded compile that fails (here a record whose compiler is given an option no
/// gcc knows, as a record made by another compiler would be) does not fail the
/// build: kbuild compiles the units again in a full copy of the tree, the result says
/// so, and kbuild's record of the unit replaces the broken one. Run in a cache of
/// its own (links to the kernel's assets, its own records), so that no other test
/// meets the broken record.
#[test]
fn a_recorded_compile_that_fails_falls_back_to_kbuild() {
    let kernel = kernel();
    let real = kernel.dir();
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("kernels").join(&kernel.release);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(real).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "units" {
            std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    let real_cache = real.parent().unwrap().parent().unwrap();
    std::fs::create_dir_all(cache.path().join("src")).unwrap();
    std::os::unix::fs::symlink(
        real_cache.join("src").join(&kernel.release),
        cache.path().join("src").join(&kernel.release),
    )
    .unwrap();
    std::fs::write(cache.path().join("kernels/current"), &kernel.release).unwrap();
    let store = CliStore::new();
    let commit = |patch: &std::path::Path, extra: &[&str]| {
        let out = store
            .commit_command("fallback")
            .env("KSTACK_CACHE", cache.path())
            .args(extra)
            .arg(patch)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let unit = "fs/proc/loadavg.o";
    let record = dir.join("units/commands/fs__proc__loadavg.o.cmd");
    let patch = example_patch("0004-loadavg-running-percent.diff");
    // The record, as the kernel's cache has it or as a first build makes it.
    match std::fs::read(real.join("units/commands/fs__proc__loadavg.o.cmd")) {
        Ok(bytes) => {
            std::fs::create_dir_all(record.parent().unwrap()).unwrap();
            std::fs::write(&record, bytes).unwrap();
        }
        Err(_) => {
            commit(&patch, &["--no-cache"]);
        }
    }
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(text.contains("gcc "), "{text}");
    std::fs::write(
        &record,
        text.replacen("gcc ", "gcc -fkstack-no-such-option ", 1),
    )
    .unwrap();

    // A diff no build made objects for (its message differs): both compiles run.
    // The note is in the --json document too, for automation.
    let variant = new_fix_like(&patch, cache.path());
    let said: serde_json::Value =
        serde_json::from_str(commit(&variant, &["--json"]).trim()).unwrap();
    let notes: Vec<&str> = said["notes"]
        .as_array()
        .unwrap_or_else(|| panic!("no notes in {said}"))
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        notes.iter().any(|n| n.starts_with(&format!(
            "the units were compiled by kbuild: a recorded compile failed ({unit}: "
        )) && n.contains("-fkstack-no-such-option")),
        "{notes:?}"
    );
    let record = std::fs::read_to_string(&record).unwrap();
    assert!(!record.contains("-fkstack-no-such-option"), "{record}");
}
