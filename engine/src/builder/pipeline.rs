//! The whole build of one patch: work tree, pre and post objects, the differ, the
//! output object, the module around it, the post-link rewrite.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kstack_kfacts::symbols::{LOCKDEP_KEY_STATIC, ONCE_STATICS};
use kstack_store::digest::Sha256Digest;
use kstack_store::model::{CUMULATIVE_NAME, FunctionRef, MODULE_PREFIX, VMLINUX as VMLINUX_OBJECT};

use super::ResolveError;
use super::assets::Kernel;
use super::diff::{self, DiffOptions, DiffReport, Status};
use super::kbuild;
use super::klp;
use super::modlink::LinkRecords;
use super::sign::{ModuleSigner, SignError};
use super::symbols::{KernelSymbols, SymbolsError};
use super::tree::{self, EXTRA_CFLAGS, TreeError, WorkTree};
use super::units::{PreKey, UnitCommand, UnitRecords};
use crate::runpre::BeforeFile;

/// The module template and the hook header, built into kstack so that a build needs
/// nothing from the source checkout.
const TEMPLATE_C: &str = include_str!("../../../kmod/template/kstack_patch.c");
const HOOKS_H: &str = include_str!("../../../kmod/include/kstack/hooks.h");

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
    build_job(&job, work, progress)
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
    let mut built = build_job(&job, work, progress)?;
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

fn build_job(
    req: &Job<'_>,
    work: &Path,
    progress: &mut dyn FnMut(Phase),
) -> Result<Built, BuildError> {
    let mut timings = Vec::new();
    let mut phase_start = Instant::now();
    let mut enter = |phase: Phase, timings: &mut Vec<(Phase, Duration)>| {
        if let Some((last, _)) = timings.last().copied() {
            let _ = last;
        }
        progress(phase);
        let now = Instant::now();
        if let Some(prev) = timings.last_mut() {
            let (_, d): &mut (Phase, Duration) = prev;
            *d = now - phase_start;
        }
        phase_start = now;
        timings.push((phase, Duration::ZERO));
    };

    let release = &req.kernel.release;
    // Each change is checked on what the ones before it leave.
    let mut below: Vec<(String, Vec<u8>)> = req.earlier.to_vec();
    let mut changes = Vec::new();
    for (what, diff) in &req.changes {
        changes.extend(check(req.kernel, &below, diff)?);
        below.push((what.clone(), (*diff).clone()));
    }
    let source = req.kernel.source().ok_or_else(|| BuildError::NoSource {
        release: release.clone(),
    })?;
    let records = UnitRecords::new(req.kernel.dir());
    let Compiled {
        tree,
        units,
        recorded,
        pre_objects,
        post_objects: mut post_bytes,
        mut reused,
        fallback: compile_fallback,
    } = compile_units(req, work, &source, &changes, &records, &mut |phase| {
        enter(phase, &mut timings)
    })?;
    // Which object each unit is part of, as kbuild compiled it: vmlinux or a module.
    let mut objects: BTreeMap<String, String> = BTreeMap::new();
    for unit in &units {
        let object = match &recorded {
            Some(commands) => commands
                .iter()
                .find(|c| &c.unit == unit)
                .map_or_else(|| VMLINUX_OBJECT.to_owned(), UnitCommand::object),
            None => {
                // Kept for the next build of this unit (see above).
                let _ = records.record_command(tree.path(), &source, unit);
                tree.unit_object(unit)?
            }
        };
        objects.insert(unit.clone(), object);
    }

    enter(Phase::Diff, &mut timings);
    let mut reports = BTreeMap::new();
    let mut post_objects = BTreeMap::new();
    let mut refusals = Vec::new();
    for unit in &units {
        let pre = &pre_objects[unit];
        let post = post_bytes.remove(unit).ok_or_else(|| BuildError::Io {
            path: unit.into(),
            source: std::io::Error::other("no object after the change"),
        })?;
        let options = DiffOptions {
            // vmlinux's __init code ran at boot and is gone; a module's runs at load.
            init_code_ran: objects[unit] == VMLINUX_OBJECT,
            ..DiffOptions::default()
        };
        let report =
            diff::diff_objects(pre, &post, &options).map_err(|source| BuildError::Diff {
                unit: unit.clone(),
                source,
            })?;
        refusals.extend(report.refusals.iter().map(|r| format!("  {unit}: {r}")));
        reports.insert(unit.clone(), report);
        post_objects.insert(unit.clone(), post);
    }
    if !refusals.is_empty() {
        return Err(BuildError::Refused(refusals));
    }
    if reports
        .values()
        .all(|r| r.patched_functions().next().is_none())
    {
        return Err(BuildError::NoChange(units.join(", ")));
    }

    // The code each replaced function has in the pre object: kept with the patch so
    // that it can be proven, before loading, to be the code the kernel runs.
    let mut before = BeforeFile::default();
    for (unit, report) in &reports {
        for f in report.patched_functions().filter(|f| f.is_redirected()) {
            if let Some(pre) = &f.pre {
                let mut image =
                    crate::runpre::before_image_named(&pre_objects[unit], &pre.name, unit)
                        .map_err(|source| BuildError::Before {
                            function: pre.name.clone(),
                            source,
                        })?;
                image.object = objects[unit].clone();
                before.functions.push(image);
            }
        }
    }

    enter(Phase::Symbols, &mut timings);
    let kallsyms_file = req.kernel.dir().join("kallsyms");
    let kallsyms =
        KernelSymbols::kallsyms_for(&req.kernel.vmlinuz(), &kallsyms_file, req.guest_binary)?;
    let symvers_path = req.kernel.headers().join("Module.symvers");
    let symvers = std::fs::read_to_string(&symvers_path).map_err(io(&symvers_path))?;
    let mut symbols = KernelSymbols::parse(&kallsyms, &symvers)?;
    for (unit, pre) in &pre_objects {
        symbols.add_translation_unit(unit, defined_names(pre));
    }
    // vmlinux's full symbol table, when set-up fetched it, resolves same-named
    // statics exactly.
    let symtab = req.kernel.symtab();
    if let Ok(text) = std::fs::read_to_string(&symtab) {
        let locals = kstack_kfacts::symtab::LocalsByFile::parse(&text)
            .map_err(|e| io(&symtab)(std::io::Error::other(e.to_string())))?;
        symbols.set_locals(locals);
    }
    // The symbol tables of the modules the patch changes, from the image's `.ko`s:
    // what their code's references resolve against, and what `sympos` counts in.
    let modules: std::collections::BTreeSet<&String> =
        objects.values().filter(|o| *o != VMLINUX_OBJECT).collect();
    if !modules.is_empty() {
        symbols.set_modules_dir(req.kernel.modules_dir());
    }
    for module in modules {
        let path = req
            .kernel
            .module_file(module)
            .ok_or_else(|| BuildError::NoModuleFile {
                module: module.clone(),
                release: release.clone(),
                dir: req.kernel.modules_dir(),
            })?;
        let ko = std::fs::read(&path).map_err(io(&path))?;
        symbols.add_module(module, &ko)?;
    }

    enter(Phase::Extract, &mut timings);
    let module_name = req.module_name.clone();
    // Everything of this build lives in the work tree's directory, so builds that
    // run at the same time (two `kstack commit`s) never share a file.
    let module_dir = tree.path().join(".kstack/module");
    std::fs::create_dir_all(&module_dir).map_err(io(&module_dir))?;
    // Globals that one file of the patch defines anew and another may use: they are
    // linked within the patch module.
    let provided: Vec<String> = reports
        .values()
        .flat_map(|r| {
            let functions = r
                .functions
                .iter()
                .filter(|f| f.status == Status::New)
                .filter_map(|f| f.post.as_ref());
            let data = r
                .data
                .iter()
                .filter(|d| d.status == Status::New)
                .filter_map(|d| d.post.as_ref());
            functions
                .chain(data)
                .filter(|p| !p.local)
                .map(|p| p.name.clone())
        })
        .collect();
    let mut sources = Vec::new();
    // Per object (vmlinux first, then modules by name): its klp_func lines.
    let mut table: BTreeMap<(bool, String), Vec<String>> = BTreeMap::new();
    let mut functions = Vec::new();
    let mut notes = Vec::new();
    // A tree prepared before preparing checked its configuration (without pahole,
    // say) builds other code under the options it lost: said, not refused, since
    // run-pre matching refuses a patch whose replaced code is not the shipped code.
    if let Ok(differences) = req.kernel.config_differences()
        && !differences.is_empty()
    {
        notes.push(format!(
            "the prepared source of {release} is not configured as the shipped kernel ({}): \
             code under those options is not the shipped code; remove {} and run `kstack \
             kernel add {release}` again",
            differences
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            source.display()
        ));
    }
    if let Some(failed) = &compile_fallback {
        notes.push(format!(
            "the units were compiled by kbuild: a recorded compile failed ({failed})"
        ));
    }
    // Which patched module each section of module code belongs to (post-link).
    let mut applied_with: BTreeMap<String, String> = BTreeMap::new();
    for (index, (unit, report)) in reports.iter().enumerate() {
        let specs: Vec<klp::FunctionSpec> = report
            .patched_functions()
            .map(|f| {
                let post_name = f.post.as_ref().map_or(f.name.clone(), |p| p.name.clone());
                klp::FunctionSpec {
                    old_name: f
                        .pre
                        .as_ref()
                        .map_or_else(|| post_name.clone(), |p| p.name.clone()),
                    post_name,
                    // Functions reached through their callers are carried, not
                    // redirected: to the module they are new code.
                    new: !f.is_redirected(),
                }
            })
            .collect();
        if specs.is_empty() {
            continue;
        }
        let objname = &objects[unit];
        let new_data = patch_data(report);
        let (kernel_names, indistinct) = kernel_names(report);
        let objtool_at_link = req.kernel.objtool_at_link();
        let request = klp::ExtractRequest {
            object: &post_objects[unit],
            tu: unit,
            objname,
            functions: &specs,
            new_data: &new_data,
            provided: &provided,
            kernel_names: &kernel_names,
            indistinct: &indistinct,
            objtool_at_link,
        };
        let extracted = klp::extract(&request, &symbols).map_err(|source| {
            from_earlier_patch(&source, req.earlier).unwrap_or_else(|| BuildError::Klp {
                unit: unit.clone(),
                source: Box::new(source),
            })
        })?;
        notes.extend(extracted.notes.iter().cloned());
        if objname != VMLINUX_OBJECT {
            applied_with.extend(
                section_names(&extracted.object)
                    .into_iter()
                    .map(|name| (name, objname.clone())),
            );
        }
        let object = module_dir.join(format!("kstack_unit{index}.o_shipped"));
        std::fs::write(&object, &extracted.object).map_err(io(&object))?;
        sources.push(object);
        for f in extracted.functions.iter().filter(|f| !f.new) {
            // Only functions the running kernel has are redirected; new ones are
            // reached from the redirected ones.
            let sympos = f.old_sympos.unwrap_or(0);
            table
                .entry((objname != VMLINUX_OBJECT, objname.clone()))
                .or_default()
                .push(format!(
                    "\tKSTACK_FUNC(\"{}\", {}, {sympos})",
                    f.old_name, f.symbol
                ));
            functions.push(FunctionRef {
                object: objname.clone(),
                name: f.old_name.clone(),
                sympos,
            });
        }
    }

    enter(Phase::Module, &mut timings);
    // A cumulative module's hooks run around vmlinux's transition, which the kernel
    // runs whatever else the module patches: it has a vmlinux object, empty if need be.
    if req.replace {
        table.entry((false, VMLINUX_OBJECT.to_owned())).or_default();
    }
    let template = module_dir.join(format!("{module_name}_main.c"));
    std::fs::write(&template, TEMPLATE_C).map_err(io(&template))?;
    let table_path = module_dir.join(TABLE_H);
    std::fs::write(&table_path, table_header(req, &table)).map_err(io(&table_path))?;
    let include = module_dir.join("include/kstack");
    std::fs::create_dir_all(&include).map_err(io(&include))?;
    std::fs::write(include.join("hooks.h"), HOOKS_H).map_err(io(&include))?;
    let mut c_sources = vec![template, table_path];
    for (index, member) in req.members.iter().enumerate() {
        let Some(hooks) = &member.hooks else {
            continue;
        };
        // The hook file itself is not a source of its own (kbuild compiles `.c`
        // files only): a wrapper numbers it and includes it.
        let inner = format!("{module_name}_member{index}_hooks.inc");
        let path = module_dir.join(&inner);
        std::fs::write(&path, hooks).map_err(io(&path))?;
        c_sources.push(path);
        let wrapper = module_dir.join(format!("{module_name}_member{index}.c"));
        std::fs::write(
            &wrapper,
            format!(
                "/* Generated by kstack: the hook file of patch {}, member {index} of this module. */\n\
                 #define KSTACK_MEMBER_INDEX {index}\n#include \"{inner}\"\n",
                c_escape(&member.name)
            ),
        )
        .map_err(io(&wrapper))?;
        c_sources.push(wrapper);
    }
    c_sources.extend(sources);
    let spec = kbuild::ModuleSpec {
        name: module_name.clone(),
        sources: c_sources,
        ccflags: vec![format!("-I{}", module_dir.join("include").display())],
    };
    let built_dir = tree.path().join(".kstack/kbuild");
    let link_records = LinkRecords::new(req.kernel.dir());
    let (ko, linked) = kbuild::link_module(
        &req.kernel.headers(),
        &spec,
        &built_dir,
        &kbuild::Options {
            // The new functions' unexported references stay undefined until the
            // post-link step turns them into livepatch relocations.
            modpost_warn: true,
        },
        tree.path(),
        &link_records,
        // With --no-cache kbuild links, and records its commands for the next build.
        req.reuse,
    )?;
    reused.recorded_link = linked == kbuild::Linked::Recorded;
    if let kbuild::Linked::KbuildAfter(failed) = linked {
        notes.push(format!(
            "the module was linked by kbuild: a recorded link command failed ({failed})"
        ));
    }
    let linked = std::fs::read(&ko).map_err(io(&ko))?;
    let module = klp::post_link_applied(&linked, &applied_with)
        .map_err(|e| BuildError::PostLink(Box::new(e)))?
        .ko;
    // Signed last: the signature covers the bytes the kernel loads.
    let module = match req.signer {
        Some(signer) => signer.sign(&module, &req.kernel.headers(), &module_dir.join("sign"))?,
        None => module,
    };
    if let Some(last) = timings.last_mut() {
        last.1 = phase_start.elapsed();
    }

    let mut build_info = BTreeMap::new();
    build_info.insert("compiler".into(), compiler_version());
    build_info.insert("kcflags".into(), EXTRA_CFLAGS.into());
    build_info.insert("kernel_release".into(), release.clone());
    if let Some(tree) = req.kernel.tree() {
        build_info.insert("source".into(), format!("tree {}", tree.display()));
    } else if let Some(v) = req.kernel.version() {
        build_info.insert(
            "source".into(),
            format!("{}={v}", req.kernel.source_package()),
        );
    }
    build_info.insert("units".into(), units.join(" "));
    build_info.insert("kstack".into(), env!("CARGO_PKG_VERSION").into());
    if let Some(signer) = req.signer {
        build_info.insert("module_signer".into(), signer.describe());
    }
    Ok(Built {
        module_name,
        module,
        functions,
        reports,
        build_info,
        pre_objects,
        before,
        timings,
        reused,
        notes,
    })
}

/// The work tree of a build and the objects of the units it changes, before and
/// after the change.
struct Compiled {
    tree: WorkTree,
    units: Vec<String>,
    /// The recorded compiles used; `None` when kbuild compiled.
    recorded: Option<Vec<UnitCommand>>,
    pre_objects: BTreeMap<String, Vec<u8>>,
    post_objects: BTreeMap<String, Vec<u8>>,
    reused: Reused,
    /// Why kbuild compiled although records existed: a recorded compile failed.
    fallback: Option<String>,
}

/// Compiles the units `changes` touch before and after `req`'s changes. A diff of
/// existing .c files whose units were compiled for this kernel before is compiled with
/// the recorded commands, in a tree of links; anything else (a header, a new file, a
/// unit never compiled) goes through kbuild, in a full copy. A recorded compile that
/// fails (a record this kstack cannot replay on this machine, or a patch that does
/// not compile) is not the end: kbuild compiles the units again in a full copy, and
/// the result says why; kbuild's error, if any, is the one reported.
fn compile_units(
    req: &Job<'_>,
    work: &Path,
    source: &Path,
    changes: &[tree::FileChange],
    records: &UnitRecords,
    enter: &mut dyn FnMut(Phase),
) -> Result<Compiled, BuildError> {
    let recorded = if req.reuse {
        recorded_units(changes, records)
    } else {
        None
    };
    let mut fallback = None;
    if let Some(commands) = recorded {
        match compile_attempt(req, work, source, changes, records, Some(commands), enter) {
            Err(BuildError::Tree(TreeError::Compile { units, output })) => {
                fallback = Some(first_error_line(&units, &output));
            }
            done => return done,
        }
    }
    let compiled = compile_attempt(req, work, source, changes, records, None, enter)?;
    Ok(Compiled {
        fallback,
        ..compiled
    })
}

/// One way of compiling for [`compile_units`]: with the `recorded` commands, or with
/// kbuild when `None`.
fn compile_attempt(
    req: &Job<'_>,
    work: &Path,
    source: &Path,
    changes: &[tree::FileChange],
    records: &UnitRecords,
    recorded: Option<Vec<UnitCommand>>,
    enter: &mut dyn FnMut(Phase),
) -> Result<Compiled, BuildError> {
    let release = &req.kernel.release;
    enter(Phase::Tree);
    let tree = match &recorded {
        Some(_) => {
            let mut paths: Vec<String> = changes.iter().map(|c| c.path.clone()).collect();
            for (_, diff) in req.earlier {
                paths.extend(tree::parse_diff(diff)?.into_iter().map(|c| c.path));
            }
            WorkTree::sparse(source, &work.join("trees"), release, &paths)?
        }
        None => WorkTree::new(source, &work.join("trees"), release)?,
    };
    for (name, diff) in req.earlier {
        tree.apply(diff, &format!("earlier patch {name}"))?;
    }
    let units = match &recorded {
        Some(commands) => commands.iter().map(|c| c.unit.clone()).collect(),
        None => {
            let mut units = Vec::new();
            for (_, diff) in &req.changes {
                units.extend(tree.units_for(diff, source, &req.kernel.dir().join("deps"))?);
            }
            units.sort();
            units.dedup();
            units
        }
    };
    for unit in &units {
        tree::check_built(tree.path(), release, unit)?;
    }

    enter(Phase::Pre);
    let out = tree.path().join(".kstack");
    // A unit's pre object is the same for every patch that touches it at this
    // position of the stack: kept, and compiled only when it is not.
    let config = std::fs::read(source.join(".config")).map_err(io(&source.join(".config")))?;
    let kernel_id = kernel_identity(release, &req.kernel.version().unwrap_or_default(), &config);
    let compiler = compiler_version();
    let earlier: Vec<&[u8]> = req.earlier.iter().map(|(_, d)| d.as_slice()).collect();
    let mut keys = BTreeMap::new();
    let mut pre_objects = BTreeMap::new();
    let mut to_compile = Vec::new();
    for unit in &units {
        let key = unit_source(tree.path(), unit)
            .map(|text| PreKey::new(&kernel_id, &compiler, &earlier, unit, &text));
        match key
            .as_ref()
            .filter(|_| req.reuse)
            .and_then(|k| records.pre_object(k))
        {
            Some(object) => {
                pre_objects.insert(unit.clone(), object);
            }
            None => to_compile.push(unit.clone()),
        }
        if let Some(key) = key {
            keys.insert(unit.clone(), key);
        }
    }
    if !to_compile.is_empty() {
        let pre_paths = match &recorded {
            Some(commands) => {
                let needed: Vec<UnitCommand> = commands
                    .iter()
                    .filter(|c| to_compile.contains(&c.unit))
                    .cloned()
                    .collect();
                tree.compile_recorded(&needed, &out.join("pre"))?
            }
            None => tree.compile(&to_compile, &out.join("pre"))?,
        };
        for (unit, path) in to_compile.iter().zip(&pre_paths) {
            let object = std::fs::read(path).map_err(io(path))?;
            if let Some(key) = keys.get(unit) {
                // A record is an optimisation: a cache that cannot be written
                // costs the next build a compile, never this one its result.
                let _ = records.keep_pre_object(key, &object);
            }
            pre_objects.insert(unit.clone(), object);
        }
    }
    let mut reused = Reused {
        pre_objects: units.len() - to_compile.len(),
        units: units.len(),
        recorded_commands: recorded.is_some(),
        recorded_link: false,
        post_objects: 0,
    };
    for (what, diff) in &req.changes {
        tree.apply(diff, what)?;
    }
    enter(Phase::Post);
    // A post object is the pre object of a patch that would sit above this change:
    // kept under the same kind of key, with every diff up to this change. So a
    // stack's cumulative build takes the post objects its newest patch's build just
    // made (the same diffs on the same source), and compiles nothing again. Only with
    // recorded commands: kbuild's path reads its .cmd files of the units it compiles.
    let after: Vec<&[u8]> = earlier
        .iter()
        .copied()
        .chain(req.changes.iter().map(|(_, d)| d.as_slice()))
        .collect();
    let mut post_keys = BTreeMap::new();
    let mut post_bytes: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for unit in &units {
        let Some(key) = unit_source(tree.path(), unit)
            .map(|text| PreKey::new(&kernel_id, &compiler, &after, unit, &text))
        else {
            continue;
        };
        if req.reuse
            && recorded.is_some()
            && let Some(object) = records.pre_object(&key)
        {
            post_bytes.insert(unit.clone(), object);
        }
        post_keys.insert(unit.clone(), key);
    }
    reused.post_objects = post_bytes.len();
    let post_to_compile: Vec<String> = units
        .iter()
        .filter(|u| !post_bytes.contains_key(*u))
        .cloned()
        .collect();
    if !post_to_compile.is_empty() {
        let paths = match &recorded {
            Some(commands) => {
                let needed: Vec<UnitCommand> = commands
                    .iter()
                    .filter(|c| post_to_compile.contains(&c.unit))
                    .cloned()
                    .collect();
                tree.compile_recorded(&needed, &out.join("post"))?
            }
            None => tree.compile(&post_to_compile, &out.join("post"))?,
        };
        for (unit, path) in post_to_compile.iter().zip(&paths) {
            let object = std::fs::read(path).map_err(io(path))?;
            if let Some(key) = post_keys.get(unit) {
                let _ = records.keep_pre_object(key, &object);
            }
            post_bytes.insert(unit.clone(), object);
        }
    }
    Ok(Compiled {
        tree,
        units,
        recorded,
        pre_objects,
        post_objects: post_bytes,
        reused,
        fallback: None,
    })
}

/// `unit: <the first line of the compiler's output that says error>` (else its
/// first line), for a note.
fn first_error_line(unit: &str, output: &str) -> String {
    let line = output
        .lines()
        .find(|l| l.contains("error"))
        .or_else(|| output.lines().next())
        .unwrap_or("no output");
    format!("{unit}: {}", line.trim())
}

/// The recorded compiles of the units a diff changes, when it changes only
/// existing `.c` files and every one of their units has a record.
fn recorded_units(changes: &[tree::FileChange], records: &UnitRecords) -> Option<Vec<UnitCommand>> {
    changes
        .iter()
        .map(|c| {
            let stem = c.path.strip_suffix(".c")?;
            (c.kind == tree::ChangeKind::Modified)
                .then(|| records.command(&format!("{stem}.o")))
                .flatten()
        })
        .collect()
}

/// The names of an object's sections.
fn section_names(object: &[u8]) -> Vec<String> {
    use object::{Object, ObjectSection};
    object::File::parse(object).map_or_else(
        |_| Vec::new(),
        |file| {
            file.sections()
                .filter_map(|s| s.name().ok().map(str::to_owned))
                .collect()
        },
    )
}

/// The source a unit is compiled from (`dir/name.c` or `dir/name.S`), as it is now.
/// What names a prepared kernel source in the keys of kept objects: its release,
/// package version and configuration. The configuration is part of it: a tree
/// prepared again (e.g. once pahole is installed, which brings back options
/// olddefconfig had dropped) compiles the same source to other code, and must not
/// take objects kept before.
fn kernel_identity(release: &str, version: &str, config: &[u8]) -> String {
    format!(
        "{release} {version} config {}",
        Sha256Digest::of(config).to_hex()
    )
}

fn unit_source(tree: &Path, unit: &str) -> Option<Vec<u8>> {
    let stem = unit.strip_suffix(".o")?;
    ["c", "S"]
        .iter()
        .find_map(|ext| std::fs::read(tree.join(format!("{stem}.{ext}"))).ok())
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

/// The header the template includes: the patch's name, per object (vmlinux or a
/// module) the functions it replaces, and the patches it holds, as X-macros (see
/// `kmod/template`).
fn table_header(req: &Job<'_>, table: &BTreeMap<(bool, String), Vec<String>>) -> String {
    let mut text = String::from("/* Generated by kstack: the patch's function table. */\n");
    text.push_str(&format!(
        "#define KSTACK_PATCH_NAME \"{}\"\n",
        c_escape(&req.name)
    ));
    text.push_str(&format!(
        "#define KSTACK_PATCH_DESCRIPTION \"{}\"\n",
        c_escape(&req.description)
    ));
    text.push_str(&format!(
        "#define KSTACK_REPLACE {}\n",
        if req.replace { "true" } else { "false" }
    ));
    text.push_str("#define KSTACK_MEMBERS \\\n");
    for (index, member) in req.members.iter().enumerate() {
        text.push_str(&format!(
            "\tKSTACK_MEMBER({index}, \"{}\") \\\n",
            c_escape(&member.id)
        ));
    }
    text.push('\n');
    text.push_str("#define KSTACK_OBJECTS \\\n");
    let c_name = |object: &str| {
        if object == VMLINUX_OBJECT {
            "NULL".to_owned()
        } else {
            format!("\"{}\"", c_escape(object))
        }
    };
    for (index, (_, object)) in table.keys().enumerate() {
        text.push_str(&format!(
            "\tKSTACK_OBJECT({index}, {}) \\\n",
            c_name(object)
        ));
    }
    text.push('\n');
    let hook_object = table
        .keys()
        .next()
        .map_or_else(|| "NULL".to_owned(), |(_, o)| c_name(o));
    text.push_str(&format!("#define KSTACK_HOOK_OBJECT {hook_object}\n"));
    if table.keys().any(|(module, _)| *module) {
        text.push_str("#define KSTACK_MODULE_OBJECTS 1\n");
    }
    text.push_str("#define KSTACK_ALL_FUNCS \\\n");
    for index in 0..table.len() {
        text.push_str(&format!("\tKSTACK_FUNCS_{index} \\\n"));
    }
    text.push('\n');
    for (index, lines) in table.values().enumerate() {
        text.push_str(&format!("#define KSTACK_FUNCS_{index} \\\n"));
        for line in lines {
            text.push_str(line);
            text.push_str(" \\\n");
        }
        text.push('\n');
    }
    let states = cumulative_states(&req.members);
    if !states.is_empty() {
        let entries: Vec<String> = states
            .iter()
            .map(|(id, v)| format!("{{ .id = {id}, .version = {v} }}"))
            .collect();
        text.push_str(&format!("#define KSTACK_STATES {}\n", entries.join(", ")));
    }
    text
}

/// A reference the running kernel cannot resolve, to a symbol that an earlier patch
/// of the stack adds (a line it adds names it): the symbol lives in that patch's
/// module, which no later patch can refer to, and saying so beats "not in the
/// kernel's symbol table".
fn from_earlier_patch(error: &klp::KlpError, earlier: &[(String, Vec<u8>)]) -> Option<BuildError> {
    let klp::KlpError::Resolve {
        tu,
        place,
        symbol,
        source,
    } = error
    else {
        return None;
    };
    if !matches!(
        **source,
        ResolveError::Missing { .. } | ResolveError::NotInModule { .. }
    ) {
        return None;
    }
    // A static local is `name.N` in the object, a clone `name.part.N`; the source
    // says `name`.
    let name = symbol.split('.').next().unwrap_or(symbol);
    if name.is_empty() {
        return None;
    }
    let (patch, _) = earlier
        .iter()
        .rev()
        .find(|(_, diff)| adds_identifier(diff, name))?;
    Some(BuildError::FromEarlierPatch {
        unit: tu.clone(),
        place: place.clone(),
        symbol: symbol.clone(),
        patch: patch.clone(),
    })
}

/// Whether a line that `diff` adds has `name` as a whole identifier.
fn adds_identifier(diff: &[u8], name: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    String::from_utf8_lossy(diff)
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .any(|line| {
            line.match_indices(name).any(|(at, _)| {
                let before = line[..at].chars().next_back();
                let after = line[at + name.len()..].chars().next();
                !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
            })
        })
}

/// The data objects of a translation unit (post names) the patch module has its own
/// copy of: new ones, which the running kernel does not have, the once-only flags of
/// print-once helpers ([`ONCE_STATICS`]), and lockdep class keys where they are empty
/// ([`LOCKDEP_KEY_STATIC`] of size 0).
fn patch_data(report: &DiffReport) -> Vec<String> {
    report
        .data
        .iter()
        .filter(|d| {
            let name = diff::normalize_name(&d.name);
            let empty_key = name == LOCKDEP_KEY_STATIC
                && d.post.as_ref().is_some_and(|p| p.local && p.size == 0);
            d.status == Status::New
                || (d.status != Status::Removed
                    && (ONCE_STATICS.contains(&name.as_str()) || empty_key))
        })
        .filter_map(|d| d.post.as_ref().map(|p| p.name.clone()))
        .collect()
}

/// The running kernel's names of the unit's local symbols that the change
/// renumbered (post name → pre name, for functions and data the differ paired), and
/// the post names of data it paired by a guess.
fn kernel_names(report: &DiffReport) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let pairs = report
        .functions
        .iter()
        .map(|f| (&f.pre, &f.post))
        .chain(report.data.iter().map(|d| (&d.pre, &d.post)));
    let renamed = pairs
        .filter_map(|(pre, post)| Some((pre.as_ref()?, post.as_ref()?)))
        .filter(|(pre, post)| pre.local && post.local && pre.name != post.name)
        .map(|(pre, post)| (post.name.clone(), pre.name.clone()))
        .collect();
    let guessed = report
        .data
        .iter()
        .filter(|d| d.indistinct)
        .filter_map(|d| d.post.as_ref().map(|p| p.name.clone()))
        .collect();
    (renamed, guessed)
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

fn c_escape(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .map(|c| if c == '"' || c == '\\' { '_' } else { c })
        .collect()
}

/// Every symbol an object defines (for telling same-named statics apart).
fn defined_names(object: &[u8]) -> Vec<String> {
    use object::{Object, ObjectSymbol};
    let Ok(file) = object::File::parse(object) else {
        return Vec::new();
    };
    file.symbols()
        .filter(|s| s.is_definition())
        .filter_map(|s| s.name().ok().map(diff::normalize_name))
        .filter(|n| !n.is_empty())
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
    use super::*;

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
