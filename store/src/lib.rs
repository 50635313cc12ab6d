//! The kstack store: ordered, signed livepatch stacks kept in a bare Git repository.
//!
//! This crate owns the object model (stacks, patches, manifests), SHA-256 digests,
//! ed25519 signing and the trust policy, and kernel identity (build IDs, vermagic).
//! It never talks to the running kernel's livepatch interface: that is `kstack-engine`.

pub mod commit;
pub mod digest;
mod history;
pub mod ident;
pub mod keys;
pub mod klp;
pub mod lineage;
pub mod model;
pub mod module_file;
pub mod pack;
pub mod promote;
pub mod pull;
pub mod rev;
pub mod sign;
pub mod store;
pub mod validity;
pub mod verify;
mod xz;

/// Renders an error with its chain of causes, as `a: b: c` (skipping a cause whose
/// text its parent already shows).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
