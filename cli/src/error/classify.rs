//! Which kind each library error is, and the hint it gets. Every match is exhaustive
//! and names each variant: a variant added to a library enum is a compile error here
//! until someone decides what it means to the user and to automation.

use std::io;

use kstack_engine::builder::assets::{AssetError, TreeKernelError};
use kstack_engine::builder::diff::DiffError;
use kstack_engine::builder::kbuild::KbuildError;
use kstack_engine::builder::klp::KlpError as BuildKlpError;
use kstack_engine::builder::pipeline::BuildError;
use kstack_engine::builder::sign::SignError;
use kstack_engine::builder::source::SourceError;
use kstack_engine::builder::symbols::SymbolsError;
use kstack_engine::builder::tree::TreeError;
use kstack_engine::host::config::ConfigError;
use kstack_engine::host::kernel::KernelError;
use kstack_engine::host::prove::ProveError;
use kstack_engine::host::reconcile::SyncError;
use kstack_engine::host::state::StateError;
use kstack_engine::host::strict::StrictError;
use kstack_engine::runpre::{KallsymsError, RunPreError};
use kstack_engine::sandbox::SandboxError;
use kstack_engine::sandbox::initramfs::InitramfsError;
use kstack_engine::sandbox::modules::ModulesError;
use kstack_store::commit::CommitError;
use kstack_store::ident::IdentError;
use kstack_store::keys::KeyError;
use kstack_store::klp::KlpError as StoreKlpError;
use kstack_store::model::ModelError;
use kstack_store::promote::PromoteError;
use kstack_store::pull::PullError;
use kstack_store::rev::RevError;
use kstack_store::store::StoreError;
use kstack_store::verify::VerifyError;

use super::Kind;

/// A kind and, where it helps, a hint (one line, imperative).
pub(crate) type Class = (Kind, Option<&'static str>);

/// A library error that the CLI knows how to report.
pub(crate) trait Classify: std::error::Error + Send + Sync + 'static {
    fn classify(&self) -> Class;
}

const SETUP: Option<&str> = Some("run `cargo xtask setup` (installs QEMU and fetches the kernel)");
const DAMAGED_STORE: Option<&str> =
    Some("the store is damaged; `kstack pull` from a good copy can restore objects");
const BUILD_TOOLS: Option<&str> = Some(
    "install the build tools: apt-get install build-essential patch (or run `cargo xtask setup`)",
);
const DIFF_PATHS: Option<&str> = Some(
    "a diff's paths are relative to the top of the kernel tree after one leading directory \
     (a/fs/proc/cmdline.c), as `git diff` writes them; make it against the source of the stack's kernel",
);

/// A program that could not be started because it is not installed.
fn missing_program(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound
}

impl Classify for ConfigError {
    fn classify(&self) -> Class {
        match self {
            // The path is --config's (or KSTACK_CONFIG's): a file named on the
            // command line that cannot be read.
            ConfigError::Read { .. } => (
                Kind::Usage,
                Some("pass --config FILE, or see examples/kstack.toml"),
            ),
            ConfigError::Invalid { .. } => (Kind::Data, None),
        }
    }
}

impl Classify for SandboxError {
    fn classify(&self) -> Class {
        match self {
            SandboxError::MissingAsset { .. } | SandboxError::Spawn { .. } => {
                (Kind::Unavailable, SETUP)
            }
            SandboxError::Timeout { .. } | SandboxError::NoExitStatus { .. } => (Kind::User, None),
            SandboxError::Initramfs(e) => e.classify(),
            SandboxError::Modules(e) => e.classify(),
            SandboxError::Io { .. } => (Kind::Internal, None),
        }
    }
}

impl Classify for InitramfsError {
    fn classify(&self) -> Class {
        match self {
            // `kstack try` checks its --file sources first: what is left is kstack's.
            InitramfsError::Read { .. } | InitramfsError::Write(_) => (Kind::Internal, None),
            InitramfsError::BadPath(_) => (Kind::Usage, None),
        }
    }
}

impl Classify for ModulesError {
    fn classify(&self) -> Class {
        match self {
            ModulesError::NoIndex { .. } => (Kind::Unavailable, SETUP),
            ModulesError::Unknown { .. } => (Kind::Usage, None),
        }
    }
}

impl Classify for SyncError {
    fn classify(&self) -> Class {
        match self {
            SyncError::Kernel(e) => e.classify(),
            SyncError::State(e) => e.classify(),
            SyncError::Store(e) => e.classify(),
            SyncError::Revision(e) => e.classify(),
            SyncError::Verify(e) => e.classify(),
            SyncError::RunPre(e) => e.classify(),
            SyncError::WrongKernel { .. } | SyncError::WrongRelease { .. } => (Kind::Data, None),
            SyncError::ModuleSignature { .. } => (
                Kind::Data,
                Some(
                    "sign the modules with a key the kernel trusts: [build] module_signing_key and \
                     module_signing_cert on the build host, the certificate in the firmware's db or \
                     MOK list (see docs/operators.md); `kstack status` lists the trusted keys",
                ),
            ),
            SyncError::TransitionInProgress(_) => (Kind::TempFail, None),
            SyncError::Failed(e) if e.restored() => (
                Kind::User,
                Some("the host is back on its previous generation (see `kstack status`)"),
            ),
            SyncError::Failed(_) => (
                Kind::User,
                Some(
                    "some undo steps failed: the host is NOT on a known generation; see `kstack status`",
                ),
            ),
            SyncError::NoStack { .. } | SyncError::NoRollbackTarget(_) => (Kind::User, None),
            SyncError::Downgrade { .. } => (
                Kind::Data,
                Some(
                    "to go back on purpose: `kstack rollback`, pin the commit with [stack] commit, or `kstack sync --allow-downgrade`",
                ),
            ),
            SyncError::Expired { .. } => (
                Kind::Data,
                Some(
                    "renew the stack where it is published (`kstack renew STACK`) and pull; [trust] expired = \"warn\" syncs it anyway",
                ),
            ),
            SyncError::WrongStack { .. } => (Kind::Data, None),
        }
    }
}

impl Classify for StrictError {
    fn classify(&self) -> Class {
        match self {
            StrictError::Writable { .. } => (
                Kind::Data,
                Some(
                    "make it root's alone: chown root and chmod go-w the path (and the directories above it)",
                ),
            ),
            StrictError::Io { .. } => (Kind::User, None),
        }
    }
}

impl Classify for KernelError {
    fn classify(&self) -> Class {
        match self {
            KernelError::NoLivepatch => (
                Kind::Unavailable,
                Some("run the stack in a VM instead: kstack try --config FILE -- kstack status"),
            ),
            KernelError::Identify(_) => (Kind::Unavailable, None),
            KernelError::Io { .. }
            | KernelError::Load { .. }
            | KernelError::NotALivepatch { .. }
            | KernelError::Unload { .. }
            | KernelError::Stalled { .. } => (Kind::User, None),
        }
    }
}

impl Classify for StateError {
    fn classify(&self) -> Class {
        match self {
            StateError::Busy { .. } => (Kind::TempFail, None),
            StateError::Corrupt { .. } => (Kind::Data, None),
            StateError::NoSuchGeneration(_) => (Kind::User, Some("see `kstack generations`")),
            StateError::Io { .. } => (Kind::Internal, None),
        }
    }
}

impl Classify for ProveError {
    fn classify(&self) -> Class {
        match self {
            // All refusals before loading: the stack is not proven for this kernel.
            ProveError::BadFile { .. } | ProveError::Mismatch { .. } => (Kind::Data, None),
            // Reading the kernel's code: an image that is not one is bad data, a
            // /proc/kcore or /proc/kallsyms that cannot be read is not.
            ProveError::Kernel(e) => e.classify(),
            // The host lacks the module the patch targets: nothing to prove it against.
            ProveError::NoModule { .. } => (
                Kind::Unavailable,
                Some("install the kernel's modules package, or load the module"),
            ),
        }
    }
}

impl Classify for StoreError {
    fn classify(&self) -> Class {
        match self {
            StoreError::NotAStore { .. } => (
                Kind::User,
                Some("create it with `kstack init`, or point --store at it"),
            ),
            StoreError::MissingObject { .. }
            | StoreError::ReadObject { .. }
            | StoreError::WrongKind { .. }
            | StoreError::Malformed { .. }
            | StoreError::DanglingRef { .. }
            | StoreError::SymbolicRef { .. } => (Kind::Data, DAMAGED_STORE),
            StoreError::StackMoved { .. } | StoreError::Locked { .. } => (Kind::TempFail, None),
            StoreError::Init { .. }
            | StoreError::Refs { .. }
            | StoreError::Write { .. }
            | StoreError::UpdateRef { .. } => (Kind::Internal, None),
        }
    }
}

impl Classify for VerifyError {
    fn classify(&self) -> Class {
        match self {
            VerifyError::Store(e) => e.classify(),
            VerifyError::Untrusted { .. } => (
                Kind::Data,
                Some("if you trust this key, add it to [trust] keys in the config"),
            ),
            VerifyError::Revoked { .. } => (
                Kind::Data,
                Some(
                    "have a trusted key sign a new head: `kstack renew` re-signs the same patches after review",
                ),
            ),
            VerifyError::BelowThreshold { .. } => (
                Kind::Data,
                Some("another trusted key must approve it: `kstack approve STACK --key FILE`"),
            ),
            VerifyError::DigestMismatch { .. }
            | VerifyError::Missing { .. }
            | VerifyError::Unexpected { .. }
            | VerifyError::Invalid { .. }
            | VerifyError::Unsigned { .. }
            | VerifyError::BadSignature { .. }
            | VerifyError::Model { .. } => (Kind::Data, None),
        }
    }
}

impl Classify for CommitError {
    fn classify(&self) -> Class {
        match self {
            CommitError::Store(e) => e.classify(),
            CommitError::Ident(e) => e.classify(),
            CommitError::Klp(e) => e.classify(),
            CommitError::Model(e) => e.classify(),
            CommitError::DamagedParent { .. } => {
                (Kind::Data, Some("run `kstack verify` to see what is wrong"))
            }
            // The module given to `commit --module` is not one the stack can carry.
            CommitError::NotLivepatch { .. } | CommitError::WrongRelease { .. } => {
                (Kind::Data, None)
            }
            CommitError::BadExtraFile { .. }
            | CommitError::PatchExists { .. }
            | CommitError::NoSuchPatch { .. }
            | CommitError::NoSuchStack { .. }
            | CommitError::Overlap { .. }
            | CommitError::UnknownFunctions { .. }
            | CommitError::AlreadySigned { .. } => (Kind::User, None),
            CommitError::CumulativeMismatch { .. } => (Kind::Internal, None),
        }
    }
}

impl Classify for PromoteError {
    fn classify(&self) -> Class {
        match self {
            PromoteError::SameStack { .. } => (Kind::Usage, None),
            PromoteError::Commit(e) => e.classify(),
        }
    }
}

impl Classify for RevError {
    fn classify(&self) -> Class {
        match self {
            RevError::Store(e) => e.classify(),
            RevError::NotFound { .. } => (Kind::User, Some("see `kstack stacks` and `kstack log`")),
            RevError::Syntax { .. }
            | RevError::AmbiguousId { .. }
            | RevError::AmbiguousStack { .. }
            | RevError::TooFarBack { .. } => (Kind::User, None),
        }
    }
}

impl Classify for PullError {
    fn classify(&self) -> Class {
        match self {
            PullError::Store(e) => e.classify(),
            PullError::Rejected { .. }
            | PullError::SourceObject { .. }
            | PullError::SourceCorrupt { .. } => (Kind::Data, None),
            PullError::Fetch { .. } => (Kind::Unavailable, None),
            PullError::OpenSource { .. } | PullError::Unsupported { .. } => (Kind::User, None),
        }
    }
}

impl Classify for KeyError {
    fn classify(&self) -> Class {
        match self {
            // A key file that was read but is not a key, or that others can read.
            KeyError::BadSignatureFile { .. }
            | KeyError::BadPublicKey { .. }
            | KeyError::BadSecretKey { .. }
            | KeyError::Permissions { .. } => (Kind::Data, None),
            // The path is --key's (a key the config names is re-kinded where it is
            // read: `commit::signing_key`).
            KeyError::Read { .. } => (Kind::Usage, None),
            KeyError::Exists { .. } => (Kind::User, None),
            KeyError::Write { .. } | KeyError::Random { .. } => (Kind::Internal, None),
        }
    }
}

impl Classify for IdentError {
    fn classify(&self) -> Class {
        match self {
            // A build ID is parsed from text the user typed (`--kernel`); an image's
            // own note is read with `BuildId::from_bytes`, whose error no caller keeps.
            IdentError::BadBuildId { .. } => (Kind::Usage, None),
            // `--kernel`, `--image` or `--module` names a file that cannot be read.
            // Where kstack reads a file of its own (the cache's image, the running
            // kernel's notes) the caller gives it its kind.
            IdentError::Read { .. } => (Kind::Usage, None),
            // The file was read but is not a kernel image (or not a module) kstack can
            // identify: bad data.
            IdentError::NoBuildId { .. }
            | IdentError::NotAKernel { .. }
            | IdentError::OldBootProtocol { .. }
            | IdentError::BadPayload { .. }
            | IdentError::UnsupportedCompression { .. }
            | IdentError::Decompress { .. }
            | IdentError::BadElf { .. }
            | IdentError::NoModinfo { .. }
            | IdentError::NoVermagic { .. }
            | IdentError::NoModuleName { .. } => (Kind::Data, None),
        }
    }
}

impl Classify for StoreKlpError {
    fn classify(&self) -> Class {
        match self {
            // `commit --module` of a file that is not an ELF module.
            StoreKlpError::BadElf { .. } => (Kind::Data, None),
        }
    }
}

impl Classify for ModelError {
    fn classify(&self) -> Class {
        match self {
            // Names and functions come from the command line; the store's own files
            // are checked as part of a commit (VerifyError::Model).
            ModelError::BadName { .. } | ModelError::BadFunction { .. } => (Kind::Usage, None),
            ModelError::Parse { .. } | ModelError::Format { .. } | ModelError::Invalid { .. } => {
                (Kind::Data, None)
            }
        }
    }
}

impl Classify for AssetError {
    fn classify(&self) -> Class {
        match self {
            AssetError::NotSetUp { .. } | AssetError::UnknownRelease { .. } => (
                Kind::Unavailable,
                Some("fetch a kernel with `kstack kernel add current` (or `cargo xtask setup`)"),
            ),
            AssetError::Resolve { .. } | AssetError::Fetch { .. } => (Kind::Unavailable, None),
            // A build tool is missing or too old (the error says which).
            AssetError::Config { .. } => (Kind::Unavailable, None),
            AssetError::Unsupported { .. } => (
                Kind::Usage,
                Some(
                    "kstack takes Debian 12's 6.1 and 6.12 lines, flavours cloud-amd64 and amd64 \
                     (`kstack kernel add 6.12-cloud-amd64` for 6.12's newest)",
                ),
            ),
            AssetError::Command { .. } | AssetError::Io { .. } => (Kind::Internal, None),
            AssetError::Tree(err) => err.classify(),
        }
    }
}

impl Classify for TreeKernelError {
    fn classify(&self) -> Class {
        match self {
            // The error says which file and what makes it.
            TreeKernelError::Missing { .. } => (Kind::Usage, None),
            TreeKernelError::Unsupported { .. } => (
                Kind::Usage,
                Some(
                    "configure the tree with CONFIG_LIVEPATCH=y (and its dependencies: \
                     DYNAMIC_FTRACE_WITH_REGS, KALLSYMS_ALL, MODULES) and build it again",
                ),
            ),
            TreeKernelError::BuildIdMismatch { .. } => (
                Kind::Data,
                Some("give the image this tree's build wrote (arch/x86/boot/bzImage)"),
            ),
            TreeKernelError::AlreadyRegistered { .. } => (
                Kind::User,
                Some(
                    "a rebuilt tree is a new kernel: give it its own release \
                     (CONFIG_LOCALVERSION), or remove the kernel's directory from the cache",
                ),
            ),
            TreeKernelError::Unreadable { .. } => (Kind::Data, None),
        }
    }
}

impl Classify for SourceError {
    fn classify(&self) -> Class {
        match self {
            SourceError::Read { .. } => (Kind::Usage, None),
            SourceError::NotARepository { .. } => (
                Kind::Usage,
                Some("--git takes the path of a kernel Git tree, then a revision"),
            ),
            SourceError::Revision { .. } => (Kind::Usage, None),
            SourceError::Git { .. } => (Kind::Data, None),
            SourceError::EmptyCommit { .. } => (Kind::Data, None),
            SourceError::Store(e) => e.classify(),
            SourceError::Verify(e) => e.classify(),
        }
    }
}

/// The builder: a change that cannot be live-applied is bad data (65), a missing
/// tool or asset is unavailable (69), what only a kstack bug explains is internal.
impl Classify for BuildError {
    fn classify(&self) -> Class {
        match self {
            BuildError::NoSource { .. } => (Kind::Unavailable, None),
            BuildError::Tree(e) => e.classify(),
            BuildError::Diff { source, .. } => source.classify(),
            BuildError::Refused(_) => (
                Kind::Data,
                Some(
                    "a live patch replaces functions only; carry changed data with a hook (see kmod/include/kstack/hooks.h)",
                ),
            ),
            BuildError::NoChange(_) => (
                Kind::NoChange,
                Some("the kernel already runs what the change says: there is nothing to patch"),
            ),
            BuildError::FromEarlierPatch { .. } => (
                Kind::Data,
                Some(
                    "build the two changes as one patch: revert the earlier patch and commit \
                     their combined diff in its place",
                ),
            ),
            BuildError::Klp { source, .. } => source.classify(),
            BuildError::Symbols(e) => e.classify(),
            // Before images are cut from kstack's own pre objects.
            BuildError::Before { .. } => (Kind::Internal, None),
            BuildError::Kbuild(e) => e.classify(),
            BuildError::PostLink(e) => e.classify(),
            BuildError::Sign(e) => e.classify(),
            BuildError::Io { .. } => (Kind::Internal, None),
            // The image package of that kernel lacks the module: fetch it again.
            BuildError::NoModuleFile { .. } => (
                Kind::Unavailable,
                Some("the kernel's cache is incomplete: run `kstack kernel add RELEASE` again"),
            ),
        }
    }
}

impl Classify for SignError {
    fn classify(&self) -> Class {
        match self {
            SignError::Read { .. } => (
                Kind::User,
                Some("check [build] module_signing_key and module_signing_cert in the config"),
            ),
            SignError::Certificate { .. } | SignError::KeyPermissions { .. } => (Kind::Data, None),
            SignError::NoSignFile(_) => (
                Kind::Unavailable,
                Some(
                    "install the kernel's headers (linux-headers-RELEASE), which ship scripts/sign-file",
                ),
            ),
            // sign-file's own message says why (a wrong passphrase, a key that does
            // not match the certificate).
            SignError::SignFile { .. } => (Kind::User, None),
            SignError::Check { .. } | SignError::Io { .. } => (Kind::Internal, None),
        }
    }
}

impl Classify for TreeError {
    fn classify(&self) -> Class {
        match self {
            TreeError::ToolMissing { .. } => (Kind::Unavailable, BUILD_TOOLS),
            TreeError::NotADiff { .. } => (
                Kind::Data,
                Some("give a unified diff, as `git diff` or `diff -u` writes it"),
            ),
            TreeError::NotInSource { .. } => (Kind::Data, DIFF_PATHS),
            TreeError::Apply { .. } => (Kind::Data, DIFF_PATHS),
            TreeError::NothingToBuild(_)
            | TreeError::HeaderTooBroad { .. }
            | TreeError::HeaderUnknown { .. }
            | TreeError::Compile { .. } => (Kind::Data, None),
            TreeError::NotBuilt { .. } => (
                Kind::Data,
                Some("this kernel's configuration does not build that file: nothing runs it"),
            ),
            // kbuild wrote no record of a compile it did: kstack's problem.
            TreeError::NoCompileRecord { .. } => (Kind::Internal, None),
            TreeError::Io { .. } | TreeError::Command { .. } => (Kind::Internal, None),
        }
    }
}

impl Classify for DiffError {
    fn classify(&self) -> Class {
        match self {
            // The compiler's own objects: unreadable ones are kstack's problem.
            DiffError::Parse { .. }
            | DiffError::Unsupported { .. }
            | DiffError::Malformed { .. } => (Kind::Internal, None),
        }
    }
}

impl Classify for BuildKlpError {
    fn classify(&self) -> Class {
        match self {
            // What the changed code does that a livepatch cannot carry.
            BuildKlpError::NotBundled { .. }
            | BuildKlpError::Resolve { .. }
            | BuildKlpError::NoSymbol { .. }
            | BuildKlpError::Ambiguous { .. }
            | BuildKlpError::IndistinctStatic { .. }
            | BuildKlpError::InitReference { .. }
            | BuildKlpError::UnsupportedRelocation { .. }
            | BuildKlpError::UnknownSpecialSection { .. }
            | BuildKlpError::ModuleSpecialRelocation { .. }
            | BuildKlpError::BadKlpName { .. }
            | BuildKlpError::BadNewName { .. }
            | BuildKlpError::DuplicateRelocation { .. }
            | BuildKlpError::NonAllocTarget { .. }
            | BuildKlpError::WrongObject { .. }
            | BuildKlpError::ShortReference { .. } => (Kind::Data, None),
            BuildKlpError::Read { .. }
            | BuildKlpError::Object { .. }
            | BuildKlpError::Malformed { .. }
            | BuildKlpError::NoSuchFunction { .. }
            | BuildKlpError::AlreadyPostLinked { .. }
            | BuildKlpError::Write(_) => (Kind::Internal, None),
        }
    }
}

impl Classify for SymbolsError {
    fn classify(&self) -> Class {
        match self {
            SymbolsError::Sandbox(e) => e.classify(),
            // The symbols kstack captured from the kernel it booted itself.
            SymbolsError::Io { .. } | SymbolsError::BadKallsyms(_) | SymbolsError::Kallsyms(_) => {
                (Kind::Internal, None)
            }
            // The image package's own .ko.
            SymbolsError::Module { .. } => (Kind::Internal, None),
        }
    }
}

impl Classify for KbuildError {
    fn classify(&self) -> Class {
        match self {
            KbuildError::NoHeaders(_) => (Kind::Unavailable, None),
            KbuildError::Make(e) if missing_program(e) => (Kind::Unavailable, BUILD_TOOLS),
            // The module's own sources are kstack's, but a hook file is the user's.
            KbuildError::Compile { .. } => (Kind::Data, None),
            KbuildError::Make(_)
            | KbuildError::BadName(_)
            | KbuildError::NoSources { .. }
            | KbuildError::Io { .. } => (Kind::Internal, None),
        }
    }
}

/// Run-pre matching against an image or the running kernel (`kstack verify`).
impl Classify for RunPreError {
    fn classify(&self) -> Class {
        match self {
            RunPreError::Object { .. }
            | RunPreError::BadObject { .. }
            | RunPreError::NoSuchFunction { .. }
            | RunPreError::BadImage { .. }
            | RunPreError::Image { .. }
            | RunPreError::Kallsyms(_)
            | RunPreError::Toml(_) => (Kind::Data, None),
            RunPreError::Io { .. } | RunPreError::Read { .. } | RunPreError::Unmapped { .. } => {
                (Kind::User, None)
            }
        }
    }
}

/// A kallsyms text given to `kstack verify --kallsyms`.
impl Classify for KallsymsError {
    fn classify(&self) -> Class {
        match self {
            KallsymsError::Empty => (Kind::Data, None),
            KallsymsError::Unprivileged => (
                Kind::Data,
                Some("capture /proc/kallsyms as root, from the kernel booted with nokaslr"),
            ),
        }
    }
}
