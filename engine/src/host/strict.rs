//! Strict modes, as sshd has them: before `sync` or `rollback` acts on the running
//! kernel as root, every file that decides what it loads must be writable by root
//! alone. A store, config, state directory or key file that another user can change
//! (owned by them, or group- or world-writable, or inside a directory that is) would
//! let that user steer what root loads into the kernel: moving a stack's ref back,
//! trusting another key, rewriting the generations the downgrade check reads.
//!
//! A path is safe when it and every directory above it are owned by root (or by the
//! user kstack runs as) and not writable by group or others. Two exceptions, as
//! sshd's: a world-writable directory with the sticky bit owned by root (`/tmp`)
//! above a checked path, since no one else can rename or remove what is in it; and
//! group write for group root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The sticky bit of `st_mode` (include/uapi/linux/stat.h `S_ISVTX`).
const S_ISVTX: u32 = 0o1000;

/// A path that someone other than root could write.
#[derive(Debug, thiserror::Error)]
pub enum StrictError {
    #[error(
        "{} is writable by {who} (owner uid {uid}, mode {mode:04o}): refusing to act on files another user can change",
        place(what, target, path)
    )]
    Writable {
        what: String,
        /// The path that was checked.
        target: PathBuf,
        /// The path that is writable: it, a directory above it, or a file below it.
        path: PathBuf,
        who: &'static str,
        uid: u32,
        mode: u32,
    },
    #[error("cannot check {what} {path}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How an error names the writable path: the checked one, or where it is.
fn place(what: &str, target: &Path, path: &Path) -> String {
    if path == target {
        format!("{what} {}", path.display())
    } else if target.starts_with(path) {
        format!(
            "{}, a directory above {what} {},",
            path.display(),
            target.display()
        )
    } else {
        format!("{}, in {what} {},", path.display(), target.display())
    }
}

/// What to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The path and the directories above it.
    Path,
    /// Also everything below it, except the contents of `objects/` (a Git store's
    /// objects are content-addressed and verified by digest; their directories
    /// are still checked).
    Tree,
}

/// Checks `path` (named `what` in errors) and the directories above it; with
/// [`Scope::Tree`], what is below it too. A path that does not exist is fine (kstack
/// creates it privately), the directories above it are still checked.
pub fn check(what: &str, path: &Path, scope: Scope) -> Result<(), StrictError> {
    let io = |path: &Path, source| StrictError::Io {
        what: what.to_owned(),
        path: path.to_owned(),
        source,
    };
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir().map_err(|e| io(path, e))?.join(path)
    };
    // The nearest existing path, with symlinks resolved: what the kernel would open.
    let mut existing = absolute.as_path();
    let resolved = loop {
        match existing.canonicalize() {
            Ok(p) => break p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match existing.parent() {
                Some(parent) => existing = parent,
                None => return Err(io(&absolute, e)),
            },
            Err(e) => return Err(io(existing, e)),
        }
    };
    let found = existing == absolute;
    let mut ancestors: Vec<&Path> = resolved.ancestors().collect();
    ancestors.reverse();
    let last = ancestors.len() - 1;
    let target = if found { resolved.as_path() } else { &absolute };
    for (i, dir) in ancestors.iter().enumerate() {
        let is_target = i == last && found;
        check_one(what, target, dir, !is_target)?;
    }
    if scope == Scope::Tree && found && resolved.is_dir() {
        check_below(what, &resolved, &resolved, &resolved.join("objects"))?;
    }
    Ok(())
}

fn check_below(what: &str, target: &Path, dir: &Path, objects: &Path) -> Result<(), StrictError> {
    let io = |path: &Path, source| StrictError::Io {
        what: what.to_owned(),
        path: path.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| io(&path, e))?;
        if kind.is_dir() {
            check_one(what, target, &path, false)?;
            check_below(what, target, &path, objects)?;
        } else if !path.starts_with(objects) {
            check_one(what, target, &path, false)?;
        }
    }
    Ok(())
}

/// Checks one path's owner and mode; `above` says it is a directory above the
/// checked path (where a root-owned sticky directory is fine).
fn check_one(what: &str, target: &Path, path: &Path, above: bool) -> Result<(), StrictError> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| StrictError::Io {
        what: what.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    // A symlink's own mode means nothing; where it points was checked, resolved.
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    let uid = meta.uid();
    let me = nix::unistd::geteuid().as_raw();
    let writable = |who| StrictError::Writable {
        what: what.to_owned(),
        target: target.to_owned(),
        path: path.to_owned(),
        who,
        uid,
        mode,
    };
    if uid != 0 && uid != me {
        return Err(writable("its owner"));
    }
    if mode & 0o002 != 0 && !(above && uid == 0 && mode & S_ISVTX != 0) {
        return Err(writable("every user"));
    }
    if mode & 0o020 != 0 && meta.gid() != 0 {
        return Err(writable("its group"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn private_paths_pass_and_writable_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir_all(store.join("refs/kstack")).unwrap();
        std::fs::create_dir_all(store.join("objects/ab")).unwrap();
        std::fs::write(store.join("refs/kstack/x"), "").unwrap();
        std::fs::write(store.join("objects/ab/cd"), "").unwrap();
        check("store", &store, Scope::Tree).unwrap();
        // Not there yet: the directories above it are what counts.
        check("state directory", &dir.path().join("state/x"), Scope::Path).unwrap();

        // An object's own mode does not matter (digests do); a ref's does.
        set_mode(&store.join("objects/ab/cd"), 0o666);
        check("store", &store, Scope::Tree).unwrap();
        set_mode(&store.join("refs/kstack/x"), 0o666);
        let err = check("store", &store, Scope::Tree).unwrap_err();
        assert!(err.to_string().contains("refs/kstack/x, in store"), "{err}");
        assert!(err.to_string().contains("every user"), "{err}");
        set_mode(&store.join("refs/kstack/x"), 0o644);
        set_mode(&store.join("objects/ab"), 0o777);
        assert!(check("store", &store, Scope::Tree).is_err());
        set_mode(&store.join("objects/ab"), 0o755);

        // A directory above, world-writable without the sticky bit.
        set_mode(dir.path(), 0o777);
        let err = check("config", &store, Scope::Path).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "{}, a directory above config {}",
                dir.path().display(),
                store.display()
            )),
            "{err}"
        );
        set_mode(dir.path(), 0o1777);
        check("config", &store, Scope::Path).unwrap();
        // The checked path itself may not be a sticky world-writable directory.
        assert!(check("state directory", dir.path(), Scope::Path).is_err());
        set_mode(dir.path(), 0o700);
    }

    #[test]
    fn a_file_owned_by_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return; // only root can give a file away
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kstack.toml");
        std::fs::write(&file, "").unwrap();
        nix::unistd::chown(&file, Some(nix::unistd::Uid::from_raw(1000)), None).unwrap();
        let err = check("config", &file, Scope::Path).unwrap_err();
        assert!(err.to_string().contains("its owner"), "{err}");
        assert!(err.to_string().contains("uid 1000"), "{err}");
    }
}
