//! `kstack kernel add --tree DIR --image FILE` refuses a tree it cannot register,
//! naming what is wrong, before it writes anything to the cache: a tree without
//! `CONFIG_LIVEPATCH`, without `Module.symvers` or `System.map`, a release already
//! in the cache, an image that is not the tree's vmlinux. The first four use small
//! made-up trees; the last, the tree set-up built with a Debian image.

use std::path::Path;

use kstack_engine::builder::assets::Cache;
use kstack_tests::{SETUP, kstack_cli};

const RELEASE: &str = "6.1.192-made-up";
const LIVEPATCH_CONFIG: &str = "CONFIG_MODULES=y\nCONFIG_KALLSYMS_ALL=y\nCONFIG_LIVEPATCH=y\n";

/// A made-up tree with the release file, `config` as `.config`, and `files` (empty).
fn made_up_tree(dir: &Path, config: &str, files: &[&str]) {
    let write = |path: &str, text: &str| {
        std::fs::write(dir.join(path), text).expect("writing the made-up tree");
    };
    std::fs::create_dir_all(dir.join("include/config")).expect("a temporary directory");
    write("include/config/kernel.release", &format!("{RELEASE}\n"));
    write(".config", config);
    for file in files {
        write(file, "");
    }
}

/// Runs `kstack kernel add --tree TREE --image IMAGE` on an empty cache; returns
/// the exit code and stderr, and checks the cache got no kernel.
fn add(tree: &Path, image: &Path) -> (Option<i32>, String) {
    let cache = tempfile::tempdir().expect("a temporary directory");
    add_to(cache.path(), tree, image)
}

fn add_to(cache: &Path, tree: &Path, image: &Path) -> (Option<i32>, String) {
    let before = kernels(cache);
    let out = kstack_cli()
        .env("KSTACK_CACHE", cache)
        .args(["kernel", "add", "--tree"])
        .arg(tree)
        .arg("--image")
        .arg(image)
        .output()
        .expect("running the static kstack");
    assert_eq!(kernels(cache), before, "a refused tree changed the cache");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kernels(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache.join("kernels"))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_tree_without_livepatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("linux");
    made_up_tree(
        &tree,
        "CONFIG_MODULES=y\n# CONFIG_LIVEPATCH is not set\n",
        &["vmlinux", "Module.symvers", "System.map"],
    );
    let (code, stderr) = add(&tree, &tree.join("vmlinux"));
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("no CONFIG_LIVEPATCH"), "{stderr}");
    assert!(stderr.contains(RELEASE), "{stderr}");
}

#[test]
fn a_tree_without_module_symvers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("linux");
    made_up_tree(&tree, LIVEPATCH_CONFIG, &["vmlinux", "System.map"]);
    let (code, stderr) = add(&tree, &tree.join("vmlinux"));
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("has no Module.symvers"), "{stderr}");
    assert!(stderr.contains("make modules"), "{stderr}");
}

#[test]
fn a_tree_without_system_map_is_refused_unless_kallsyms_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("linux");
    made_up_tree(&tree, LIVEPATCH_CONFIG, &["vmlinux", "Module.symvers"]);
    let (code, stderr) = add(&tree, &tree.join("vmlinux"));
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("has no System.map"), "{stderr}");
    assert!(stderr.contains("--kallsyms"), "{stderr}");
}

#[test]
fn a_release_already_in_the_cache_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("linux");
    made_up_tree(
        &tree,
        LIVEPATCH_CONFIG,
        &["vmlinux", "Module.symvers", "System.map"],
    );
    let cache = dir.path().join("cache");
    let boot = cache.join("kernels").join(RELEASE).join("root/boot");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::write(boot.join(format!("vmlinuz-{RELEASE}")), "").unwrap();
    let (code, stderr) = add_to(&cache, &tree, &tree.join("vmlinux"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("kernel {RELEASE} is already in the cache")),
        "{stderr}"
    );
    assert!(stderr.contains("CONFIG_LOCALVERSION"), "{stderr}");
}

/// The tree set-up built, with the default Debian kernel's image: another build.
#[test]
fn an_image_of_another_build_is_refused() {
    let cache = Cache::from_env();
    assert!(
        xtask::tree_kernel::is_built(&cache),
        "the test kernel built from a source tree is not in {}\nrun `{SETUP}` first",
        cache.root().display()
    );
    let debian = kstack_tests::kernel().vmlinuz();
    let (code, stderr) = add(&xtask::tree_kernel::tree(&cache), &debian);
    assert_eq!(code, Some(65), "{stderr}");
    assert!(stderr.contains("is not the vmlinux of"), "{stderr}");
    assert!(stderr.contains("arch/x86/boot/bzImage"), "{stderr}");
}
