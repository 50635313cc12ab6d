//! `stack.sig` (formats 1 and 2): parsed, every signature checked against a digest,
//! printed back to the same value.
#![no_main]

use kstack_store::digest::Sha256Digest;
use kstack_store::keys::{StackSignatures, TrustPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sigs) = StackSignatures::parse(data) {
        let digest = Sha256Digest::of(data);
        if let Ok(signers) = sigs
            .check(&sigs.stack_sha256)
            .or_else(|_| sigs.check(&digest))
        {
            let policy = TrustPolicy {
                keys: signers.clone(),
                threshold: 2,
                revoked: Vec::new(),
            };
            let _ = policy.judge(&signers);
        }
        let again = StackSignatures::parse(sigs.to_toml().as_bytes())
            .expect("a parsed stack.sig prints to one that parses");
        assert_eq!(again, sigs);
    }
});
