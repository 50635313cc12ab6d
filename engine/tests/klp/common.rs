//! What the livepatch-object tests share: the set-up kernel, a private work tree of
//! its prepared source, objects compiled in it the way the builder compiles a
//! translation unit, and a symbol resolver from the kernel's `Module.symvers`.

// Test support: a failed unwrap here is a failed test, with its message.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::Path;

use kstack_engine::builder::assets::{Cache, Kernel};
use kstack_engine::builder::tree::WorkTree;
use kstack_engine::builder::{Resolution, ResolveError, SymbolResolver};

pub const SETUP: &str = "cargo xtask setup";

pub fn kernel() -> Kernel {
    Cache::from_env()
        .current()
        .unwrap_or_else(|e| panic!("no test kernel: {e}\nrun `{SETUP}` first"))
}

/// A private work tree of the kernel's prepared source: the builder's own
/// (hard links to the sources, copies of what preparing generated), so edits and
/// builds never reach the shared tree.
pub fn kernel_tree(kernel: &Kernel) -> WorkTree {
    let shared = kernel
        .source()
        .unwrap_or_else(|| panic!("no prepared source tree\nrun `{SETUP}` first"));
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("klp-trees");
    WorkTree::new(&shared, &base, &kernel.release)
        .unwrap_or_else(|e| panic!("copying {}: {e}", shared.display()))
}

/// Compiles one object of the kernel the way the builder compiles a translation unit.
pub fn make_object(tree: &WorkTree, object: &str) -> Vec<u8> {
    let out = tree.path().join(".kstack-test");
    let built = tree
        .compile(&[object.to_owned()], &out)
        .unwrap_or_else(|e| panic!("make {object}:\n{e}"));
    std::fs::read(&built[0]).unwrap()
}

/// The test's resolver: what `Module.symvers` lists is exported, the few statics
/// this test uses are unique in kallsyms (sympos 0). The real resolver reads the
/// target's kallsyms.
pub struct TestResolver {
    exported: HashSet<String>,
    livepatch: HashMap<String, u64>,
    /// Anything else resolves as a unique livepatch symbol (for the sweep, which
    /// looks at extraction, not at loading).
    permissive: bool,
}

impl TestResolver {
    pub fn new(kernel: &Kernel, livepatch: &[&str], permissive: bool) -> Self {
        let symvers = std::fs::read_to_string(kernel.headers().join("Module.symvers"))
            .unwrap_or_else(|e| panic!("Module.symvers: {e}\nrun `{SETUP}` first"));
        TestResolver {
            exported: symvers
                .lines()
                .filter_map(|l| l.split('\t').nth(1))
                .map(str::to_owned)
                .collect(),
            livepatch: livepatch.iter().map(|n| (n.to_string(), 0)).collect(),
            permissive,
        }
    }
}

impl SymbolResolver for TestResolver {
    fn resolve(
        &self,
        object: &str,
        name: &str,
        _tu: &str,
        local: bool,
    ) -> Result<Resolution, ResolveError> {
        if !local && self.exported.contains(name) {
            return Ok(Resolution::Exported);
        }
        let object = object.to_owned();
        if let Some(&sympos) = self.livepatch.get(name) {
            return Ok(Resolution::Livepatch { object, sympos });
        }
        if self.permissive {
            return Ok(Resolution::Livepatch { object, sympos: 0 });
        }
        Err(ResolveError::Missing {
            name: name.to_owned(),
        })
    }
}
