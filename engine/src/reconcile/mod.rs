//! The reconciler: make the running kernel run the stack the config declares.
//!
//! - [`plan`]: the pure planner.
//! - [`state`]: generations and the lock in the state directory.
//! - [`exec`]: the executor, which runs a plan on the kernel and undoes it on failure.

pub mod exec;
pub mod host;
pub mod plan;
pub mod prove;
pub mod state;

pub use plan::{Applied, Plan, Step, plan};
