//! What the run-pre tests share: the set-up kernel, its kallsyms, its image, and
//! pre objects compiled from its prepared source tree.
//!
//! The prepared tree in the cache is never written to: objects are compiled in a
//! hard-linked copy under `target/runpre/`, in which every file that the build may
//! rewrite (whatever `make prepare` generated) is first replaced by a private copy.

// Test support: a failed unwrap here is a failed test, with its message.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kstack_engine::builder::assets::{Cache, Kernel};
use kstack_engine::builder::symbols::KernelSymbols;
use kstack_engine::runpre::{ImageText, KallsymsIndex};
use kstack_engine::sandbox;

pub const SETUP: &str = "cargo xtask setup";

/// `-ffunction-sections`: one section per function, as the builder compiles.
pub const KCFLAGS: &str = "-ffunction-sections -fdata-sections";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("engine/ lives in the workspace")
        .to_owned()
}

pub fn kernel() -> Kernel {
    Cache::from_env()
        .current()
        .unwrap_or_else(|e| panic!("no test kernel: {e}\nrun `{SETUP}` first"))
}

/// The kernel's `/proc/kallsyms` as booted with `nokaslr` (captured once by booting
/// it in the sandbox, then cached beside the kernel).
pub fn kallsyms_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let kernel = kernel();
        let cache = Cache::from_env()
            .root()
            .join("kernels")
            .join(&kernel.release)
            .join("kallsyms");
        let guest = guest_binary();
        KernelSymbols::kallsyms_for(&kernel.vmlinuz(), &cache, &guest)
            .unwrap_or_else(|e| panic!("capturing kallsyms: {e}"))
    })
}

/// The static `kstack` for the guest, also when this test was built in another
/// target directory than the workspace's.
pub fn guest_binary() -> PathBuf {
    sandbox::find_guest_binary()
        .ok()
        .or_else(|| {
            let p = workspace_root()
                .join("target")
                .join(sandbox::STATIC_TARGET)
                .join("release/kstack");
            p.is_file().then_some(p)
        })
        .unwrap_or_else(|| panic!("no static kstack for the guest\nrun `{SETUP}` first"))
}

pub fn kallsyms() -> &'static KallsymsIndex {
    static INDEX: OnceLock<KallsymsIndex> = OnceLock::new();
    INDEX.get_or_init(|| KallsymsIndex::parse(kallsyms_text()).unwrap())
}

/// The vmlinux of the set-up kernel's image.
pub fn image() -> &'static ImageText {
    static IMAGE: OnceLock<ImageText> = OnceLock::new();
    IMAGE.get_or_init(|| ImageText::open(&kernel().vmlinuz()).unwrap())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The functions the example patches replace, and their translation units.
pub const NAMED: [(&str, &str); 4] = [
    ("fs/proc/cmdline.o", "cmdline_proc_show"),
    ("fs/proc/version.o", "version_proc_show"),
    ("kernel/sys.o", "__do_sys_newuname"),
    ("fs/proc/meminfo.o", "meminfo_proc_show"),
];
/// Big translation units whose every function is matched.
pub const BIG: [&str; 3] = ["kernel/sys.o", "fs/namei.o", "mm/mmap.o"];

/// A private, hard-linked copy of the prepared source tree.
#[derive(Debug)]
pub struct Tree {
    pub root: PathBuf,
    pub release: String,
}

/// The tree, made on first use (under a lock: test binaries run in parallel).
pub fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let kernel = kernel();
        let dir = workspace_root().join("target/runpre").join(&kernel.release);
        std::fs::create_dir_all(&dir).unwrap();
        let _lock = lock(&dir.join("lock"));
        let root = dir.join("linux");
        let done = dir.join("linked");
        // A copy made earlier stands on its own (the links keep the files alive
        // even while set-up prepares the cache's tree anew).
        if !done.is_file() {
            let source = kernel.source().unwrap_or_else(|| {
                panic!(
                    "the kernel source of {} is not prepared\nrun `{SETUP}` first",
                    kernel.release
                )
            });
            let _ = std::fs::remove_dir_all(&root);
            // The builder's own private copy (hard links to the sources, copies of
            // what preparing generated), kept here between runs.
            let work = kstack_engine::builder::tree::WorkTree::new(&source, &dir, &kernel.release)
                .unwrap_or_else(|e| panic!("copying {}: {e}", source.display()));
            std::fs::rename(work.into_path(), &root).unwrap();
            std::fs::write(&done, "").unwrap();
        }
        Tree {
            root,
            release: kernel.release,
        }
    })
}

fn lock(path: &Path) -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::File::create(path).unwrap();
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap()
}

impl Tree {
    /// Compiles the given objects (paths in the tree, `kernel/sys.o`) the way the
    /// builder does, and returns their paths.
    pub fn objects(&self, targets: &[&str]) -> Vec<PathBuf> {
        let _lock = lock(&self.root.with_file_name("lock"));
        run(Command::new("make")
            .arg("-C")
            .arg(&self.root)
            .args(["-s", "-j2"])
            .arg(format!("KERNELRELEASE={}", self.release))
            .arg(format!("KCFLAGS={KCFLAGS}"))
            .args(targets));
        targets.iter().map(|t| self.root.join(t)).collect()
    }

    /// Compiles a variant of translation unit `unit` (`fs/proc/cmdline.o`) with the
    /// very command kbuild used for it, the source text changed by `edit` and
    /// `extra_header` (if any) included after the kernel's configuration. The tree
    /// is left as it was.
    pub fn variant(
        &self,
        unit: &str,
        name: &str,
        edit: impl Fn(&str) -> String,
        extra_header: Option<&str>,
    ) -> PathBuf {
        self.objects(&[unit]);
        let unit_path = Path::new(unit);
        let dir = unit_path.parent().unwrap();
        let stem = unit_path.file_stem().unwrap().to_str().unwrap();
        let cmd_file = self.root.join(dir).join(format!(".{stem}.o.cmd"));
        let saved = std::fs::read_to_string(&cmd_file).unwrap();
        let cmd = saved
            .lines()
            .find_map(|l| l.split_once(" := ").filter(|(k, _)| k.starts_with("cmd_")))
            .map(|(_, v)| v.to_owned())
            .unwrap_or_else(|| panic!("no command in {}", cmd_file.display()));
        let out_dir = self.root.with_file_name("variants").join(name);
        std::fs::create_dir_all(&out_dir).unwrap();
        let source = self.root.join(dir).join(format!("{stem}.c"));
        let text = std::fs::read_to_string(&source).unwrap();
        let edited = edit(&text);
        assert_ne!(edited, text, "the edit of {unit} changed nothing");
        let new_source = out_dir.join(format!("{stem}.c"));
        std::fs::write(&new_source, edited).unwrap();
        let object = out_dir.join(format!("{stem}.o"));
        let mut cmd = cmd
            .replace(&format!("-Wp,-MMD,{}/.{stem}.o.d", dir.display()), "")
            .replace(
                &format!("-c -o {unit} {}/{stem}.c", dir.display()),
                &format!(
                    "-iquote {} -c -o {} {}",
                    dir.display(),
                    object.display(),
                    new_source.display()
                ),
            )
            .replace(&format!(" {unit}"), &format!(" {}", object.display()));
        if let Some(header) = extra_header {
            let path = out_dir.join("extra.h");
            std::fs::write(&path, header).unwrap();
            cmd = cmd.replace(
                "-include ./include/linux/kconfig.h",
                &format!(
                    "-include ./include/linux/kconfig.h -include {}",
                    path.display()
                ),
            );
        }
        run(Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .current_dir(&self.root));
        object
    }
}
