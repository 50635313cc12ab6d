//! The host's declaration: `/etc/kstack/kstack.toml`.
//!
//! The file says which store to use, which stack the host should run, which keys are
//! trusted to sign it, and the reconciler's bounds. Unknown keys and bad values are
//! errors that name the line, because a typo in a safety setting must not be ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the config lives when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/kstack/kstack.toml";

/// Where root's store and state live when the config does not say.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/kstack";

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub store: StoreConfig,
    /// The stack this host should run; absent means "no kstack patches".
    pub stack: Option<StackConfig>,
    #[serde(default)]
    pub trust: TrustConfig,
    #[serde(default)]
    pub sync: SyncConfig,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The store's bare Git repository; default `/var/lib/kstack/store` for root.
    pub path: Option<PathBuf>,
    /// A Git URL that `kstack pull` uses when given none.
    pub remote: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StackConfig {
    /// The stack's name, as in `refs/kstack/<build-id>/<name>`.
    pub name: String,
    /// Pin to one stack commit (full or short id) instead of the stack's head.
    pub commit: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// Public keys whose signatures are accepted, each as `kstack key show` prints it.
    #[serde(default)]
    pub keys: Vec<String>,
    /// How many distinct keys of `keys` must sign a commit (an approval adds a
    /// signature); default 1.
    pub threshold: Option<usize>,
    /// Keys whose signatures no longer count, even where `keys` lists them.
    #[serde(default)]
    pub revoked: Vec<String>,
    /// The private key that `kstack commit`, `revert`, `renew` and `approve` sign with.
    pub signing_key: Option<PathBuf>,
    /// How long the commits signed here stay valid as a stack's head (default 30
    /// days).
    #[serde(default, deserialize_with = "humantime_serde_shim::option")]
    pub validity: Option<Duration>,
    /// What `sync` and `plan` do with a declared head whose validity has run out.
    #[serde(default)]
    pub expired: ExpiredPolicy,
}

/// `[trust] expired`: what a host does with an expired head.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExpiredPolicy {
    /// Refuse it (exit 65): a mirror that stopped serving new commits shows.
    #[default]
    Refuse,
    /// Sync it, with a warning.
    Warn,
}

impl TrustConfig {
    /// `threshold`, default 1.
    pub fn threshold(&self) -> usize {
        self.threshold.unwrap_or(1)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// How long one livepatch transition may take before it is reversed.
    #[serde(default = "default_transition_timeout", with = "humantime_serde_shim")]
    pub transition_timeout: Duration,
    /// Generations, the lock and the state file.
    pub state_dir: Option<PathBuf>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            transition_timeout: default_transition_timeout(),
            state_dir: None,
        }
    }
}

fn default_transition_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Durations are written as people write them: `"30s"`, `"2m"`, `"1500ms"`.
mod humantime_serde_shim {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| D::Error::custom(format!("bad duration {text:?}: {e} (try \"30s\")")))
    }

    /// For an optional duration (a missing key is `None` through `#[serde(default)]`).
    pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        deserialize(d).map(Some)
    }
}

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The message of `toml` names the line and column and shows the offending text.
    #[error("invalid config {path}:\n{message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses config text; the error is `toml`'s report, which names the line.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The directory for generations, the lock and the state file.
    pub fn state_dir(&self) -> PathBuf {
        self.sync
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_example_parses() {
        let cfg = Config::parse(
            r#"
            [store]
            path = "/srv/kstack/store"
            [stack]
            name = "production"
            [trust]
            keys = ["ed25519:00"]
            [sync]
            transition_timeout = "15s"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.stack.unwrap().name, "production");
        assert_eq!(cfg.sync.transition_timeout, Duration::from_secs(15));
    }

    #[test]
    fn unknown_key_names_the_line() {
        let err = Config::parse("[stack]\nname = \"a\"\nnmae = \"b\"\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("nmae"), "{err}");
    }

    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("../../../examples/kstack.toml");
        let cfg = Config::parse(text).unwrap();
        assert_eq!(cfg.trust.threshold(), 1);
        // Every commented-out setting parses too.
        let all: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|l| l.contains(" = "))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let cfg = Config::parse(&all).unwrap_or_else(|e| panic!("{e}\n{all}"));
        assert_eq!(cfg.trust.threshold(), 2);
        assert_eq!(cfg.trust.expired, ExpiredPolicy::Refuse);
    }

    #[test]
    fn trust_settings() {
        let cfg = Config::parse(
            "[trust]\nkeys = []\nthreshold = 2\nrevoked = [\"ed25519:00\"]\nvalidity = \"14d\"\nexpired = \"warn\"\n",
        )
        .unwrap();
        assert_eq!(cfg.trust.threshold(), 2);
        assert_eq!(cfg.trust.validity, Some(Duration::from_secs(14 * 86_400)));
        assert_eq!(cfg.trust.expired, ExpiredPolicy::Warn);
        let cfg = Config::parse("").unwrap();
        assert_eq!(cfg.trust.threshold(), 1);
        assert_eq!(cfg.trust.expired, ExpiredPolicy::Refuse);
        let err = Config::parse("[trust]\nexpired = \"ignore\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_duration_is_explained() {
        let err = Config::parse("[sync]\ntransition_timeout = \"soon\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("bad duration"), "{err}");
    }
}
