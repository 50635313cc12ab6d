//! The whole build of one patch: work tree, pre and post objects, the differ, the
//! output object, the module around it, the post-link rewrite.
//!
//! This file holds what callers ask for (a patch or a stack's cumulative module)
//! and what they get; `compile` makes the units' objects before and after the
//! change, and `job` runs the stages of one build in order.

mod compile;
mod job;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kstack_store::digest::Sha256Digest;
use kstack_store::model::{CUMULATIVE_NAME, FunctionRef, MODULE_PREFIX};

use super::assets::Kernel;
use super::diff::{self, DiffReport};
use super::kbuild;
use super::klp;
use super::sign::{ModuleSigner, SignError};
use super::symbols::SymbolsError;
use super::tree::{self, TreeError};
use crate::runpre::BeforeFile;

/// The module template and the hook header, built into kstack so that a build needs
/// nothing from the source checkout.
const TEMPLATE_C: &str = include_str!("../../../../kmod/template/kstack_patch.c");
const HOOKS_H: &str = include_str!("../../../../kmod/include/kstack/hooks.h");

/// The generated header the template includes.
const TABLE_H: &str = "kstack_patch_table.h";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "kernel {release} has no prepared source tree in the cache; run `kstack kernel add {release}`"
    )]
    NoSource { release: String },
    #[error("{0}")]
    Tree(#[from] TreeError),
    #[error("{unit}: {source}")]
    Diff {
        unit: String,
        #[source]
        source: diff::DiffError,
    },
    #[error("the patch cannot be live-applied:\n{}", .0.join("\n"))]
    Refused(Vec<String>),
    #[error(
        "the change compiles to the same code as before in every translation unit it \
         touches ({0}): no function changes (a change the configuration already makes, \
         such as a zero-initialisation under CONFIG_INIT_STACK_ALL_ZERO, or one the \
         compiler optimised away)"
    )]
    NoChange(String),
    #[error(
        "{unit}: {place} refers to {symbol}, which the running kernel does not have: earlier \
         patch {patch} of the stack adds it, in its own module, and a patch can refer only to \
         what the kernel or the patch itself defines"
    )]
    FromEarlierPatch {
        unit: String,
        place: String,
        symbol: String,
        patch: String,
    },
    #[error("{unit}: {source}")]
    Klp {
        unit: String,
        #[source]
        source: Box<klp::KlpError>,
    },
    #[error("{0}")]
    Symbols(#[from] SymbolsError),
    #[error("the before image of {function}: {source}")]
    Before {
        function: String,
        #[source]
        source: crate::runpre::RunPreError,
    },
    #[error("building the module: {0}")]
    Kbuild(#[from] kbuild::KbuildError),
    #[error("post-link rewrite of the module: {0}")]
    PostLink(Box<klp::KlpError>),
    #[error("{0}")]
    Sign(#[from] SignError),
    #[error(
        "the diff changes module {module}, whose .ko is not among kernel {release}'s modules \
         in the cache ({dir})"
    )]
    NoModuleFile {
        module: String,
        release: String,
        dir: PathBuf,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest<'a> {
    pub kernel: &'a Kernel,
    /// The stack's earlier patches' diffs, bottom first: patch k is built on the
    /// source with patches 1..k-1 applied.
    pub earlier: Vec<(String, Vec<u8>)>,
    /// The patch's diff.
    pub diff: Vec<u8>,
    /// The patch's hook file, if any.
    pub hooks: Option<Vec<u8>>,
    /// The patch's name (for messages and the module description).
    pub name: String,
    /// Identifies the stack position (the stack's build ID and the manifests of the
    /// patches below), so the module name differs per position.
    pub position: String,
    /// The static kstack that boots the kernel to read its kallsyms the first time.
    pub guest_binary: PathBuf,
    /// Signs the final module (`[build] module_signing_key`), when set.
    pub signer: Option<ModuleSigner>,
    /// Whether to use what earlier builds for this kernel recorded
    /// ([`super::units`]: pre objects, compile commands); without, every unit is
    /// compiled by kbuild in a full copy of the tree, as on a first build.
    pub reuse: bool,
}

/// The phases, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Tree,
    Pre,
    Post,
    Diff,
    Symbols,
    Extract,
    Module,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Tree,
        Phase::Pre,
        Phase::Post,
        Phase::Diff,
        Phase::Symbols,
        Phase::Extract,
        Phase::Module,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Phase::Tree => "preparing a work tree",
            Phase::Pre => "compiling the touched units before the change",
            Phase::Post => "compiling them after the change",
            Phase::Diff => "comparing the objects",
            Phase::Symbols => "reading the kernel's symbols",
            Phase::Extract => "extracting the new functions",
            Phase::Module => "building the livepatch module",
        }
    }
}

/// A built patch.
#[derive(Debug, Clone)]
pub struct Built {
    pub module_name: String,
    pub module: Vec<u8>,
    pub functions: Vec<FunctionRef>,
    pub reports: BTreeMap<String, DiffReport>,
    pub build_info: BTreeMap<String, String>,
    /// The pre objects of the units, by unit.
    pub pre_objects: BTreeMap<String, Vec<u8>>,
    /// The replaced functions' code as built, for run-pre matching.
    pub before: BeforeFile,
    pub timings: Vec<(Phase, Duration)>,
    /// What the build took from earlier builds for the kernel.
    pub reused: Reused,
    /// What the patch leaves out on purpose and its user should know.
    pub notes: Vec<String>,
}

/// What a build took from the records of earlier builds ([`super::units`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reused {
    /// Units whose pre object was kept from an earlier build.
    pub pre_objects: usize,
    /// Units the build compiled.
    pub units: usize,
    /// Units whose post object was kept from an earlier build (for a cumulative
    /// module: from its newest patch's build).
    pub post_objects: usize,
    /// Whether the units were compiled with their recorded commands in a tree of
    /// links, rather than by kbuild in a full copy of the tree.
    pub recorded_commands: bool,
    /// Whether the module was linked with the commands an earlier kbuild link
    /// recorded ([`super::modlink`]), rather than by kbuild.
    pub recorded_link: bool,
}

impl Reused {
    pub fn describe(&self) -> String {
        format!(
            "{} of {} unit(s) before the change and {} after it kept from earlier builds; {}; {}",
            self.pre_objects,
            self.units,
            self.post_objects,
            if self.recorded_commands {
                "compiled with the commands kbuild ran before, in a tree of links"
            } else {
                "compiled by kbuild in a copy of the tree"
            },
            if self.recorded_link {
                "module linked with the commands kbuild ran before"
            } else {
                "module linked by kbuild"
            }
        )
    }
}

/// Everything about a build that can be known without building, so that a bad diff,
/// a missing source tree or a missing tool is refused in a second rather than after
/// a work tree and a compile: the kernel's prepared source exists, the diff is a
/// unified diff that changes a file the kernel builds, every file it changes is in
/// the source (or created by an `earlier` patch), and the build tools are installed.
pub fn check(
    kernel: &Kernel,
    earlier: &[(String, Vec<u8>)],
    diff: &[u8],
) -> Result<Vec<tree::FileChange>, BuildError> {
    let source = kernel.source().ok_or_else(|| BuildError::NoSource {
        release: kernel.release.clone(),
    })?;
    let earlier: Vec<&[u8]> = earlier.iter().map(|(_, d)| d.as_slice()).collect();
    let changes = tree::check_diff(diff, &source, &kernel.release, &earlier)?;
    tree::check_tools()?;
    // A changed source file this kernel's configuration does not build: nothing in
    // the kernel runs its code.
    for change in &changes {
        if change.kind == tree::ChangeKind::Modified
            && let Some(stem) = change.path.strip_suffix(".c")
        {
            tree::check_built(&source, &kernel.release, &format!("{stem}.o"))?;
        }
    }
    Ok(changes)
}

/// Builds one patch ([`check`]ed first).
pub fn build(
    req: &BuildRequest<'_>,
    work: &Path,
    progress: &mut dyn FnMut(Phase),
) -> Result<Built, BuildError> {
    let module_name = module_name(req);
    let job = Job {
        kernel: req.kernel,
        earlier: &req.earlier,
        changes: vec![(format!("patch {}", req.name), &req.diff)],
        name: req.name.clone(),
        description: format!("kstack patch {} ({module_name})", req.name),
        members: vec![Member {
            name: req.name.clone(),
            id: module_name.clone(),
            hooks: req.hooks.clone(),
        }],
        module_name,
        replace: false,
        guest_binary: &req.guest_binary,
        signer: req.signer.as_ref(),
        reuse: req.reuse,
    };
    job::build_job(&job, work, progress)
}

/// One patch that a module holds: its identity and its hooks.
#[derive(Debug, Clone)]
pub struct Member {
    /// The patch's name (messages).
    pub name: String,
    /// Its identity across modules: the name of the patch's own module
    /// (`kstack_<12 hex>`). A cumulative module compares it with the patches of the
    /// modules it replaces to decide whose hooks run.
    pub id: String,
    /// Its hook file, if any.
    pub hooks: Option<Vec<u8>>,
}

/// One patch of a stack, as its cumulative module is built from it.
#[derive(Debug, Clone)]
pub struct StackPatch {
    pub name: String,
    /// The patch's own module's name: its identity in the cumulative module.
    pub module_name: String,
    pub diff: Vec<u8>,
    pub hooks: Option<Vec<u8>>,
}

/// A stack's cumulative module to build: every patch of the stack in one livepatch
/// module with `replace = true`, built as one change from the kernel's own source to
/// the source with every patch applied (so a function that several patches change
/// is carried once, in its last version, and a patch's helpers come with it).
#[derive(Debug, Clone)]
pub struct CumulativeRequest<'a> {
    pub kernel: &'a Kernel,
    /// The stack's patches, bottom first.
    pub patches: Vec<StackPatch>,
    /// The static kstack that boots the kernel to read its kallsyms the first time.
    pub guest_binary: PathBuf,
    /// Signs the final module (`[build] module_signing_key`), when set.
    pub signer: Option<ModuleSigner>,
    /// Whether to use what earlier builds for this kernel recorded (as
    /// [`BuildRequest::reuse`]).
    pub reuse: bool,
}

/// Why a stack cannot have a cumulative module, found without building: its hook
/// files declare system states that the kernel would refuse in that order (a later
/// patch lowers the version of a state an earlier one set), so the stack itself only
/// applies patch by patch, and fails there.
pub fn cumulative_obstacle(patches: &[StackPatch]) -> Option<String> {
    let mut seen: BTreeMap<u64, (u64, &str)> = BTreeMap::new();
    for patch in patches {
        let states = patch
            .hooks
            .as_deref()
            .map(|h| hook_states(&String::from_utf8_lossy(h)))
            .unwrap_or_default();
        for (id, version) in states {
            if let Some((earlier, by)) = seen.get(&id)
                && version < *earlier
            {
                return Some(format!(
                    "patch {} declares system state {id} at version {version}, lower than \
                     version {earlier} of patch {by} below it (the kernel refuses that order)",
                    patch.name
                ));
            }
            seen.insert(id, (version, &patch.name));
        }
    }
    None
}

/// The system states a cumulative module declares: every state its patches declare,
/// at the highest version.
fn cumulative_states(members: &[Member]) -> Vec<(u64, u64)> {
    let mut states: BTreeMap<u64, u64> = BTreeMap::new();
    for member in members {
        let declared = member
            .hooks
            .as_deref()
            .map(|h| hook_states(&String::from_utf8_lossy(h)))
            .unwrap_or_default();
        for (id, version) in declared {
            let v = states.entry(id).or_default();
            *v = (*v).max(version);
        }
    }
    states.into_iter().collect()
}

/// Builds a stack's cumulative module ([`cumulative_obstacle`] checked first).
pub fn build_cumulative(
    req: &CumulativeRequest<'_>,
    work: &Path,
    progress: &mut dyn FnMut(Phase),
) -> Result<Built, BuildError> {
    let module_name = cumulative_module_name(&req.patches);
    let names: Vec<&str> = req.patches.iter().map(|p| p.name.as_str()).collect();
    let job = Job {
        kernel: req.kernel,
        earlier: &[],
        changes: req
            .patches
            .iter()
            .map(|p| (format!("patch {}", p.name), &p.diff))
            .collect(),
        name: CUMULATIVE_NAME.to_owned(),
        description: format!(
            "kstack cumulative module of {} ({module_name})",
            names.join(", ")
        ),
        members: req
            .patches
            .iter()
            .map(|p| Member {
                name: p.name.clone(),
                id: p.module_name.clone(),
                hooks: p.hooks.clone(),
            })
            .collect(),
        module_name,
        replace: true,
        guest_binary: &req.guest_binary,
        signer: req.signer.as_ref(),
        reuse: req.reuse,
    };
    let mut built = job::build_job(&job, work, progress)?;
    built
        .build_info
        .insert("cumulative_of".into(), names.join(" "));
    Ok(built)
}

/// `kstack_<12 hex>` for a cumulative module: from the identities of the patches it
/// holds, so the same set of patches is the same module.
pub fn cumulative_module_name(patches: &[StackPatch]) -> String {
    let mut bytes = b"cumulative".to_vec();
    for p in patches {
        bytes.push(0);
        bytes.extend_from_slice(p.module_name.as_bytes());
    }
    format!(
        "{MODULE_PREFIX}{}",
        &Sha256Digest::of(&bytes).to_hex()[..12]
    )
}

/// What one build makes: a module holding `members`, from the change `changes` make
/// (in order) to the source with `earlier` applied.
struct Job<'a> {
    kernel: &'a Kernel,
    earlier: &'a [(String, Vec<u8>)],
    /// What each change is (for errors) and its diff.
    changes: Vec<(String, &'a Vec<u8>)>,
    /// `KSTACK_PATCH_NAME`: the patch's name, or [`CUMULATIVE_NAME`].
    name: String,
    description: String,
    members: Vec<Member>,
    module_name: String,
    /// A cumulative module: `replace = true`, hooks around vmlinux's transition.
    replace: bool,
    guest_binary: &'a Path,
    signer: Option<&'a ModuleSigner>,
    reuse: bool,
}

/// `kstack_<12 hex>`: from the patch's position and content, so the same diff on
/// another stack or position is another module, and the name maps back to the store.
pub fn module_name(req: &BuildRequest<'_>) -> String {
    let mut bytes = req.position.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(&req.diff);
    bytes.push(0);
    if let Some(h) = &req.hooks {
        bytes.extend_from_slice(h);
    }
    format!(
        "{MODULE_PREFIX}{}",
        &Sha256Digest::of(&bytes).to_hex()[..12]
    )
}

/// `KSTACK_STATE(id, version)` lines of a hook file.
pub fn hook_states(hooks: &str) -> Vec<(u64, u64)> {
    hooks
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("KSTACK_STATE(")?;
            let (args, _) = rest.split_once(')')?;
            let (id, version) = args.split_once(',')?;
            Some((id.trim().parse().ok()?, version.trim().parse().ok()?))
        })
        .collect()
}

fn compiler_version() -> String {
    Command::new("gcc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::compile::kernel_identity;
    use super::job::{from_earlier_patch, patch_data};
    use super::*;
    use crate::builder::ResolveError;
    use crate::builder::diff::Status;
    use crate::builder::units::PreKey;

    #[test]
    fn a_tree_prepared_with_another_configuration_keys_other_objects() {
        let shipped = b"CONFIG_DEBUG_INFO_BTF_MODULES=y\nCONFIG_PAHOLE_VERSION=124\n";
        let dropped = b"CONFIG_PAHOLE_VERSION=0\n";
        let id = |config: &[u8]| kernel_identity("6.1.0-56-cloud-amd64", "6.1.192-2", config);
        assert_eq!(id(shipped), id(shipped));
        assert_ne!(id(shipped), id(dropped));
        let key = |kernel: &str| PreKey::new(kernel, "gcc 12", &[], "kernel/bpf/btf.o", b"src");
        assert_ne!(
            format!("{:?}", key(&id(shipped))),
            format!("{:?}", key(&id(dropped)))
        );
    }

    #[test]
    fn new_data_once_flags_and_empty_lockdep_keys_get_the_patchs_own_copies() {
        let data = |name: &str, status: Status, local: bool, size: u64| diff::DataReport {
            key: format!("data:{name}"),
            status,
            name: name.into(),
            reasons: Vec::new(),
            pre: None,
            post: Some(diff::SymbolInfo {
                name: name.into(),
                section: ".bss".into(),
                local,
                weak: false,
                size,
            }),
            allowed: false,
            indistinct: false,
        };
        let report = DiffReport {
            functions: Vec::new(),
            data: vec![
                data("kstack_counter", Status::New, true, 4),
                data("__already_done.12", Status::Unchanged, true, 1),
                // Without CONFIG_LOCKDEP, `struct lock_class_key` is empty.
                data("__key.418", Status::Unchanged, true, 0),
                // With it, the key is the running kernel's lock class: shared.
                data("__key.419", Status::Unchanged, true, 16),
                data("nr_threads", Status::Unchanged, false, 4),
            ],
            refusals: Vec::new(),
        };
        assert_eq!(
            patch_data(&report),
            ["kstack_counter", "__already_done.12", "__key.418"]
        );
    }

    fn unresolved(symbol: &str) -> klp::KlpError {
        klp::KlpError::Resolve {
            tu: "fs/proc/meminfo.o".into(),
            place: "meminfo_proc_show+0x9d7".into(),
            symbol: symbol.into(),
            source: Box::new(ResolveError::Missing {
                name: symbol.into(),
            }),
        }
    }

    #[test]
    fn a_symbol_an_earlier_patch_adds_is_named_with_that_patch() {
        let earlier = vec![
            (
                "data-new".to_owned(),
                b"--- a/fs/proc/meminfo.c\n+++ b/fs/proc/meminfo.c\n@@ -1,1 +1,2 @@\n \
                  x\n+static struct { int mark; } kstack_data_new = { 1 };\n"
                    .to_vec(),
            ),
            (
                "other".to_owned(),
                b"--- a/a.c\n+++ b/a.c\n@@ -1,1 +1,2 @@\n kstack_data_new\n+int kstack_data_newer;\n"
                    .to_vec(),
            ),
        ];
        let error = from_earlier_patch(&unresolved("kstack_data_new"), &earlier);
        assert!(
            matches!(&error, Some(BuildError::FromEarlierPatch { patch, .. }) if patch == "data-new"),
            "{error:?}"
        );
        // A static local of an earlier patch, numbered by the compiler.
        let error = from_earlier_patch(&unresolved("kstack_data_new.3"), &earlier);
        assert!(matches!(error, Some(BuildError::FromEarlierPatch { .. })));
        // Not added by any: context lines and longer names do not count.
        assert!(from_earlier_patch(&unresolved("kstack_data"), &earlier).is_none());
        assert!(from_earlier_patch(&unresolved("x"), &earlier).is_none());
        assert!(from_earlier_patch(&unresolved("kstack_data_new"), &[]).is_none());
    }

    #[test]
    fn hook_states_are_read_from_the_hook_file() {
        let text = "#include <kstack/hooks.h>\nKSTACK_STATE(7, 2);\n  KSTACK_STATE( 9 ,1 );\nKSTACK_STATE(x, 1);\n";
        assert_eq!(hook_states(text), [(7, 2), (9, 1)]);
    }
}
