//! Pre and post objects of real translation units of the prepared kernel tree.
//!
//! kbuild builds in its source tree, and the shared prepared tree must not change,
//! so the tests work in a private copy under the test target directory: files
//! hard-linked to the shared tree's sources, and real copies of everything
//! `make prepare` generated (kbuild rewrites those in place, which would write
//! through a hard link into the shared tree). A post source is written as a new
//! file, which breaks its link; the shared one is linked back afterwards.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use kstack_engine::assets::Cache;

/// Extra flags of the builder (DESIGN.md, "Builder"): one section per function.
const KCFLAGS: &str = "-ffunction-sections -fdata-sections";

/// The first file `make prepare` builds; anything generated is at most this much
/// older than it, any source file (dated by the tarball) far older.
const FIRST_GENERATED: &str = "scripts/basic/fixdep";
const GENERATED_MARGIN: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub struct Tree {
    shared: PathBuf,
    private: PathBuf,
    release: String,
}

/// One kbuild at a time: the tests share the private tree.
static BUILD: Mutex<()> = Mutex::new(());

/// The private copy of the current kernel's prepared tree, made on first use and
/// kept between runs while the shared tree stays the same.
pub fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let kernel = Cache::from_env().current().unwrap_or_else(|e| {
            panic!("{e}: run `cargo xtask setup` to fetch and prepare the kernel")
        });
        let shared = kernel.source().unwrap_or_else(|| {
            panic!(
                "the source of {} is not prepared: run `cargo xtask setup`",
                kernel.release
            )
        });
        let private = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("kstack-diff-tree")
            .join(&kernel.release);
        make_private_copy(&shared, &private).unwrap_or_else(|e| {
            panic!(
                "cannot copy {} to {}: {e}",
                shared.display(),
                private.display()
            )
        });
        Tree {
            shared,
            private,
            release: kernel.release,
        }
    })
}

/// What identifies a prepared tree: its marker's contents and time.
fn stamp_of(shared: &Path) -> io::Result<String> {
    let marker = shared.join(".kstack-prepared");
    let modified = fs::metadata(&marker)?.modified()?;
    Ok(format!(
        "{} {:?}",
        fs::read_to_string(&marker)?.trim(),
        modified
    ))
}

fn make_private_copy(shared: &Path, private: &Path) -> io::Result<()> {
    let stamp_file = private.with_extension("stamp");
    let stamp = stamp_of(shared)?;
    if private.is_dir() && fs::read_to_string(&stamp_file).ok().as_deref() == Some(&stamp) {
        return Ok(());
    }
    let partial = private.with_extension("partial");
    for dir in [private, &partial] {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
    }
    fs::create_dir_all(private.parent().expect("a path under the target dir"))?;
    let status = Command::new("cp")
        .arg("-al")
        .arg(shared)
        .arg(&partial)
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!("cp -al failed: {status}")));
    }
    let cutoff = fs::metadata(shared.join(FIRST_GENERATED))?.modified()? - GENERATED_MARGIN;
    unlink_generated(&partial, cutoff)?;
    fs::rename(&partial, private)?;
    fs::write(&stamp_file, stamp)
}

/// Replaces every hard link to a file newer than `cutoff` by a copy with the same
/// times, so that kbuild's rewrites stay in the private tree.
fn unlink_generated(dir: &Path, cutoff: SystemTime) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let meta = entry.metadata()?;
        if meta.is_dir() {
            unlink_generated(&path, cutoff)?;
        } else if meta.is_file() && meta.modified()? >= cutoff {
            let copy = path.with_extension("kstack-copy");
            fs::copy(&path, &copy)?;
            let times = fs::FileTimes::new()
                .set_accessed(meta.accessed()?)
                .set_modified(meta.modified()?);
            fs::File::options()
                .write(true)
                .open(&copy)?
                .set_times(times)?;
            fs::rename(&copy, &path)?;
        }
    }
    Ok(())
}

impl Tree {
    /// Builds `unit` (`fs/proc/cmdline.c`) as it is, then as `edit` makes it, and
    /// returns both objects.
    pub fn pre_post(&self, unit: &str, edit: impl Fn(&str) -> String) -> (Vec<u8>, Vec<u8>) {
        let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        let shared = self.shared.join(unit);
        let private = self.private.join(unit);
        let original = fs::read_to_string(&shared).unwrap();
        let edited = edit(&original);
        assert_ne!(edited, original, "the edit of {unit} changed nothing");

        self.restore(unit);
        let pre = self.build(unit);
        fs::remove_file(&private).unwrap();
        fs::write(&private, &edited).unwrap();
        let post = self.build(unit);
        self.restore(unit);

        assert_eq!(
            fs::read_to_string(&shared).unwrap(),
            original,
            "the shared tree's {unit} changed"
        );
        (pre, post)
    }

    /// Links the private source back to the shared one.
    fn restore(&self, unit: &str) {
        let private = self.private.join(unit);
        match fs::remove_file(&private) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => panic!("{}: {e}", private.display()),
        }
        fs::hard_link(self.shared.join(unit), &private).unwrap();
    }

    fn build(&self, unit: &str) -> Vec<u8> {
        let object = Path::new(unit).with_extension("o");
        let path = self.private.join(&object);
        // The restored pre source is older than the post object: make would
        // keep that object.
        let _ = fs::remove_file(&path);
        let out = Command::new("make")
            .arg("-C")
            .arg(&self.private)
            .arg("-s")
            .arg(format!("KERNELRELEASE={}", self.release))
            .arg(format!("KCFLAGS={KCFLAGS}"))
            .arg(&object)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make {} failed:\n{}",
            object.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        fs::read(&path).unwrap()
    }
}
