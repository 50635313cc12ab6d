//! What every command needs from its surroundings: the config file, the store, the
//! trust policy and the state directory, each found the same way for all commands.
//!
//! Precedence, highest first: the command-line flag, the environment variable, the
//! config file, the default (root: `/var/lib/kstack/...`; others: the XDG dirs).

use std::path::{Path, PathBuf};

use kstack_engine::host::config::{Config, DEFAULT_CONFIG_PATH};
use kstack_engine::host::kernel::Sysfs;
use kstack_engine::host::reconcile::Host;
use kstack_engine::host::state::StateDir;
use kstack_store::keys::{self, TrustPolicy};
use kstack_store::store::Store;

use crate::commands::GlobalArgs;
use crate::error::{CliError, Kind};

#[derive(Debug)]
pub struct Context {
    pub config: Config,
    /// Where the config was read from; `None` when there was none (and none was
    /// required).
    pub config_path: Option<PathBuf>,
    store_flag: Option<PathBuf>,
}

impl Context {
    /// Reads the config named by `--config`/`KSTACK_CONFIG`, else the default path if
    /// it exists. With `require`, a missing config is an error: a host with no
    /// declaration must never be treated as declaring "no patches".
    pub fn load(global: &GlobalArgs, require: bool) -> Result<Context, CliError> {
        let (path, explicit) = match &global.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let (config, config_path) = if explicit || path.exists() {
            (Config::load(&path)?, Some(path))
        } else if require {
            return Err(CliError::user(format!(
                "no config file: {DEFAULT_CONFIG_PATH} does not exist"
            ))
            .with_hint("pass --config FILE (see examples/kstack.toml)"));
        } else {
            (Config::default(), None)
        };
        Ok(Context {
            config,
            config_path,
            store_flag: global.store.clone(),
        })
    }

    /// The store's path: `--store`/`KSTACK_STORE`, the config's `[store] path`, the
    /// default.
    pub fn store_path(&self) -> PathBuf {
        self.store_flag
            .clone()
            .or_else(|| self.config.store.path.clone())
            .unwrap_or_else(|| default_dir("XDG_DATA_HOME", ".local/share").join("store"))
    }

    /// Opens the store (it must exist: `kstack init` creates it).
    pub fn open_store(&self) -> Result<Store, CliError> {
        let path = self.store_path();
        Store::open(&path).map_err(|e| {
            CliError::from(e).with_hint(format!(
                "create it with `kstack init --store {}`, or point --store at it",
                path.display()
            ))
        })
    }

    /// The trust policy of the config: `[trust] keys`, `threshold` and `revoked`.
    pub fn trust(&self) -> Result<TrustPolicy, CliError> {
        let at = self
            .config_path
            .as_deref()
            .map_or_else(String::new, |p| format!(" in {}", p.display()));
        let trust = &self.config.trust;
        let parse = |keys: &[String], what: &str| {
            keys::parse_keys(keys).map_err(|e| {
                CliError::from(e)
                    .context(format!("[trust] {what}{at}"))
                    .with_kind(Kind::Data)
            })
        };
        let policy = TrustPolicy {
            keys: parse(&trust.keys, "keys")?,
            threshold: trust.threshold(),
            revoked: parse(&trust.revoked, "revoked")?,
        };
        let usable = policy
            .keys
            .iter()
            .filter(|k| !policy.revoked.contains(k))
            .count();
        // A threshold no set of keys can meet would refuse everything, silently.
        if policy.threshold == 0 || (!policy.keys.is_empty() && policy.threshold > usable) {
            return Err(CliError::new(
                Kind::Data,
                format!(
                    "[trust] threshold{at} is {}, but [trust] keys lists {usable} key(s) that are not revoked",
                    policy.threshold
                ),
            )
            .with_hint("set threshold between 1 and the number of trusted keys"));
        }
        Ok(policy)
    }

    /// The host that `sync`, `plan`, `status` and `rollback` work on.
    pub fn host<'a>(&'a self, store: &'a Store) -> Result<Host<'a>, CliError> {
        Ok(Host {
            config: &self.config,
            store,
            state: self.state_dir(),
            trust: self.trust()?,
            livepatch: Box::<Sysfs>::default(),
            allow_downgrade: false,
        })
    }

    /// Refuses, like sshd's StrictModes, to act as root on a config, store, state
    /// directory or signing key that another user could change (see
    /// `kstack_engine::host::strict`). For the commands that change the kernel.
    pub fn check_strict_modes(&self) -> Result<(), CliError> {
        use kstack_engine::host::strict::{Scope, check};
        if let Some(config) = &self.config_path {
            check("config", config, Scope::Path)?;
        }
        check("store", &self.store_path(), Scope::Tree)?;
        let state = self.state_dir();
        check("state directory", state.path(), Scope::Path)?;
        check("state file", &state.state_path(), Scope::Path)?;
        check("lock file", &state.lock_path(), Scope::Path)?;
        if let Some(key) = &self.config.trust.signing_key {
            check("key file", key, Scope::Path)?;
        }
        Ok(())
    }

    /// The state directory: `KSTACK_STATE_DIR`, the config's `[sync] state_dir`, the
    /// default.
    pub fn state_dir(&self) -> StateDir {
        let path = std::env::var_os("KSTACK_STATE_DIR")
            .map(PathBuf::from)
            .or_else(|| self.config.sync.state_dir.clone())
            .unwrap_or_else(|| default_dir("XDG_STATE_HOME", ".local/state"));
        StateDir::new(path)
    }
}

/// `/var/lib/kstack` for root, else `$XDG_*_HOME/kstack` (or `~/<fallback>/kstack`).
fn default_dir(xdg_var: &str, fallback: &str) -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from(kstack_engine::host::config::DEFAULT_STATE_DIR);
    }
    if let Some(dir) = std::env::var_os(xdg_var) {
        return Path::new(&dir).join("kstack");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    Path::new(&home).join(fallback).join("kstack")
}
