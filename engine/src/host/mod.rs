//! The host side: make the running kernel run the stack the config declares.
//!
//! - [`config`]: the host's declaration (`kstack.toml`).
//! - [`kernel`]: the one module that talks to the running kernel's livepatch
//!   machinery, behind the [`kernel::Livepatch`] trait.
//! - [`plan`]: the pure planner.
//! - [`exec`]: the executor, which runs a plan through a [`kernel::Livepatch`] and
//!   undoes it on failure.
//! - [`prove`]: run-pre matching of the patches a plan applies, before loading.
//! - [`signatures`]: what the kernel will make of each module's signature, decided
//!   before loading.
//! - [`state`]: generations and the lock in the state directory.
//! - [`strict`]: refusing files that a user other than root could change.
//! - [`reconcile`]: one host's sync, plan, rollback and status, from the config, the
//!   store and the kernel.

pub mod config;
pub mod exec;
pub mod kernel;
pub mod plan;
pub mod prove;
pub mod reconcile;
pub mod signatures;
pub mod state;
pub mod strict;

pub use plan::{Applied, Plan, Step, plan};
