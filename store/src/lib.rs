//! The kstack store: ordered, signed livepatch stacks kept in a bare Git repository.
//!
//! This crate owns the object model (stacks, patches, manifests), SHA-256 digests,
//! ed25519 signing and the trust policy, and kernel identity (build IDs, vermagic).
//! It never talks to the running kernel's livepatch interface: that is `kstack-engine`.

pub mod commit;
pub mod digest;
pub mod fixtures;
pub mod ident;
pub mod keys;
pub mod klp;
pub mod model;
pub mod rev;
pub mod store;
pub mod verify;
