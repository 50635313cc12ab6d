//! Reading a long first-parent history fast: the walk behind [`Store::log`].
//!
//! A store that `git repack` (or a fetch) packed holds about half its commits as
//! deltas against another commit nearby in history. Reading such a delta through
//! `gix` inflates its base again each time, even when the walk has just read that
//! base: `gix_pack` caches only what a delta produces, never an undeltified base (and
//! kstack builds `gix` without that cache). Git keeps decoded bases in a cache
//! (`core.deltaBaseCacheLimit`, `packfile.c`), and so does this walk:
//! [`PackedCommits`] keeps the commits it read by pack location and applies a delta
//! to its base from there, so each commit is inflated once.
//!
//! Anything it does not handle (a loose object, a delta against an object id, a
//! base it no longer holds, anything malformed) is read through [`Store`] as
//! elsewhere, which also reports any error.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use gix::odb::pack::Find as _;
use gix::odb::pack::data::entry::Header;

use crate::store::{CommitInfo, ObjectId, Store, StoreError};

/// Bytes of decoded commits kept as possible delta bases. A repack looks for a
/// commit's base among the 10 objects next to it when sorted by size (`pack.window`),
/// which for commits of about the same size are up to a few hundred commits apart in
/// history; this keeps a few thousand.
const RECENT_BYTES: usize = 1 << 20;

/// The first-parent history of a commit, newest first, at most `left` commits. It
/// stops after the first error.
pub(crate) struct FirstParents<'s> {
    store: &'s Store,
    next: Option<ObjectId>,
    left: Option<usize>,
    packed: Option<PackedCommits>,
    buf: Vec<u8>,
}

impl<'s> FirstParents<'s> {
    pub(crate) fn new(store: &'s Store, start: ObjectId, limit: Option<usize>) -> Self {
        FirstParents {
            store,
            next: Some(start),
            left: limit,
            packed: PackedCommits::new(store),
            buf: Vec::new(),
        }
    }

    fn read(&mut self, id: ObjectId) -> Result<CommitInfo, StoreError> {
        if let Some(packed) = &mut self.packed
            && packed.read(&id, &mut self.buf)
            && let Ok(info) = self.store.parse_commit(id, &self.buf)
        {
            packed.keep(&mut self.buf);
            return Ok(info);
        }
        self.store.read_commit(id, &mut self.buf)
    }
}

impl Iterator for FirstParents<'_> {
    type Item = Result<CommitInfo, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let id = self.next.take()?;
        if let Some(left) = &mut self.left {
            *left = left.checked_sub(1)?;
        }
        let info = self.read(id);
        if let Ok(info) = &info {
            self.next = info.parents.first().copied();
        }
        Some(info)
    }
}

/// Commits read straight from the store's packs, each decoded one kept as a base
/// for the deltas that follow.
pub(crate) struct PackedCommits {
    /// A handle of its own: pack locations stay valid only while packs stay mapped.
    objects: gix::OdbHandle,
    object_hash: gix::hash::Kind,
    recent: Recent,
    /// An entry as stored: the object, or the instructions of a delta.
    entry: Vec<u8>,
    /// Where the commit that [`PackedCommits::read`] read last is in its pack.
    last: Option<(u32, u64)>,
    #[cfg(test)]
    deltas_applied: usize,
}

impl PackedCommits {
    /// `None` when the store has replace refs: pack locations ignore them.
    pub(crate) fn new(store: &Store) -> Option<PackedCommits> {
        let mut objects = store.repo().objects.clone();
        if objects.store_ref().replacements().next().is_some() {
            return None;
        }
        objects.prevent_pack_unload();
        // A miss here is a loose object, found by the store's own handle: looking for
        // new packs on every miss would read the pack directory each time.
        objects.refresh_never();
        Some(PackedCommits {
            objects,
            object_hash: store.repo().object_hash(),
            recent: Recent::default(),
            entry: Vec::new(),
            last: None,
            #[cfg(test)]
            deltas_applied: 0,
        })
    }

    /// Reads the commit `id` into `buf` if it is in a pack; false when it is not,
    /// when it is not a commit, or when anything is unexpected (the caller then
    /// reads it the usual way).
    pub(crate) fn read(&mut self, id: &gix::hash::oid, buf: &mut Vec<u8>) -> bool {
        self.last = None;
        // This inflates the entry: the commit itself, or a delta's instructions.
        let Ok(Some(location)) = self.objects.location_by_oid(id, &mut self.entry) else {
            return false;
        };
        let Some(header) = self.header(&location) else {
            return false;
        };
        let key = (location.pack_id, location.pack_offset);
        match header {
            Header::Commit => std::mem::swap(buf, &mut self.entry),
            Header::OfsDelta { base_distance } => {
                let base = location
                    .pack_offset
                    .checked_sub(base_distance)
                    .and_then(|offset| self.recent.get((location.pack_id, offset)));
                match base {
                    Some(base) if apply_delta(base, &self.entry, buf).is_some() => {
                        #[cfg(test)]
                        {
                            self.deltas_applied += 1;
                        }
                    }
                    // A base read long ago, or outside this walk: let gix resolve it.
                    _ => {
                        use gix::objs::Find as _;
                        match self.objects.try_find(id, buf) {
                            Ok(Some(data)) if data.kind == gix::objs::Kind::Commit => {}
                            _ => return false,
                        }
                    }
                }
            }
            Header::Tree | Header::Blob | Header::Tag | Header::RefDelta { .. } => return false,
        }
        self.last = Some(key);
        true
    }

    /// Keeps the commit just read, in `buf`, as a base for the deltas to come; `buf`
    /// gets a buffer back in exchange.
    pub(crate) fn keep(&mut self, buf: &mut Vec<u8>) {
        if let Some(key) = self.last.take() {
            self.recent.put(key, buf);
        }
    }

    /// The pack entry header at `location`.
    fn header(&self, location: &gix::odb::pack::data::entry::Location) -> Option<Header> {
        let raw = self.objects.entry_by_location(location)?;
        gix::odb::pack::data::Entry::from_bytes(&raw.data, location.pack_offset, self.object_hash)
            .ok()
            .map(|entry| entry.header)
    }
}

/// Decoded objects by pack location, the oldest dropped past [`RECENT_BYTES`].
#[derive(Default)]
struct Recent {
    objects: HashMap<(u32, u64), Vec<u8>, BuildHasherDefault<LocationHasher>>,
    order: VecDeque<(u32, u64)>,
    bytes: usize,
}

impl Recent {
    fn get(&self, key: (u32, u64)) -> Option<&[u8]> {
        self.objects.get(&key).map(Vec::as_slice)
    }

    /// Takes `data` in, leaving in its place the buffer of an object dropped to make
    /// room (so a long walk stops allocating), or an empty one.
    fn put(&mut self, key: (u32, u64), data: &mut Vec<u8>) {
        if data.len() > RECENT_BYTES / 4 || self.objects.contains_key(&key) {
            return;
        }
        let mut spare = Vec::new();
        while self.bytes + data.len() > RECENT_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(old) = self.objects.remove(&old) {
                self.bytes -= old.len();
                spare = old;
            }
        }
        self.bytes += data.len();
        self.objects.insert(key, std::mem::replace(data, spare));
        self.order.push_back(key);
    }
}

/// A multiply-and-rotate hash (as rustc's FxHash) for pack locations: a long walk
/// looks one up for every commit, and SipHash, made to resist chosen keys, costs
/// more there than a pack's own offsets need.
#[derive(Default)]
struct LocationHasher(u64);

impl Hasher for LocationHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// Applies the git delta `delta` to `base`, into `out`; `None` when the delta is
/// malformed or does not fit `base`. The format is "Deltified representation" in
/// git's `Documentation/gitformat-pack.txt` (`patch-delta.c`): the base's size and
/// the result's size as little-endian base-128 numbers, then instructions, each
/// either a copy from the base (high bit set: which offset and size bytes follow
/// are flagged in the low seven bits; a size of 0 means 0x10000) or an insertion
/// of the next 1 to 127 bytes.
fn apply_delta(base: &[u8], delta: &[u8], out: &mut Vec<u8>) -> Option<()> {
    fn size(data: &mut &[u8]) -> Option<usize> {
        let mut value = 0usize;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = data.split_first()?;
            *data = rest;
            value |= usize::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let mut data = delta;
    if size(&mut data)? != base.len() {
        return None;
    }
    let result_size = size(&mut data)?;
    out.clear();
    out.reserve(result_size);
    while let Some((&op, rest)) = data.split_first() {
        data = rest;
        if op & 0x80 != 0 {
            let mut field = |bits: u8, bytes: usize| -> Option<usize> {
                let mut value = 0usize;
                for i in 0..bytes {
                    if bits & (1 << i) != 0 {
                        let (&byte, rest) = data.split_first()?;
                        data = rest;
                        value |= usize::from(byte) << (8 * i);
                    }
                }
                Some(value)
            };
            let offset = field(op & 0x0f, 4)?;
            let len = match field((op >> 4) & 0x07, 3)? {
                0 => 0x10000,
                len => len,
            };
            out.extend_from_slice(base.get(offset..offset.checked_add(len)?)?);
        } else if op != 0 {
            let (insert, rest) = data.split_at_checked(usize::from(op))?;
            out.extend_from_slice(insert);
            data = rest;
        } else {
            return None; // reserved
        }
    }
    (out.len() == result_size).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;
    use crate::store::{Author, RefUpdate};

    /// A delta: the base's size, the result's size, then instructions.
    fn delta(base_len: usize, result_len: usize, ops: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for mut n in [base_len, result_len] {
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        out.extend_from_slice(ops);
        out
    }

    #[test]
    fn deltas_copy_and_insert() {
        let base = b"tree 0123\nauthor a\n\nhello world\n";
        let mut out = Vec::new();
        // Copy 20 bytes from offset 0 (offset byte omitted), insert "bye", copy the
        // last 7 bytes (offset 25, size 7).
        let ops = [0x90, 20, 3, b'b', b'y', b'e', 0x91, 25, 7];
        apply_delta(base, &delta(base.len(), 30, &ops), &mut out).unwrap();
        assert_eq!(out, b"tree 0123\nauthor a\n\nbye world\n");

        // A copy of size 0 means 0x10000 bytes.
        let big = vec![7u8; 0x10000];
        apply_delta(&big, &delta(big.len(), big.len(), &[0x80]), &mut out).unwrap();
        assert_eq!(out, big);
    }

    #[test]
    fn malformed_deltas_are_refused() {
        let base = b"0123456789";
        let mut out = Vec::new();
        let refused = |d: Vec<u8>, out: &mut Vec<u8>| apply_delta(base, &d, out).is_none();
        assert!(
            refused(delta(9, 3, &[3, b'a', b'b', b'c']), &mut out),
            "base size"
        );
        assert!(
            refused(delta(10, 4, &[3, b'a', b'b', b'c']), &mut out),
            "result size"
        );
        assert!(
            refused(delta(10, 3, &[3, b'a']), &mut out),
            "truncated insert"
        );
        assert!(
            refused(delta(10, 3, &[0]), &mut out),
            "reserved instruction"
        );
        assert!(
            refused(delta(10, 4, &[0x91, 8, 4]), &mut out),
            "copy past the base"
        );
        assert!(refused(vec![0x80], &mut out), "truncated size");
        assert!(!refused(delta(10, 3, &[0x91, 7, 3]), &mut out));
        assert_eq!(out, b"789");
    }

    /// Commits that `git repack` stores as deltas of each other are read from the
    /// pack, each inflated once, and match what `gix` reads.
    #[test]
    fn a_repacked_history_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = Store::init(&path).unwrap();
        let tree = store.write_tree(&[], "tree").unwrap();
        let signer = SecretKey::from_seed(&[9; 32]).public();
        let mut head = None;
        let mut ids = Vec::new();
        for i in 0..60 {
            let author = Author {
                name: "kstack test".into(),
                email: "test@kstack".into(),
                time: 1_700_000_000 + i,
                valid_for: crate::validity::DEFAULT_VALIDITY,
            };
            let message = format!("add patch {i}\n\nA body long enough to be worth a delta.");
            let id = store
                .write_commit(tree, head, &author, &message, &[signer])
                .unwrap();
            ids.push(id);
            head = Some(id);
        }
        let head = head.unwrap();
        // `git repack -a` packs what refs reach.
        let update = RefUpdate {
            name: "refs/kstack/00ff/test".to_owned(),
            expected: None,
            new: Some(head),
        };
        store.update_refs(&[update], "test").unwrap();
        let repacked = std::process::Command::new("git")
            .arg(format!("--git-dir={}", path.display()))
            .args(["repack", "-adfq"])
            .status()
            .expect("git runs");
        assert!(repacked.success());
        let store = Store::open(&path).unwrap();

        let mut packed = PackedCommits::new(&store).unwrap();
        let (mut fast, mut usual) = (Vec::new(), Vec::new());
        for id in ids.iter().rev() {
            assert!(packed.read(id, &mut fast), "{id} is read from the pack");
            store
                .read_into(*id, &"commit", gix::objs::Kind::Commit, &mut usual)
                .unwrap();
            assert_eq!(fast, usual, "{id}");
            packed.keep(&mut fast);
        }
        assert!(
            packed.deltas_applied > 10,
            "{} deltas",
            packed.deltas_applied
        );

        let log = store.log(head, None).unwrap();
        let one_by_one: Vec<CommitInfo> = ids
            .iter()
            .rev()
            .map(|id| store.commit_info(*id).unwrap())
            .collect();
        assert_eq!(log, one_by_one);
        assert_eq!(store.log(head, Some(3)).unwrap(), one_by_one[..3]);
    }
}
