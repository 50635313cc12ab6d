//! Linking a livepatch module without a kbuild pass.
//!
//! `make -C <headers> M=<dir> modules` spends most of its time reading the kernel's
//! makefiles and deciding what to do: for a module of one generated C file and a few
//! prebuilt objects it always does the same five things. Those commands are recorded
//! from a kbuild link for the kernel (its `.cmd` files), with the work tree, the
//! module's name and the C object's name made placeholders, and later links of the
//! same kernel run them directly, the way kbuild would:
//!
//! 1. compile each C file of the module (with objtool, as the record says), then
//!    `fixdep` writes the object's `.cmd` record as kbuild's rule does;
//! 2. link the objects into `<module>.o` (`ld -r`, from `<module>.mod`);
//! 3. modpost: check the symbols and write `<module>.mod.c` (versions, vermagic);
//! 4. compile `<module>.mod.c`;
//! 5. link `<module>.ko` with the kernel's module linker script.
//!
//! The record is valid for the kernel's headers it was made with and for the
//! compiler flags kstack gives the module ([`LinkRecipe::ccflags`]); a step that
//! fails is reported, and the caller links with kbuild instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Bumped when what a record means changes; older records are then ignored.
const FORMAT: &str = "kstack module link record 3";

/// Where the link record of a kernel is kept: `<kernel dir>/units/module-link`.
#[derive(Debug, Clone)]
pub struct LinkRecords {
    path: PathBuf,
}

/// kbuild's commands for linking one livepatch module, generalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRecipe {
    /// The module's `ccflags-y`, generalized: a recipe links only modules given the
    /// same flags.
    pub ccflags: String,
    compile: String,
    link_objects: String,
    modpost: String,
    compile_mod: String,
    link_ko: String,
    /// The line kbuild wrote to `modules.order`, which modpost reads: the module's
    /// `.ko` up to 6.1, its `.o` since 6.2.
    modules_order: String,
    /// The compile of `.module-common.o` (vermagic and the other `.modinfo` every
    /// module carries, scripts/module-common.c), which kbuild links into each `.ko`
    /// since 6.11; empty before.
    compile_common: String,
    /// What kbuild runs on the `.ko` after linking it when the kernel's headers ship
    /// a `vmlinux` to take BTF from (Debian's 6.12): pahole writes the module's
    /// `.BTF`, resolve_btfids its BTF IDs (scripts/Makefile.modfinal, `cmd_btf_ko`).
    /// No `.cmd` file keeps it: it is taken from make's `V=1` output. Empty when
    /// kbuild ran none.
    btf: String,
}

/// The names that differ from one link to the next.
const TREE: &str = "{KSTACK_TREE}";
const MODULE: &str = "{KSTACK_MODULE}";
const OBJECT: &str = "{KSTACK_OBJECT}";

/// The parts of a link that vary: the work tree everything is under, the module's
/// name and its directory.
#[derive(Debug, Clone, Copy)]
pub struct LinkNames<'a> {
    pub tree: &'a Path,
    pub module: &'a str,
    pub build_dir: &'a Path,
}

/// A step of a replayed link that did not succeed.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {detail}")]
pub struct ReplayError {
    pub step: String,
    pub detail: String,
}

impl LinkRecords {
    pub fn new(kernel_dir: &Path) -> LinkRecords {
        LinkRecords {
            path: kernel_dir.join("units").join("module-link"),
        }
    }

    /// The recipe, if a link recorded one in this format.
    pub fn recipe(&self) -> Option<LinkRecipe> {
        LinkRecipe::parse(&std::fs::read_to_string(&self.path).ok()?)
    }

    /// Records the link kbuild just did in `names.build_dir` of a module whose C
    /// object `c_object` was compiled with `ccflags`. Returns whether it recorded: a
    /// link whose commands the placeholders do not cover is not.
    pub fn record(
        &self,
        names: &LinkNames<'_>,
        c_object: &str,
        ccflags: &str,
        commands: &str,
    ) -> std::io::Result<bool> {
        let Some(recipe) = LinkRecipe::from_kbuild(names, c_object, ccflags, commands) else {
            return Ok(false);
        };
        super::units::write_atomic(&self.path, recipe.to_text().as_bytes())?;
        Ok(true)
    }
}

impl LinkRecipe {
    /// The recipe of the link kbuild did in `names.build_dir`, from its `.cmd` files
    /// and `commands`, what make printed with `V=1`. None when a step cannot be
    /// recorded: a link whose `.ko` has BTF that no recorded command makes is not.
    pub fn from_kbuild(
        names: &LinkNames<'_>,
        c_object: &str,
        ccflags: &str,
        commands: &str,
    ) -> Option<Self> {
        let tree = names.tree.to_str()?;
        let dir = names.build_dir;
        let read = |cmd_file: String, target: String| -> Option<String> {
            let text = std::fs::read_to_string(dir.join(cmd_file)).ok()?;
            let target = dir.join(target);
            let command = super::units::command_of_record(&text, target.to_str()?)?;
            // A placeholder already in a command could not be told from ours.
            if [TREE, MODULE, OBJECT].iter().any(|p| command.contains(p)) {
                return None;
            }
            Some(
                command
                    .replace(tree, TREE)
                    .replace(c_object, OBJECT)
                    .replace(names.module, MODULE),
            )
        };
        let module = names.module;
        let has_btf = std::fs::read(dir.join(format!("{module}.ko")))
            .is_ok_and(|ko| ko.windows(5).any(|w| w == b".BTF\0"));
        let recipe = LinkRecipe {
            ccflags: generalize(ccflags, tree, names.module),
            compile: read(format!(".{c_object}.o.cmd"), format!("{c_object}.o"))?,
            link_objects: read(format!(".{module}.o.cmd"), format!("{module}.o"))?,
            modpost: read(".Module.symvers.cmd".into(), "Module.symvers".into())?,
            compile_mod: read(format!(".{module}.mod.o.cmd"), format!("{module}.mod.o"))?,
            link_ko: read(format!(".{module}.ko.cmd"), format!("{module}.ko"))?,
            // kbuild's record of `.x.o` is `..x.o.cmd`.
            compile_common: if dir.join("..module-common.o.cmd").is_file() {
                read("..module-common.o.cmd".into(), ".module-common.o".into())?
            } else {
                String::new()
            },
            // Only when it ran: the echo shows both branches of kbuild's `if`.
            btf: btf_step(commands)
                .filter(|_| has_btf)
                .map(|c| generalize(&c, tree, module))
                .unwrap_or_default(),
            modules_order: generalize(
                std::fs::read_to_string(dir.join("modules.order"))
                    .ok()?
                    .lines()
                    .next()?,
                tree,
                module,
            ),
        };
        if has_btf && !recipe.btf.contains(MODULE) {
            return None;
        }
        // The object's command must name it; the others must name the module.
        (recipe.compile.contains(OBJECT)
            && [
                &recipe.link_objects,
                &recipe.compile_mod,
                &recipe.link_ko,
                &recipe.modules_order,
            ]
            .iter()
            .all(|c| c.contains(MODULE)))
        .then_some(recipe)
    }

    fn to_text(&self) -> String {
        let mut text = format!("# {FORMAT}\n");
        for (key, value) in self.fields() {
            text.push_str(&format!("{key} := {value}\n"));
        }
        text
    }

    fn fields(&self) -> [(&'static str, &String); 9] {
        [
            ("ccflags", &self.ccflags),
            ("compile", &self.compile),
            ("link_objects", &self.link_objects),
            ("modpost", &self.modpost),
            ("compile_mod", &self.compile_mod),
            ("link_ko", &self.link_ko),
            ("modules_order", &self.modules_order),
            ("compile_common", &self.compile_common),
            ("btf", &self.btf),
        ]
    }

    fn parse(text: &str) -> Option<LinkRecipe> {
        let mut lines = text.lines();
        if lines.next()? != format!("# {FORMAT}") {
            return None;
        }
        let mut get = std::collections::BTreeMap::new();
        for line in lines {
            let (key, value) = line.split_once(" := ")?;
            get.insert(key, value.to_owned());
        }
        let mut take = |key: &str| get.remove(key).filter(|v| !v.trim().is_empty());
        Some(LinkRecipe {
            ccflags: take("ccflags").unwrap_or_default(),
            compile: take("compile")?,
            link_objects: take("link_objects")?,
            modpost: take("modpost")?,
            compile_mod: take("compile_mod")?,
            link_ko: take("link_ko")?,
            modules_order: take("modules_order")?,
            compile_common: take("compile_common").unwrap_or_default(),
            btf: take("btf").unwrap_or_default(),
        })
    }

    /// Whether this recipe links a module given `ccflags` in `tree`.
    pub fn fits(&self, ccflags: &str, names: &LinkNames<'_>) -> bool {
        names
            .tree
            .to_str()
            .is_some_and(|tree| self.ccflags == generalize(ccflags, tree, names.module))
    }

    /// Links module `names.module` in `names.build_dir`, which holds its sources as
    /// kbuild would find them: `c_objects` to compile, then `shipped` prebuilt objects
    /// (`<stem>.o_shipped`), in link order as `objects`. Commands run from
    /// `kernel_dir`, as under `make -C`. Returns the `.ko`'s path.
    pub fn link(
        &self,
        kernel_dir: &Path,
        names: &LinkNames<'_>,
        objects: &[(String, bool)],
    ) -> Result<PathBuf, ReplayError> {
        let tree = names.tree.to_str().ok_or_else(|| ReplayError {
            step: "work tree".into(),
            detail: "path is not UTF-8".into(),
        })?;
        let dir = names.build_dir;
        let fill = |command: &str, object: &str| {
            command
                .replace(OBJECT, object)
                .replace(MODULE, names.module)
                .replace(TREE, tree)
        };
        let io = |step: &str, e: std::io::Error| ReplayError {
            step: step.to_owned(),
            detail: e.to_string(),
        };
        // Prebuilt objects are copied into place, as kbuild's `cmd_shipped` does.
        for (stem, compiled) in objects {
            if !compiled {
                std::fs::copy(
                    dir.join(format!("{stem}.o_shipped")),
                    dir.join(format!("{stem}.o")),
                )
                .map_err(|e| io(&format!("copy {stem}.o_shipped"), e))?;
            }
        }
        // The C files at once, each with its dependency record after it, and the
        // objects every module links beside them.
        let common = if self.compile_common.is_empty() {
            None
        } else {
            let command = fill(&self.compile_common, "");
            Some(
                shell(&command, kernel_dir)
                    .spawn()
                    .map_err(|e| io("compile .module-common.o", e))?,
            )
        };
        let mut children = Vec::new();
        for (stem, _) in objects.iter().filter(|(_, compiled)| *compiled) {
            let command = fill(&self.compile, stem);
            let child = shell(&command, kernel_dir)
                .spawn()
                .map_err(|e| io(&format!("compile {stem}.c"), e))?;
            children.push((stem, command, child));
        }
        for (stem, command, child) in children {
            let step = format!("compile {stem}.c");
            wait(child, &step)?;
            fixdep(kernel_dir, dir, stem, &command).map_err(|detail| ReplayError {
                step: format!("fixdep {stem}.o"),
                detail,
            })?;
        }
        if let Some(child) = common {
            wait(child, "compile .module-common.o")?;
        }
        let lines = |items: Vec<String>| items.concat();
        let module_list = lines(
            objects
                .iter()
                .map(|(stem, _)| format!("{}\n", dir.join(format!("{stem}.o")).display()))
                .collect(),
        );
        std::fs::write(dir.join(format!("{}.mod", names.module)), module_list)
            .map_err(|e| io("write the module's object list", e))?;
        std::fs::write(
            dir.join("modules.order"),
            format!("{}\n", fill(&self.modules_order, "")),
        )
        .map_err(|e| io("write modules.order", e))?;
        for (step, command) in [
            ("link the objects", &self.link_objects),
            ("modpost", &self.modpost),
            ("compile the module's .mod.c", &self.compile_mod),
            ("link the .ko", &self.link_ko),
        ] {
            let child = shell(&fill(command, ""), kernel_dir)
                .spawn()
                .map_err(|e| io(step, e))?;
            wait(child, step)?;
        }
        if !self.btf.is_empty() {
            let step = "generate the module's BTF";
            let child = shell(&fill(&self.btf, ""), kernel_dir)
                .spawn()
                .map_err(|e| io(step, e))?;
            wait(child, step)?;
        }
        let ko = dir.join(format!("{}.ko", names.module));
        if !ko.is_file() {
            return Err(ReplayError {
                step: "link the .ko".into(),
                detail: format!("{} was not written", ko.display()),
            });
        }
        Ok(ko)
    }
}

/// The commands of `cmd_btf_ko` that ran, from make's `V=1` output: kbuild echoes
/// `if [ ! -f vmlinux ]; then printf "Skipping...\n" ...; else <pahole>; <resolve_btfids>;
/// fi;` through the shell's `echo`, which breaks the line at the `\n`; the `else`
/// branch is what a link with BTF ran.
fn btf_step(commands: &str) -> Option<String> {
    let line = commands.lines().find(|l| l.contains("--btf_base"))?;
    let start = line
        .find("LLVM_OBJCOPY=")
        .or_else(|| line.find("else ").map(|at| at + "else ".len()))?;
    let rest = &line[start..];
    let end = rest.rfind("; fi").unwrap_or(rest.len());
    Some(rest[..end].trim().trim_end_matches(';').to_owned())
}

fn generalize(text: &str, tree: &str, module: &str) -> String {
    text.replace(tree, TREE).replace(module, MODULE)
}

fn shell(command: &str, cwd: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .envs(super::kbuild::EXPORTED_ENV.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn wait(child: std::process::Child, step: &str) -> Result<(), ReplayError> {
    let out = child.wait_with_output().map_err(|e| ReplayError {
        step: step.to_owned(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(());
    }
    let mut detail = String::from_utf8_lossy(&out.stderr).into_owned();
    if detail.trim().is_empty() {
        detail = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    Err(ReplayError {
        step: step.to_owned(),
        detail: format!("{} ({})", detail.trim(), out.status),
    })
}

/// kbuild's `cmd_and_fixdep`: the compile's dependency file becomes the object's
/// `.cmd` record (modpost reads it when it computes a module's source version).
fn fixdep(kernel_dir: &Path, dir: &Path, stem: &str, command: &str) -> Result<(), String> {
    let depfile = dir.join(format!(".{stem}.o.d"));
    let target = dir.join(format!("{stem}.o"));
    let escaped = command.replace('$', "$$").replace('#', "$(pound)");
    let out = Command::new(kernel_dir.join("scripts/basic/fixdep"))
        .arg(&depfile)
        .arg(&target)
        .arg(escaped)
        .current_dir(kernel_dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    std::fs::write(dir.join(format!(".{stem}.o.cmd")), &out.stdout).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(depfile);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_link_is_generalized_and_read_back() {
        let tree = tempfile::tempdir().unwrap();
        let dir = tree.path().join(".kstack/kbuild");
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let t = tree.path().display();
        let write = |file: &str, target: &str, command: &str| {
            std::fs::write(
                dir.join(file),
                format!("cmd_{d}/{target} := {command}\n\nsource_x := y\n"),
            )
            .unwrap();
        };
        write(
            ".kstack_ab_main.o.cmd",
            "kstack_ab_main.o",
            &format!(
                "gcc -DKBUILD_BASENAME='\"kstack_ab_main\"' -DKBUILD_MODNAME='\"kstack_ab\"' \
                 -I{t}/.kstack/module/include -c -o {d}/kstack_ab_main.o {d}/kstack_ab_main.c"
            ),
        );
        write(
            ".kstack_ab.o.cmd",
            "kstack_ab.o",
            &format!("ld -r -o {d}/kstack_ab.o @{d}/kstack_ab.mod"),
        );
        write(
            ".Module.symvers.cmd",
            "Module.symvers",
            &format!("sed 's/ko$$/o/' {d}/modules.order | scripts/mod/modpost -w -T -"),
        );
        write(
            ".kstack_ab.mod.o.cmd",
            "kstack_ab.mod.o",
            &format!("gcc -c -o {d}/kstack_ab.mod.o {d}/kstack_ab.mod.c"),
        );
        write(
            ".kstack_ab.ko.cmd",
            "kstack_ab.ko",
            &format!("ld -r -o {d}/kstack_ab.ko {d}/kstack_ab.o {d}/kstack_ab.mod.o"),
        );
        std::fs::write(dir.join("modules.order"), format!("{d}/kstack_ab.o\n")).unwrap();
        let names = LinkNames {
            tree: tree.path(),
            module: "kstack_ab",
            build_dir: &dir,
        };
        let flags = format!("-I{t}/.kstack/module/include");
        let recipe = LinkRecipe::from_kbuild(&names, "kstack_ab_main", &flags, "").unwrap();
        assert_eq!(
            recipe.compile,
            "gcc -DKBUILD_BASENAME='\"{KSTACK_OBJECT}\"' -DKBUILD_MODNAME='\"{KSTACK_MODULE}\"' \
             -I{KSTACK_TREE}/.kstack/module/include -c -o \
             {KSTACK_TREE}/.kstack/kbuild/{KSTACK_OBJECT}.o {KSTACK_TREE}/.kstack/kbuild/{KSTACK_OBJECT}.c"
        );
        assert_eq!(
            recipe.modpost,
            "sed 's/ko$/o/' {KSTACK_TREE}/.kstack/kbuild/modules.order | scripts/mod/modpost -w -T -"
        );
        assert_eq!(recipe.ccflags, "-I{KSTACK_TREE}/.kstack/module/include");
        assert_eq!(
            recipe.modules_order,
            "{KSTACK_TREE}/.kstack/kbuild/{KSTACK_MODULE}.o"
        );
        assert_eq!(LinkRecipe::parse(&recipe.to_text()), Some(recipe.clone()));

        // Another tree and module with the same flags fit; other flags do not.
        let other = tempfile::tempdir().unwrap();
        let other_names = LinkNames {
            tree: other.path(),
            module: "kstack_cd",
            build_dir: &other.path().join(".kstack/kbuild"),
        };
        let other_flags = format!("-I{}/.kstack/module/include", other.path().display());
        assert!(recipe.fits(&other_flags, &other_names));
        assert!(!recipe.fits("-DX", &other_names));

        // Another format's record is none.
        assert_eq!(LinkRecipe::parse("# kstack module link record 0\n"), None);
    }

    #[test]
    fn the_btf_step_is_taken_from_makes_echo() {
        let echoed = "  if [ ! -f vmlinux ]; then printf \"Skipping BTF generation for %s due to \
                      unavailability of vmlinux\n\
                      \" /t/x.ko 1>&2; else LLVM_OBJCOPY=\"objcopy\" /usr/bin/pahole -J -j \
                      --btf_base vmlinux /t/x.ko; ./tools/bpf/resolve_btfids/resolve_btfids -b \
                      vmlinux /t/x.ko; fi;\n";
        assert_eq!(
            btf_step(&format!("make -f x\n{echoed}ld -r x\n")).as_deref(),
            Some(
                "LLVM_OBJCOPY=\"objcopy\" /usr/bin/pahole -J -j --btf_base vmlinux /t/x.ko; \
                 ./tools/bpf/resolve_btfids/resolve_btfids -b vmlinux /t/x.ko"
            )
        );
        assert_eq!(btf_step("make -f x\nld -r x\n"), None);
    }

    #[test]
    fn a_link_the_placeholders_do_not_cover_is_not_recorded() {
        let tree = tempfile::tempdir().unwrap();
        let dir = tree.path().join("kbuild");
        std::fs::create_dir_all(&dir).unwrap();
        let names = LinkNames {
            tree: tree.path(),
            module: "kstack_ab",
            build_dir: &dir,
        };
        // No records at all.
        assert!(LinkRecipe::from_kbuild(&names, "kstack_ab_main", "", "").is_none());
    }
}
