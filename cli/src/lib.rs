//! mp: deploy, call, list, follow and delete topologies.
//!
//! # Layout
//! - [`topology`]: the services and patterns a user declares (`mp.toml`, flags, code).
//! - [`plan`]: the pure plan of every part to run, with its environment and flags.
//! - [`runner`]: the [`runner::Runner`] trait and its implementations
//!   ([`runner::local`] for processes on this machine).
//!
//! The binary `mp` is a thin command line over these.

pub mod plan;
pub mod runner;
pub mod topology;
