//! The bare Git repository behind the store, driven through `gix` (no `git`
//! subprocess): opening and creating it, reading commits, trees and blobs, writing
//! objects, and moving stack refs with a compare-and-swap.
//!
//! Writes put objects first and move a ref last, under Git's ref lock and only if the
//! ref still holds the value the writer started from. A crash in between leaves
//! unreferenced objects and nothing else; a concurrent writer that lost the race gets
//! [`StoreError::StackMoved`] or [`StoreError::Locked`] and can retry.

use std::fmt;
use std::path::{Path, PathBuf};

use gix::bstr::ByteSlice;
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
use gix::refs::{FullName, Target};

pub use gix::ObjectId;

use crate::ident::BuildId;
use crate::keys::PublicKey;
use crate::model::check_name;

/// Where stack heads live: `refs/kstack/<build-id>/<stack-name>`.
pub const REF_PREFIX: &str = "refs/kstack/";
/// Where `pull` puts fetched heads until they verify.
pub const QUARANTINE_PREFIX: &str = "refs/kstack-incoming/";
/// The commit-message trailer naming a signer, one line per signature in `stack.sig`
/// order, so `log` can show them without reading trees (`show` and `verify` check
/// them against `stack.sig`).
pub const SIGNER_TRAILER: &str = "Kstack-Signer";

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One stack: a name under one kernel build ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackId {
    pub build_id: BuildId,
    pub name: String,
}

impl StackId {
    pub fn new(build_id: BuildId, name: &str) -> Result<StackId, crate::model::ModelError> {
        check_name("stack", name)?;
        Ok(StackId {
            build_id,
            name: name.to_owned(),
        })
    }

    /// `refs/kstack/<build-id>/<name>`.
    pub fn ref_name(&self) -> String {
        format!("{REF_PREFIX}{}/{}", self.build_id, self.name)
    }

    /// The stack a ref name (below `prefix`) stands for, if it is one.
    pub fn from_ref_name(name: &str, prefix: &str) -> Option<StackId> {
        let rest = name.strip_prefix(prefix)?;
        let (build_id, stack) = rest.split_once('/')?;
        let build_id: BuildId = build_id.parse().ok()?;
        if build_id.to_hex() != build_id_text(rest) {
            return None;
        }
        StackId::new(build_id, stack).ok()
    }
}

fn build_id_text(rest: &str) -> &str {
    rest.split_once('/').map_or(rest, |(b, _)| b)
}

impl fmt::Display for StackId {
    /// `<build-id>/<name>`, as in the ref name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.build_id, self.name)
    }
}

/// Who makes a commit, when (seconds since the epoch, UTC), and for how long the
/// commits they sign stay valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    pub name: String,
    pub email: String,
    pub time: i64,
    /// The signed `[validity]` window of a commit is `time` to `time + valid_for`
    /// ([`crate::validity::DEFAULT_VALIDITY`] unless the config or the command line
    /// says otherwise).
    pub valid_for: std::time::Duration,
}

impl Author {
    /// `name <email>`.
    pub fn display(&self) -> String {
        format!("{} <{}>", self.name, self.email)
    }

    fn signature(&self) -> gix::actor::Signature {
        gix::actor::Signature {
            name: self.name.as_str().into(),
            email: self.email.as_str().into(),
            time: gix::date::Time {
                seconds: self.time,
                offset: 0,
            },
        }
    }
}

/// Errors of the repository layer. Each names the object or ref concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the store at {path}")]
    Init {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("{path} is not a kstack store (no bare Git repository there); run `kstack init`")]
    NotAStore {
        path: PathBuf,
        #[source]
        source: Option<BoxError>,
    },
    #[error("{what}: object {id} is missing from the store")]
    MissingObject { what: String, id: ObjectId },
    #[error("{what}: object {id} cannot be read (corrupt or truncated store)")]
    ReadObject {
        what: String,
        id: ObjectId,
        #[source]
        source: BoxError,
    },
    #[error("{what}: object {id} is a {found}, expected a {expected}")]
    WrongKind {
        what: String,
        id: ObjectId,
        found: String,
        expected: &'static str,
    },
    #[error("{what}: object {id} is malformed: {message}")]
    Malformed {
        what: String,
        id: ObjectId,
        message: String,
    },
    #[error("ref {name} points to {id}, which is not in the store")]
    DanglingRef { name: String, id: ObjectId },
    #[error("ref {name} is not a plain ref to a commit")]
    SymbolicRef { name: String },
    #[error("cannot read the store's refs")]
    Refs {
        #[source]
        source: BoxError,
    },
    #[error("cannot write {what} to the store")]
    Write {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("stack {stack} moved while this command ran (it was {expected}, now {found}); retry")]
    StackMoved {
        stack: String,
        expected: String,
        found: String,
    },
    #[error("stack {stack} is being updated by another kstack (lock file {lock}); retry")]
    Locked { stack: String, lock: PathBuf },
    #[error("cannot update ref {name}")]
    UpdateRef {
        name: String,
        #[source]
        source: BoxError,
    },
}

/// RFC 3339 in UTC, to the second (how commit and manifest times are shown).
pub fn format_time(seconds: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn boxed(e: impl std::error::Error + Send + Sync + 'static) -> BoxError {
    Box::new(e)
}

fn describe(id: Option<ObjectId>) -> String {
    id.map_or_else(
        || "absent".to_owned(),
        |id| id.to_hex_with_len(12).to_string(),
    )
}

/// A commit as `log` needs it: the header and message, no tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    pub id: ObjectId,
    pub tree: ObjectId,
    pub parents: Vec<ObjectId>,
    pub author: String,
    pub email: String,
    /// Seconds since the epoch.
    pub time: i64,
    /// The message without the signer trailers.
    pub message: String,
    /// The signer that the first trailer names (a claim until `verify` checks
    /// `stack.sig`): the committer.
    pub signer: Option<PublicKey>,
    /// The signers the further trailers name: approvals (empty for most commits,
    /// so reading a long history allocates nothing for them).
    pub approvals: Vec<PublicKey>,
}

impl CommitInfo {
    /// The first line of the message.
    pub fn summary(&self) -> &str {
        self.message.lines().next().unwrap_or("")
    }

    /// Every signer the trailers name, in order (a claim until `verify`).
    pub fn signers(&self) -> Vec<PublicKey> {
        self.signer
            .iter()
            .chain(self.approvals.iter())
            .copied()
            .collect()
    }
}

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeItem {
    pub name: String,
    pub id: ObjectId,
    pub kind: ItemKind,
}

/// What a tree entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    Blob,
    Tree,
    /// Symlinks, submodules: never part of a stack.
    Other,
}

/// A ref update inside one transaction: `expected` → `new` (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    pub name: String,
    pub expected: Option<ObjectId>,
    pub new: Option<ObjectId>,
}

/// The store: a bare Git repository.
pub struct Store {
    pub(crate) repo: gix::Repository,
    pub(crate) path: PathBuf,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Options that keep the store independent of the user's and the system's Git
/// configuration (hooks, replace refs, odd settings).
fn open_options() -> gix::open::Options {
    gix::open::Options::isolated()
}

impl Store {
    /// Creates a store at `path`, or opens it if one is already there.
    pub fn init(path: &Path) -> Result<Store, StoreError> {
        if path.join("HEAD").exists() {
            return Store::open(path);
        }
        let init_err = |source: BoxError| StoreError::Init {
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(path).map_err(|e| init_err(boxed(e)))?;
        gix::create::into(
            path,
            gix::create::Kind::Bare,
            gix::create::Options::default(),
        )
        .map_err(|e| init_err(e.into()))?;
        Store::open(path)
    }

    /// Opens an existing store.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let repo = gix::open_opts(path, open_options()).map_err(|e| StoreError::NotAStore {
            path: path.to_owned(),
            source: Some(e.into()),
        })?;
        if !repo.is_bare() {
            return Err(StoreError::NotAStore {
                path: path.to_owned(),
                source: None,
            });
        }
        Ok(Store {
            repo,
            path: path.to_owned(),
        })
    }

    /// The repository's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying repository, for callers that need plain Git access.
    pub fn repo(&self) -> &gix::Repository {
        &self.repo
    }

    // ---- refs ---------------------------------------------------------------

    /// The commit a ref points to, if the ref exists; a ref to a missing object is
    /// an error ([`StoreError::DanglingRef`]).
    pub fn read_ref(&self, name: &str) -> Result<Option<ObjectId>, StoreError> {
        let Some(id) = self.read_ref_unchecked(name)? else {
            return Ok(None);
        };
        if !self.has_object(id) {
            return Err(StoreError::DanglingRef {
                name: name.to_owned(),
                id,
            });
        }
        Ok(Some(id))
    }

    /// The value of a ref without checking that its object exists.
    pub fn read_ref_unchecked(&self, name: &str) -> Result<Option<ObjectId>, StoreError> {
        let found = self
            .repo
            .try_find_reference(name)
            .map_err(|e| StoreError::Refs { source: e.into() })?;
        let Some(reference) = found else {
            return Ok(None);
        };
        match reference.target() {
            gix::refs::TargetRef::Object(id) => Ok(Some(id.to_owned())),
            gix::refs::TargetRef::Symbolic(_) => Err(StoreError::SymbolicRef {
                name: name.to_owned(),
            }),
        }
    }

    /// The head of a stack, if it exists.
    pub fn stack_head(&self, stack: &StackId) -> Result<Option<ObjectId>, StoreError> {
        self.read_ref(&stack.ref_name())
    }

    /// All refs under `prefix` (e.g. [`REF_PREFIX`]) with their values, sorted by name.
    pub fn refs_under(&self, prefix: &str) -> Result<Vec<(String, ObjectId)>, StoreError> {
        let refs_err = |e: BoxError| StoreError::Refs { source: e };
        let platform = self.repo.references().map_err(|e| refs_err(e.into()))?;
        let iter = platform
            .prefixed(prefix.trim_end_matches('/'))
            .map_err(|e| refs_err(e.into()))?;
        let mut out = Vec::new();
        for reference in iter {
            let reference = reference.map_err(|e| refs_err(e.into()))?;
            let name = reference.name().as_bstr().to_str_lossy().into_owned();
            if !name.starts_with(prefix) {
                continue;
            }
            if let gix::refs::TargetRef::Object(id) = reference.target() {
                out.push((name, id.to_owned()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every stack with its head, sorted by build ID and name. Refs under
    /// `refs/kstack/` that do not name a stack are left out.
    pub fn stacks(&self) -> Result<Vec<(StackId, ObjectId)>, StoreError> {
        Ok(self
            .refs_under(REF_PREFIX)?
            .into_iter()
            .filter_map(|(name, id)| Some((StackId::from_ref_name(&name, REF_PREFIX)?, id)))
            .collect())
    }

    /// Applies ref updates in one transaction, each only if the ref still has its
    /// expected value (compare-and-swap). On a lost race nothing is changed.
    pub fn update_refs(&self, updates: &[RefUpdate], message: &str) -> Result<(), StoreError> {
        let mut edits = Vec::with_capacity(updates.len());
        for update in updates {
            let name: FullName = update.name.as_str().try_into().map_err(
                |e: gix::validate::reference::name::Error| StoreError::UpdateRef {
                    name: update.name.clone(),
                    source: boxed(e),
                },
            )?;
            let expected = match update.expected {
                Some(id) => PreviousValue::MustExistAndMatch(Target::Object(id)),
                None => PreviousValue::MustNotExist,
            };
            let change = match update.new {
                Some(id) => Change::Update {
                    log: LogChange {
                        mode: RefLog::AndReference,
                        force_create_reflog: false,
                        message: message.into(),
                    },
                    expected,
                    new: Target::Object(id),
                },
                None => Change::Delete {
                    expected,
                    log: RefLog::AndReference,
                },
            };
            edits.push(RefEdit {
                change,
                name,
                deref: false,
            });
        }
        let committer = Author {
            name: "kstack".into(),
            email: "kstack@localhost".into(),
            time: 0,
            valid_for: std::time::Duration::ZERO,
        }
        .signature();
        let mut time = gix::date::parse::TimeBuf::default();
        let result = self
            .repo
            .edit_references_as(edits, Some(committer.to_ref(&mut time)));
        let Err(err) = result else {
            return Ok(());
        };
        // Tell a lost race apart from other failures by looking again.
        for update in updates {
            let lock = self.path.join(format!("{}.lock", update.name));
            let stack = update
                .name
                .strip_prefix(REF_PREFIX)
                .unwrap_or(&update.name)
                .to_owned();
            if lock.exists() {
                return Err(StoreError::Locked { stack, lock });
            }
            let now = self.read_ref_unchecked(&update.name)?;
            if now != update.expected {
                return Err(StoreError::StackMoved {
                    stack,
                    expected: describe(update.expected),
                    found: describe(now),
                });
            }
        }
        Err(StoreError::UpdateRef {
            name: updates
                .iter()
                .map(|u| u.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            source: err.into(),
        })
    }

    // ---- reading objects -------------------------------------------------------

    /// Reads an object of the `expected` kind into `buf` (replacing what it held). A
    /// miss (or a read error) is looked up again in a freshly opened repository
    /// before it is reported: another kstack may have packed objects or merged packs
    /// since this handle last looked.
    pub(crate) fn read_into(
        &self,
        id: ObjectId,
        what: &dyn fmt::Display,
        expected: gix::objs::Kind,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        use gix::objs::Find;
        // Git reads the empty tree even where it is not stored (and so does `gix`).
        let first = if id == ObjectId::empty_tree(self.repo.object_hash()) {
            buf.clear();
            Ok(Some(gix::objs::Kind::Tree))
        } else {
            self.repo
                .objects
                .try_find(&id, buf)
                .map(|o| o.map(|o| o.kind))
        };
        let kind = match first {
            Ok(Some(kind)) => kind,
            first => {
                let second = self
                    .reopened()
                    .map(|repo| repo.objects.try_find(&id, buf).map(|o| o.map(|o| o.kind)));
                match (second, first) {
                    (Some(Ok(Some(kind))), _) => kind,
                    (_, Err(e)) => {
                        return Err(StoreError::ReadObject {
                            what: what.to_string(),
                            id,
                            source: e.into(),
                        });
                    }
                    _ => {
                        return Err(StoreError::MissingObject {
                            what: what.to_string(),
                            id,
                        });
                    }
                }
            }
        };
        if kind != expected {
            return Err(StoreError::WrongKind {
                what: what.to_string(),
                id,
                found: kind.to_string(),
                expected: match expected {
                    gix::objs::Kind::Blob => "blob",
                    gix::objs::Kind::Tree => "tree",
                    gix::objs::Kind::Commit => "commit",
                    gix::objs::Kind::Tag => "tag",
                },
            });
        }
        Ok(())
    }

    /// The same repository, opened anew (a current view of its packs).
    fn reopened(&self) -> Option<gix::Repository> {
        gix::open_opts(&self.path, open_options()).ok()
    }

    /// Reads a commit's header and message (not its tree).
    pub fn commit_info(&self, id: ObjectId) -> Result<CommitInfo, StoreError> {
        self.read_commit(id, &mut Vec::new())
    }

    /// [`Store::commit_info`] with a buffer for the object's bytes, so that a walk
    /// over many commits reuses one allocation.
    pub(crate) fn read_commit(
        &self,
        id: ObjectId,
        buf: &mut Vec<u8>,
    ) -> Result<CommitInfo, StoreError> {
        self.read_into(id, &CommitName(id), gix::objs::Kind::Commit, buf)?;
        self.parse_commit(id, buf)
    }

    /// The header fields and message of the commit `id`, whose object is `data`.
    pub(crate) fn parse_commit(&self, id: ObjectId, data: &[u8]) -> Result<CommitInfo, StoreError> {
        parse_commit_object(id, data, self.repo.object_hash())
    }
}

/// The header fields and message of the commit `id`, whose object is `data` (as a
/// store or a pull reads it; public for the fuzz targets).
pub fn parse_commit_object(
    id: ObjectId,
    data: &[u8],
    hash: gix::hash::Kind,
) -> Result<CommitInfo, StoreError> {
    use gix::objs::commit::ref_iter::Token;
    let malformed = |message: String| StoreError::Malformed {
        what: CommitName(id).to_string(),
        id,
        message,
    };
    // Token by token: the fields `log` shows, each parsed once, and no error
    // values built for the optional headers a commit does not have.
    let (mut tree, mut parents, mut author, mut message) = (None, Vec::new(), None, None);
    for token in gix::objs::CommitRefIter::from_bytes(data, hash) {
        match token.map_err(|e| malformed(e.to_string()))? {
            Token::Tree { id } => tree = Some(id),
            Token::Parent { id } => parents.push(id),
            Token::Author { signature } => author = Some(signature),
            Token::Message(text) => message = Some(text),
            Token::Committer { .. } | Token::Encoding(_) | Token::ExtraHeader(_) => {}
        }
    }
    let (Some(tree), Some(author), Some(message)) = (tree, author, message) else {
        return Err(malformed("incomplete commit".to_owned()));
    };
    let time = author.time().map(|t| t.seconds).unwrap_or(0);
    let raw = message.to_str_lossy();
    let (message, signer, approvals) = split_signer_trailers(&raw);
    Ok(CommitInfo {
        id,
        tree,
        parents,
        author: author.name.to_str_lossy().into_owned(),
        email: author.email.to_str_lossy().into_owned(),
        time,
        message: message.to_owned(),
        signer,
        approvals,
    })
}

impl Store {
    /// The first-parent history from `start`, newest first, at most `limit` commits.
    /// Reads commit headers only, so it stays fast on long histories (see
    /// [`crate::history`]).
    pub fn log(
        &self,
        start: ObjectId,
        limit: Option<usize>,
    ) -> Result<Vec<CommitInfo>, StoreError> {
        crate::history::FirstParents::new(self, start, limit).collect()
    }

    /// The entries of a tree.
    pub fn tree_items(&self, id: ObjectId, what: &str) -> Result<Vec<TreeItem>, StoreError> {
        let mut buf = Vec::new();
        self.read_into(id, &what, gix::objs::Kind::Tree, &mut buf)?;
        let tree = gix::objs::TreeRef::from_bytes(&buf, self.repo.object_hash()).map_err(|e| {
            StoreError::Malformed {
                what: what.to_owned(),
                id,
                message: e.to_string(),
            }
        })?;
        Ok(tree
            .entries
            .iter()
            .map(|e| TreeItem {
                name: e.filename.to_str_lossy().into_owned(),
                id: e.oid.to_owned(),
                kind: if e.mode.is_tree() {
                    ItemKind::Tree
                } else if e.mode.is_blob() && !e.mode.is_link() {
                    ItemKind::Blob
                } else {
                    ItemKind::Other
                },
            })
            .collect())
    }

    /// The bytes of a blob.
    pub fn blob(&self, id: ObjectId, what: &str) -> Result<Vec<u8>, StoreError> {
        let mut buf = Vec::new();
        self.read_into(id, &what, gix::objs::Kind::Blob, &mut buf)?;
        Ok(buf)
    }

    /// Whether an object is in the store.
    pub fn has_object(&self, id: ObjectId) -> bool {
        self.repo.has_object(id) || self.reopened().is_some_and(|repo| repo.has_object(id))
    }

    // ---- writing objects -------------------------------------------------------

    pub(crate) fn write_blob(&self, bytes: &[u8], what: &str) -> Result<ObjectId, StoreError> {
        self.repo
            .write_blob(bytes)
            .map(|id| id.detach())
            .map_err(|e| StoreError::Write {
                what: what.to_owned(),
                source: e.into(),
            })
    }

    /// Writes a tree of blobs and subtrees.
    pub(crate) fn write_tree(
        &self,
        items: &[TreeItem],
        what: &str,
    ) -> Result<ObjectId, StoreError> {
        use gix::objs::tree::{Entry, EntryKind};
        let mut entries: Vec<Entry> = items
            .iter()
            .map(|item| Entry {
                mode: match item.kind {
                    ItemKind::Tree => EntryKind::Tree.into(),
                    _ => EntryKind::Blob.into(),
                },
                filename: item.name.as_str().into(),
                oid: item.id,
            })
            .collect();
        entries.sort();
        let tree = gix::objs::Tree { entries };
        self.repo
            .write_object(&tree)
            .map(|id| id.detach())
            .map_err(|e| StoreError::Write {
                what: what.to_owned(),
                source: e.into(),
            })
    }

    /// Writes a commit object (no ref is moved), with one signer trailer per key.
    pub(crate) fn write_commit(
        &self,
        tree: ObjectId,
        parent: Option<ObjectId>,
        author: &Author,
        message: &str,
        signers: &[PublicKey],
    ) -> Result<ObjectId, StoreError> {
        self.write_commit_as(tree, parent, author, author, message, signers)
    }

    /// [`Store::write_commit`] with a committer other than the author (an approval
    /// keeps the commit's author).
    pub(crate) fn write_commit_as(
        &self,
        tree: ObjectId,
        parent: Option<ObjectId>,
        author: &Author,
        committer: &Author,
        message: &str,
        signers: &[PublicKey],
    ) -> Result<ObjectId, StoreError> {
        let mut full = message.trim_end().to_owned();
        full.push('\n');
        for signer in signers {
            full.push_str(&format!("\n{SIGNER_TRAILER}: {signer}"));
        }
        full.push('\n');
        let commit = gix::objs::Commit {
            tree,
            parents: parent.into_iter().collect(),
            author: author.signature(),
            committer: committer.signature(),
            encoding: None,
            message: full.into(),
            extra_headers: Vec::new(),
        };
        self.repo
            .write_object(&commit)
            .map(|id| id.detach())
            .map_err(|e| StoreError::Write {
                what: "a commit".to_owned(),
                source: e.into(),
            })
    }

    /// Finds the commits whose id starts with `prefix` (hex, at least 4 digits).
    pub fn commits_with_prefix(&self, prefix: &str) -> Result<Vec<ObjectId>, StoreError> {
        let Ok(prefix) = gix::hash::Prefix::from_hex(prefix) else {
            return Ok(Vec::new());
        };
        let mut candidates = std::collections::HashSet::new();
        let found = self
            .repo
            .objects
            .lookup_prefix(prefix, Some(&mut candidates))
            .map_err(|e| StoreError::Refs { source: e.into() })?;
        if found.is_none() {
            return Ok(Vec::new());
        }
        let mut out: Vec<ObjectId> = candidates
            .into_iter()
            .filter(|id| {
                self.repo
                    .find_header(*id)
                    .is_ok_and(|h| h.kind() == gix::objs::Kind::Commit)
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

/// How errors name a commit (formatted only when there is an error to report).
struct CommitName(ObjectId);

impl fmt::Display for CommitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "commit {}", self.0.to_hex_with_len(12))
    }
}

/// Splits the `Kstack-Signer:` trailers (the last lines) off a commit message:
/// the body, the first signer, the further ones.
fn split_signer_trailers(raw: &str) -> (&str, Option<PublicKey>, Vec<PublicKey>) {
    fn key_of(line: &str) -> Option<&str> {
        line.strip_prefix(SIGNER_TRAILER)?.strip_prefix(": ")
    }
    let mut body = raw.trim_end();
    // From the end: the trailer lines, newest first. Most commits have one.
    let mut last = None;
    let mut earlier: Vec<PublicKey> = Vec::new();
    loop {
        let (rest, line) = match body.rsplit_once('\n') {
            Some((rest, line)) => (rest, line),
            None => ("", body),
        };
        let Some(key) = key_of(line).and_then(PublicKey::parse_unchecked) else {
            break;
        };
        if let Some(later) = last.replace(key) {
            earlier.push(later);
        }
        body = rest.trim_end();
        if rest.is_empty() {
            break;
        }
    }
    // `last` is now the first trailer; `earlier` holds the others, last first.
    earlier.reverse();
    (body, last, earlier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_refs() {
        let id = StackId::new("00ff".parse().unwrap(), "prod").unwrap();
        assert_eq!(id.ref_name(), "refs/kstack/00ff/prod");
        assert_eq!(StackId::from_ref_name(&id.ref_name(), REF_PREFIX), Some(id));
        assert_eq!(
            StackId::from_ref_name("refs/kstack/00FF/prod", REF_PREFIX),
            None
        );
        assert_eq!(
            StackId::from_ref_name("refs/kstack/00ff/a/b", REF_PREFIX),
            None
        );
        assert_eq!(StackId::from_ref_name("refs/heads/main", REF_PREFIX), None);
    }

    #[test]
    fn signer_trailers() {
        let key = crate::keys::SecretKey::from_seed(&[3; 32]).public();
        let b = crate::keys::SecretKey::from_seed(&[4; 32]).public();
        let c = crate::keys::SecretKey::from_seed(&[5; 32]).public();
        let raw = format!("fix it\n\nbody\n\n{SIGNER_TRAILER}: {key}\n");
        let (message, signer, rest) = split_signer_trailers(&raw);
        assert_eq!(message, "fix it\n\nbody");
        assert_eq!(signer, Some(key));
        assert!(rest.is_empty());
        assert_eq!(split_signer_trailers("plain\n"), ("plain", None, vec![]));
        let raw = format!(
            "fix it\n\n{SIGNER_TRAILER}: {key}\n{SIGNER_TRAILER}: {b}\n{SIGNER_TRAILER}: {c}\n"
        );
        assert_eq!(
            split_signer_trailers(&raw),
            ("fix it", Some(key), vec![b, c])
        );
        let raw = format!("{SIGNER_TRAILER}: {key}\n{SIGNER_TRAILER}: {b}");
        assert_eq!(split_signer_trailers(&raw), ("", Some(key), vec![b]));
    }

    #[test]
    fn init_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = Store::init(&path).unwrap();
        assert!(store.stacks().unwrap().is_empty());
        Store::init(&path).unwrap();
        Store::open(&path).unwrap();
        let err = Store::open(&dir.path().join("nothing")).unwrap_err();
        assert!(err.to_string().contains("run `kstack init`"), "{err}");
    }
}
