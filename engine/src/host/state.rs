//! The host's record of what kstack did: numbered generations, and the lock that
//! keeps two kstack runs from interleaving.
//!
//! `state.toml` in the state directory lists every generation (the stack commit a
//! successful sync made current, with its modules and time) and which one is current.
//! It is replaced atomically (write a temporary file, fsync, rename), so a crash leaves
//! either the old or the new file. It is a cross-check, not the truth: the kernel's
//! own view decides what is applied, and a difference is reported as drift.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

const STATE_FILE: &str = "state.toml";
const LOCK_FILE: &str = "lock";
/// Mode of the state directory when kstack creates it: only root reads what the host
/// ran, and only root may change it.
pub const STATE_DIR_MODE: u32 = 0o700;
/// Mode of the lock and the state file.
pub const STATE_FILE_MODE: u32 = 0o600;
/// The outcome of the last sync or rollback, for monitoring.
const LAST_SYNC_FILE: &str = "last-sync.toml";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("another kstack is running (pid {holder}, lock {path}); try again when it is done")]
    Busy { path: PathBuf, holder: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("there is no generation {0}")]
    NoSuchGeneration(u64),
}

/// One stack commit that a sync made current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    pub number: u64,
    /// The stack commit (hex), or empty for "no kstack patches".
    pub commit: String,
    pub stack: String,
    pub build_id: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// The kstack modules applied, bottom first.
    pub modules: Vec<String>,
    /// The SHA-256 of the commit's `stack.toml` (hex): what a later sync's head must
    /// descend from, even if the store loses the commit. Absent in generations
    /// recorded before kstack checked descent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_sha256: Option<String>,
}

/// `state.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The generation the host is on, if any.
    pub current: Option<u64>,
    #[serde(default, rename = "generation")]
    pub generations: Vec<Generation>,
}

impl State {
    pub fn current(&self) -> Option<&Generation> {
        let n = self.current?;
        self.generation(n)
    }

    pub fn generation(&self, number: u64) -> Option<&Generation> {
        self.generations.iter().find(|g| g.number == number)
    }

    /// Adds a generation and makes it current; returns its number.
    pub fn push(&mut self, mut generation: Generation) -> u64 {
        let number = self.generations.iter().map(|g| g.number).max().unwrap_or(0) + 1;
        generation.number = number;
        self.generations.push(generation);
        self.current = Some(number);
        number
    }
}

/// The state directory (`/var/lib/kstack` by default).
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

/// Held while a command changes the kernel or the state; released on drop.
#[derive(Debug)]
pub struct Lock {
    _flock: Flock<File>,
}

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> StateDir {
        StateDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
        let path = path.to_owned();
        move |source| StateError::Io { path, source }
    }

    /// Creates the directory (mode 0700) if it does not exist.
    fn create(&self) -> Result<(), StateError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(STATE_DIR_MODE)
            .create(&self.path)
            .map_err(self.io(&self.path))
    }

    /// The lock file's path.
    pub fn lock_path(&self) -> PathBuf {
        self.path.join(LOCK_FILE)
    }

    /// The state file's path.
    pub fn state_path(&self) -> PathBuf {
        self.path.join(STATE_FILE)
    }

    /// Takes the lock without waiting: a second kstack fails at once, naming the
    /// holder, rather than queueing behind a transition that may take minutes.
    pub fn lock(&self) -> Result<Lock, StateError> {
        use std::os::unix::fs::OpenOptionsExt;
        self.create()?;
        let path = self.path.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(STATE_FILE_MODE)
            .open(&path)
            .map_err(self.io(&path))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut flock) => {
                // For the error message of the next one to come.
                let _ = flock.set_len(0);
                let _ = writeln!(*flock, "{}", std::process::id());
                Ok(Lock { _flock: flock })
            }
            Err((_, nix::Error::EWOULDBLOCK)) => Err(StateError::Busy {
                holder: std::fs::read_to_string(&path)
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_else(|_| "unknown".into()),
                path,
            }),
            Err((_, errno)) => Err(StateError::Io {
                path,
                source: errno.into(),
            }),
        }
    }

    /// Reads the state; a missing file is the empty state.
    pub fn load(&self) -> Result<State, StateError> {
        let path = self.path.join(STATE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| StateError::Corrupt {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(StateError::Io { path, source: e }),
        }
    }

    /// Replaces the state atomically (the file is 0600: `NamedTempFile`'s mode).
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        self.create()?;
        let path = self.path.join(STATE_FILE);
        let text = toml::to_string(state).expect("State serializes: strings, numbers, tables");
        let mut tmp = tempfile::NamedTempFile::new_in(&self.path).map_err(self.io(&path))?;
        tmp.write_all(text.as_bytes()).map_err(self.io(&path))?;
        tmp.as_file().sync_all().map_err(self.io(&path))?;
        tmp.persist(&path).map_err(|e| StateError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        // The rename itself must reach the disk before we report success.
        if let Ok(dir) = File::open(&self.path) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// How the last `sync` (or `rollback`) that got the lock ended: what `status
/// --format prometheus` reports as the last sync result and time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSync {
    /// `sync` or `rollback`.
    pub operation: String,
    /// When it ended, RFC 3339 UTC, and as seconds since the epoch.
    pub finished_at: String,
    pub unix_time: i64,
    pub ok: bool,
    /// The generation the host is on afterwards (the one recorded, or kept).
    pub generation: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

impl StateDir {
    /// Records how a sync ended (best effort for the caller: monitoring must not
    /// turn a good sync into a failed one).
    pub fn save_last_sync(&self, last: &LastSync) -> Result<(), StateError> {
        self.create()?;
        let path = self.path.join(LAST_SYNC_FILE);
        let text = toml::to_string(last).expect("LastSync serializes: strings and numbers");
        let mut tmp = tempfile::NamedTempFile::new_in(&self.path).map_err(self.io(&path))?;
        tmp.write_all(text.as_bytes()).map_err(self.io(&path))?;
        tmp.persist(&path).map_err(|e| StateError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// The last sync's outcome, `None` before the first (or when unreadable).
    pub fn last_sync(&self) -> Option<LastSync> {
        let text = std::fs::read_to_string(self.path.join(LAST_SYNC_FILE)).ok()?;
        toml::from_str(&text).ok()
    }
}

/// The current time as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod last_sync_tests {
    use super::*;

    #[test]
    fn the_last_sync_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path().join("state"));
        assert_eq!(state.last_sync(), None);
        let last = LastSync {
            operation: "sync".into(),
            finished_at: "2023-11-14T22:13:20Z".into(),
            unix_time: 1_700_000_000,
            ok: false,
            generation: Some(3),
            error: Some("refused before anything was loaded: ...".into()),
        };
        state.save_last_sync(&last).expect("saved");
        assert_eq!(state.last_sync(), Some(last));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(commit: &str) -> Generation {
        Generation {
            number: 0,
            commit: commit.into(),
            stack: "prod".into(),
            build_id: "ab".into(),
            created_at: now_rfc3339(),
            modules: vec!["kstack_a".into()],
            stack_sha256: None,
        }
    }

    #[test]
    fn state_round_trips_and_numbers_generations() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path());
        let mut st = sd.load().unwrap();
        assert_eq!(st, State::default());
        assert_eq!(st.push(generation("c1")), 1);
        assert_eq!(st.push(generation("c2")), 2);
        sd.save(&st).unwrap();
        let back = sd.load().unwrap();
        assert_eq!(back, st);
        assert_eq!(back.current().unwrap().commit, "c2");
    }

    #[test]
    fn a_second_lock_fails_at_once_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path());
        let held = sd.lock().unwrap();
        let err = sd.lock().unwrap_err();
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(held);
        sd.lock().unwrap();
    }

    #[test]
    fn the_directory_lock_and_state_are_private_when_kstack_creates_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path().join("a/state"));
        let lock = sd.lock().unwrap();
        sd.save(&State::default()).unwrap();
        drop(lock);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(sd.path()), STATE_DIR_MODE);
        assert_eq!(mode(&sd.lock_path()), STATE_FILE_MODE);
        assert_eq!(mode(&sd.state_path()), STATE_FILE_MODE);
    }

    #[test]
    fn a_damaged_state_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "current = [").unwrap();
        let err = StateDir::new(dir.path()).load().unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    }
}
