//! One error type for the CLI: every library error is sorted into what the user can
//! fix and what is kstack's own fault, given a hint where one helps, and mapped to a
//! stable exit code (documented in the README).

use std::process::ExitCode;

use crate::ui::Ui;

/// The operation failed (a refused stack, a failed sync, a guest command that failed).
pub const EXIT_FAILURE: u8 = 1;
/// `kstack plan`: the host differs from the config.
pub const EXIT_CHANGES: u8 = 2;
/// The command line is wrong (sysexits `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Input data is bad: a tampered store, an invalid config, an untrusted signature
/// (sysexits `EX_DATAERR`).
pub const EXIT_DATA: u8 = 65;
/// Something kstack needs is missing: no livepatch in this kernel, no QEMU, no kernel
/// assets (sysexits `EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// A bug or an unexpected system failure (sysexits `EX_SOFTWARE`).
pub const EXIT_INTERNAL: u8 = 70;
/// Another kstack holds the lock, or a transient condition; try again (`EX_TEMPFAIL`).
pub const EXIT_TEMPFAIL: u8 = 75;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The user or the input can fix it.
    User,
    /// The command line itself is wrong.
    Usage,
    /// Bad or untrusted data.
    Data,
    /// A missing capability or asset.
    Unavailable,
    /// Retry later.
    TempFail,
    /// Everything else.
    Internal,
}

#[derive(Debug)]
pub struct CliError {
    pub kind: Kind,
    pub message: String,
    pub hint: Option<String>,
}

impl CliError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        CliError {
            kind,
            message: message.into(),
            hint: None,
        }
    }

    pub fn user(message: impl Into<String>) -> Self {
        Self::new(Kind::User, message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn exit_code(&self) -> u8 {
        match self.kind {
            Kind::User => EXIT_FAILURE,
            Kind::Usage => EXIT_USAGE,
            Kind::Data => EXIT_DATA,
            Kind::Unavailable => EXIT_UNAVAILABLE,
            Kind::TempFail => EXIT_TEMPFAIL,
            Kind::Internal => EXIT_INTERNAL,
        }
    }

    /// Prints the error (as JSON with `--json`) and returns the exit code.
    pub fn report(&self, ui: &Ui) -> ExitCode {
        let code = self.exit_code();
        if ui.json() {
            let kind = match self.kind {
                Kind::User => "user",
                Kind::Usage => "usage",
                Kind::Data => "data",
                Kind::Unavailable => "unavailable",
                Kind::TempFail => "tempfail",
                Kind::Internal => "internal",
            };
            let value = serde_json::json!({
                "error": { "kind": kind, "message": self.message, "hint": self.hint, "exit_code": code }
            });
            println!("{value}");
        } else {
            eprintln!("error: {}", self.message);
            if let Some(hint) = &self.hint {
                eprintln!("hint: {hint}");
            }
        }
        ExitCode::from(code)
    }
}

/// Renders an error with its chain of causes, as `a: b: c`.
pub use kstack_store::error_chain as chain;

impl From<kstack_engine::host::config::ConfigError> for CliError {
    fn from(err: kstack_engine::host::config::ConfigError) -> Self {
        use kstack_engine::host::config::ConfigError;
        match &err {
            ConfigError::Read { .. } => CliError::new(Kind::User, chain(&err))
                .with_hint("pass --config FILE, or see examples/kstack.toml"),
            ConfigError::Invalid { .. } => CliError::new(Kind::Data, chain(&err)),
        }
    }
}

impl From<kstack_engine::sandbox::SandboxError> for CliError {
    fn from(err: kstack_engine::sandbox::SandboxError) -> Self {
        use kstack_engine::sandbox::SandboxError;
        let kind = match &err {
            SandboxError::MissingAsset { .. } | SandboxError::Spawn { .. } => Kind::Unavailable,
            SandboxError::Timeout { .. } | SandboxError::NoExitStatus { .. } => Kind::User,
            _ => Kind::Internal,
        };
        let hint = match &err {
            SandboxError::MissingAsset { .. } | SandboxError::Spawn { .. } => {
                Some("run `cargo xtask setup` (installs QEMU and fetches the kernel)")
            }
            _ => None,
        };
        let mut e = CliError::new(kind, chain(&err));
        e.hint = hint.map(str::to_owned);
        e
    }
}

impl From<kstack_engine::host::reconcile::SyncError> for CliError {
    fn from(err: kstack_engine::host::reconcile::SyncError) -> Self {
        use kstack_engine::host::kernel::KernelError;
        use kstack_engine::host::reconcile::SyncError;
        use kstack_engine::host::state::StateError;
        let kind = match &err {
            SyncError::Verify(_)
            | SyncError::WrongKernel { .. }
            | SyncError::WrongRelease { .. }
            | SyncError::RunPre(_) => Kind::Data,
            SyncError::State(StateError::Busy { .. }) | SyncError::TransitionInProgress(_) => {
                Kind::TempFail
            }
            SyncError::State(StateError::Corrupt { .. }) => Kind::Data,
            SyncError::Kernel(KernelError::NoLivepatch) => Kind::Unavailable,
            SyncError::Kernel(KernelError::Identify(_)) => Kind::Unavailable,
            SyncError::Kernel(_) | SyncError::Failed(_) => Kind::User,
            SyncError::NoStack { .. }
            | SyncError::Revision(_)
            | SyncError::NoRollbackTarget(_)
            | SyncError::State(StateError::NoSuchGeneration(_)) => Kind::User,
            SyncError::Store(_) | SyncError::State(_) => Kind::Internal,
        };
        let hint = match &err {
            SyncError::Failed(e) if e.restored() => {
                Some("the host is back on its previous generation (see `kstack status`)")
            }
            SyncError::Failed(_) => Some(
                "some undo steps failed: the host is NOT on a known generation; see `kstack status`",
            ),
            SyncError::Kernel(KernelError::NoLivepatch) => {
                Some("run the stack in a VM instead: kstack try --config FILE -- kstack status")
            }
            _ => None,
        };
        let mut e = CliError::new(kind, chain(&err));
        e.hint = hint.map(str::to_owned);
        e
    }
}

impl From<kstack_store::store::StoreError> for CliError {
    fn from(err: kstack_store::store::StoreError) -> Self {
        use kstack_store::store::StoreError;
        let (kind, hint) = match &err {
            StoreError::NotAStore { .. } => (
                Kind::User,
                Some("create it with `kstack init`, or point --store at it"),
            ),
            StoreError::MissingObject { .. }
            | StoreError::ReadObject { .. }
            | StoreError::WrongKind { .. }
            | StoreError::Malformed { .. }
            | StoreError::DanglingRef { .. }
            | StoreError::SymbolicRef { .. } => (
                Kind::Data,
                Some("the store is damaged; `kstack pull` from a good copy can restore objects"),
            ),
            StoreError::StackMoved { .. } | StoreError::Locked { .. } => (Kind::TempFail, None),
            StoreError::Init { .. }
            | StoreError::Refs { .. }
            | StoreError::Write { .. }
            | StoreError::UpdateRef { .. } => (Kind::Internal, None),
        };
        let mut e = CliError::new(kind, chain(&err));
        e.hint = hint.map(str::to_owned);
        e
    }
}

impl From<kstack_store::verify::VerifyError> for CliError {
    fn from(err: kstack_store::verify::VerifyError) -> Self {
        use kstack_store::verify::VerifyError;
        match err {
            VerifyError::Store(e) => e.into(),
            VerifyError::Untrusted { .. } => CliError::new(Kind::Data, chain(&err))
                .with_hint("if you trust this key, add it to [trust] keys in the config"),
            _ => CliError::new(Kind::Data, chain(&err)),
        }
    }
}

impl From<kstack_store::commit::CommitError> for CliError {
    fn from(err: kstack_store::commit::CommitError) -> Self {
        use kstack_store::commit::CommitError;
        match err {
            CommitError::Store(e) => e.into(),
            CommitError::DamagedParent { .. } => CliError::new(Kind::Data, chain(&err))
                .with_hint("run `kstack verify` to see what is wrong"),
            CommitError::UnknownFunctions { .. } | CommitError::Overlap { .. } => {
                CliError::new(Kind::User, chain(&err))
            }
            _ => CliError::new(Kind::User, chain(&err)),
        }
    }
}

impl From<kstack_store::rev::RevError> for CliError {
    fn from(err: kstack_store::rev::RevError) -> Self {
        use kstack_store::rev::RevError;
        match err {
            RevError::Store(e) => e.into(),
            RevError::NotFound { .. } => CliError::new(Kind::User, chain(&err))
                .with_hint("see `kstack stacks` and `kstack log`"),
            _ => CliError::new(Kind::User, chain(&err)),
        }
    }
}

impl From<kstack_store::pull::PullError> for CliError {
    fn from(err: kstack_store::pull::PullError) -> Self {
        use kstack_store::pull::PullError;
        match err {
            PullError::Store(e) => e.into(),
            PullError::Rejected { .. }
            | PullError::SourceObject { .. }
            | PullError::SourceCorrupt { .. } => CliError::new(Kind::Data, chain(&err)),
            PullError::Fetch { .. } => CliError::new(Kind::Unavailable, chain(&err)),
            PullError::OpenSource { .. } | PullError::Unsupported { .. } => {
                CliError::new(Kind::User, chain(&err))
            }
        }
    }
}

impl From<kstack_store::keys::KeyError> for CliError {
    fn from(err: kstack_store::keys::KeyError) -> Self {
        use kstack_store::keys::KeyError;
        let kind = match &err {
            KeyError::BadSignatureFile { .. } => Kind::Data,
            KeyError::Write { .. } | KeyError::Random { .. } => Kind::Internal,
            _ => Kind::User,
        };
        CliError::new(kind, chain(&err))
    }
}

impl From<kstack_store::ident::IdentError> for CliError {
    fn from(err: kstack_store::ident::IdentError) -> Self {
        CliError::new(Kind::User, chain(&err))
    }
}

impl From<kstack_store::model::ModelError> for CliError {
    fn from(err: kstack_store::model::ModelError) -> Self {
        CliError::new(Kind::User, chain(&err))
    }
}
