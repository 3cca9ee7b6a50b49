//! mp: deploy, call, list, follow and delete topologies.
//!
//! # Layout
//! - [`topology`]: the services and patterns a user declares (`mp.toml`, flags, code).
//! - [`plan`]: the pure plan of every part to run, with its environment and flags.
//! - [`runner`]: the [`runner::Runner`] trait and its implementations
//!   ([`runner::local`] for processes on this machine).
//! - [`health`]: gRPC health checks and the `mp call` client.
//! - [`ops`]: deploy / locate / delete across runners, shared by the CLI and
//!   topology-as-code programs.
//! - [`cmd`]: the `mp` command line.

pub mod cmd;
pub mod health;
pub mod ops;
pub mod plan;
pub mod runner;
pub mod topology;
