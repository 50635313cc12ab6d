//! Building a kernel module with the kernel's own kbuild, out of tree.
//!
//! The caller names the module and its C sources; this writes the `Kbuild` file,
//! copies the sources into a build directory and runs
//! `make -C <headers> M=<dir> modules`, the way every external module is built. The
//! result is the `.ko` path, or the compiler's own diagnostics.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::modlink;

/// An out-of-tree module to build.
#[derive(Debug, Clone)]
pub struct ModuleSpec {
    /// The module's name (`kstack_demo`): the `.ko` file and what `lsmod` shows.
    pub name: String,
    /// C sources and headers; every `.c` becomes one object of the module.
    pub sources: Vec<PathBuf>,
    /// Extra flags for the compiler (`ccflags-y`), e.g. `-I` for kstack's header.
    pub ccflags: Vec<String>,
}

/// The module's debug information is stripped after the build, as
/// `make modules_install INSTALL_MOD_STRIP=1` and distribution kernels do: it is most
/// of a module's size (260 KiB of a 7 KiB module here), the kernel never reads it,
/// and everything kstack stores is hashed and signed on every sync.
const STRIP_ARGS: &[&str] = &["--strip-debug"];

/// What kbuild exports to the commands it runs that a recorded command may read
/// (the top Makefile's `export ARCH SRCARCH`): Debian's 6.12 headers ship
/// `tools/objtool/objtool` as a wrapper that runs `objtool.real-$SRCARCH`.
pub const EXPORTED_ENV: &[(&str, &str)] = &[("ARCH", "x86"), ("SRCARCH", "x86")];

/// Why a module did not build.
#[derive(Debug, thiserror::Error)]
pub enum KbuildError {
    #[error(
        "kernel headers not found at {0} (install linux-headers-<release>, or run `cargo xtask setup`)"
    )]
    NoHeaders(PathBuf),
    #[error("module name {0:?} must be a C identifier")]
    BadName(String),
    #[error("module {name} has no .c source")]
    NoSources { name: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run make: {0}")]
    Make(#[source] std::io::Error),
    #[error("kbuild failed for module {name}:\n{output}")]
    Compile { name: String, output: String },
}

/// How kbuild is run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Let modpost only warn about undefined symbols (`KBUILD_MODPOST_WARN=1`): a
    /// livepatch module's references to unexported symbols stay undefined until
    /// kstack turns them into livepatch relocations after the link.
    pub modpost_warn: bool,
}

/// Builds `spec` against the kernel headers (or prepared source tree) at `kernel_dir`
/// in `build_dir`, which is created if needed. Returns the path of the `.ko`.
pub fn build_module(
    kernel_dir: &Path,
    spec: &ModuleSpec,
    build_dir: &Path,
) -> Result<PathBuf, KbuildError> {
    build_module_with(kernel_dir, spec, build_dir, &Options::default())
}

/// [`build_module`] with options. Sources ending in `.o_shipped` are prebuilt objects:
/// kbuild copies `x.o_shipped` to `x.o` and links it like a compiled one.
pub fn build_module_with(
    kernel_dir: &Path,
    spec: &ModuleSpec,
    build_dir: &Path,
    options: &Options,
) -> Result<PathBuf, KbuildError> {
    stage(kernel_dir, spec, build_dir)?;
    let (ko, _) = run_kbuild(kernel_dir, spec, build_dir, options)?;
    strip(&ko, &spec.name)?;
    Ok(ko)
}

/// How [`link_module`] linked a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linked {
    /// By kbuild (and its commands were recorded for the next link, when they could be).
    Kbuild,
    /// With the commands a kbuild link for the kernel recorded ([`modlink`]).
    Recorded,
    /// By kbuild, after a recorded command failed (the step and its output).
    KbuildAfter(String),
}

/// [`build_module_with`] for a module built in `tree`: linked with the commands an
/// earlier kbuild link for the kernel recorded in `records` when `replay` is set and
/// there are some for the module's flags, else by kbuild, whose commands are then
/// recorded.
pub fn link_module(
    kernel_dir: &Path,
    spec: &ModuleSpec,
    build_dir: &Path,
    options: &Options,
    tree: &Path,
    records: &modlink::LinkRecords,
    replay: bool,
) -> Result<(PathBuf, Linked), KbuildError> {
    let objects = stage(kernel_dir, spec, build_dir)?;
    let names = modlink::LinkNames {
        tree,
        module: &spec.name,
        build_dir,
    };
    let key = format!(
        "{} modpost_warn={}",
        spec.ccflags.join(" "),
        options.modpost_warn
    );
    let mut linked = Linked::Kbuild;
    if let Some(recipe) = Some(records)
        .filter(|_| replay)
        .and_then(modlink::LinkRecords::recipe)
        .filter(|r| r.fits(&key, &names))
    {
        match recipe.link(kernel_dir, &names, &objects) {
            Ok(ko) => {
                strip(&ko, &spec.name)?;
                return Ok((ko, Linked::Recorded));
            }
            Err(failed) => {
                // kbuild starts over in a clean directory.
                std::fs::remove_dir_all(build_dir).map_err(|source| KbuildError::Io {
                    path: build_dir.to_owned(),
                    source,
                })?;
                stage(kernel_dir, spec, build_dir)?;
                linked = Linked::KbuildAfter(failed.to_string());
            }
        }
    }
    let (ko, commands) = run_kbuild(kernel_dir, spec, build_dir, options)?;
    if let Some((c_object, _)) = objects.iter().find(|(_, compiled)| *compiled) {
        // A record is an optimisation: one that cannot be written costs the next
        // link a kbuild pass, never this one its result.
        let _ = records.record(&names, c_object, &key, &commands);
    }
    strip(&ko, &spec.name)?;
    Ok((ko, linked))
}

/// Checks `spec` and puts its sources and `Kbuild` file in `build_dir`; returns its
/// objects in link order, by stem, each with whether it is compiled from C (else
/// prebuilt).
fn stage(
    kernel_dir: &Path,
    spec: &ModuleSpec,
    build_dir: &Path,
) -> Result<Vec<(String, bool)>, KbuildError> {
    if !kernel_dir.join("Makefile").is_file() {
        return Err(KbuildError::NoHeaders(kernel_dir.to_owned()));
    }
    let ident = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if !ident(&spec.name) {
        return Err(KbuildError::BadName(spec.name.clone()));
    }
    std::fs::create_dir_all(build_dir).map_err(|source| KbuildError::Io {
        path: build_dir.to_owned(),
        source,
    })?;
    let mut objects = Vec::new();
    for src in &spec.sources {
        let file_name = src.file_name().ok_or_else(|| KbuildError::Io {
            path: src.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file"),
        })?;
        let dest = build_dir.join(file_name);
        std::fs::copy(src, &dest).map_err(|source| KbuildError::Io {
            path: src.clone(),
            source,
        })?;
        let name = file_name.to_str().unwrap_or_default();
        if let Some(stem) = name.strip_suffix(".c") {
            objects.push((stem.to_owned(), true));
        } else if let Some(stem) = name.strip_suffix(".o_shipped") {
            objects.push((stem.to_owned(), false));
            // modpost reads every object's .cmd file (for the module's srcversion);
            // a prebuilt object has no source to list.
            let cmd = build_dir.join(format!(".{stem}.o.cmd"));
            std::fs::write(&cmd, format!("savedcmd_{stem}.o := cp {name} {stem}.o\n"))
                .map_err(|source| KbuildError::Io { path: cmd, source })?;
        }
    }
    if objects.is_empty() {
        return Err(KbuildError::NoSources {
            name: spec.name.clone(),
        });
    }
    let object_files: Vec<String> = objects
        .iter()
        .map(|(stem, _)| format!("{stem}.o"))
        .collect();
    let kbuild = kbuild_file(&spec.name, &object_files, &spec.ccflags);
    let kbuild_path = build_dir.join("Kbuild");
    std::fs::write(&kbuild_path, kbuild).map_err(|source| KbuildError::Io {
        path: kbuild_path,
        source,
    })?;
    Ok(objects)
}

/// `make -C <kernel_dir> M=<build_dir> modules`; the `.ko`'s path, and the commands
/// make ran (`V=1`: what a link record takes the steps no `.cmd` file keeps from).
fn run_kbuild(
    kernel_dir: &Path,
    spec: &ModuleSpec,
    build_dir: &Path,
    options: &Options,
) -> Result<(PathBuf, String), KbuildError> {
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(kernel_dir)
        .arg(format!("M={}", build_dir.display()))
        .arg(format!("-j{jobs}"))
        .arg("V=1")
        .arg("modules");
    if options.modpost_warn {
        make.arg("KBUILD_MODPOST_WARN=1");
    }
    let out = make.output().map_err(KbuildError::Make)?;
    let ko = build_dir.join(format!("{}.ko", spec.name));
    if !out.status.success() || !ko.is_file() {
        let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
        if output.trim().is_empty() {
            output = String::from_utf8_lossy(&out.stdout).into_owned();
        }
        return Err(KbuildError::Compile {
            name: spec.name.clone(),
            output,
        });
    }
    Ok((ko, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn strip(ko: &Path, name: &str) -> Result<(), KbuildError> {
    let strip = Command::new("strip")
        .args(STRIP_ARGS)
        .arg(ko)
        .output()
        .map_err(KbuildError::Make)?;
    if !strip.status.success() {
        return Err(KbuildError::Compile {
            name: name.to_owned(),
            output: format!("strip: {}", String::from_utf8_lossy(&strip.stderr)),
        });
    }
    Ok(())
}

/// The `Kbuild` file for one module made of `objects`.
fn kbuild_file(name: &str, objects: &[String], ccflags: &[String]) -> String {
    let mut text = String::from("# Generated by kstack: one livepatch module.\n");
    let single_same_name = objects.len() == 1 && objects[0] == format!("{name}.o");
    text.push_str(&format!("obj-m := {name}.o\n"));
    if !single_same_name {
        // A composite module; kbuild forbids an object named like the module in it.
        text.push_str(&format!("{name}-y := {}\n", objects.join(" ")));
    }
    if !ccflags.is_empty() {
        text.push_str(&format!("ccflags-y += {}\n", ccflags.join(" ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kbuild_file_single_and_composite() {
        assert_eq!(
            kbuild_file("m", &["m.o".into()], &[]),
            "# Generated by kstack: one livepatch module.\nobj-m := m.o\n"
        );
        assert_eq!(
            kbuild_file("m", &["a.o".into(), "b.o".into()], &["-I/x".into()]),
            "# Generated by kstack: one livepatch module.\nobj-m := m.o\nm-y := a.o b.o\nccflags-y += -I/x\n"
        );
    }

    #[test]
    fn missing_headers_and_bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ModuleSpec {
            name: "x".into(),
            sources: vec![],
            ccflags: vec![],
        };
        assert!(matches!(
            build_module(Path::new("/nonexistent"), &spec, dir.path()),
            Err(KbuildError::NoHeaders(_))
        ));
        let fake = tempfile::tempdir().unwrap();
        std::fs::write(fake.path().join("Makefile"), "").unwrap();
        let bad = ModuleSpec {
            name: "9-x".into(),
            ..spec
        };
        assert!(matches!(
            build_module(fake.path(), &bad, dir.path()),
            Err(KbuildError::BadName(_))
        ));
    }
}
