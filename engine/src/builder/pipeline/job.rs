//! One build, stage by stage: the phases of [`Phase`] in order, each a function that
//! takes what the stages before it made. [`build_job`] runs them and times them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kstack_kfacts::symbols::{LOCKDEP_KEY_STATIC, ONCE_STATICS};
use kstack_store::model::{FunctionRef, VMLINUX as VMLINUX_OBJECT};

use super::compile::{Compiled, compile_units};
use super::{
    BuildError, Built, HOOKS_H, Job, Phase, TABLE_H, TEMPLATE_C, check, compiler_version,
    cumulative_states, io,
};
use crate::builder::ResolveError;
use crate::builder::diff::{self, DiffOptions, DiffReport, Status};
use crate::builder::kbuild;
use crate::builder::klp;
use crate::builder::modlink::LinkRecords;
use crate::builder::symbols::KernelSymbols;
use crate::builder::tree::{self, EXTRA_CFLAGS, WorkTree};
use crate::builder::units::{UnitCommand, UnitRecords};
use crate::runpre::BeforeFile;

/// Tells `progress` of each phase as it starts, and times it.
struct PhaseClock<'p> {
    progress: &'p mut dyn FnMut(Phase),
    timings: Vec<(Phase, Duration)>,
    start: Instant,
}

impl PhaseClock<'_> {
    fn enter(&mut self, phase: Phase) {
        (self.progress)(phase);
        let now = Instant::now();
        if let Some((_, took)) = self.timings.last_mut() {
            *took = now - self.start;
        }
        self.start = now;
        self.timings.push((phase, Duration::ZERO));
    }

    /// The phases and how long each took, the last one up to now.
    fn finish(mut self) -> Vec<(Phase, Duration)> {
        if let Some(last) = self.timings.last_mut() {
            last.1 = self.start.elapsed();
        }
        self.timings
    }
}

pub(super) fn build_job(
    req: &Job<'_>,
    work: &Path,
    progress: &mut dyn FnMut(Phase),
) -> Result<Built, BuildError> {
    let mut clock = PhaseClock {
        progress,
        timings: Vec::new(),
        start: Instant::now(),
    };
    let release = &req.kernel.release;
    let changes = check_changes(req)?;
    let source = req.kernel.source().ok_or_else(|| BuildError::NoSource {
        release: release.clone(),
    })?;
    let records = UnitRecords::new(req.kernel.dir());
    let Compiled {
        tree,
        units,
        recorded,
        pre_objects,
        post_objects: post_bytes,
        mut reused,
        fallback: compile_fallback,
    } = compile_units(req, work, &source, &changes, &records, &mut |phase| {
        clock.enter(phase)
    })?;
    let objects = unit_objects(&units, recorded.as_deref(), &records, &tree, &source)?;

    clock.enter(Phase::Diff);
    let (reports, post_objects) = diff_units(&units, &pre_objects, post_bytes, &objects)?;
    let before = before_images(&reports, &pre_objects, &objects)?;

    clock.enter(Phase::Symbols);
    let symbols = kernel_symbols(req, &pre_objects, &objects)?;

    clock.enter(Phase::Extract);
    // Everything of this build lives in the work tree's directory, so builds that
    // run at the same time (two `kstack commit`s) never share a file.
    let module_dir = tree.path().join(".kstack/module");
    std::fs::create_dir_all(&module_dir).map_err(io(&module_dir))?;
    let mut notes = source_notes(req, &source, compile_fallback.as_deref());
    let extraction = extract_units(
        req,
        &reports,
        &post_objects,
        &objects,
        &symbols,
        &module_dir,
    )?;
    notes.extend(extraction.notes);

    clock.enter(Phase::Module);
    let (module, linked) = link_module(
        req,
        &tree,
        &module_dir,
        extraction.table,
        extraction.sources,
        &extraction.applied_with,
    )?;
    reused.recorded_link = linked == kbuild::Linked::Recorded;
    if let kbuild::Linked::KbuildAfter(failed) = linked {
        notes.push(format!(
            "the module was linked by kbuild: a recorded link command failed ({failed})"
        ));
    }
    let timings = clock.finish();
    Ok(Built {
        module_name: req.module_name.clone(),
        module,
        functions: extraction.functions,
        reports,
        build_info: build_info(req, &units),
        pre_objects,
        before,
        timings,
        reused,
        notes,
    })
}

/// The files every change touches, each change checked on what the ones before it
/// leave.
fn check_changes(req: &Job<'_>) -> Result<Vec<tree::FileChange>, BuildError> {
    let mut below: Vec<(String, Vec<u8>)> = req.earlier.to_vec();
    let mut changes = Vec::new();
    for (what, diff) in &req.changes {
        changes.extend(check(req.kernel, &below, diff)?);
        below.push((what.clone(), (*diff).clone()));
    }
    Ok(changes)
}

/// Which object each unit is part of, as kbuild compiled it: vmlinux or a module.
fn unit_objects(
    units: &[String],
    recorded: Option<&[UnitCommand]>,
    records: &UnitRecords,
    tree: &WorkTree,
    source: &Path,
) -> Result<BTreeMap<String, String>, BuildError> {
    let mut objects: BTreeMap<String, String> = BTreeMap::new();
    for unit in units {
        let object = match recorded {
            Some(commands) => commands
                .iter()
                .find(|c| &c.unit == unit)
                .map_or_else(|| VMLINUX_OBJECT.to_owned(), UnitCommand::object),
            None => {
                // Kept for the next build of this unit (see above).
                let _ = records.record_command(tree.path(), source, unit);
                tree.unit_object(unit)?
            }
        };
        objects.insert(unit.clone(), object);
    }
    Ok(objects)
}

/// The differ's report on each unit (and the unit's post object), or the refusals
/// of every unit, or that nothing changed.
#[allow(clippy::type_complexity)] // two maps by unit, named where they are used
fn diff_units(
    units: &[String],
    pre_objects: &BTreeMap<String, Vec<u8>>,
    mut post_bytes: BTreeMap<String, Vec<u8>>,
    objects: &BTreeMap<String, String>,
) -> Result<(BTreeMap<String, DiffReport>, BTreeMap<String, Vec<u8>>), BuildError> {
    let mut reports = BTreeMap::new();
    let mut post_objects = BTreeMap::new();
    let mut refusals = Vec::new();
    for unit in units {
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
    Ok((reports, post_objects))
}

/// The code each replaced function has in the pre object: kept with the patch so
/// that it can be proven, before loading, to be the code the kernel runs.
fn before_images(
    reports: &BTreeMap<String, DiffReport>,
    pre_objects: &BTreeMap<String, Vec<u8>>,
    objects: &BTreeMap<String, String>,
) -> Result<BeforeFile, BuildError> {
    let mut before = BeforeFile::default();
    for (unit, report) in reports {
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
    Ok(before)
}

/// What the units' references resolve against: the kernel's kallsyms and
/// Module.symvers, the units' own definitions, vmlinux's local symbols by file, and
/// the symbol tables of the modules the patch changes.
fn kernel_symbols(
    req: &Job<'_>,
    pre_objects: &BTreeMap<String, Vec<u8>>,
    objects: &BTreeMap<String, String>,
) -> Result<KernelSymbols, BuildError> {
    let kallsyms_file = req.kernel.dir().join("kallsyms");
    let kallsyms =
        KernelSymbols::kallsyms_for(&req.kernel.vmlinuz(), &kallsyms_file, req.guest_binary)?;
    let symvers_path = req.kernel.headers().join("Module.symvers");
    let symvers = std::fs::read_to_string(&symvers_path).map_err(io(&symvers_path))?;
    let mut symbols = KernelSymbols::parse(&kallsyms, &symvers)?;
    for (unit, pre) in pre_objects {
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
    let modules: BTreeSet<&String> = objects.values().filter(|o| *o != VMLINUX_OBJECT).collect();
    if !modules.is_empty() {
        // Where a name neither the patched module nor vmlinux has is looked for.
        symbols.set_modules_dir(req.kernel.modules_dir());
    }
    for module in modules {
        let path = req
            .kernel
            .module_file(module)
            .ok_or_else(|| BuildError::NoModuleFile {
                module: module.clone(),
                release: req.kernel.release.clone(),
                dir: req.kernel.modules_dir(),
            })?;
        let ko = std::fs::read(&path).map_err(io(&path))?;
        symbols.add_module(module, &ko)?;
    }
    Ok(symbols)
}

/// What the user of the patch should know about the source it was built from.
fn source_notes(req: &Job<'_>, source: &Path, compile_fallback: Option<&str>) -> Vec<String> {
    let release = &req.kernel.release;
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
    if let Some(failed) = compile_fallback {
        notes.push(format!(
            "the units were compiled by kbuild: a recorded compile failed ({failed})"
        ));
    }
    notes
}

/// What extracting the changed functions of every unit makes.
struct Extraction {
    /// The units' output objects (`.o_shipped`), linked into the module.
    sources: Vec<PathBuf>,
    /// Per object (vmlinux first, then modules by name): its klp_func lines.
    table: BTreeMap<(bool, String), Vec<String>>,
    /// The functions the module redirects.
    functions: Vec<FunctionRef>,
    notes: Vec<String>,
    /// Which patched module each section of module code belongs to (post-link).
    applied_with: BTreeMap<String, String>,
}

/// Extracts each unit's changed functions, and what they need, into an object of
/// its own in `module_dir`.
fn extract_units(
    req: &Job<'_>,
    reports: &BTreeMap<String, DiffReport>,
    post_objects: &BTreeMap<String, Vec<u8>>,
    objects: &BTreeMap<String, String>,
    symbols: &KernelSymbols,
    module_dir: &Path,
) -> Result<Extraction, BuildError> {
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
    let mut out = Extraction {
        sources: Vec::new(),
        table: BTreeMap::new(),
        functions: Vec::new(),
        notes: Vec::new(),
        applied_with: BTreeMap::new(),
    };
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
        let extracted = klp::extract(&request, symbols).map_err(|source| {
            from_earlier_patch(&source, req.earlier).unwrap_or_else(|| BuildError::Klp {
                unit: unit.clone(),
                source: Box::new(source),
            })
        })?;
        out.notes.extend(extracted.notes.iter().cloned());
        if objname != VMLINUX_OBJECT {
            out.applied_with.extend(
                section_names(&extracted.object)
                    .into_iter()
                    .map(|name| (name, objname.clone())),
            );
        }
        let object = module_dir.join(format!("kstack_unit{index}.o_shipped"));
        std::fs::write(&object, &extracted.object).map_err(io(&object))?;
        out.sources.push(object);
        for f in extracted.functions.iter().filter(|f| !f.new) {
            // Only functions the running kernel has are redirected; new ones are
            // reached from the redirected ones.
            let sympos = f.old_sympos.unwrap_or(0);
            out.table
                .entry((objname != VMLINUX_OBJECT, objname.clone()))
                .or_default()
                .push(format!(
                    "\tKSTACK_FUNC(\"{}\", {}, {sympos})",
                    f.old_name, f.symbol
                ));
            out.functions.push(FunctionRef {
                object: objname.clone(),
                name: f.old_name.clone(),
                sympos,
            });
        }
    }
    Ok(out)
}

/// Writes the module's C sources (the template, its function table, the members'
/// hook files) beside the units' objects, links them with kbuild, turns unresolved
/// references into livepatch relocations and signs the result.
fn link_module(
    req: &Job<'_>,
    tree: &WorkTree,
    module_dir: &Path,
    mut table: BTreeMap<(bool, String), Vec<String>>,
    sources: Vec<PathBuf>,
    applied_with: &BTreeMap<String, String>,
) -> Result<(Vec<u8>, kbuild::Linked), BuildError> {
    let module_name = &req.module_name;
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
    let bytes = std::fs::read(&ko).map_err(io(&ko))?;
    let module = klp::post_link_applied(&bytes, applied_with)
        .map_err(|e| BuildError::PostLink(Box::new(e)))?
        .ko;
    // Signed last: the signature covers the bytes the kernel loads.
    let module = match req.signer {
        Some(signer) => signer.sign(&module, &req.kernel.headers(), &module_dir.join("sign"))?,
        None => module,
    };
    Ok((module, linked))
}

/// How the module was built, recorded with the patch.
fn build_info(req: &Job<'_>, units: &[String]) -> BTreeMap<String, String> {
    let mut build_info = BTreeMap::new();
    build_info.insert("compiler".into(), compiler_version());
    build_info.insert("kcflags".into(), EXTRA_CFLAGS.into());
    build_info.insert("kernel_release".into(), req.kernel.release.clone());
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
    build_info
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
pub(super) fn from_earlier_patch(
    error: &klp::KlpError,
    earlier: &[(String, Vec<u8>)],
) -> Option<BuildError> {
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
pub(super) fn patch_data(report: &DiffReport) -> Vec<String> {
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

fn c_escape(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .map(|c| if c == '"' || c == '\\' { '_' } else { c })
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
