//! What `cargo xtask` shares with the tests: assembling the Debian package
//! ([`deb`]), so that the package the tests install is the one `cargo xtask deb`
//! builds.

pub mod deb;
