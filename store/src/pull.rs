//! Distribution: `pull` brings stacks from another store (any Git repository that
//! holds `refs/kstack/*`) and moves a local stack ref only after the fetched head
//! verifies against the trust policy.
//!
//! Fetched heads land in a quarantine namespace (`refs/kstack-incoming/<n>/...`).
//! Each is verified (the whole head against the trust policy, threshold and
//! revocations included; signatures and the `parent` chain of every new ancestor)
//! and must fast-forward the local stack, judged by the signed chain of `stack.toml`
//! digests ([`crate::lineage`]): the same head approved elsewhere fast-forwards, and
//! its approvals are combined with the local ones. Only if every one passes are the
//! local refs moved, in one compare-and-swap transaction; either way the quarantine
//! refs are removed, so a rejected pull leaves the local refs as they were (and some
//! unreferenced objects).
//!
//! A local path or `file://` URL is read in-process with `gix`; `git://` goes through
//! gix's blocking network client. No `git` program is run, and no HTTP client is
//! linked (the binary stays statically linkable).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::objs::Write as _;

use crate::keys::TrustPolicy;
use crate::lineage::Lineage;
use crate::store::{
    Author, BoxError, ObjectId, QUARANTINE_PREFIX, REF_PREFIX, RefUpdate, StackId, Store,
    StoreError,
};
use crate::verify::{VerifyError, short};

/// Why a pull failed. Unless it says otherwise, local refs are unchanged.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot open {url} as a store")]
    OpenSource {
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("cannot fetch from {url}")]
    Fetch {
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("{url}: object {id} is missing or unreadable in the source")]
    SourceObject {
        url: String,
        id: ObjectId,
        #[source]
        source: Option<BoxError>,
    },
    #[error("{url}: object {id} does not hash to its id (corrupt source)")]
    SourceCorrupt { url: String, id: ObjectId },
    #[error("{url}: unsupported URL (use a path, file://, or git://)")]
    Unsupported { url: String },
    #[error(
        "pull from {url} refused; local refs are unchanged:\n{}",
        rejected.iter().map(|r| format!("  {}: {}", r.stack, r.reason)).collect::<Vec<_>>().join("\n")
    )]
    Rejected {
        url: String,
        rejected: Vec<Rejection>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A fetched stack head that was refused, and why.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// `<build-id>/<name>`, or the ref name when it names no stack.
    pub stack: String,
    pub reason: String,
}

/// What a pull did to one stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledStack {
    pub stack: StackId,
    pub old: Option<ObjectId>,
    /// The fetched head; for an update, what the local ref moved to: the fetched
    /// head, or (when it and the local head are the same commit approved by
    /// different keys) a commit with the signatures of both.
    pub new: ObjectId,
    pub outcome: PullOutcome,
}

/// How a local stack relates to the fetched one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullOutcome {
    /// New locally, or fast-forwarded.
    Updated,
    /// Already there.
    UpToDate,
    /// The local stack has commits on top of the fetched head; left as it is.
    LocalAhead,
}

/// The result of a successful pull.
#[derive(Debug, Clone, Default)]
pub struct PullReport {
    pub stacks: Vec<PulledStack>,
}

fn local_path(url: &str) -> Option<PathBuf> {
    if let Some(rest) = url.strip_prefix("file://") {
        return Some(PathBuf::from(rest));
    }
    (!url.contains("://")).then(|| PathBuf::from(url))
}

impl Store {
    /// Fetches `refs/kstack/*` from `url` and moves local stack refs to the fetched
    /// heads that verify against `policy` and fast-forward; refuses the whole pull
    /// (local refs unchanged) if any head does not.
    pub fn pull(&self, url: &str, policy: &TrustPolicy) -> Result<PullReport, PullError> {
        let quarantine = format!(
            "{QUARANTINE_PREFIX}{}-{}/",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let fetched = match local_path(url) {
            Some(path) => self.fetch_local(url, &path, &quarantine),
            None if url.starts_with("git://") => self.fetch_network(url, &quarantine),
            None => Err(PullError::Unsupported {
                url: url.to_owned(),
            }),
        };
        let result = fetched.and_then(|()| self.adopt(url, &quarantine, policy));
        let cleanup = self.drop_refs_under(&quarantine);
        let report = result?;
        cleanup?;
        Ok(report)
    }

    /// Copies the objects of every `refs/kstack/*` head of the store at `path` and
    /// points quarantine refs at them, without any subprocess.
    fn fetch_local(&self, url: &str, path: &Path, quarantine: &str) -> Result<(), PullError> {
        let source = gix::open_opts(path, gix::open::Options::isolated()).map_err(|e| {
            PullError::OpenSource {
                url: url.to_owned(),
                source: e.into(),
            }
        })?;
        let source = Store {
            path: path.to_owned(),
            repo: source,
        };
        let heads = source.refs_under(REF_PREFIX)?;
        let mut updates = Vec::with_capacity(heads.len());
        for (name, id) in heads {
            self.copy_closure(url, &source.repo, id)?;
            updates.push(RefUpdate {
                name: format!("{quarantine}{}", &name[REF_PREFIX.len()..]),
                expected: None,
                new: Some(id),
            });
        }
        if !updates.is_empty() {
            self.update_refs(&updates, "kstack pull: quarantine")?;
        }
        Ok(())
    }

    /// Copies `root` and everything it reaches that this store lacks, children
    /// before parents, so an object here always has its closure here too. Every
    /// object is rehashed on the way in.
    fn copy_closure(
        &self,
        url: &str,
        source: &gix::Repository,
        root: ObjectId,
    ) -> Result<usize, PullError> {
        let mut copied = 0;
        let mut visited = HashSet::new();
        let mut stack = vec![(root, false)];
        while let Some((id, expanded)) = stack.pop() {
            if self.repo.has_object(id) {
                continue;
            }
            let object = source
                .try_find_object(id)
                .map_err(|e| PullError::SourceObject {
                    url: url.to_owned(),
                    id,
                    source: Some(e.into()),
                })?
                .ok_or_else(|| PullError::SourceObject {
                    url: url.to_owned(),
                    id,
                    source: None,
                })?;
            if !expanded {
                if !visited.insert(id) {
                    continue;
                }
                stack.push((id, true));
                let hash = source.object_hash();
                match object.kind {
                    gix::objs::Kind::Commit => {
                        let commit =
                            gix::objs::CommitRef::from_bytes(&object.data, hash).map_err(|_| {
                                PullError::SourceCorrupt {
                                    url: url.to_owned(),
                                    id,
                                }
                            })?;
                        stack.push((commit.tree(), false));
                        stack.extend(commit.parents().map(|p| (p, false)));
                    }
                    gix::objs::Kind::Tree => {
                        let tree =
                            gix::objs::TreeRef::from_bytes(&object.data, hash).map_err(|_| {
                                PullError::SourceCorrupt {
                                    url: url.to_owned(),
                                    id,
                                }
                            })?;
                        stack.extend(
                            tree.entries
                                .iter()
                                .filter(|e| !e.mode.is_commit())
                                .map(|e| (e.oid.to_owned(), false)),
                        );
                    }
                    gix::objs::Kind::Blob | gix::objs::Kind::Tag => {}
                }
                continue;
            }
            let written = self
                .repo
                .objects
                .write_buf(object.kind, &object.data)
                .map_err(|e| StoreError::Write {
                    what: format!("object {id}"),
                    source: e.into(),
                })?;
            if written != id {
                return Err(PullError::SourceCorrupt {
                    url: url.to_owned(),
                    id,
                });
            }
            copied += 1;
        }
        Ok(copied)
    }

    /// Fetches over the network with gix into the quarantine namespace.
    fn fetch_network(&self, url: &str, quarantine: &str) -> Result<(), PullError> {
        let fetch_err = |source: BoxError| PullError::Fetch {
            url: url.to_owned(),
            source,
        };
        let refspec = format!("+{REF_PREFIX}*:{quarantine}*");
        let remote = self
            .repo
            .remote_at(url)
            .map_err(|e| fetch_err(e.into()))?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs(Some(refspec.as_str()), gix::remote::Direction::Fetch)
            .map_err(|e| fetch_err(e.into()))?;
        let connection = remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(|e| fetch_err(e.into()))?;
        let interrupt = AtomicBool::new(false);
        connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| fetch_err(e.into()))?
            .receive(gix::progress::Discard, &interrupt)
            .map_err(|e| fetch_err(e.into()))?;
        Ok(())
    }

    /// Verifies every quarantined head and, if all pass, moves the local refs.
    fn adopt(
        &self,
        url: &str,
        quarantine: &str,
        policy: &TrustPolicy,
    ) -> Result<PullReport, PullError> {
        let mut report = PullReport::default();
        let mut rejected = Vec::new();
        let mut updates = Vec::new();
        for (name, new) in self.refs_under(quarantine)? {
            let Some(stack) = StackId::from_ref_name(&name, quarantine) else {
                rejected.push(Rejection {
                    stack: format!("{REF_PREFIX}{}", &name[quarantine.len()..]),
                    reason: "not a stack ref (expected refs/kstack/<build-id>/<name>)".to_owned(),
                });
                continue;
            };
            match self.judge(&stack, new, policy) {
                Ok(pulled) => {
                    if pulled.outcome == PullOutcome::Updated {
                        updates.push(RefUpdate {
                            name: stack.ref_name(),
                            expected: pulled.old,
                            new: Some(pulled.new),
                        });
                    }
                    report.stacks.push(pulled);
                }
                Err(reason) => rejected.push(Rejection {
                    stack: stack.to_string(),
                    reason,
                }),
            }
        }
        if !rejected.is_empty() {
            return Err(PullError::Rejected {
                url: url.to_owned(),
                rejected,
            });
        }
        if !updates.is_empty() {
            self.update_refs(&updates, &format!("kstack pull {url}"))?;
        }
        // Best effort, as after a commit: the pull stands either way.
        let _ = self.maybe_pack();
        Ok(report)
    }

    /// Decides about one fetched head; the error is the reason to refuse it.
    /// Descent is judged by the signed chain of `stack.toml` digests
    /// ([`crate::lineage`]), so a head approved elsewhere (the same `stack.toml`,
    /// more signatures) is the same commit: its signatures are combined with the
    /// local ones, and the local ref moves to the result.
    fn judge(
        &self,
        stack: &StackId,
        fetched: ObjectId,
        policy: &TrustPolicy,
    ) -> Result<PulledStack, String> {
        let text = |e: &dyn std::error::Error| crate::error_chain(e);
        let old = self.stack_head(stack).map_err(|e| text(&e))?;
        let pulled = |new, outcome| PulledStack {
            stack: stack.clone(),
            old,
            new,
            outcome,
        };
        if old == Some(fetched) {
            return Ok(pulled(fetched, PullOutcome::UpToDate));
        }
        let Some(old) = old else {
            self.verify(fetched, Some(stack), policy)
                .map_err(|e| text(&e))?;
            self.verify_history(fetched, None, None)
                .map_err(|e| text(&e))?;
            return Ok(pulled(fetched, PullOutcome::Updated));
        };
        let old_digest = self.stack_digest(old).map_err(|e| text(&e))?;
        let new = match self.lineage(&old_digest, fetched).map_err(|e| text(&e))? {
            Lineage::Descends(_) => fetched,
            Lineage::Same => {
                let ours = self.signed_header(old).map_err(|e| text(&e))?.signers;
                let theirs = self.signed_header(fetched).map_err(|e| text(&e))?.signers;
                if theirs.iter().all(|k| ours.contains(k)) {
                    return Ok(pulled(fetched, PullOutcome::LocalAhead));
                }
                if ours.iter().all(|k| theirs.contains(k)) {
                    fetched
                } else {
                    let committer = Author {
                        name: "kstack pull".into(),
                        email: "kstack@localhost".into(),
                        time: crate::validity::Timestamp::now().secs(),
                        valid_for: std::time::Duration::ZERO,
                    };
                    self.merge_signatures(old, fetched, &committer)
                        .map_err(|e| text(&e))?
                }
            }
            Lineage::Unrelated => {
                let new_digest = self.stack_digest(fetched).map_err(|e| text(&e))?;
                if self
                    .lineage(&new_digest, old)
                    .map_err(|e| text(&e))?
                    .contains_base()
                {
                    return Ok(pulled(fetched, PullOutcome::LocalAhead));
                }
                return Err(format!(
                    "fetched head {} does not descend from the local head {} (diverged or rewound); refusing to rewrite history",
                    short(&fetched),
                    short(&old)
                ));
            }
        };
        // The lineage walk checked every new commit's signatures and parent digest;
        // the new head must also satisfy the trust policy.
        self.verify(new, Some(stack), policy)
            .map_err(|e: VerifyError| text(&e))?;
        Ok(pulled(new, PullOutcome::Updated))
    }

    /// Whether `ancestor` is on the first-parent line of `descendant`.
    pub fn is_ancestor(
        &self,
        ancestor: ObjectId,
        descendant: ObjectId,
    ) -> Result<bool, StoreError> {
        let mut next = Some(descendant);
        while let Some(id) = next {
            if id == ancestor {
                return Ok(true);
            }
            next = self.commit_info(id)?.parents.first().copied();
        }
        Ok(false)
    }

    fn drop_refs_under(&self, prefix: &str) -> Result<(), StoreError> {
        let updates: Vec<RefUpdate> = self
            .refs_under(prefix)?
            .into_iter()
            .map(|(name, id)| RefUpdate {
                name,
                expected: Some(id),
                new: None,
            })
            .collect();
        if updates.is_empty() {
            return Ok(());
        }
        self.update_refs(&updates, "kstack pull: drop quarantine")
    }
}
