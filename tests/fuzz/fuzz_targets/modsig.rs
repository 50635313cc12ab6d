//! A module's signature as sync and plan read it from every module of the store
//! (the `struct module_signature` trailer, then the DER PKCS#7 `SignedData`), and
//! an X.509 signing certificate, PEM or DER, as `kstack commit` reads `[build]
//! module_signing_cert`. Every input goes to all three readers, so that a seed of
//! one is mutated into inputs of the others.
#![no_main]

use kstack_kfacts::modsig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(sig)) = modsig::read_signature(data) {
        assert!(
            sig.signed_len < data.len(),
            "the signed part is inside the module"
        );
        let _ = (sig.signer.to_string(), sig.signer.is_conclusive());
        let _ = sig.signer.matches_description("kstack: 00");
    }
    if let Ok((signer, _digest)) = modsig::pkcs7_signer(data) {
        let _ = signer.to_string();
    }
    if let Ok(cert) = modsig::read_certificate(data) {
        let _ = cert.signer_id().to_string();
        // The DER it keeps is a certificate again, the same one.
        let again =
            modsig::read_certificate(&cert.der).expect("a read certificate's DER reads back");
        assert_eq!(again, cert);
    }
});
