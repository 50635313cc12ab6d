//! The cargo-fuzz targets of `tests/fuzz/` (one per parser of outside data): their
//! seed corpora, made from the real files the tests use, the short bounded run that
//! `cargo xtask test` does, and the long one of `cargo xtask fuzz`.
//!
//! Every run has libFuzzer's bounds: a time per target, `-timeout` per input (a hang
//! is a failure), `-rss_limit_mb` and `-malloc_limit_mb` (an unbounded allocation is
//! a failure). The build has debug assertions (an overflow panics) and
//! AddressSanitizer. A crashing input stops the run and is named; once the parser
//! is fixed, it goes to `tests/fuzz/regressions/<target>/`, which seeds every run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// One fuzz target and the longest input it is given.
pub struct Target {
    pub name: &'static str,
    pub max_len: usize,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "config",
        max_len: 4096,
    },
    Target {
        name: "stack_toml",
        max_len: 8192,
    },
    Target {
        name: "manifest",
        max_len: 8192,
    },
    Target {
        name: "stack_sig",
        max_len: 4096,
    },
    Target {
        name: "before_toml",
        max_len: 32768,
    },
    Target {
        name: "unified_diff",
        max_len: 16384,
    },
    Target {
        name: "kallsyms",
        max_len: 65536,
    },
    Target {
        name: "bzimage",
        max_len: 65536,
    },
    Target {
        name: "elf_object",
        max_len: 65536,
    },
    Target {
        name: "diff_objects",
        max_len: 131072,
    },
    Target {
        name: "module",
        max_len: 65536,
    },
    Target {
        name: "pull_objects",
        max_len: 4096,
    },
    Target {
        name: "modsig",
        max_len: 65536,
    },
];

/// Per-input and memory bounds of every run.
const TIMEOUT_S: u32 = 10;
const RSS_LIMIT_MB: u32 = 2048;
const MALLOC_LIMIT_MB: u32 = 1024;

fn fuzz_dir(root: &Path) -> PathBuf {
    root.join("tests/fuzz")
}

/// cargo-fuzz, installed from crates.io when missing; the nightly toolchain it
/// needs must be there already (rustup's own downloads are not a package registry).
pub fn ensure_tools() -> Result<()> {
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nightly {
        bail!("the fuzz targets need the nightly toolchain: rustup toolchain install nightly");
    }
    let has_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        crate::step("installing cargo-fuzz from crates.io");
        let status = Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .status()
            .context("running cargo install cargo-fuzz")?;
        if !status.success() {
            bail!("cargo install cargo-fuzz failed");
        }
    }
    Ok(())
}

/// Builds every target (debug assertions on, AddressSanitizer) in `target_dir`.
pub fn build(root: &Path, target_dir: &Path) -> Result<()> {
    crate::step("building the fuzz targets (nightly, AddressSanitizer, debug assertions)");
    let status = Command::new("cargo")
        .args([
            "+nightly",
            "fuzz",
            "build",
            "--debug-assertions",
            "--fuzz-dir",
        ])
        .arg(fuzz_dir(root))
        .arg("--target-dir")
        .arg(target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .context("running cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed");
    }
    Ok(())
}

/// What one target's run found.
pub struct Outcome {
    pub name: &'static str,
    pub seconds: f64,
    pub runs: u64,
    pub corpus: usize,
    pub failure: Option<String>,
}

/// Runs `targets` for `each` against their corpora in `work` (seeded first), in
/// turn; returns what each did. A failure does not stop the others.
pub fn run_all(
    root: &Path,
    target_dir: &Path,
    work: &Path,
    targets: &[&Target],
    each: Duration,
) -> Result<Vec<Outcome>> {
    seeds::write(root, &work.join("corpus"))?;
    let mut outcomes = Vec::new();
    for target in targets {
        let outcome = run_one(root, target_dir, work, target, each)?;
        eprintln!(
            "    {:<14} {:>6.1} s  {:>9} runs  corpus {:>5}  {}",
            outcome.name,
            outcome.seconds,
            outcome.runs,
            outcome.corpus,
            outcome.failure.as_deref().unwrap_or("ok")
        );
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

fn run_one(
    root: &Path,
    target_dir: &Path,
    work: &Path,
    target: &Target,
    each: Duration,
) -> Result<Outcome> {
    let corpus = work.join("corpus").join(target.name);
    let artifacts = work.join("artifacts").join(target.name);
    std::fs::create_dir_all(&artifacts)?;
    let regressions = fuzz_dir(root).join("regressions").join(target.name);
    let binary = target_dir
        .join(host_triple()?)
        .join("release")
        .join(target.name);
    let started = Instant::now();
    let mut cmd = Command::new(&binary);
    cmd.arg(&corpus);
    if regressions.is_dir() {
        cmd.arg(&regressions);
    }
    let out = cmd
        .arg(format!("-max_total_time={}", each.as_secs().max(1)))
        .arg(format!("-max_len={}", target.max_len))
        .arg(format!("-timeout={TIMEOUT_S}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    let stat = |key: &str| -> u64 {
        log.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let failure = (!out.status.success()).then(|| {
        let what = log
            .lines()
            .find(|l| l.contains("ERROR: libFuzzer") || l.contains("panicked at"))
            .unwrap_or("failed")
            .trim()
            .to_owned();
        let input = log
            .lines()
            .find_map(|l| l.split("Test unit written to ").nth(1))
            .unwrap_or("(no input written)")
            .trim()
            .to_owned();
        std::fs::write(artifacts.join("log.txt"), log.as_bytes()).ok();
        format!(
            "{what}; input {input}; log {}",
            artifacts.join("log.txt").display()
        )
    });
    Ok(Outcome {
        name: target.name,
        seconds,
        runs: stat("stat::number_of_executed_units:"),
        corpus: std::fs::read_dir(&corpus).map_or(0, |d| d.count()),
        failure,
    })
}

/// The triple cargo-fuzz builds for (its output directory).
fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV names no host")
}

/// Seeds from the real files the tests use.
mod seeds {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use anyhow::{Context, Result, bail};
    use kstack_fixtures::{FakeCompression, FakeModule, fake_bzimage, fake_vmlinux};
    use kstack_store::commit::NewPatch;
    use kstack_store::keys::SecretKey;
    use kstack_store::model::PatchSource;
    use kstack_store::store::{Author, StackId, Store};

    /// Writes the seeds of every target into `corpus/<target>/` (kept between runs,
    /// so the corpus grows; seeds are rewritten).
    pub fn write(root: &Path, corpus: &Path) -> Result<()> {
        let put = |target: &str, name: &str, bytes: &[u8]| -> Result<()> {
            let dir = corpus.join(target);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
            Ok(())
        };

        // The config: the documented example, and the trust settings.
        put(
            "config",
            "example",
            &std::fs::read(root.join("examples/kstack.toml"))?,
        )?;
        put(
            "config",
            "trust",
            b"[stack]\nname = \"prod\"\ncommit = \"abcd\"\n[trust]\nkeys = [\"ed25519:00\"]\nthreshold = 2\nrevoked = []\nvalidity = \"14d\"\nexpired = \"warn\"\n[sync]\ntransition_timeout = \"30s\"\n",
        )?;

        // Diffs: every example patch, `examples/**/*.diff` (the kpatch corpus and the
        // other kernels' versions in subdirectories too), named by their path there
        // because the same file name recurs in several directories.
        let examples = root.join("examples");
        for path in files_under(&examples)? {
            if path.extension().is_some_and(|e| e == "diff") {
                let name = path
                    .strip_prefix(&examples)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .replace('/', "-");
                put("unified_diff", &name, &std::fs::read(&path)?)?;
            }
        }

        // kallsyms: the head of the one set-up captured, and a line of each kind.
        let kallsyms = kstack_engine::builder::assets::Cache::from_env()
            .current()
            .ok()
            .map(|k| k.dir().join("kallsyms"))
            .and_then(|p| std::fs::read_to_string(p).ok());
        if let Some(text) = kallsyms {
            let mut head = &text[..text.len().min(60_000)];
            if let Some(end) = head.rfind('\n') {
                head = &head[..=end];
            }
            put("kallsyms", "captured", head.as_bytes())?;
        }
        put(
            "kallsyms",
            "kinds",
            b"ffffffff81000000 T _stext\nffffffff81001000 t local_fn\nffffffff81001000 t local_fn\n000000000001ff00 A cached_stacks\nffffffffc0000000 t xfs_stats_format\t[xfs]\nffffffff82000000 D some_data\n",
        )?;

        // Kernel images: a vmlinux with a build ID, each compression kbuild uses.
        let vmlinux = fake_vmlinux(&[0xab; 20], 2048);
        put("bzimage", "vmlinux", &vmlinux)?;
        for (name, how) in [
            ("gzip", FakeCompression::Gzip),
            ("xz", FakeCompression::Xz),
            ("zstd", FakeCompression::Zstd),
            ("lz4", FakeCompression::Lz4Legacy),
            ("none", FakeCompression::None),
        ] {
            put("bzimage", name, &fake_bzimage(&vmlinux, how))?;
            put(
                "bzimage",
                &format!("{name}-payload"),
                &kstack_fixtures::compress_like_kbuild(&vmlinux, how),
            )?;
        }

        // Modules: synthetic livepatch modules, as the store tests commit them.
        let module = FakeModule::livepatch(
            "kstack_fuzz",
            &["cmdline_proc_show", "xfs:xfs_stats_format"],
        )
        .build();
        put("module", "livepatch", &module)?;
        put("elf_object", "module", &module)?;

        // Objects: the differ's test cases, compiled as its tests compile them.
        let objects = compile_diff_cases(root)?;
        for (name, pre, post) in &objects {
            put("elf_object", &format!("{name}.pre.o"), pre)?;
            let mut pair = vec![
                u8::try_from(pre.len() * 255 / (pre.len() + post.len()).max(1)).unwrap_or(128),
            ];
            pair.extend_from_slice(pre);
            pair.extend_from_slice(post);
            put("diff_objects", name, &pair)?;
            // Run-pre images of each function of the pre object.
            if let Ok(object) = kstack_kfacts::elf::RelObject::parse(pre) {
                let functions: Vec<String> = object
                    .symbols
                    .iter()
                    .filter(|s| s.is_func() && s.is_defined())
                    .map(|s| s.name.clone())
                    .collect();
                let file = kstack_engine::runpre::BeforeFile {
                    functions: functions
                        .iter()
                        .filter_map(|f| kstack_engine::runpre::before_image(pre, f).ok())
                        .collect(),
                };
                if !file.functions.is_empty() {
                    put("before_toml", name, file.to_toml().as_bytes())?;
                }
            }
        }

        // A store's own files and objects: two commits, an approval, a renewal.
        store_seeds(&put)?;
        modsig_seeds(&put, &module)?;
        Ok(())
    }

    /// Every file under `dir`, recursively, in a stable order.
    fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        let mut dirs = vec![dir.to_owned()];
        while let Some(dir) = dirs.pop() {
            let entries =
                std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    dirs.push(entry.path());
                } else {
                    files.push(entry.path());
                }
            }
        }
        files.sort();
        Ok(files)
    }

    type Put<'a> = dyn Fn(&str, &str, &[u8]) -> Result<()> + 'a;

    fn store_seeds(put: &Put<'_>) -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::init(&dir.path().join("store"))?;
        let key = SecretKey::from_seed(&[1; 32]);
        let approver = SecretKey::from_seed(&[2; 32]);
        let stack = StackId::new("3b43fad5034874490492495d552c0af6a5fab235".parse()?, "prod")?;
        let author = Author {
            name: "seed".into(),
            email: "seed@kstack.invalid".into(),
            time: 1_700_000_000,
            valid_for: kstack_store::validity::DEFAULT_VALIDITY,
        };
        for (i, name) in ["a", "b"].iter().enumerate() {
            let patch = NewPatch {
                name: (*name).to_owned(),
                module: FakeModule::livepatch(&format!("kstack_{name}"), &["f"]).build(),
                module_file: format!("{name}.ko"),
                diff: Some(b"--- a/x.c\n+++ b/x.c\n@@ -1 +1 @@\n-a\n+b\n".to_vec()),
                functions: vec![format!("vmlinux:f{i},2").parse()?],
                build: [("compiler".to_owned(), "gcc-12".to_owned())].into(),
                source: PatchSource::Diff,
                extra: Default::default(),
            };
            store.add_patch(
                &stack,
                Some("6.1.0-56-cloud-amd64"),
                patch,
                name,
                &author,
                &key,
            )?;
        }
        store.approve(&stack, &approver, &author)?;
        store.renew(&stack, "renew", &author, &key)?;
        let head = store.stack_head(&stack)?.context("the stack has a head")?;
        let repo = store.repo();
        for (i, info) in store.log(head, None)?.iter().enumerate() {
            put(
                "pull_objects",
                &format!("commit-{i}"),
                &repo.find_object(info.id)?.data,
            )?;
            put(
                "pull_objects",
                &format!("tree-{i}"),
                &repo.find_object(info.tree)?.data,
            )?;
            for item in store.tree_items(info.tree, "a seed's root tree")? {
                let target = match item.name.as_str() {
                    "stack.toml" => "stack_toml",
                    "stack.sig" => "stack_sig",
                    _ => continue,
                };
                put(target, &format!("{i}"), &store.blob(item.id, "a seed")?)?;
            }
        }
        let verified = store.check(head, Some(&stack))?;
        for patch in &verified.patches {
            put(
                "manifest",
                &patch.entry.name,
                patch.manifest.to_toml().as_bytes(),
            )?;
        }
        // Format 1 of stack.sig, as older stores hold it.
        put(
            "stack_sig",
            "format-1",
            format!(
                "format = 1\nalgorithm = \"ed25519\"\nkey = \"{}\"\nstack_sha256 = \"{}\"\nsignature = \"{}\"\n",
                key.public(),
                verified.stack_sha256.to_hex(),
                "00".repeat(64)
            )
            .as_bytes(),
        )?;
        Ok(())
    }

    /// Signing certificates made as the module-signing tests make them (openssl, with
    /// and without a subjectKeyIdentifier), in PEM and DER, and a module signed with
    /// each by the set-up kernel's own `sign-file`, whole and as its PKCS#7 message
    /// alone. Without a set-up kernel there is no `sign-file`: the certificates and
    /// the unsigned module still seed the target.
    fn modsig_seeds(put: &Put<'_>, module: &[u8]) -> Result<()> {
        use kstack_engine::builder::sign::ModuleSigner;
        use kstack_kfacts::modsig;

        put("modsig", "unsigned", module)?;
        let dir = tempfile::tempdir()?;
        let headers = kstack_engine::builder::assets::Cache::from_env()
            .current()
            .ok()
            .map(|k| k.headers());
        for (name, key_id) in [("key-id", true), ("issuer-serial", false)] {
            let key = dir.path().join(format!("{name}.key.pem"));
            let cert = dir.path().join(format!("{name}.cert.pem"));
            let mut cmd = Command::new("openssl");
            cmd.args(["req", "-new", "-x509", "-newkey", "rsa:2048", "-sha256"])
                .args(["-nodes", "-days", "3650", "-subj"])
                .arg(format!("/CN=kstack fuzz {name}/"))
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert);
            if !key_id {
                cmd.args(["-addext", "subjectKeyIdentifier=none"])
                    .args(["-addext", "authorityKeyIdentifier=none"]);
            }
            let out = cmd
                .output()
                .context("running openssl (apt-get install openssl)")?;
            if !out.status.success() {
                bail!(
                    "openssl req failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
            let pem = std::fs::read(&cert)?;
            put("modsig", &format!("{name}.cert.pem"), &pem)?;
            let info = modsig::read_certificate(&pem)?;
            put("modsig", &format!("{name}.cert.der"), &info.der)?;

            let Some(headers) = &headers else { continue };
            let signer = ModuleSigner::load(&key, &cert)?;
            let signed = signer.sign(module, headers, &dir.path().join(name))?;
            put("modsig", &format!("{name}.signed.ko"), &signed)?;
            let trailer = modsig::MODULE_SIGNATURE_SIZE + modsig::MODULE_SIG_STRING.len();
            let pkcs7 = signed
                .get(module.len()..signed.len().saturating_sub(trailer))
                .context("sign-file appended a signature")?;
            put("modsig", &format!("{name}.p7"), pkcs7)?;
        }
        Ok(())
    }

    /// A differ test case: its name, the pre object, the post object.
    type Case = (String, Vec<u8>, Vec<u8>);

    /// Each `engine/tests/diff/<case>.{pre,post}.c`, compiled with kernel-like flags.
    fn compile_diff_cases(root: &Path) -> Result<Vec<Case>> {
        const CFLAGS: &[&str] = &[
            "-c",
            "-O2",
            "-std=gnu11",
            "-g0",
            "-ffunction-sections",
            "-fdata-sections",
            "-fno-pic",
            "-mcmodel=kernel",
            "-mno-red-zone",
            "-pg",
            "-mfentry",
            "-mrecord-mcount",
            "-fno-asynchronous-unwind-tables",
            "-fno-common",
            "-fno-stack-protector",
            "-fcf-protection=none",
        ];
        let dir = root.join("engine/tests/diff");
        let tmp = tempfile::tempdir()?;
        let mut cases = Vec::new();
        let mut names: Vec<String> = std::fs::read_dir(&dir)?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".pre.c").map(str::to_owned)
            })
            .collect();
        names.sort();
        for name in names {
            let mut objects = Vec::new();
            for side in ["pre", "post"] {
                let source = dir.join(format!("{name}.{side}.c"));
                let out = tmp.path().join(format!("{name}.{side}.o"));
                let status = Command::new("gcc")
                    .args(CFLAGS)
                    .arg("-I")
                    .arg(&dir)
                    .arg(&source)
                    .arg("-o")
                    .arg(&out)
                    .status()
                    .context("running gcc (apt-get install build-essential)")?;
                if !status.success() {
                    bail!("gcc failed on {}", source.display());
                }
                objects.push(std::fs::read(&out)?);
            }
            let post = objects.pop().context("two objects")?;
            let pre = objects.pop().context("two objects")?;
            cases.push((name, pre, post));
        }
        Ok(cases)
    }
}
