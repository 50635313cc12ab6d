//! What a kernel's builds remember about its translation units, kept in the kernel's
//! cache directory (`<kernel dir>/units/`):
//!
//! - **the compile command** kbuild ran for a unit (its `.unit.o.cmd` record: the
//!   compiler with every flag, then objtool), recorded after the first build that
//!   compiled the unit, so that later builds compile it directly, without kbuild's
//!   tree-wide preparation and without a full copy of the tree;
//! - **pre objects**: a unit compiled before a patch is the same object for every
//!   patch that touches it at the same stack position, so it is kept, keyed by
//!   everything it depends on ([`PreKey`]).
//!
//! Every file is written to a temporary name and renamed, so that builds that run at
//! the same time, or one killed half-way, never leave a partial record.

use std::path::{Path, PathBuf};

use kstack_store::digest::Sha256Digest;

use super::tree::EXTRA_CFLAGS;

/// Bumped when what a record means changes; older records are then ignored.
const FORMAT: &str = "kstack unit records 2";

/// The records of one kernel.
#[derive(Debug, Clone)]
pub struct UnitRecords {
    dir: PathBuf,
}

/// A recorded compile: the shell command, run from the top of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitCommand {
    pub unit: String,
    pub command: String,
}

impl UnitCommand {
    /// The livepatch object the unit is part of: a module (`xfs`) when kbuild
    /// compiled it with `-DMODULE`, named by its `KBUILD_MODNAME`, else `vmlinux`.
    pub fn object(&self) -> String {
        super::tree::object_of_compile(&self.command)
            .unwrap_or_else(|| kstack_kfacts::livepatch::VMLINUX.to_owned())
    }
}

/// Everything a pre object depends on. Two builds with equal keys compile the same
/// source with the same compiler and flags, so their pre objects are the same.
#[derive(Debug, Clone)]
pub struct PreKey {
    hex: String,
}

impl PreKey {
    /// `kernel` names the kernel's prepared source (release, package version and the
    /// digest of its `.config`), `compiler` the compiler (`gcc --version`), `earlier`
    /// the diffs applied below the patch (any of them may change a header the unit
    /// includes), `source` the unit's source file as it is before the patch.
    pub fn new(
        kernel: &str,
        compiler: &str,
        earlier: &[&[u8]],
        unit: &str,
        source: &[u8],
    ) -> PreKey {
        // Every part length-prefixed, so that no two lists of parts hash alike.
        let mut buf = Vec::new();
        let mut part = |bytes: &[u8]| {
            buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            buf.extend_from_slice(bytes);
        };
        for text in [FORMAT, kernel, compiler, EXTRA_CFLAGS, unit] {
            part(text.as_bytes());
        }
        part(&(earlier.len() as u64).to_le_bytes());
        for diff in earlier {
            part(Sha256Digest::of(diff).as_bytes());
        }
        part(Sha256Digest::of(source).as_bytes());
        PreKey {
            hex: Sha256Digest::of(&buf).to_hex(),
        }
    }
}

impl UnitRecords {
    pub fn new(kernel_dir: &Path) -> UnitRecords {
        UnitRecords {
            dir: kernel_dir.join("units"),
        }
    }

    fn command_path(&self, unit: &str) -> PathBuf {
        self.dir
            .join("commands")
            .join(format!("{}.cmd", unit.replace('/', "__")))
    }

    fn pre_path(&self, key: &PreKey) -> PathBuf {
        self.dir.join("pre").join(format!("{}.o", key.hex))
    }

    /// The recorded compile of `unit`, if a build recorded it with the flags this
    /// kstack compiles with.
    pub fn command(&self, unit: &str) -> Option<UnitCommand> {
        let text = std::fs::read_to_string(self.command_path(unit)).ok()?;
        let (header, command) = text.split_once('\n')?;
        (header == record_header() && !command.trim().is_empty()).then(|| UnitCommand {
            unit: unit.to_owned(),
            command: command.trim_end().to_owned(),
        })
    }

    /// Records how kbuild compiled `unit` in `tree` (from its `.cmd` file), unless
    /// the compile read a file that `prepared` lacks: one kbuild generated for this
    /// build (`crypto/ecrdsa_params.asn1.h`), which a tree of links to `prepared`
    /// would not have. Returns whether it recorded.
    pub fn record_command(
        &self,
        tree: &Path,
        prepared: &Path,
        unit: &str,
    ) -> std::io::Result<bool> {
        let cmd_file = cmd_file(tree, unit);
        let text = std::fs::read_to_string(&cmd_file)?;
        let command = command_of_record(&text, unit).ok_or_else(|| {
            std::io::Error::other(format!(
                "{}: no compile command for {unit}",
                cmd_file.display()
            ))
        })?;
        if dependencies(&text, unit)
            .iter()
            .any(|dep| !Path::new(dep).is_absolute() && !prepared.join(dep).exists())
        {
            return Ok(false);
        }
        write_atomic(
            &self.command_path(unit),
            format!("{}\n{command}\n", record_header()).as_bytes(),
        )?;
        Ok(true)
    }

    /// The pre object kept under `key`.
    pub fn pre_object(&self, key: &PreKey) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.pre_path(key)).ok()?;
        // An object that is not ELF is no record (a disk error, a hand edit).
        bytes.starts_with(b"\x7fELF").then_some(bytes)
    }

    pub fn keep_pre_object(&self, key: &PreKey, object: &[u8]) -> std::io::Result<()> {
        write_atomic(&self.pre_path(key), object)
    }
}

/// What a command record is valid for: kstack's own flags.
fn record_header() -> String {
    format!("# {FORMAT}; KCFLAGS={EXTRA_CFLAGS}")
}

/// kbuild's record of how it built `unit`: `dir/.name.o.cmd`.
pub fn cmd_file(tree: &Path, unit: &str) -> PathBuf {
    let path = Path::new(unit);
    tree.join(path.parent().unwrap_or(Path::new("")))
        .join(format!(
            ".{}.cmd",
            path.file_name().and_then(|n| n.to_str()).unwrap_or(unit)
        ))
}

/// The shell command of a kbuild `.cmd` record: the line `cmd_<unit> := ...`
/// (`savedcmd_` since Linux 6.3), with make's escaping undone (`$$` is `$`,
/// `$(pound)` is `#`).
pub fn command_of_record(text: &str, unit: &str) -> Option<String> {
    let line = text.lines().find_map(|l| {
        l.strip_prefix(&format!("cmd_{unit} := "))
            .or_else(|| l.strip_prefix(&format!("savedcmd_{unit} := ")))
    })?;
    let command = line.replace("$(pound)", "#").replace("$$", "$");
    (!command.trim().is_empty()).then_some(command)
}

/// The files a kbuild `.cmd` record lists as read by the compile (`deps_<unit> :=`,
/// one per continued line; `$(wildcard ...)` lines are configuration checks, not
/// files read).
pub fn dependencies(text: &str, unit: &str) -> Vec<String> {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with(&format!("deps_{unit} :=")));
    let mut deps = Vec::new();
    let Some(first) = lines.next() else {
        return deps;
    };
    let mut continued = first.trim_end().ends_with('\\');
    for line in lines {
        if !continued {
            break;
        }
        continued = line.trim_end().ends_with('\\');
        let item = line.trim().trim_end_matches('\\').trim();
        if !item.is_empty() && !item.starts_with("$(") {
            deps.push(item.to_owned());
        }
    }
    deps
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = "cmd_fs/proc/version.o := gcc -Wp,-MMD,fs/proc/.version.o.d -nostdinc \
        -DKBUILD_MODNAME='\"proc\"' -DX=$$HOME -DY='$(pound)' -c -o fs/proc/version.o \
        fs/proc/version.c   ; ./tools/objtool/objtool --orc fs/proc/version.o\n\n\
        source_fs/proc/version.o := fs/proc/version.c\n\n\
        deps_fs/proc/version.o := \\\n  include/linux/kconfig.h \\\n";

    #[test]
    fn the_command_of_a_kbuild_record_is_unescaped() {
        let command = command_of_record(RECORD, "fs/proc/version.o").unwrap();
        assert!(command.starts_with("gcc -Wp,-MMD,fs/proc/.version.o.d"));
        assert!(command.contains("-DX=$HOME -DY='#'"), "{command}");
        assert!(command.ends_with("objtool --orc fs/proc/version.o"));
        // Linux 6.3 renamed the line.
        let newer = RECORD.replace("cmd_fs/proc", "savedcmd_fs/proc");
        assert_eq!(
            command_of_record(&newer, "fs/proc/version.o").as_deref(),
            Some(command.as_str())
        );
        // Another unit's record is not this one's.
        assert_eq!(command_of_record(RECORD, "fs/proc/uptime.o"), None);
    }

    #[test]
    fn commands_and_pre_objects_are_kept_and_found() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("fs/proc")).unwrap();
        std::fs::write(tree.join("fs/proc/.version.o.cmd"), RECORD).unwrap();
        // What the compile read is in the tree it links to.
        std::fs::create_dir_all(tree.join("include/linux")).unwrap();
        std::fs::write(tree.join("include/linux/kconfig.h"), "").unwrap();
        let records = UnitRecords::new(&dir.path().join("kernel"));
        assert_eq!(records.command("fs/proc/version.o"), None);
        assert!(
            records
                .record_command(&tree, &tree, "fs/proc/version.o")
                .unwrap()
        );
        let command = records.command("fs/proc/version.o").unwrap();
        assert_eq!(command.object(), "vmlinux");
        assert!(command.command.contains("objtool"));
        assert!(
            records
                .record_command(&tree, &tree, "fs/proc/uptime.o")
                .is_err()
        );

        let key = PreKey::new("6.1.0-56 6.1.0-56", "gcc 12", &[b"a diff"], "u.o", b"src");
        assert_eq!(records.pre_object(&key), None);
        records.keep_pre_object(&key, b"\x7fELF object").unwrap();
        assert_eq!(records.pre_object(&key).unwrap(), b"\x7fELF object");
        // A record that is not an object is none.
        records.keep_pre_object(&key, b"junk").unwrap();
        assert_eq!(records.pre_object(&key), None);
    }

    #[test]
    fn a_compile_that_read_a_file_kbuild_generated_is_not_recorded() {
        let text = "cmd_crypto/ecrdsa.o := gcc -c -o crypto/ecrdsa.o crypto/ecrdsa.c\n\n\
            deps_crypto/ecrdsa.o := \\\n  include/linux/kconfig.h \\\n    \
            $(wildcard include/config/FOO) \\\n  crypto/ecrdsa_params.asn1.h \\\n\n\
            crypto/ecrdsa.o: $(deps_crypto/ecrdsa.o)\n";
        assert_eq!(
            dependencies(text, "crypto/ecrdsa.o"),
            ["include/linux/kconfig.h", "crypto/ecrdsa_params.asn1.h"]
        );
        let dir = tempfile::tempdir().unwrap();
        let (tree, prepared) = (dir.path().join("tree"), dir.path().join("prepared"));
        std::fs::create_dir_all(tree.join("crypto")).unwrap();
        std::fs::create_dir_all(prepared.join("include/linux")).unwrap();
        std::fs::write(prepared.join("include/linux/kconfig.h"), "").unwrap();
        std::fs::write(tree.join("crypto/.ecrdsa.o.cmd"), text).unwrap();
        let records = UnitRecords::new(&dir.path().join("kernel"));
        // The generated header is in the work tree only.
        assert!(
            !records
                .record_command(&tree, &prepared, "crypto/ecrdsa.o")
                .unwrap()
        );
        assert_eq!(records.command("crypto/ecrdsa.o"), None);
        std::fs::create_dir_all(prepared.join("crypto")).unwrap();
        std::fs::write(prepared.join("crypto/ecrdsa_params.asn1.h"), "").unwrap();
        assert!(
            records
                .record_command(&tree, &prepared, "crypto/ecrdsa.o")
                .unwrap()
        );
    }

    #[test]
    fn a_pre_key_changes_with_everything_the_object_depends_on() {
        let base = || PreKey::new("k", "gcc", &[b"d1"], "a/b.o", b"src").hex;
        assert_eq!(base(), base());
        for other in [
            PreKey::new("k2", "gcc", &[b"d1"], "a/b.o", b"src"),
            PreKey::new("k", "gcc 13", &[b"d1"], "a/b.o", b"src"),
            PreKey::new("k", "gcc", &[b"d2"], "a/b.o", b"src"),
            PreKey::new("k", "gcc", &[b"d1", b"d2"], "a/b.o", b"src"),
            PreKey::new("k", "gcc", &[], "a/b.o", b"src"),
            PreKey::new("k", "gcc", &[b"d1"], "a/c.o", b"src"),
            PreKey::new("k", "gcc", &[b"d1"], "a/b.o", b"src2"),
        ] {
            assert_ne!(other.hex, base());
        }
    }

    #[test]
    fn a_module_units_command_names_its_module() {
        let command = UnitCommand {
            unit: "fs/xfs/xfs_stats.o".into(),
            command: "gcc -DMODULE -DKBUILD_MODNAME='\"xfs\"' -c -o fs/xfs/xfs_stats.o x.c".into(),
        };
        assert_eq!(command.object(), "xfs");
    }
}
