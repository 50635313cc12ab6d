//! The Debian package, as `cargo xtask deb` builds it: lintian finds nothing (the
//! remaining tags are overridden in packaging/debian/lintian-overrides, each with its
//! reason); installed into a throw-away root with dpkg, `kstack --version` runs, every
//! manual page renders without a warning, the bash, zsh and fish completions complete
//! `kstack sy` to `sync`, the conffile is a valid config; purged, nothing is left.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kstack_tests::{SETUP, workspace_root};

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}\nrun `{SETUP}` first"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn build(dir: &Path) -> PathBuf {
    let binary = kstack_engine::sandbox::find_guest_binary()
        .unwrap_or_else(|e| panic!("{e}\nrun `{SETUP}` first"));
    xtask::deb::build(&xtask::deb::DebInput {
        root: workspace_root(),
        binary,
        out_dir: dir.to_owned(),
    })
    .unwrap_or_else(|e| panic!("{e:?}"))
}

/// A root with an empty dpkg database.
fn throwaway_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(root.join("var/lib/dpkg/available"), "").unwrap();
    root
}

/// dpkg on the throw-away root: the maintainer scripts run outside it (they honour
/// DPKG_ROOT), and init-system-helpers is not in that root's database.
fn dpkg(root: &Path) -> Command {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends"]);
    cmd
}

#[test]
fn the_package_is_lintian_clean_installs_works_and_purges() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build(dir.path());
    assert_eq!(
        deb.file_name().unwrap().to_str().unwrap(),
        xtask::deb::file_name()
    );

    let lintian = run(Command::new("lintian")
        .args([
            "--pedantic",
            "--display-info",
            "--fail-on",
            "error,warning,info,pedantic",
        ])
        .arg(&deb));
    let tags = String::from_utf8_lossy(&lintian.stdout);
    assert!(
        lintian.status.success() && tags.trim().is_empty(),
        "lintian ({}):\n{tags}{}",
        lintian.status,
        String::from_utf8_lossy(&lintian.stderr)
    );

    let root = throwaway_root(dir.path());
    ok(dpkg(&root).arg("-i").arg(&deb));
    let listed = ok(dpkg(&root).args(["-L", "kstack"]));

    let kstack = root.join("usr/bin/kstack");
    let version = ok(Command::new(&kstack).arg("--version"));
    assert_eq!(version.trim(), format!("kstack {}", xtask::deb::VERSION));

    // Every manual page: kstack(1), one per command, kstack.toml(5).
    let pages: Vec<&str> = listed
        .lines()
        .filter(|l| l.starts_with("/usr/share/man/") && l.ends_with(".gz"))
        .collect();
    for must in [
        "/usr/share/man/man1/kstack.1.gz",
        "/usr/share/man/man1/kstack-sync.1.gz",
        "/usr/share/man/man1/kstack-promote.1.gz",
        "/usr/share/man/man1/kstack-approve.1.gz",
        "/usr/share/man/man1/kstack-renew.1.gz",
        "/usr/share/man/man1/kstack-status.1.gz",
        "/usr/share/man/man1/kstack-key-generate.1.gz",
        "/usr/share/man/man5/kstack.toml.5.gz",
    ] {
        assert!(pages.contains(&must), "{must} not in {pages:?}");
    }
    for page in &pages {
        let path = root.join(page.trim_start_matches('/'));
        let out = run(Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l"])
            .arg(&path)
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat"));
        let text = String::from_utf8_lossy(&out.stdout);
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && warnings.trim().is_empty(),
            "man -l {page}: {warnings}"
        );
        assert!(text.contains("NAME"), "{page}:\n{text}");
    }
    let config_page = ok(Command::new("man")
        .arg("-l")
        .arg(root.join("usr/share/man/man5/kstack.toml.5.gz"))
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat"));
    assert!(config_page.contains("module_signing_key"), "{config_page}");
    assert!(config_page.contains("threshold"), "{config_page}");

    // Completions.
    let bash = ok(Command::new("bash").arg("-c").arg(format!(
        "source {}; COMP_WORDS=(kstack sy); COMP_CWORD=1; _kstack kstack sy kstack; echo \"${{COMPREPLY[@]}}\"",
        root.join("usr/share/bash-completion/completions/kstack").display()
    )));
    assert_eq!(bash.trim(), "sync");
    let fish_file = root.join("usr/share/fish/vendor_completions.d/kstack.fish");
    for (typed, want) in [
        ("kstack sy", "sync\t"),
        ("kstack prom", "promote\t"),
        ("kstack appr", "approve\t"),
    ] {
        let fish = ok(Command::new("fish")
            .arg("--no-config")
            .arg("-c")
            .arg(format!(
                "source {}; complete -C '{typed}'",
                fish_file.display()
            )));
        assert!(fish.starts_with(want), "{typed}: {fish}");
    }
    // zsh completes only inside its line editor: an interactive zsh on a pseudo
    // terminal (the zsh/zpty module) loads the package's _kstack through compinit,
    // is sent `kstack sy` and a Tab, and redraws the line completed. It runs in an
    // empty directory, so the file names zsh would fall back to cannot give `sync`.
    let empty = tempfile::tempdir().unwrap();
    let zsh = ok(Command::new("zsh")
        .arg("-f")
        .arg("-c")
        .arg(ZSH_COMPLETE)
        .arg("zsh")
        .arg(root.join("usr/share/zsh/vendor-completions"))
        .arg(dir.path().join("zcompdump"))
        .current_dir(empty.path()));
    assert!(zsh.contains("kstack sync"), "{zsh:?}");

    // The conffile, a valid config; the units.
    let conffiles =
        std::fs::read_to_string(root.join("var/lib/dpkg/info/kstack.conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/kstack/kstack.toml");
    kstack_engine::host::config::Config::load(&root.join("etc/kstack/kstack.toml")).unwrap();
    for unit in xtask::deb::UNITS {
        assert!(
            listed.contains(&format!("/lib/systemd/system/{unit}")),
            "{unit}"
        );
    }
    assert!(listed.contains("/usr/share/doc/kstack/copyright"));
    let third_party =
        ok(Command::new("zcat").arg(root.join("usr/share/doc/kstack/third-party.txt.gz")));
    assert!(
        third_party.lines().any(|l| l.starts_with("gix ")),
        "{third_party}"
    );
    // The crates' own licence files, with their copyright holders: subtle's
    // BSD-3-Clause notice, the Unicode licence of unicode-ident's data, and a Zlib
    // notice (foldhash).
    for must in [
        "Copyright (c) 2016-2024 Isis Agora Lovecruft",
        "UNICODE LICENSE V3",
        "Copyright (c) 2024 Orson Peters",
    ] {
        assert!(third_party.contains(must), "{must} not in third-party.txt");
    }
    let copyright = std::fs::read_to_string(root.join("usr/share/doc/kstack/copyright")).unwrap();
    for licence in [
        "License: MIT\n",
        "License: Apache-2.0\n",
        "License: BSD-3-Clause\n",
        "License: Zlib\n",
        "License: Unicode-3.0\n",
        "License: LGPL-2.1+\n",
        "License: GPL-3+ with GCC-exception-3.1\n",
    ] {
        assert!(copyright.contains(licence), "{licence} not in copyright");
    }

    ok(dpkg(&root).args(["--purge", "kstack"]));
    let left: Vec<PathBuf> = walk(&root)
        .into_iter()
        .filter(|p| !p.starts_with(root.join("var/lib/dpkg")))
        .filter(|p| p.is_file())
        .collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
}

/// Types `kstack sy` and a Tab into an interactive zsh whose fpath starts with `$1`
/// (compinit's dump in `$2`), and prints what the terminal shows until the line
/// reads `kstack sync` (or 10 s have passed).
const ZSH_COMPLETE: &str = r#"
zmodload zsh/zpty || exit 3
zpty z zsh -f -i
zpty -w z "fpath=($1 \$fpath); autoload -Uz compinit; compinit -u -d $2; PS1='READ''Y> '"
# The prompt, not the echo of the line above (which reads READ''Y).
zpty -r z out '*READY> '
zpty -n -w z $'kstack sy\t'
got=
for i in {1..100}; do
  zpty -r -t z chunk && got+=$chunk
  [[ $got == *'kstack sync'* ]] && break
  sleep 0.1
done
zpty -d z
print -r -- "$got"
"#;

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}
