//! Keeping the store packed, without `git gc`: kstack writes loose objects, and a
//! long history of loose objects makes `log` read one file per commit. After a
//! write, [`Store::maybe_pack`] moves loose objects into a pack when there are many
//! (the same estimate `git gc --auto` makes), and merges packs when there are many.
//!
//! Packs are written in full (no deltas) to a temporary file, indexed by gix, and
//! only then are the loose copies removed: a crash at any point leaves every object
//! readable. Nothing is ever pruned, so a commit being prepared by another kstack
//! (objects written, ref not yet moved) is never lost.

use std::collections::HashSet;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use crate::store::{BoxError, ObjectId, Store, StoreError};

/// Loose objects above which [`Store::maybe_pack`] packs them (git's `gc.auto` is 6700).
pub const LOOSE_LIMIT: usize = 1024;
/// Packs above which [`Store::maybe_pack`] merges them all into one.
pub const PACK_LIMIT: usize = 16;
/// A packing lock older than this is left over from a crash and is taken over.
pub const STALE_LOCK: Duration = Duration::from_secs(600);
/// The directory git samples to estimate the number of loose objects.
const SAMPLE_DIR: &str = "objects/17";
/// Pack object type codes (`Documentation/gitformat-pack.txt`).
const OBJ_COMMIT: u8 = 1;
const OBJ_TREE: u8 = 2;
const OBJ_BLOB: u8 = 3;
const OBJ_TAG: u8 = 4;

/// Why packing failed. The store is consistent either way.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list the store's objects")]
    List {
        #[source]
        source: BoxError,
    },
    #[error("cannot index the new pack")]
    Index {
        #[source]
        source: BoxError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a packing run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackReport {
    /// Objects written into the new pack.
    pub packed: usize,
    /// Loose object files removed.
    pub loose_removed: usize,
    /// Old packs removed (merged into the new one).
    pub packs_removed: usize,
}

impl Store {
    /// Packs when there are more than about [`LOOSE_LIMIT`] loose objects or more
    /// than [`PACK_LIMIT`] packs; returns `None` when there was nothing to do or
    /// another kstack is packing.
    pub fn maybe_pack(&self) -> Result<Option<PackReport>, PackError> {
        let sample = std::fs::read_dir(self.path.join(SAMPLE_DIR)).map_or(0, |d| d.count());
        let loose_estimate = sample * 256;
        let packs = self.pack_files()?.len();
        if loose_estimate <= LOOSE_LIMIT && packs <= PACK_LIMIT {
            return Ok(None);
        }
        self.pack(packs >= PACK_LIMIT)
    }

    /// Moves every loose object into a new pack; with `merge`, also every object of
    /// every existing pack, which are then removed. `None` when another kstack holds
    /// the packing lock.
    pub fn pack(&self, merge: bool) -> Result<Option<PackReport>, PackError> {
        let Some(_lock) = PackLock::take(&self.path.join("kstack-pack.lock"))? else {
            return Ok(None);
        };
        // Work from what is on disk now, through a freshly opened repository: this
        // handle's view of the packs may be older than another kstack's last packing.
        let repo = gix::open_opts(&self.path, gix::open::Options::isolated())
            .map_err(|e| PackError::List { source: e.into() })?;
        let loose = self.loose_objects()?;
        let old_packs = if merge {
            self.pack_files()?
        } else {
            Vec::new()
        };
        let mut ids: Vec<ObjectId> = loose.iter().map(|(id, _)| *id).collect();
        // Every object of a pack that will be removed, from its own index.
        for pack in &old_packs {
            let index =
                gix::odb::pack::index::File::at(pack.with_extension("idx"), repo.object_hash())
                    .map_err(|e| PackError::List { source: e.into() })?;
            ids.extend(index.iter().map(|entry| entry.oid));
        }
        let mut seen = HashSet::with_capacity(ids.len());
        ids.retain(|id| seen.insert(*id));
        if ids.is_empty() || (!merge && ids.len() < 2 && old_packs.is_empty()) {
            return Ok(Some(PackReport::default()));
        }
        let new_pack = self.write_pack(&repo, &ids)?;

        let mut report = PackReport {
            packed: ids.len(),
            ..PackReport::default()
        };
        for (_, path) in &loose {
            if std::fs::remove_file(path).is_ok() {
                report.loose_removed += 1;
            }
        }
        for pack in old_packs {
            if pack == new_pack {
                continue;
            }
            // The index first: without it the pack is invisible, so no reader
            // ever sees an index whose pack is gone.
            let _ = std::fs::remove_file(pack.with_extension("idx"));
            if std::fs::remove_file(&pack).is_ok() {
                report.packs_removed += 1;
            }
        }
        Ok(Some(report))
    }

    /// Writes `ids` as one pack and its index; returns the pack's path.
    fn write_pack(&self, repo: &gix::Repository, ids: &[ObjectId]) -> Result<PathBuf, PackError> {
        let pack_dir = self.path.join("objects/pack");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| PackError::Io { path, source }
        };
        std::fs::create_dir_all(&pack_dir).map_err(io(&pack_dir))?;
        let tmp = tempfile::Builder::new()
            .prefix("tmp_kstack_pack")
            .tempfile_in(&pack_dir)
            .map_err(io(&pack_dir))?;
        let tmp_path = tmp.path().to_owned();
        {
            let mut out = HashingWriter {
                inner: std::io::BufWriter::new(tmp.as_file()),
                hasher: gix::hash::hasher(repo.object_hash()),
            };
            let count = u32::try_from(ids.len()).map_err(|_| PackError::Index {
                source: "too many objects for one pack".into(),
            })?;
            out.write_all(b"PACK").map_err(io(&tmp_path))?;
            out.write_all(&2u32.to_be_bytes()).map_err(io(&tmp_path))?;
            out.write_all(&count.to_be_bytes()).map_err(io(&tmp_path))?;
            for id in ids {
                let what = format!("object {id}");
                let object = repo
                    .try_find_object(*id)
                    .map_err(|e| StoreError::ReadObject {
                        what: what.clone(),
                        id: *id,
                        source: e.into(),
                    })?
                    .ok_or(StoreError::MissingObject { what, id: *id })?;
                let code = match object.kind {
                    gix::objs::Kind::Commit => OBJ_COMMIT,
                    gix::objs::Kind::Tree => OBJ_TREE,
                    gix::objs::Kind::Blob => OBJ_BLOB,
                    gix::objs::Kind::Tag => OBJ_TAG,
                };
                out.write_all(&entry_header(code, object.data.len() as u64))
                    .map_err(io(&tmp_path))?;
                let mut z = flate2::write::ZlibEncoder::new(&mut out, flate2::Compression::fast());
                z.write_all(&object.data).map_err(io(&tmp_path))?;
                z.finish().map_err(io(&tmp_path))?;
            }
            let checksum = out.hasher.try_finalize().map_err(|e| PackError::Index {
                source: Box::new(e),
            })?;
            out.inner
                .write_all(checksum.as_slice())
                .map_err(io(&tmp_path))?;
            out.inner.flush().map_err(io(&tmp_path))?;
        }
        let file = std::fs::File::open(&tmp_path).map_err(io(&tmp_path))?;
        let mut reader = BufReader::new(file);
        let interrupt = AtomicBool::new(false);
        let outcome = gix::odb::pack::Bundle::write_to_directory(
            &mut reader,
            Some(&pack_dir),
            &mut gix::progress::Discard,
            &interrupt,
            None::<gix::objs::find::Never>,
            repo.object_hash(),
            gix::odb::pack::bundle::write::Options::default(),
        )
        .map_err(|e| PackError::Index {
            source: Box::new(e),
        })?;
        // The `.keep` guards a fetched pack until refs point into it; ours is
        // complete already.
        if let Some(keep) = &outcome.keep_path {
            let _ = std::fs::remove_file(keep);
        }
        outcome.data_path.ok_or_else(|| PackError::Index {
            source: "gix wrote no pack file".into(),
        })
    }

    /// Every loose object file, with its id.
    fn loose_objects(&self) -> Result<Vec<(ObjectId, PathBuf)>, PackError> {
        let objects = self.path.join("objects");
        let mut out = Vec::new();
        let dirs = std::fs::read_dir(&objects).map_err(|source| PackError::Io {
            path: objects.clone(),
            source,
        })?;
        for dir in dirs.flatten() {
            let name = dir.file_name();
            let Some(prefix) = name
                .to_str()
                .filter(|n| n.len() == 2 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            else {
                continue;
            };
            let Ok(files) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for file in files.flatten() {
                let rest = file.file_name();
                let Some(rest) = rest.to_str() else { continue };
                if let Ok(id) = ObjectId::from_hex(format!("{prefix}{rest}").as_bytes()) {
                    out.push((id, file.path()));
                }
            }
        }
        Ok(out)
    }

    fn pack_files(&self) -> Result<Vec<PathBuf>, PackError> {
        let dir = self.path.join("objects/pack");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        Ok(entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "pack") && p.with_extension("idx").exists()
            })
            .collect())
    }
}

/// A pack entry's header: type and size, 4 bits then 7 per byte, little-endian.
fn entry_header(code: u8, mut size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    let mut byte = (code << 4) | (size & 0x0f) as u8;
    size >>= 4;
    while size != 0 {
        out.push(byte | 0x80);
        byte = (size & 0x7f) as u8;
        size >>= 7;
    }
    out.push(byte);
    out
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: gix::hash::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An exclusive lock file, removed on drop.
struct PackLock(PathBuf);

impl PackLock {
    fn take(path: &Path) -> Result<Option<PackLock>, PackError> {
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(_) => return Ok(Some(PackLock(path.to_owned()))),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(path)
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| {
                            SystemTime::now().duration_since(t).unwrap_or_default() > STALE_LOCK
                        });
                    if !stale {
                        return Ok(None);
                    }
                    let _ = std::fs::remove_file(path);
                }
                Err(source) => {
                    return Err(PackError::Io {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
        Ok(None)
    }
}

impl Drop for PackLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_headers() {
        assert_eq!(entry_header(OBJ_BLOB, 5), [0x35]);
        assert_eq!(entry_header(OBJ_COMMIT, 16), [0x90, 0x01]);
        assert_eq!(entry_header(OBJ_TREE, 1000), [0xa8, 0x3e]);
    }
}
