//! What `cargo xtask` shares with the tests: assembling the Debian package
//! ([`deb`]), so that the package the tests install is the one `cargo xtask deb`
//! builds; and the test kernel built from a source tree ([`tree_kernel`]), so that
//! the tests find the tree set-up built.

pub mod deb;
pub mod tree_kernel;
