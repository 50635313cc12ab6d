//! Which Debian kernel line and flavour a release belongs to, and the packages that
//! go with it.
//!
//! Debian 12 publishes two lines of amd64 kernels, each in several flavours:
//!
//! | line | release (`uname -r`) | source package | newest release named by |
//! |---|---|---|---|
//! | 6.1 | `6.1.0-56-cloud-amd64`, `6.1.0-56-amd64` | `linux-source-6.1` | `linux-image-cloud-amd64`, `linux-image-amd64` |
//! | 6.12 | `6.12.117+deb12-cloud-amd64`, `6.12.117+deb12-amd64` | `linux-source-6.12` | `linux-image-6.12-cloud-amd64`, `linux-image-6.12-amd64` |
//!
//! The 6.12 line is Debian 13's kernel, built for Debian 12 in its security archive.
//! The release names the line and the flavour; the Debian version of a release is
//! always read from apt (the archive moves).

use serde::Serialize;

/// The lines kstack builds for and tests on.
pub const SUPPORTED_LINES: &[&str] = &["6.1", "6.12"];
/// The flavours kstack builds for and tests on: the cloud kernel (few modules, what
/// the sandbox boots by default) and the generic kernel of bare-metal machines.
pub const SUPPORTED_FLAVOURS: &[&str] = &["cloud-amd64", "amd64"];
/// The line whose metapackages carry no line in their name (`linux-image-amd64`):
/// Debian 12's own kernel.
const DEFAULT_LINE: &str = "6.1";

/// A Debian kernel line and flavour (`6.12`, `cloud-amd64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelLine {
    /// `major.minor`: `6.1`, `6.12`.
    pub line: String,
    /// The flavour: `cloud-amd64`, `amd64`.
    pub flavour: String,
}

impl KernelLine {
    /// The line and flavour a release names, whatever they are (`None` if the
    /// release does not look like `<major>.<minor>.<...>-<flavour>`).
    pub fn of_release(release: &str) -> Option<KernelLine> {
        let (version, rest) = release.split_once('-')?;
        let mut parts = version.split(['.', '+']);
        let major = parts.next().filter(|p| is_number(p))?;
        let minor = parts.next().filter(|p| is_number(p))?;
        // 6.1's releases carry an ABI number before the flavour (`6.1.0-56-amd64`);
        // 6.12's carry the point release and `+deb12` instead.
        let flavour = match rest.split_once('-') {
            Some((abi, flavour)) if is_number(abi) => flavour,
            _ => rest,
        };
        (!flavour.is_empty()).then(|| KernelLine {
            line: format!("{major}.{minor}"),
            flavour: flavour.to_owned(),
        })
    }

    /// A line name as Debian's metapackages spell it (`6.12-cloud-amd64`,
    /// `6.1-amd64`): the newest release of that line is asked for.
    pub fn of_line_name(name: &str) -> Option<KernelLine> {
        let (line, flavour) = name.split_once('-')?;
        let (major, minor) = line.split_once('.')?;
        (is_number(major) && is_number(minor) && !flavour.is_empty()).then(|| KernelLine {
            line: line.to_owned(),
            flavour: flavour.to_owned(),
        })
    }

    /// Refuses a line or flavour kstack does not build for, saying which it does.
    pub fn check_supported(&self) -> Result<(), String> {
        if !SUPPORTED_LINES.contains(&self.line.as_str()) {
            return Err(format!(
                "line {} is not one kstack builds for (it builds for Debian 12's lines {})",
                self.line,
                SUPPORTED_LINES.join(" and ")
            ));
        }
        if !SUPPORTED_FLAVOURS.contains(&self.flavour.as_str()) {
            return Err(format!(
                "flavour {} is not one kstack builds for and tests on (it takes {})",
                self.flavour,
                SUPPORTED_FLAVOURS.join(" and ")
            ));
        }
        Ok(())
    }

    /// The source package of the line (`linux-source-6.12`); one version per image
    /// version.
    pub fn source_package(&self) -> String {
        format!("linux-source-{}", self.line)
    }

    /// Where the source package puts its tarball.
    pub fn source_tarball(&self) -> String {
        format!("usr/src/linux-source-{}.tar.xz", self.line)
    }

    /// The metapackage that depends on the line's newest release of the flavour.
    pub fn metapackage(&self) -> String {
        if self.line == DEFAULT_LINE {
            format!("linux-image-{}", self.flavour)
        } else {
            format!("linux-image-{}-{}", self.line, self.flavour)
        }
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(release: &str) -> (String, String) {
        let l = KernelLine::of_release(release).expect(release);
        (l.line, l.flavour)
    }

    #[test]
    fn releases_name_their_line_and_flavour() {
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(line("6.1.0-56-cloud-amd64"), pair("6.1", "cloud-amd64"));
        assert_eq!(line("6.1.0-56-amd64"), pair("6.1", "amd64"));
        assert_eq!(line("6.1.0-56-rt-amd64"), pair("6.1", "rt-amd64"));
        assert_eq!(
            line("6.12.117+deb12-cloud-amd64"),
            pair("6.12", "cloud-amd64")
        );
        assert_eq!(line("6.12.117+deb12-amd64"), pair("6.12", "amd64"));
        // Debian 13's own releases look the same.
        assert_eq!(line("6.12.57+deb13-amd64"), pair("6.12", "amd64"));
        assert_eq!(line("6.1.0-99-kstack-test"), pair("6.1", "kstack-test"));
        for bad in [
            "current",
            "6.1.0",
            "6-cloud-amd64",
            "x.1.0-5-amd64",
            "6.1.0-5-",
        ] {
            assert_eq!(KernelLine::of_release(bad), None, "{bad}");
        }
    }

    #[test]
    fn packages_follow_the_line() {
        let l612 = KernelLine::of_release("6.12.117+deb12-cloud-amd64").unwrap();
        assert_eq!(l612.source_package(), "linux-source-6.12");
        assert_eq!(l612.source_tarball(), "usr/src/linux-source-6.12.tar.xz");
        assert_eq!(l612.metapackage(), "linux-image-6.12-cloud-amd64");
        let l61 = KernelLine::of_release("6.1.0-56-amd64").unwrap();
        assert_eq!(l61.source_package(), "linux-source-6.1");
        assert_eq!(l61.metapackage(), "linux-image-amd64");
    }

    #[test]
    fn line_names_ask_for_the_newest_release() {
        let l = KernelLine::of_line_name("6.12-cloud-amd64").unwrap();
        assert_eq!(
            (l.line.as_str(), l.flavour.as_str()),
            ("6.12", "cloud-amd64")
        );
        assert_eq!(l.metapackage(), "linux-image-6.12-cloud-amd64");
        assert_eq!(
            KernelLine::of_line_name("6.1-amd64").unwrap().metapackage(),
            "linux-image-amd64"
        );
        // A release is not a line name.
        assert_eq!(KernelLine::of_line_name("6.1.0-56-amd64"), None);
        assert_eq!(KernelLine::of_line_name("current"), None);
    }

    #[test]
    fn only_the_tested_lines_and_flavours_are_taken() {
        let ok = |r: &str| KernelLine::of_release(r).unwrap().check_supported();
        assert!(ok("6.1.0-56-cloud-amd64").is_ok());
        assert!(ok("6.1.0-56-amd64").is_ok());
        assert!(ok("6.12.117+deb12-cloud-amd64").is_ok());
        assert!(ok("6.12.117+deb12-amd64").is_ok());
        let rt = ok("6.1.0-56-rt-amd64").unwrap_err();
        assert!(rt.contains("flavour rt-amd64"), "{rt}");
        let old = ok("5.10.0-30-amd64").unwrap_err();
        assert!(old.contains("line 5.10"), "{old}");
    }
}
