//! Which kernel line the coverage benchmark cuts its fixes from and runs them on: the
//! base release the fixes are built for, the later point release of the same line
//! whose source they come from, and where the results go.

use std::path::{Path, PathBuf};

/// Chooses the line of the coverage benchmark (`6.1`, the default, or `6.12`).
pub const LINE_ENV: &str = "COVERAGE_LINE";

/// One line's corpus: the fixes between two Debian source releases of the line, built
/// for the cloud kernel of the older one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorpusLine {
    /// The kernel line, as `KernelLine` names it (`6.12`).
    pub line: &'static str,
    /// The Debian source package of the line (`linux-source-6.12`).
    pub source_package: &'static str,
    /// The base kernel's release (`uname -r`): the fixes are built for it and run on it.
    pub base_release: &'static str,
    /// The Debian version of the base kernel's image (and of its source).
    pub base_version: &'static str,
    /// The Debian version of the later source the fixes are cut from.
    pub target_version: &'static str,
}

/// Debian 12's own line: 6.1.176-1 (`6.1.0-50`) to 6.1.187-1 (`6.1.0-53`).
pub const LINE_6_1: CorpusLine = CorpusLine {
    line: "6.1",
    source_package: "linux-source-6.1",
    base_release: "6.1.0-50-cloud-amd64",
    base_version: "6.1.176-1",
    target_version: "6.1.187-1",
};

/// Debian 13's line in Debian 12's security archive. Two point releases older than
/// the newest two (6.12.117 and 6.12.115 when this was written): the set-up 6.12
/// kernel is the newest, and a corpus from the releases before it is one that real
/// hosts lived through (6.12.107 ran until 6.12.113 replaced it).
pub const LINE_6_12: CorpusLine = CorpusLine {
    line: "6.12",
    source_package: "linux-source-6.12",
    base_release: "6.12.107+deb12-cloud-amd64",
    base_version: "6.12.107-1~deb12u1",
    target_version: "6.12.113-1~deb12u1",
};

const LINES: [CorpusLine; 2] = [LINE_6_1, LINE_6_12];

impl CorpusLine {
    /// The line [`LINE_ENV`] names (`value`): 6.1 when unset or empty.
    pub fn selected(value: Option<&str>) -> Result<CorpusLine, String> {
        match value.map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(LINE_6_1),
            Some(name) => LINES.into_iter().find(|l| l.line == name).ok_or_else(|| {
                let known: Vec<&str> = LINES.iter().map(|l| l.line).collect();
                format!(
                    "{LINE_ENV}={name}: no corpus for that line (known: {})",
                    known.join(", ")
                )
            }),
        }
    }

    /// Where the report and each fix's diff and logs go, under the target directory:
    /// `coverage/` for 6.1 (as before there was a choice), `coverage-<line>/` else.
    pub fn report_dir(&self, target: &Path) -> PathBuf {
        if *self == LINE_6_1 {
            target.join("coverage")
        } else {
            target.join(format!("coverage-{}", self.line))
        }
    }

    /// The unpacked target source, under the kstack cache.
    pub fn target_source_dir(&self, cache: &Path) -> PathBuf {
        cache.join(format!("corpus/linux-{}", self.target_version))
    }

    /// The include index of the target source, under the kstack cache: one per
    /// source, since the index file does not say which tree it was scanned from.
    pub fn include_index_dir(&self, cache: &Path) -> PathBuf {
        if *self == LINE_6_1 {
            // Where the first corpus kept it.
            cache.join("corpus/deps")
        } else {
            cache.join(format!("corpus/deps-{}", self.target_version))
        }
    }

    /// The `.deb` file name `apt-get download` gives the target source package.
    pub fn target_deb_name(&self) -> String {
        format!("{}_{}_all.deb", self.source_package, self.target_version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upstream point release a Debian version or release names (`6.12.107`).
    fn upstream(version: &str) -> Vec<u64> {
        version
            .split(['-', '+', '~'])
            .next()
            .unwrap()
            .split('.')
            .map(|n| n.parse().unwrap())
            .collect()
    }

    #[test]
    fn six_one_stays_the_default_and_keeps_its_report_dir() {
        assert_eq!(CorpusLine::selected(None), Ok(LINE_6_1));
        assert_eq!(CorpusLine::selected(Some("")), Ok(LINE_6_1));
        assert_eq!(CorpusLine::selected(Some("6.1")), Ok(LINE_6_1));
        assert_eq!(
            LINE_6_1.report_dir(Path::new("target")),
            Path::new("target/coverage")
        );
        assert_eq!(
            LINE_6_1.include_index_dir(Path::new("c")),
            Path::new("c/corpus/deps")
        );
    }

    #[test]
    fn each_line_has_its_own_report_dir_and_include_index() {
        assert_eq!(CorpusLine::selected(Some("6.12")), Ok(LINE_6_12));
        assert_eq!(
            LINE_6_12.report_dir(Path::new("target")),
            Path::new("target/coverage-6.12")
        );
        assert_ne!(
            LINE_6_12.include_index_dir(Path::new("c")),
            LINE_6_1.include_index_dir(Path::new("c"))
        );
        assert_eq!(
            LINE_6_12.target_deb_name(),
            "linux-source-6.12_6.12.113-1~deb12u1_all.deb"
        );
        let err = CorpusLine::selected(Some("5.10")).unwrap_err();
        assert!(err.contains("known: 6.1, 6.12"), "{err}");
    }

    #[test]
    fn the_6_12_corpus_is_two_point_releases_not_the_newest_two() {
        // `apt-cache madison linux-source-6.12` on 2026-11-28.
        let archive = [
            "6.12.117-1~deb12u1",
            "6.12.115-2~deb12u1",
            "6.12.113-1~deb12u1",
            "6.12.111-1~deb12u1",
            "6.12.107-1~deb12u1",
        ];
        let line = LINE_6_12;
        assert!(archive.contains(&line.base_version));
        assert!(archive.contains(&line.target_version));
        assert!(!archive[..2].contains(&line.base_version));
        assert!(!archive[..2].contains(&line.target_version));
        assert!(upstream(line.base_version) < upstream(line.target_version));
    }

    #[test]
    fn each_base_release_is_its_versions_point_release() {
        for line in LINES {
            assert!(line.source_package.ends_with(line.line), "{line:?}");
            assert_eq!(
                upstream(line.base_version)[..2],
                upstream(line.target_version)[..2],
                "{line:?}"
            );
        }
        // 6.12's release names its point release; 6.1's names an ABI (6.1.0-50).
        assert_eq!(
            upstream(LINE_6_12.base_release),
            upstream(LINE_6_12.base_version)
        );
    }
}
