//! Run-pre matching at sync time: before a patch is loaded, prove that the code it
//! replaces is the code the patch was built against (Ksplice's safety net).
//!
//! Each kstack-built patch keeps, in `before.toml`, the code every replaced function
//! had in the objects it was built from. Here that code is compared with what the
//! running kernel executes at the function's kallsyms address (read through
//! `/proc/kcore`), by [`crate::runpre`]. The match must also agree with the `sympos`
//! the patch names. A patch that does not match is refused before anything reaches
//! the kernel, with the function, the offset and the bytes that differ.
//!
//! A function of a module is proven against the module's code in memory when the
//! module is loaded, and otherwise against the `.ko` the host would load (from
//! `/lib/modules/<release>`), laid out as it would be once loaded.

use std::time::{Duration, Instant};

use kstack_store::verify::VerifiedPatch;

use kstack_store::model::BEFORE_FILE;

use kstack_kfacts::paths::PROC_KALLSYMS;

use crate::runpre::{
    self, BeforeFile, BeforeImage, CodeSources, KallsymsIndex, KernelText, MatchReport, ModulesDir,
    Outcome,
};

/// What the before images are compared with; it decides the words of the report,
/// so that a check against an image file never reads as one of the running kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Against {
    /// The running kernel (`/proc/kcore`, `/proc/kallsyms`).
    Running,
    /// A kernel image file and the symbols captured for it.
    Image,
}

impl Against {
    /// The matcher's report, worded for what was compared.
    fn word(self, text: String) -> String {
        match self {
            Against::Running => text,
            Against::Image => text
                .replace("the running code", "the image's code")
                .replace("the running kernel", "the image"),
        }
    }

    /// `running` or `image`, for `--json`.
    pub fn key(self) -> &'static str {
        match self {
            Against::Running => "running",
            Against::Image => "image",
        }
    }
}

/// What was proven, patch by patch.
#[derive(Debug, Clone, Default)]
pub struct Proof {
    /// One line per function: `patch: function: verdict`.
    pub lines: Vec<String>,
    /// Functions compared and found matching.
    pub matched: usize,
    /// Patches without before images (imported prebuilt modules): not proven.
    pub unproven: Vec<String>,
    pub elapsed: Duration,
}

/// Why a stack cannot be proven.
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    #[error("patch {patch}: {BEFORE_FILE} is damaged: {message}")]
    BadFile { patch: String, message: String },
    #[error("reading the running kernel: {0}")]
    Kernel(#[from] runpre::RunPreError),
    #[error(
        "patch {patch} was not built for the code the kernel runs:\n{}",
        .reports.join("\n")
    )]
    Mismatch { patch: String, reports: Vec<String> },
    #[error(
        "patch {patch} replaces functions of module {module}, which is not loaded and has no \
         .ko in {dir}: the patch cannot be proven for the module this host would load"
    )]
    NoModule {
        patch: String,
        module: String,
        dir: String,
    },
}

/// The report on `image`, or why there is none: a module neither loaded nor in the
/// modules directory.
fn matched(
    sources: &mut CodeSources<'_>,
    patch: &str,
    image: &BeforeImage,
) -> Result<MatchReport, ProveError> {
    sources
        .match_image(image)?
        .ok_or_else(|| ProveError::NoModule {
            patch: patch.to_owned(),
            module: image.object.clone(),
            dir: sources.modules().map_or_else(
                || "(no modules directory)".into(),
                |m| m.path().display().to_string(),
            ),
        })
}

/// Proves the patches of a stack (in stack order) for which `check` says so, against
/// the kernel whose text and symbols are given. A function that an earlier patch of
/// the stack also replaces is built on that patch's version, which runs from the
/// earlier module, not at the original address: it is reported as covered by the
/// earlier patch's proof.
pub fn prove(
    patches: &[&VerifiedPatch],
    check: &dyn Fn(&VerifiedPatch) -> bool,
    text: &dyn KernelText,
    symbols: &KallsymsIndex,
    modules: Option<&ModulesDir>,
    against: Against,
) -> Result<Proof, ProveError> {
    let started = Instant::now();
    let mut sources = CodeSources::new(text, symbols, modules);
    let mut proof = Proof::default();
    let mut replaced_before: Vec<(String, String)> = Vec::new();
    for patch in patches {
        let name = &patch.manifest.name;
        if !check(patch) {
            replaced_before.extend(
                patch
                    .manifest
                    .functions
                    .iter()
                    .map(|f| (f.object.clone(), f.name.clone())),
            );
            continue;
        }
        let Some(bytes) = patch.files.get(BEFORE_FILE) else {
            proof.unproven.push(name.clone());
            continue;
        };
        let file = BeforeFile::parse(bytes).map_err(|message| ProveError::BadFile {
            patch: name.clone(),
            message,
        })?;
        let mut failures = Vec::new();
        for image in &file.functions {
            if replaced_before.contains(&(image.object.clone(), image.function.clone())) {
                proof.lines.push(format!(
                    "{name}: {}: built on an earlier patch's version (proven with it)",
                    image.function
                ));
                continue;
            }
            let report = matched(&mut sources, name, image)?;
            // A module that is not loaded was compared with the `.ko` the host would
            // load: the words say so.
            let module_file = (against == Against::Running && sources.from_file(&image.object))
                .then(|| format!("{}.ko", image.object));
            let word = |text: String| match &module_file {
                Some(ko) => text
                    .replace(
                        "the running code",
                        &format!("the code of {ko} (not loaded)"),
                    )
                    .replace("the running kernel", ko),
                None => against.word(text),
            };
            let wanted = patch
                .manifest
                .functions
                .iter()
                .find(|f| f.name == image.function && f.object == image.object)
                .map_or(0, |f| f.sympos);
            let candidates = report.candidates.len();
            match &report.outcome {
                Outcome::Matched { sympos, .. }
                    if wanted as usize == *sympos || (wanted == 0 && candidates == 1) =>
                {
                    proof.matched += 1;
                    proof
                        .lines
                        .push(format!("{name}: {}", word(report.to_string())));
                }
                // Same-named statics with identical code: whichever the patch names
                // runs exactly the code it was built against.
                Outcome::Ambiguous { sympos } if sympos.contains(&(wanted as usize)) => {
                    proof.matched += 1;
                    proof.lines.push(word(format!(
                        "{name}: {}: matches the running code at sympos {wanted} (and at {sympos:?}, identical)",
                        image.function
                    )));
                }
                Outcome::Matched { sympos, .. } => failures.push(word(format!(
                    "{}: the running code matches sympos {sympos}, but the patch replaces sympos {wanted}",
                    image.function
                ))),
                _ => failures.push(word(report.to_string())),
            }
        }
        if !failures.is_empty() {
            return Err(ProveError::Mismatch {
                patch: name.clone(),
                reports: failures,
            });
        }
        replaced_before.extend(
            patch
                .manifest
                .functions
                .iter()
                .map(|f| (f.object.clone(), f.name.clone())),
        );
    }
    proof.elapsed = started.elapsed();
    Ok(proof)
}

/// Proves against the running kernel: `/proc/kcore` and `/proc/kallsyms` (root).
pub fn prove_running(
    patches: &[&VerifiedPatch],
    check: &dyn Fn(&VerifiedPatch) -> bool,
) -> Result<Proof, ProveError> {
    let checked: Vec<&&VerifiedPatch> = patches.iter().filter(|p| check(p)).collect();
    if checked.iter().all(|p| !p.files.contains_key(BEFORE_FILE)) {
        return Ok(Proof {
            unproven: checked.iter().map(|p| p.manifest.name.clone()).collect(),
            ..Proof::default()
        });
    }
    let kallsyms =
        std::fs::read_to_string(PROC_KALLSYMS).map_err(|source| runpre::RunPreError::Io {
            path: PROC_KALLSYMS.into(),
            source,
        })?;
    let symbols = KallsymsIndex::parse(&kallsyms).map_err(runpre::RunPreError::from)?;
    let text = runpre::Kcore::open()?;
    let release =
        kstack_store::ident::running_kernel_release().map_err(|e| runpre::RunPreError::Image {
            what: "the running kernel".into(),
            detail: e.to_string(),
        })?;
    prove(
        patches,
        check,
        &text,
        &symbols,
        Some(&ModulesDir::running(&release)),
        Against::Running,
    )
}
