//! A writer for the Linux initramfs format: an uncompressed `newc` cpio archive.
//!
//! The sandbox builds its root file system with this instead of calling `cpio`, so
//! the archive's content (paths, modes, owners, the device nodes) is exactly what the
//! code says. The format is the kernel's `Documentation/driver-api/early-userspace/
//! buffer-format.rst`: a 110-byte ASCII header per entry, the NUL-terminated name and
//! the data each padded to 4 bytes, and a `TRAILER!!!` entry at the end.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// `newc` magic (no checksums).
const NEWC_MAGIC: &str = "070701";
/// The name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";

// File type bits of `st_mode` (include/uapi/linux/stat.h).
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, Clone)]
enum Content {
    Dir,
    Bytes(Vec<u8>),
    HostFile { path: PathBuf, len: u64 },
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone)]
struct Entry {
    mode: u32,
    content: Content,
}

/// An initramfs being assembled. Paths are absolute guest paths (`/bin/sh`); parent
/// directories are created implicitly with mode 0755. Adding a path twice replaces it.
#[derive(Debug, Default, Clone)]
pub struct Initramfs {
    // Sorted by path, so parents always come before their children in the archive.
    entries: BTreeMap<String, Entry>,
}

/// An error while assembling or writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("cannot read {path} for the initramfs: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("initramfs path {0:?} must be absolute and must not contain `..`")]
    BadPath(String),
    #[error("cannot write the initramfs: {0}")]
    Write(#[from] io::Error),
}

impl Initramfs {
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory (and its parents).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, InitramfsError> {
        let key = normalise(path)?;
        self.parents(&key);
        self.entries.insert(
            key,
            Entry {
                mode: S_IFDIR | (mode & 0o7777),
                content: Content::Dir,
            },
        );
        Ok(self)
    }

    /// A regular file with the given bytes.
    pub fn file(
        &mut self,
        path: &str,
        mode: u32,
        data: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, InitramfsError> {
        self.insert(path, S_IFREG | (mode & 0o7777), Content::Bytes(data.into()))
    }

    /// A regular file copied from the host when the archive is written (not read into
    /// memory now). Its mode is the host file's.
    pub fn host_file(&mut self, path: &str, host: &Path) -> Result<&mut Self, InitramfsError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(host).map_err(|source| InitramfsError::Read {
            path: host.to_owned(),
            source,
        })?;
        let content = Content::HostFile {
            path: host.to_owned(),
            len: meta.len(),
        };
        self.insert(
            path,
            S_IFREG | (meta.permissions().mode() & 0o7777),
            content,
        )
    }

    /// A host directory, recursively, at `path`: regular files (copied when the archive
    /// is written), directories and symbolic links.
    pub fn host_tree(&mut self, path: &str, host: &Path) -> Result<&mut Self, InitramfsError> {
        let read_err = |source| InitramfsError::Read {
            path: host.to_owned(),
            source,
        };
        self.dir(path, 0o755)?;
        let mut entries: Vec<_> = std::fs::read_dir(host)
            .map_err(read_err)?
            .collect::<Result<_, _>>()
            .map_err(read_err)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(InitramfsError::BadPath(format!(
                    "{}",
                    entry.path().display()
                )));
            };
            let guest = format!("{}/{name}", path.trim_end_matches('/'));
            let kind = entry.file_type().map_err(read_err)?;
            if kind.is_dir() {
                self.host_tree(&guest, &entry.path())?;
            } else if kind.is_symlink() {
                let target = std::fs::read_link(entry.path()).map_err(read_err)?;
                self.symlink(&guest, &target.to_string_lossy())?;
            } else if kind.is_file() {
                self.host_file(&guest, &entry.path())?;
            }
        }
        Ok(self)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, InitramfsError> {
        self.insert(path, S_IFLNK | 0o777, Content::Symlink(target.to_owned()))
    }

    /// A character device node, such as `/dev/console` (5, 1).
    pub fn char_dev(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, InitramfsError> {
        self.insert(
            path,
            S_IFCHR | (mode & 0o7777),
            Content::CharDev { major, minor },
        )
    }

    /// Whether the archive holds `path`.
    pub fn contains(&self, path: &str) -> bool {
        normalise(path).is_ok_and(|key| self.entries.contains_key(&key))
    }

    fn insert(
        &mut self,
        path: &str,
        mode: u32,
        content: Content,
    ) -> Result<&mut Self, InitramfsError> {
        let key = normalise(path)?;
        self.parents(&key);
        self.entries.insert(key, Entry { mode, content });
        Ok(self)
    }

    fn parents(&mut self, key: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = key.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries.entry(prefix.clone()).or_insert(Entry {
                mode: S_IFDIR | 0o755,
                content: Content::Dir,
            });
        }
    }

    /// Writes the archive: every entry owned by root, mtime 0, so the same content
    /// gives the same bytes.
    pub fn write_to(&self, out: &mut dyn Write) -> Result<(), InitramfsError> {
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            let (size, rdev) = match &entry.content {
                Content::Dir => (0, (0, 0)),
                Content::Bytes(b) => (b.len() as u64, (0, 0)),
                Content::HostFile { len, .. } => (*len, (0, 0)),
                Content::Symlink(t) => (t.len() as u64, (0, 0)),
                Content::CharDev { major, minor } => (0, (*major, *minor)),
            };
            let size = u32::try_from(size).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{path} is over 4 GiB"))
            })?;
            let nlink = if matches!(entry.content, Content::Dir) {
                2
            } else {
                1
            };
            write_header(out, ino, entry.mode, nlink, size, rdev, path)?;
            match &entry.content {
                Content::Dir | Content::CharDev { .. } => {}
                Content::Bytes(b) => out.write_all(b)?,
                Content::Symlink(t) => out.write_all(t.as_bytes())?,
                Content::HostFile { path: host, len } => {
                    let mut file = File::open(host).map_err(|source| InitramfsError::Read {
                        path: host.clone(),
                        source,
                    })?;
                    let copied = io::copy(&mut file, out)?;
                    if copied != *len {
                        return Err(InitramfsError::Read {
                            path: host.clone(),
                            source: io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!("size changed from {len} to {copied} bytes while writing"),
                            ),
                        });
                    }
                }
            }
            pad4(out, size as usize)?;
        }
        write_header(out, 0, 0, 1, 0, (0, 0), TRAILER)?;
        Ok(())
    }

    /// Writes the archive to a file.
    pub fn write_file(&self, path: &Path) -> Result<(), InitramfsError> {
        let mut out = io::BufWriter::new(File::create(path)?);
        self.write_to(&mut out)?;
        out.flush()?;
        Ok(())
    }
}

fn normalise(path: &str) -> Result<String, InitramfsError> {
    let trimmed = path.trim_start_matches('/');
    if !path.starts_with('/')
        || trimmed.is_empty()
        || trimmed
            .split('/')
            .any(|p| p.is_empty() || p == ".." || p == ".")
    {
        return Err(InitramfsError::BadPath(path.to_owned()));
    }
    Ok(trimmed.to_owned())
}

fn write_header(
    out: &mut dyn Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    (rmajor, rminor): (u32, u32),
    name: &str,
) -> io::Result<()> {
    let namesize = name.len() + 1;
    let header = format!(
        "{NEWC_MAGIC}{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
         {dmaj:08x}{dmin:08x}{rmajor:08x}{rminor:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        dmaj = 0,
        dmin = 0,
        check = 0,
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, header.len() + namesize)
}

fn pad4(out: &mut dyn Write, len: usize) -> io::Result<()> {
    let pad = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..pad])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(fs: &Initramfs) -> Vec<u8> {
        let mut out = Vec::new();
        fs.write_to(&mut out).unwrap();
        out
    }

    #[test]
    fn layout_is_newc_with_parents_first_and_aligned() {
        let mut fs = Initramfs::new();
        fs.file("/a/b/hello", 0o644, b"hi\n".to_vec()).unwrap();
        let out = archive(&fs);
        let text = String::from_utf8_lossy(&out);
        // Parents before children, then the trailer.
        let a = text.find("a\0").unwrap();
        let ab = text.find("a/b\0").unwrap();
        let hello = text.find("a/b/hello\0").unwrap();
        let trailer = text.find("TRAILER!!!\0").unwrap();
        assert!(a < ab && ab < hello && hello < trailer);
        assert_eq!(out.len() % 4, 0);
        // Every header starts on a 4-byte boundary with the magic.
        let mut pos = 0;
        let mut names = Vec::new();
        while pos < out.len() {
            assert_eq!(&out[pos..pos + 6], b"070701", "at {pos}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&out[pos + 6 + 8 * i..pos + 14 + 8 * i]).unwrap();
                usize::from_str_radix(s, 16).unwrap()
            };
            let (size, namesize) = (field(6), field(11));
            let name = &out[pos + 110..pos + 110 + namesize - 1];
            names.push(String::from_utf8(name.to_vec()).unwrap());
            let data = (pos + 110 + namesize).next_multiple_of(4);
            pos = (data + size).next_multiple_of(4);
            if names.last().unwrap() == TRAILER {
                break;
            }
        }
        assert_eq!(pos, out.len());
        assert_eq!(names, ["a", "a/b", "a/b/hello", TRAILER]);
    }

    #[test]
    fn the_archive_unpacks_with_cpio() {
        // The reference reader, when the machine has it (set-up installs it).
        let Ok(status) = std::process::Command::new("cpio").arg("--version").output() else {
            panic!("cpio is missing: run `cargo xtask setup`");
        };
        assert!(status.status.success());
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host.bin");
        std::fs::write(&host, [1u8, 2, 3, 4, 5]).unwrap();
        let mut fs = Initramfs::new();
        fs.file("/etc/motd", 0o600, b"hello".to_vec()).unwrap();
        fs.host_file("/bin/blob", &host).unwrap();
        fs.symlink("/init", "/bin/blob").unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/deep"), b"deep").unwrap();
        fs.host_tree("/srv/tree", &tree).unwrap();
        let img = dir.path().join("x.cpio");
        fs.write_file(&img).unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && cpio -idm --quiet --no-absolute-filenames < {}",
                root.display(),
                img.display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(std::fs::read(root.join("etc/motd")).unwrap(), b"hello");
        assert_eq!(
            std::fs::read(root.join("bin/blob")).unwrap(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(
            std::fs::read_link(root.join("init")).unwrap(),
            Path::new("/bin/blob")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.join("etc/motd"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut fs = Initramfs::new();
        assert!(fs.file("relative", 0o644, Vec::new()).is_err());
        assert!(fs.file("/a/../b", 0o644, Vec::new()).is_err());
        assert!(fs.file("/", 0o644, Vec::new()).is_err());
    }
}
