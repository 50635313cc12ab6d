//! `kstack commit` refuses bad input the way a new user meets it, before any build:
//! at once, with the exit code that says what is wrong (64 a bad argument, 65 input
//! that cannot be a live patch, 69 something missing on this machine), one line
//! that names the problem and a hint. No work tree is made (`<cache>/build`).

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{Env, stderr, stdout};

/// The first example patch: it changes `fs/proc/version.c`.
const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/patches/0001-proc-version-banner.diff"
);

/// Runs `kstack commit ARGS --stack prod` and checks that it ended quickly and
/// without starting a build.
fn commit(env: &Env, args: &[&str]) -> Output {
    let mut all = vec!["commit"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--stack", "prod"]);
    let start = Instant::now();
    let out = env.run(&all);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        !env.path("cache/build").exists(),
        "a build started:\n{}",
        stderr(&out)
    );
    out
}

#[test]
fn a_file_that_is_not_a_diff_exits_65() {
    let env = Env::new();
    env.fake_cache(true, &["fs/proc/version.c"]);
    std::fs::write(env.path("notes.txt"), "Remember to fix /proc/version.\n").unwrap();
    let out = commit(&env, &["notes.txt"]);
    assert_eq!(out.status.code(), Some(65));
    insta::assert_snapshot!(env.redact(&stderr(&out)), @r"
    error: notes.txt: not a unified diff: it has no file header (a line `--- a/FILE` followed by `+++ b/FILE`)
    hint: give a unified diff, as `git diff` or `diff -u` writes it
    ");
}

#[test]
fn a_truncated_diff_exits_65_and_names_the_line() {
    let env = Env::new();
    env.fake_cache(true, &["fs/proc/version.c"]);
    // Cut in the middle of its added lines: not what a mailer's stripped trailing
    // context would leave, which `patch` (and kstack) accept.
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    let lines: Vec<&str> = example.lines().collect();
    std::fs::write(
        env.path("cut.diff"),
        lines[..lines.len() - 4].join("\n") + "\n",
    )
    .unwrap();
    let out = commit(&env, &["cut.diff"]);
    assert_eq!(out.status.code(), Some(65));
    let text = stderr(&out);
    assert!(
        text.starts_with("error: cut.diff: not a unified diff: line "),
        "{text}"
    );
    assert!(
        text.contains("the diff ends in the middle of this hunk"),
        "{text}"
    );
}

#[test]
fn a_diff_of_a_file_the_kernel_source_lacks_exits_65() {
    let env = Env::new();
    env.fake_cache(true, &["fs/proc/version.c"]);
    std::fs::write(
        env.path("typo.diff"),
        "proc: fix a typo\n\n--- a/fs/proc/verison.c\n+++ b/fs/proc/verison.c\n\
         @@ -1 +1 @@\n-a\n+b\n",
    )
    .unwrap();
    let out = commit(&env, &["typo.diff"]);
    assert_eq!(out.status.code(), Some(65));
    insta::assert_snapshot!(env.redact(&stderr(&out)), @r"
    error: the diff changes fs/proc/verison.c, which the source of kernel 6.1.0-99-kstack-test does not have
    hint: a diff's paths are relative to the top of the kernel tree after one leading directory (a/fs/proc/cmdline.c), as `git diff` writes them; make it against the source of the stack's kernel
    ");
    // Nothing was said about a new stack: nothing was made.
    assert!(!stderr(&out).contains("new stack"), "{}", stderr(&out));
}

#[test]
fn a_diff_that_changes_no_built_file_exits_65() {
    let env = Env::new();
    env.fake_cache(true, &["Documentation/admin-guide/README.rst"]);
    std::fs::write(
        env.path("docs.diff"),
        "--- a/Documentation/admin-guide/README.rst\n+++ b/Documentation/admin-guide/README.rst\n\
         @@ -1 +1 @@\n-a\n+b\n",
    )
    .unwrap();
    let out = commit(&env, &["docs.diff", "-m", "docs"]);
    assert_eq!(out.status.code(), Some(65));
    insta::assert_snapshot!(stderr(&out), @"error: the diff touches no file the kernel builds (it changes: Documentation/admin-guide/README.rst)");
}

#[test]
fn an_invalid_name_exits_64() {
    let env = Env::new();
    env.fake_cache(true, &["fs/proc/version.c"]);
    let out = commit(&env, &[EXAMPLE, "--name", "fix the banner!"]);
    assert_eq!(out.status.code(), Some(64));
    insta::assert_snapshot!(stderr(&out), @r#"
    error: bad patch name "fix the banner!": use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit
    hint: pass --name NAME
    "#);
    let out = env.run(&["commit", EXAMPLE, "--stack", "prod/x"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("bad stack name \"prod/x\""),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("hint: pass --stack NAME"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_file_that_cannot_be_read_exits_64() {
    let env = Env::new();
    let out = commit(&env, &["missing.diff"]);
    assert_eq!(out.status.code(), Some(64));
    insta::assert_snapshot!(stderr(&out), @"error: cannot read missing.diff: No such file or directory (os error 2)");
    let out = commit(&env, &["--module", "missing.ko", "--name", "m", "-m", "m"]);
    assert_eq!(out.status.code(), Some(64));
    insta::assert_snapshot!(stderr(&out), @"error: cannot read missing.ko (--module): No such file or directory (os error 2)");
}

#[test]
fn no_kernel_in_the_cache_exits_69() {
    let env = Env::new();
    let out = commit(&env, &[EXAMPLE]);
    assert_eq!(out.status.code(), Some(69));
    insta::assert_snapshot!(env.redact(&stderr(&out)), @r"
    error: no kernel has been set up in [TMP]/cache (missing [TMP]/cache/kernels/current)
    hint: fetch a kernel with `kstack kernel add current` (or `cargo xtask setup`)
    ");
}

#[test]
fn no_prepared_source_exits_69() {
    let env = Env::new();
    env.fake_cache(false, &[]);
    let out = commit(&env, &[EXAMPLE]);
    assert_eq!(out.status.code(), Some(69));
    insta::assert_snapshot!(env.redact(&stderr(&out)), @"error: kernel 6.1.0-99-kstack-test has no prepared source tree in the cache; run `kstack kernel add 6.1.0-99-kstack-test`");
}

#[test]
fn a_missing_compiler_exits_69() {
    let env = Env::new();
    env.fake_cache(true, &["fs/proc/version.c"]);
    // A PATH with every build tool but gcc.
    let bin = env.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["cp", "patch", "make"] {
        std::fs::write(bin.join(tool), "#!/bin/sh\nexit 1\n").unwrap();
        common::set_mode(&bin.join(tool), 0o755);
    }
    let out = env
        .command(&["commit", EXAMPLE, "--stack", "prod"])
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    insta::assert_snapshot!(stderr(&out), @r"
    error: `gcc` is not installed (not found in PATH); building a patch needs it
    hint: install the build tools: apt-get install build-essential patch (or run `cargo xtask setup`)
    ");
    assert!(!env.path("cache/build").exists());
}

#[test]
fn bad_input_in_json() {
    let env = Env::new();
    env.fake_cache(true, &["fs/proc/version.c"]);
    std::fs::write(env.path("notes.txt"), "not a diff\n").unwrap();
    let (code, json) = env.json(&["commit", "notes.txt", "--stack", "prod"]);
    assert_eq!(code, 65);
    insta::assert_snapshot!(json, @r#"
    {
      "error": {
        "kind": "data",
        "message": "notes.txt: not a unified diff: it has no file header (a line `--- a/FILE` followed by `+++ b/FILE`)",
        "chain": [
          "notes.txt",
          "not a unified diff: it has no file header (a line `--- a/FILE` followed by `+++ b/FILE`)"
        ],
        "hint": "give a unified diff, as `git diff` or `diff -u` writes it",
        "exit_code": 65
      }
    }
    "#);
    assert!(stdout(&env.run(&["log", "--oneline"])).is_empty());
}
