//! One error type for the CLI: every library error is kept whole (its chain of
//! causes survives to the output), sorted by [`classify`] into what the user can fix
//! and what is kstack's own fault, given a hint where one helps, and mapped to a
//! stable exit code (documented in the README and `kstack --help`).

mod classify;

use std::process::ExitCode;

use crate::ui::Ui;

pub(crate) use classify::Classify;

/// The operation failed (a refused stack, a failed sync, a guest command that failed).
pub const EXIT_FAILURE: u8 = 1;
/// `kstack plan`: the host differs from the config.
pub const EXIT_CHANGES: u8 = 2;
/// `kstack commit`: the change compiles to the code the kernel already runs; no
/// patch was made.
pub const EXIT_NO_CHANGE: u8 = 3;
/// The command line is wrong: a bad flag or name, an unreadable file (sysexits
/// `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Input data is bad: a change that cannot be live-applied, a file that is not a
/// diff, a tampered store, an invalid config, an untrusted signature (sysexits
/// `EX_DATAERR`).
pub const EXIT_DATA: u8 = 65;
/// Something kstack needs is missing: no livepatch in this kernel, no QEMU, no
/// compiler, no kernel or prepared source in the cache (sysexits `EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// A bug or an unexpected system failure (sysexits `EX_SOFTWARE`).
pub const EXIT_INTERNAL: u8 = 70;
/// Another kstack holds the lock, or a transient condition; try again (`EX_TEMPFAIL`).
pub const EXIT_TEMPFAIL: u8 = 75;

/// What an error is, for the exit code and the JSON `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The user or the input can fix it.
    User,
    /// The command line itself is wrong.
    Usage,
    /// Bad or untrusted data, or a change that cannot be live-applied.
    Data,
    /// A missing capability, tool or asset.
    Unavailable,
    /// Retry later.
    #[serde(rename = "tempfail")]
    TempFail,
    /// Everything else.
    Internal,
    /// Nothing to do: the change compiles to identical code.
    #[serde(rename = "no-change")]
    NoChange,
}

impl Kind {
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::User => EXIT_FAILURE,
            Kind::Usage => EXIT_USAGE,
            Kind::Data => EXIT_DATA,
            Kind::Unavailable => EXIT_UNAVAILABLE,
            Kind::TempFail => EXIT_TEMPFAIL,
            Kind::Internal => EXIT_INTERNAL,
            Kind::NoChange => EXIT_NO_CHANGE,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error as the CLI reports it: the CLI's own words (`context`), the library
/// error that caused it (`source`, kept whole), its kind and a hint.
#[derive(Debug)]
pub struct CliError {
    kind: Kind,
    context: Option<String>,
    source: Option<BoxError>,
    hint: Option<String>,
}

impl CliError {
    /// An error of the CLI's own, with no library error behind it.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        CliError {
            kind,
            context: Some(message.into()),
            source: None,
            hint: None,
        }
    }

    /// An error of the CLI's own caused by one that is not a library error (an I/O
    /// error): `message: source`.
    pub fn with_source(
        kind: Kind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        CliError {
            kind,
            context: Some(message.into()),
            source: Some(Box::new(source)),
            hint: None,
        }
    }

    pub fn user(message: impl Into<String>) -> Self {
        Self::new(Kind::User, message)
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Kind::Usage, message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Says where the error happened, before the library's message (`context: a: b`).
    pub fn context(mut self, context: impl Into<String>) -> Self {
        let context = context.into();
        self.context = Some(match self.context.take() {
            Some(inner) => format!("{context}: {inner}"),
            None => context,
        });
        self
    }

    /// Overrides the kind where the caller knows better than the error's type: a key
    /// that is bad in the config is bad data, not a bad argument.
    pub fn with_kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    pub fn exit_code(&self) -> u8 {
        self.kind.exit_code()
    }

    /// What the error is (for a command that reports several and exits with the
    /// worst).
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The messages from the outermost to the root cause. A cause whose text its
    /// parent already shows (thiserror's `{source}` or `{0}` in a message) is left
    /// out, so that the chain joined with `: ` reads as the message does.
    pub fn chain(&self) -> Vec<String> {
        let mut parts: Vec<String> = self.context.iter().cloned().collect();
        let mut shown = parts.join(": ");
        let mut next: Option<&(dyn std::error::Error + 'static)> =
            self.source.as_deref().map(|e| e as _);
        while let Some(err) = next {
            let text = err.to_string();
            if !text.is_empty() && !shown.contains(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
                parts.push(text);
            }
            next = err.source();
        }
        parts
    }

    /// The message: the chain as `a: b: c`.
    pub fn message(&self) -> String {
        self.chain().join(": ")
    }

    /// Prints the error (as JSON on stdout with `--json`) and returns the exit code.
    pub fn report(&self, ui: &Ui) -> ExitCode {
        let code = self.exit_code();
        if ui.json() {
            ui.emit_json(&crate::json::ErrorOutput {
                error: crate::json::ErrorJson {
                    kind: self.kind,
                    message: self.message(),
                    chain: self.chain(),
                    hint: self.hint.clone(),
                    exit_code: code,
                },
            });
        } else {
            eprintln!("error: {}", self.message());
            if let Some(hint) = &self.hint {
                eprintln!("hint: {hint}");
            }
        }
        ExitCode::from(code)
    }
}

/// Checks that a file named on the command line can be read, before any slow work
/// (exit 64 when it cannot); `what` names the argument.
pub fn check_readable_file(path: &std::path::Path, what: &str) -> Result<(), CliError> {
    let meta = std::fs::File::open(path).and_then(|f| f.metadata());
    match meta {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(CliError::usage(format!(
            "cannot read {} ({what}): not a regular file",
            path.display()
        ))),
        Err(e) => Err(CliError::with_source(
            Kind::Usage,
            format!("cannot read {} ({what})", path.display()),
            e,
        )),
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

/// Every classified library error converts, keeping the error as the source.
impl<E: Classify> From<E> for CliError {
    fn from(err: E) -> Self {
        let (kind, hint) = err.classify();
        CliError {
            kind,
            context: None,
            source: Some(Box::new(err)),
            hint: hint.map(str::to_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_reads_as_the_message_and_skips_repeated_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let err: CliError = kstack_store::keys::KeyError::Read {
            path: "/k".into(),
            source: io,
        }
        .into();
        assert_eq!(err.chain(), ["cannot read /k", "gone"]);
        assert_eq!(err.message(), "cannot read /k: gone");
        let err = err.context("--key");
        assert_eq!(err.message(), "--key: cannot read /k: gone");
        // thiserror's `{0}` repeats the inner message: it appears once.
        let tree = kstack_engine::builder::tree::TreeError::NothingToBuild("a.txt".into());
        let err: CliError = kstack_engine::builder::pipeline::BuildError::Tree(tree).into();
        assert_eq!(err.chain().len(), 1, "{:?}", err.chain());
        assert_eq!(err.exit_code(), EXIT_DATA);
    }
}
