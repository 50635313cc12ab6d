//! Module signing on the build host: the kernel's own `sign-file` (from the set-up
//! kernel's headers) signs a module with a key made by openssl; kstack reads the
//! signature back (the signer the host will look for), and OpenSSL verifies the
//! PKCS#7 message over exactly the module's bytes. The kernel's own check of such a
//! signature runs in `vm_modsig`.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use kstack_engine::builder::sign::ModuleSigner;
use kstack_fixtures::FakeModule;
use kstack_kfacts::modsig::{self, SignerId};
use kstack_tests::{kernel, module_signing_cert, run_ok};

fn sign(key_id: bool) -> (tempfile::TempDir, ModuleSigner, Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = module_signing_cert(dir.path(), "signer", key_id);
    let signer = ModuleSigner::load(&key, &cert).unwrap();
    let module = FakeModule::livepatch("kstack_signme", &["cmdline_proc_show"]).build();
    let signed = signer
        .sign(&module, &kernel().headers(), &dir.path().join("work"))
        .unwrap();
    (dir, signer, module, signed)
}

#[test]
fn sign_file_signs_with_the_key_id_and_openssl_verifies_it() {
    let (dir, signer, module, signed) = sign(true);
    let sig = modsig::read_signature(&signed).unwrap().unwrap();
    assert_eq!(sig.signed_len, module.len());
    assert_eq!(sig.digest, "sha256");
    let key_id = signer
        .cert
        .key_id
        .clone()
        .expect("openssl adds a subjectKeyIdentifier");
    assert_eq!(sig.signer, SignerId::KeyId(key_id.clone()));
    // The kernel describes the key as "<subject CN>: <hex key id>".
    assert!(
        sig.signer
            .matches_description(&format!("kstack test signer: {}", modsig::hex(&key_id)))
    );
    assert!(
        signer.describe().contains("CN=kstack test signer"),
        "{}",
        signer.describe()
    );

    // The PKCS#7 message, cut out as the kernel does, verifies over the module.
    let trailer = modsig::MODULE_SIGNATURE_SIZE + modsig::MODULE_SIG_STRING.len();
    let p7 = &signed[module.len()..signed.len() - trailer];
    let body = dir.path().join("body");
    let p7_path = dir.path().join("sig.p7");
    std::fs::write(&body, &module).unwrap();
    std::fs::write(&p7_path, p7).unwrap();
    let cert = &signer.cert_path;
    run_ok(
        Command::new("openssl")
            .args([
                "cms",
                "-verify",
                "-binary",
                "-inform",
                "DER",
                "-noverify",
                "-in",
            ])
            .arg(&p7_path)
            .arg("-content")
            .arg(&body)
            .arg("-certfile")
            .arg(cert)
            .args(["-out", "/dev/null"]),
    );
    // A changed byte no longer verifies.
    let mut tampered = module.clone();
    tampered[0] ^= 1;
    std::fs::write(&body, &tampered).unwrap();
    let out = Command::new("openssl")
        .args([
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-noverify",
            "-in",
        ])
        .arg(&p7_path)
        .arg("-content")
        .arg(&body)
        .arg("-certfile")
        .arg(cert)
        .args(["-out", "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn a_certificate_without_key_id_signs_by_issuer_and_serial() {
    let (_dir, signer, _module, signed) = sign(false);
    assert_eq!(signer.cert.key_id, None);
    let sig = modsig::read_signature(&signed).unwrap().unwrap();
    match &sig.signer {
        SignerId::IssuerSerial { issuer, serial } => {
            assert!(issuer.contains("kstack test signer"), "{issuer}");
            assert_eq!(serial, &signer.cert.serial);
        }
        other => panic!("expected issuer and serial, got {other}"),
    }
    assert!(!sig.signer.is_conclusive());
}
