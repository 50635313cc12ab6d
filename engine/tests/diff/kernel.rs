//! Pre and post objects of real translation units of the prepared kernel tree.
//!
//! kbuild builds in its source tree, and the shared prepared tree must not change,
//! so the tests work in a private copy: the builder's own work tree
//! (`kstack_engine::builder::tree::WorkTree`: hard links to the sources, real copies of
//! what preparing generated). A post source is written as a new file, which breaks
//! its link; the shared one is linked back afterwards.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use kstack_engine::builder::assets::Cache;
use kstack_engine::builder::tree::WorkTree;

#[derive(Debug)]
pub struct Tree {
    shared: PathBuf,
    work: WorkTree,
    private: PathBuf,
}

/// One kbuild at a time: the tests share the private tree.
static BUILD: Mutex<()> = Mutex::new(());

/// The private copy of the current kernel's prepared tree, made on first use.
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
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kstack-diff-trees");
        let work = WorkTree::new(&shared, &parent, &kernel.release)
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", shared.display()));
        Tree {
            private: work.path().to_owned(),
            shared,
            work,
        }
    })
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
        let object = object.to_string_lossy().into_owned();
        let out = self.private.join(".kstack-test");
        let built = self
            .work
            .compile(std::slice::from_ref(&object), &out)
            .unwrap_or_else(|e| panic!("make {object} failed:\n{e}"));
        fs::read(&built[0]).unwrap()
    }
}
