//! The host's declaration: `/etc/kstack/kstack.toml`.
//!
//! The file says which store to use, which stack the host should run, which keys are
//! trusted to sign it, and the reconciler's bounds. Unknown keys and bad values are
//! errors that name the line, because a typo in a safety setting must not be ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use super::plan::Mode;

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
    #[serde(default)]
    pub build: BuildConfig,
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
    /// How a generation reaches the kernel: its stack's cumulative module in one
    /// transition (`replace`, the default), or one module per patch (`stack`).
    #[serde(default)]
    pub mode: Mode,
}

/// How `kstack commit` builds modules (read on the build host only).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BuildConfig {
    /// The private key that signs the modules kstack builds (PEM, mode 0600, or a
    /// `pkcs11:` URI), for hosts that enforce module signatures.
    pub module_signing_key: Option<PathBuf>,
    /// Its X.509 certificate (PEM or DER): the one the hosts' kernels trust.
    pub module_signing_cert: Option<PathBuf>,
}

impl BuildConfig {
    /// The key and certificate, when module signing is configured; an error names
    /// the missing half.
    pub fn module_signing(&self) -> Result<Option<(&Path, &Path)>, String> {
        match (&self.module_signing_key, &self.module_signing_cert) {
            (Some(key), Some(cert)) => Ok(Some((key, cert))),
            (None, None) => Ok(None),
            (Some(_), None) => {
                Err("[build] module_signing_key is set but module_signing_cert is not".into())
            }
            (None, Some(_)) => {
                Err("[build] module_signing_cert is set but module_signing_key is not".into())
            }
        }
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            transition_timeout: default_transition_timeout(),
            state_dir: None,
            mode: Mode::default(),
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

/// One key of the config file, documented: what `kstack.toml(5)` lists (the man
/// page is made from this table, and a test checks that it names every key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDoc {
    pub section: &'static str,
    pub key: &'static str,
    /// An example value, as TOML.
    pub example: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

/// Every key of the config file, in file order.
pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        section: "store",
        key: "path",
        example: "\"/var/lib/kstack/store\"",
        default: "/var/lib/kstack/store for root, else $XDG_DATA_HOME/kstack/store",
        meaning: "The store: a bare Git repository of signed stacks (kstack init creates it). \
                  --store and KSTACK_STORE override it.",
    },
    KeyDoc {
        section: "store",
        key: "remote",
        example: "\"git://patches.example.com/kstack.git\"",
        default: "none",
        meaning: "The Git URL (git://, file:// or a path) that kstack pull fetches from when \
                  given none; the fleet timer (kstack-update.timer) pulls from it.",
    },
    KeyDoc {
        section: "stack",
        key: "name",
        example: "\"production\"",
        default: "none: the host declares no patches",
        meaning: "The stack this host runs: the one of that name for the running kernel's \
                  build ID (refs/kstack/<build-id>/<name>).",
    },
    KeyDoc {
        section: "stack",
        key: "commit",
        example: "\"3f2a9c41d0e7\"",
        default: "the stack's head",
        meaning: "Pin one stack commit (full or abbreviated id) instead of following the head.",
    },
    KeyDoc {
        section: "trust",
        key: "keys",
        example: "[\"ed25519:8d7f3c0a9e1b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f\"]",
        default: "none: nothing is trusted",
        meaning: "Public keys (as kstack key show prints them) whose stack signatures are \
                  accepted; a stack signed by any other key, or unsigned, is refused before \
                  anything is loaded.",
    },
    KeyDoc {
        section: "trust",
        key: "threshold",
        example: "2",
        default: "1",
        meaning: "How many distinct keys of [trust] keys must have signed a stack's head for \
                  it to be trusted: a two-person rule for production. kstack approve adds a \
                  signature to a head without changing its content.",
    },
    KeyDoc {
        section: "trust",
        key: "revoked",
        example: "[\"ed25519:4508e2c1d0f3a9b7c5e1d3f7a9b0c2e4d6f8a0b2c4e6d8f0a2b4c6e8d0f2c4ff\"]",
        default: "none",
        meaning: "Keys whose signatures count for nothing, even where [trust] keys lists them: \
                  a head signed only by a revoked key is refused; history it signed still \
                  verifies when a trusted head vouches for it.",
    },
    KeyDoc {
        section: "trust",
        key: "signing_key",
        example: "\"/etc/kstack/signing.key\"",
        default: "/etc/kstack/signing.key",
        meaning: "The private key (mode 0600) that kstack commit, revert, promote, renew and \
                  approve sign stacks with.",
    },
    KeyDoc {
        section: "trust",
        key: "validity",
        example: "\"30d\"",
        default: "30d",
        meaning: "How long the commits signed here stay valid as a stack's head (their signed \
                  window; --valid-for overrides it). Hosts refuse an expired head: renew each \
                  stack well before, with kstack renew.",
    },
    KeyDoc {
        section: "trust",
        key: "expired",
        example: "\"refuse\"",
        default: "refuse",
        meaning: "What sync and plan do with a declared head whose validity window has run \
                  out: refuse (exit 65), or warn and sync it. A [stack] commit pin is only \
                  warned about.",
    },
    KeyDoc {
        section: "sync",
        key: "transition_timeout",
        example: "\"60s\"",
        default: "60s",
        meaning: "How long one livepatch transition may take before kstack reverses it and \
                  returns the host to its previous generation.",
    },
    KeyDoc {
        section: "sync",
        key: "state_dir",
        example: "\"/var/lib/kstack\"",
        default: "/var/lib/kstack for root, else $XDG_STATE_HOME/kstack",
        meaning: "Generations, the lock, the state file and the last sync's outcome. \
                  KSTACK_STATE_DIR overrides it.",
    },
    KeyDoc {
        section: "sync",
        key: "mode",
        example: "\"replace\"",
        default: "replace",
        meaning: "How a generation reaches the kernel. replace: the stack's cumulative module \
                  (every patch in one livepatch module, replace = true) is loaded over whatever \
                  runs, in one transition, as kpatch and klp-build do by default. stack: one \
                  module per patch, stacked; changing a patch reverts and reapplies the ones \
                  above it. A stack without a cumulative module (prebuilt modules) is synced \
                  patch by patch in either mode. See docs/replace-mode.md.",
    },
    KeyDoc {
        section: "build",
        key: "module_signing_key",
        example: "\"/etc/kstack/module-signing.key.pem\"",
        default: "none: modules are not signed",
        meaning: "The private key (PEM, mode 0600, or a pkcs11: URI) that signs the modules \
                  kstack commit builds, with the kernel's scripts/sign-file, for hosts that \
                  enforce module signatures (module.sig_enforce=1, lockdown, UEFI Secure Boot). \
                  Build hosts only.",
    },
    KeyDoc {
        section: "build",
        key: "module_signing_cert",
        example: "\"/etc/kstack/module-signing.cert.pem\"",
        default: "none",
        meaning: "The X.509 certificate of that key (PEM or DER), as the hosts' kernels trust \
                  it (enrolled in the firmware's db or MOK list, or built into the kernel).",
    },
];

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

    /// The documented keys are the config's keys, all of them: each parses, and a
    /// config with every one set fills every field (the struct literal below stops
    /// compiling when a field is added).
    #[test]
    fn the_key_table_documents_every_key() {
        let mut text = String::new();
        let mut section = "";
        for k in KEYS {
            if k.section != section {
                text.push_str(&format!("[{}]\n", k.section));
                section = k.section;
            }
            text.push_str(&format!("{} = {}\n", k.key, k.example));
            // A [stack] needs its name.
            let name = if k.section == "stack" && k.key != "name" {
                "name = \"a\"\n"
            } else {
                ""
            };
            Config::parse(&format!(
                "[{}]\n{name}{} = {}\n",
                k.section, k.key, k.example
            ))
            .unwrap_or_else(|e| panic!("{}.{}: {e}", k.section, k.key));
        }
        let cfg = Config::parse(&text).unwrap();
        let Config {
            store: StoreConfig { path, remote },
            stack,
            trust:
                TrustConfig {
                    keys,
                    threshold,
                    revoked,
                    signing_key,
                    validity,
                    expired,
                },
            sync:
                SyncConfig {
                    transition_timeout,
                    state_dir,
                    mode,
                },
            build:
                BuildConfig {
                    module_signing_key,
                    module_signing_cert,
                },
        } = cfg;
        let StackConfig { name: _, commit } = stack.unwrap();
        assert!(path.is_some() && remote.is_some() && commit.is_some());
        assert!(!keys.is_empty() && signing_key.is_some() && state_dir.is_some());
        assert_eq!(threshold, Some(2));
        assert!(!revoked.is_empty());
        assert_eq!(validity, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(expired, ExpiredPolicy::Refuse);
        assert_eq!(transition_timeout, Duration::from_secs(60));
        assert_eq!(mode, Mode::Replace);
        assert!(module_signing_key.is_some() && module_signing_cert.is_some());
    }

    #[test]
    fn module_signing_needs_key_and_cert() {
        let cfg = Config::parse(
            "[build]\nmodule_signing_key = \"/k.pem\"\nmodule_signing_cert = \"/c.pem\"\n",
        )
        .unwrap();
        let (key, cert) = cfg.build.module_signing().unwrap().unwrap();
        assert_eq!((key, cert), (Path::new("/k.pem"), Path::new("/c.pem")));
        let half = Config::parse("[build]\nmodule_signing_key = \"/k.pem\"\n").unwrap();
        let err = half.build.module_signing().unwrap_err();
        assert!(err.contains("module_signing_cert is not"), "{err}");
        assert_eq!(Config::default().build.module_signing(), Ok(None));
    }

    #[test]
    fn unknown_key_names_the_line() {
        let err = Config::parse("[stack]\nname = \"a\"\nnmae = \"b\"\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("nmae"), "{err}");
    }

    #[test]
    fn the_sync_mode_defaults_to_replace() {
        assert_eq!(Config::parse("").unwrap().sync.mode, Mode::Replace);
        let stack = Config::parse("[sync]\nmode = \"stack\"\n").unwrap();
        assert_eq!(stack.sync.mode, Mode::Stack);
        let err = Config::parse("[sync]\nmode = \"atomic\"\n").unwrap_err();
        assert!(err.contains("replace") && err.contains("stack"), "{err}");
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
