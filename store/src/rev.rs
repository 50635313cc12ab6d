//! Revisions, as Git users write them: a full or abbreviated commit id, a stack name
//! (`prod`, or `<build-id>/prod` when the name exists for several kernels), and
//! `REV~N` for the N-th first parent.

use crate::ident::BuildId;
use crate::store::{ObjectId, REF_PREFIX, StackId, Store, StoreError};

/// Shortest abbreviated commit id accepted, as in Git.
pub const MIN_PREFIX_LEN: usize = 4;

/// A revision that does not name exactly one commit.
#[derive(Debug, thiserror::Error)]
pub enum RevError {
    #[error("bad revision {rev:?}: {message}")]
    Syntax { rev: String, message: String },
    #[error("revision {rev:?} names no stack and no commit in the store")]
    NotFound { rev: String },
    #[error("revision {rev:?} is ambiguous: it abbreviates {}", candidates.join(", "))]
    AmbiguousId {
        rev: String,
        candidates: Vec<String>,
    },
    #[error(
        "stack {name:?} exists for several kernels ({}); pass --kernel BUILD-ID or write BUILD-ID/{name}",
        build_ids.join(", ")
    )]
    AmbiguousStack {
        name: String,
        build_ids: Vec<String>,
    },
    #[error("revision {rev:?}: history has only {available} commit(s) before it")]
    TooFarBack { rev: String, available: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A parsed revision: a base and how many first parents to go back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub base: String,
    pub back: usize,
}

impl Revision {
    /// Parses `BASE`, `BASE~`, `BASE~N`, `BASE~N~M`.
    pub fn parse(rev: &str) -> Result<Revision, RevError> {
        let syntax = |message: &str| RevError::Syntax {
            rev: rev.to_owned(),
            message: message.to_owned(),
        };
        let mut parts = rev.split('~');
        let base = parts.next().unwrap_or("").to_owned();
        if base.is_empty() {
            return Err(syntax("empty"));
        }
        let mut back = 0usize;
        for part in parts {
            let n = if part.is_empty() {
                1
            } else {
                part.parse::<usize>()
                    .map_err(|_| syntax("expected a number after '~'"))?
            };
            back = back.checked_add(n).ok_or_else(|| syntax("too far back"))?;
        }
        Ok(Revision { base, back })
    }
}

/// What a revision resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub commit: ObjectId,
    /// The stack, when the revision named one.
    pub stack: Option<StackId>,
}

impl Store {
    /// Resolves a stack name (or `BUILD-ID/NAME`) to its stack. `kernel` picks among
    /// same-named stacks of several kernels (pass the `--kernel` value, else the
    /// running kernel's build ID).
    pub fn find_stack(
        &self,
        name: &str,
        kernel: Option<&BuildId>,
    ) -> Result<Option<StackId>, RevError> {
        if let Some(id) = StackId::from_ref_name(&format!("{REF_PREFIX}{name}"), REF_PREFIX) {
            return Ok(self.stack_head(&id)?.map(|_| id));
        }
        let matches: Vec<StackId> = self
            .stacks()?
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| id.name == name)
            .collect();
        match matches.len() {
            0 => Ok(None),
            1 => Ok(matches.into_iter().next()),
            _ => {
                if let Some(id) = kernel.and_then(|k| matches.iter().find(|id| &id.build_id == k)) {
                    return Ok(Some(id.clone()));
                }
                Err(RevError::AmbiguousStack {
                    name: name.to_owned(),
                    build_ids: matches.iter().map(|id| id.build_id.to_hex()).collect(),
                })
            }
        }
    }

    /// Resolves a revision to a commit. Stack names win over abbreviated ids, as
    /// branch names do in Git.
    pub fn resolve(&self, rev: &str, kernel: Option<&BuildId>) -> Result<Resolved, RevError> {
        let parsed = Revision::parse(rev)?;
        let (mut commit, stack) = if let Some(stack) = self.find_stack(&parsed.base, kernel)? {
            let head = self.stack_head(&stack)?.ok_or_else(|| RevError::NotFound {
                rev: rev.to_owned(),
            })?;
            (head, Some(stack))
        } else {
            let hex = &parsed.base;
            if hex.len() < MIN_PREFIX_LEN
                || hex.len() > 40
                || !hex.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(RevError::NotFound {
                    rev: rev.to_owned(),
                });
            }
            let found = self.commits_with_prefix(&hex.to_ascii_lowercase())?;
            match found.as_slice() {
                [] => {
                    return Err(RevError::NotFound {
                        rev: rev.to_owned(),
                    });
                }
                [one] => (*one, None),
                many => {
                    return Err(RevError::AmbiguousId {
                        rev: rev.to_owned(),
                        candidates: many
                            .iter()
                            .map(|id| id.to_hex_with_len(12).to_string())
                            .collect(),
                    });
                }
            }
        };
        for step in 0..parsed.back {
            let info = self.commit_info(commit)?;
            commit = *info.parents.first().ok_or_else(|| RevError::TooFarBack {
                rev: rev.to_owned(),
                available: step,
            })?;
        }
        Ok(Resolved { commit, stack })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_revisions() {
        let r = |s: &str| Revision::parse(s).unwrap();
        assert_eq!(
            r("prod"),
            Revision {
                base: "prod".into(),
                back: 0
            }
        );
        assert_eq!(
            r("prod~"),
            Revision {
                base: "prod".into(),
                back: 1
            }
        );
        assert_eq!(
            r("prod~3"),
            Revision {
                base: "prod".into(),
                back: 3
            }
        );
        assert_eq!(
            r("abcd~2~1"),
            Revision {
                base: "abcd".into(),
                back: 3
            }
        );
        assert_eq!(r("00ff/prod~1").base, "00ff/prod");
        assert!(Revision::parse("").is_err());
        assert!(Revision::parse("~1").is_err());
        let err = Revision::parse("prod~x").unwrap_err();
        assert!(err.to_string().contains("expected a number"), "{err}");
    }
}
