//! Run-pre matching at sync time: before a patch is loaded, prove that the code it
//! replaces is the code the patch was built against (Ksplice's safety net).
//!
//! Each kstack-built patch keeps, in `before.toml`, the code every replaced function
//! had in the objects it was built from. Here that code is compared with what the
//! running kernel executes at the function's kallsyms address (read through
//! `/proc/kcore`), by [`crate::runpre`]. The match must also agree with the `sympos`
//! the patch names. A patch that does not match is refused before anything reaches
//! the kernel, with the function, the offset and the bytes that differ.

use std::time::{Duration, Instant};

use kstack_store::verify::VerifiedPatch;

use kstack_store::model::BEFORE_FILE;

use crate::runpre::{self, BeforeFile, KallsymsIndex, KernelText, Outcome};

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
) -> Result<Proof, ProveError> {
    let started = Instant::now();
    let mut proof = Proof::default();
    let mut replaced_before: Vec<String> = Vec::new();
    for patch in patches {
        let name = &patch.manifest.name;
        if !check(patch) {
            replaced_before.extend(patch.manifest.functions.iter().map(|f| f.name.clone()));
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
            if replaced_before.contains(&image.function) {
                proof.lines.push(format!(
                    "{name}: {}: built on an earlier patch's version (proven with it)",
                    image.function
                ));
                continue;
            }
            let report = runpre::match_by_name(image, text, symbols);
            let wanted = patch
                .manifest
                .functions
                .iter()
                .find(|f| f.name == image.function)
                .map_or(0, |f| f.sympos);
            let candidates = report.candidates.len();
            match &report.outcome {
                Outcome::Matched { sympos, .. }
                    if wanted as usize == *sympos || (wanted == 0 && candidates == 1) =>
                {
                    proof.matched += 1;
                    proof.lines.push(format!("{name}: {report}"));
                }
                // Same-named statics with identical code: whichever the patch names
                // runs exactly the code it was built against.
                Outcome::Ambiguous { sympos } if sympos.contains(&(wanted as usize)) => {
                    proof.matched += 1;
                    proof.lines.push(format!(
                        "{name}: {}: matches the running code at sympos {wanted} (and at {sympos:?}, identical)",
                        image.function
                    ));
                }
                Outcome::Matched { sympos, .. } => failures.push(format!(
                    "{}: the running code matches sympos {sympos}, but the patch replaces sympos {wanted}",
                    image.function
                )),
                _ => failures.push(report.to_string()),
            }
        }
        if !failures.is_empty() {
            return Err(ProveError::Mismatch {
                patch: name.clone(),
                reports: failures,
            });
        }
        replaced_before.extend(patch.manifest.functions.iter().map(|f| f.name.clone()));
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
        std::fs::read_to_string("/proc/kallsyms").map_err(|source| runpre::RunPreError::Io {
            path: "/proc/kallsyms".into(),
            source,
        })?;
    let symbols = KallsymsIndex::parse(&kallsyms).map_err(runpre::RunPreError::from)?;
    let text = runpre::Kcore::open()?;
    prove(patches, check, &text, &symbols)
}
