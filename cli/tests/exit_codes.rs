//! Bad input gets the exit code the README's table gives it (64 a command line that
//! names a file kstack cannot read, 65 a file that was read but is bad data, 69
//! something missing on this machine) and a message that names the problem.

mod common;

use std::process::Output;

use common::{BUILD_ID, Env, stderr, stdout};
use kstack_fixtures::{FakeCompression, FakeModule, fake_bzimage, fake_vmlinux};

/// Asserts the exit code and that stderr says `needle`.
fn fails(out: &Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
}

/// `kstack commit --module` of a valid module with `extra` arguments.
fn commit_module(env: &Env, extra: &[&str]) -> Output {
    let module = env.module("a", &["f"]);
    let mut args = vec!["commit", "--module", &module, "--name", "a", "-m", "add a"];
    args.extend_from_slice(extra);
    env.run(&args)
}

#[test]
fn a_kernel_path_that_does_not_exist_exits_64() {
    let env = Env::new();
    let out = commit_module(&env, &["--kernel", "/no/such/vmlinuz"]);
    fails(&out, 64, "cannot read /no/such/vmlinuz");
    // A mistyped build ID (not hex) is taken for a path, and reads as one.
    let out = commit_module(
        &env,
        &["--kernel", "3b43fad5034874490492495d552c0af6a5fab23z"],
    );
    fails(
        &out,
        64,
        "cannot read 3b43fad5034874490492495d552c0af6a5fab23z",
    );
}

#[test]
fn a_kernel_file_that_is_not_a_kernel_exits_65() {
    let env = Env::new();
    std::fs::write(env.path("passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    let out = commit_module(&env, &["--kernel", "passwd"]);
    fails(&out, 65, "passwd: not a kernel image");
    // An ELF vmlinux without a build-ID note.
    let image = fake_bzimage(&fake_vmlinux(&[], 4096), FakeCompression::Gzip);
    std::fs::write(env.path("vmlinuz-no-id"), image).unwrap();
    let out = commit_module(&env, &["--kernel", "vmlinuz-no-id"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains("vmlinuz-no-id"), "{err}");
}

#[test]
fn a_missing_config_exits_64() {
    let env = Env::new();
    let out = env.run(&["log", "--config", "/nonexistent/kstack.toml"]);
    fails(&out, 64, "cannot read config /nonexistent/kstack.toml");
    // An invalid one is bad data.
    std::fs::write(env.path("bad.toml"), "[stack\n").unwrap();
    let out = env.run(&["log", "--config", "bad.toml"]);
    fails(&out, 65, "bad.toml");
}

#[test]
fn a_missing_key_exits_64_and_a_corrupt_one_65() {
    let env = Env::new();
    let out = commit_module(&env, &["--kernel", BUILD_ID, "--key", "no-such.key"]);
    fails(&out, 64, "cannot read no-such.key");
    std::fs::write(env.path("corrupt.key"), "ed25519-secret:not-hex\n").unwrap();
    common::set_mode(&env.path("corrupt.key"), 0o600);
    let out = commit_module(&env, &["--kernel", BUILD_ID, "--key", "corrupt.key"]);
    fails(&out, 65, "corrupt.key: not a kstack private key");
    // A key the config names that cannot be read is the config's fault.
    std::fs::remove_file(env.path("signing.key")).unwrap();
    let out = commit_module(&env, &["--kernel", BUILD_ID]);
    fails(&out, 65, "[trust] signing_key in ");
    assert!(stderr(&out).contains("signing.key"), "{}", stderr(&out));
}

#[test]
fn a_module_that_is_not_elf_exits_65() {
    let env = Env::new();
    std::fs::write(env.path("notes.ko"), "not a module\n").unwrap();
    let out = env.run(&[
        "commit", "--module", "notes.ko", "--name", "n", "-m", "m", "--kernel", BUILD_ID,
    ]);
    fails(&out, 65, "notes.ko");
    // An ELF module that is not a livepatch.
    let mut m = FakeModule::livepatch("kstack_plain", &["g"]);
    m.livepatch = false;
    std::fs::write(env.path("plain.ko"), m.build()).unwrap();
    let out = env.run(&[
        "commit", "--module", "plain.ko", "--name", "p", "-m", "m", "--kernel", BUILD_ID,
    ]);
    fails(&out, 65, "plain.ko: not a livepatch module");
}

#[test]
fn verify_image_that_cannot_be_read_exits_64() {
    let env = Env::new();
    env.commit("a", &["f"]);
    let out = env.run(&["verify", "prod", "--image", "no-such-vmlinuz"]);
    fails(&out, 64, "cannot read no-such-vmlinuz (--image)");
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    std::fs::write(env.path("vmlinuz-junk"), "junk").unwrap();
    let out = env.run(&[
        "verify",
        "prod",
        "--image",
        "vmlinuz-junk",
        "--kallsyms",
        "no-such-kallsyms",
    ]);
    fails(&out, 64, "cannot read no-such-kallsyms (--kallsyms)");
}

#[test]
fn verify_image_that_is_not_a_kernel_exits_65() {
    let env = Env::new();
    env.commit("a", &["f"]);
    std::fs::write(env.path("vmlinuz-junk"), "junk").unwrap();
    let out = env.run(&["verify", "prod", "--image", "vmlinuz-junk"]);
    fails(&out, 65, "vmlinuz-junk: not a kernel image");
}
