//! Run-pre matching refuses a patch built from the wrong source: the kernel's prepared
//! tree with one line changed in a function the patch replaces. `kstack verify
//! --image` refuses it offline, and `kstack sync` in the VM refuses it before
//! anything is loaded; both name the function and show where the code differs.

// Test helpers: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use kstack_tests::{CliStore, kernel, kstack_cli, sandbox, sections, workspace_root};

/// A cache that shares the real kernel (image, headers, kallsyms) but whose
/// "distribution source" has `edit` applied to `file`.
fn wrong_cache(file: &str, edit: impl Fn(&str) -> String) -> tempfile::TempDir {
    let real = kstack_engine::builder::assets::Cache::from_env();
    let kernel = kernel();
    let dir = tempfile::tempdir().unwrap();
    let kernels = dir.path().join("kernels");
    std::fs::create_dir_all(&kernels).unwrap();
    std::os::unix::fs::symlink(kernel.dir(), kernels.join(&kernel.release)).unwrap();
    std::fs::write(kernels.join("current"), &kernel.release).unwrap();
    std::os::unix::fs::symlink(real.root().join("debs"), dir.path().join("debs")).unwrap();
    let src = dir.path().join("src").join(&kernel.release);
    std::fs::create_dir_all(&src).unwrap();
    // The builder's own private copy of the prepared tree, kept as the source.
    let work = kstack_engine::builder::tree::WorkTree::new(
        &kernel.source().expect("run `cargo xtask setup`"),
        &src,
        &kernel.release,
    )
    .unwrap();
    let tree = work.into_path();
    std::fs::rename(&tree, src.join("linux")).unwrap();
    let path = src.join("linux").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = edit(&text);
    assert_ne!(edited, text);
    // A new file: the shared tree's hard-linked original stays as it is.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, edited).unwrap();
    dir
}

#[test]
fn a_patch_built_from_the_wrong_tree_is_refused_before_loading() {
    let cache = wrong_cache("fs/proc/loadavg.c", |t| {
        t.replacen(
            "get_avenrun(avnrun, FIXED_1/200, 0);",
            "get_avenrun(avnrun, FIXED_1/100, 0);",
            1,
        )
    });
    let store = CliStore::new();
    let diff = workspace_root().join("examples/patches/0004-loadavg-running-percent.diff");
    kstack_tests::run_ok(
        kstack_cli()
            .env("KSTACK_CACHE", cache.path())
            .arg("--store")
            .arg(&store.store)
            .arg("commit")
            .arg(&diff)
            .args(["--stack", "wrong", "--key"])
            .arg(&store.key),
    );

    // Offline, against the shipped image.
    let config = store.dir.path().join("host.toml");
    std::fs::write(
        &config,
        store.config(Some("wrong"), None, "15s").replace(
            kstack_tests::stack::GUEST_STORE,
            &store.store.display().to_string(),
        ),
    )
    .unwrap();
    let out = kstack_cli()
        .arg("--config")
        .arg(&config)
        .args(["verify", "wrong", "--image"])
        .arg(kernel().vmlinuz())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("loadavg_proc_show: does not match"),
        "{stdout}"
    );

    // In the VM, at sync time.
    let mut vm = sandbox();
    store.install(
        &mut vm,
        &[("wrong", store.config(Some("wrong"), None, "15s"))],
    );
    let run = vm
        .run(
            "export KSTACK_STATE_DIR=/var/lib/kstack\n\
             echo '== sync'; kstack --config /etc/kstack/wrong.toml sync 2>&1; echo \"rc=$?\"\n\
             echo '== after'; ls /sys/kernel/livepatch | wc -w; grep -c kstack_ /proc/modules\n",
        )
        .unwrap();
    let s = sections(&run.stdout);
    let sync = &s["sync"];
    assert!(sync.contains("rc=65"), "{sync}");
    assert!(
        sync.contains("refused before anything was loaded"),
        "{sync}"
    );
    assert!(
        sync.contains("loadavg_proc_show: does not match the running code"),
        "{sync}"
    );
    assert!(sync.contains("expected"), "{sync}");
    assert!(sync.contains("likely cause"), "{sync}");
    assert_eq!(
        s["after"].lines().collect::<Vec<_>>(),
        ["0", "0"],
        "{}",
        s["after"]
    );
}

/// The same for a module: built from a tree whose xfs source differs in the function
/// the patch replaces, it is refused offline against the image package's `.ko`, and
/// in the VM both while xfs is not loaded (proven against the `.ko` the host would
/// load) and once it is (proven against its code in memory). Nothing is loaded.
#[test]
fn a_module_patch_built_from_the_wrong_tree_is_refused_loaded_or_not() {
    let cache = wrong_cache("fs/xfs/xfs_stats.c", |t| {
        t.replacen(
            "defer_relog += per_cpu_ptr(stats, i)->s.defer_relog;",
            "defer_relog -= per_cpu_ptr(stats, i)->s.defer_relog;",
            1,
        )
    });
    let store = CliStore::new();
    let diff = workspace_root().join("examples/modules/xfs-stats-marker.diff");
    kstack_tests::run_ok(
        kstack_cli()
            .env("KSTACK_CACHE", cache.path())
            .arg("--store")
            .arg(&store.store)
            .arg("commit")
            .arg(&diff)
            .args(["--stack", "wrong", "--key"])
            .arg(&store.key),
    );

    let config = store.dir.path().join("host.toml");
    std::fs::write(
        &config,
        store.config(Some("wrong"), None, "15s").replace(
            kstack_tests::stack::GUEST_STORE,
            &store.store.display().to_string(),
        ),
    )
    .unwrap();
    let out = kstack_cli()
        .arg("--config")
        .arg(&config)
        .args(["verify", "wrong", "--image"])
        .arg(kernel().vmlinuz())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("xfs_stats_format: does not match"),
        "{stdout}"
    );

    let mut vm = sandbox();
    vm.add_modules(
        &kernel().modules_dir(),
        &kstack_engine::sandbox::modules::ModuleSet::Named(vec!["xfs".into()]),
    )
    .unwrap();
    store.install(
        &mut vm,
        &[("wrong", store.config(Some("wrong"), None, "15s"))],
    );
    let run = vm
        .run(
            "export KSTACK_STATE_DIR=/var/lib/kstack\n\
             echo '== not loaded'; kstack --config /etc/kstack/wrong.toml sync 2>&1; echo \"rc=$?\"\n\
             modprobe xfs\n\
             echo '== loaded'; kstack --config /etc/kstack/wrong.toml sync 2>&1; echo \"rc=$?\"\n\
             echo '== after'; ls /sys/kernel/livepatch | wc -w; grep -c kstack_ /proc/modules\n",
        )
        .unwrap();
    let s = sections(&run.stdout);
    for case in ["not loaded", "loaded"] {
        let sync = &s[case];
        assert!(sync.contains("rc=65"), "{case}: {sync}");
        assert!(
            sync.contains("refused before anything was loaded"),
            "{case}: {sync}"
        );
    }
    // Not loaded, the module's code was read from its .ko, and the report says so.
    assert!(
        s["not loaded"]
            .contains("xfs_stats_format: does not match the code of xfs.ko (not loaded)"),
        "{}",
        s["not loaded"]
    );
    assert!(
        s["loaded"].contains("xfs_stats_format: does not match the running code"),
        "{}",
        s["loaded"]
    );
    assert_eq!(
        s["after"].lines().collect::<Vec<_>>(),
        ["0", "0"],
        "{}",
        s["after"]
    );
}
