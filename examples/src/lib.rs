//! Examples of mp handlers and topologies. The examples themselves are the
//! files next to this crate's Cargo.toml (see README.md); this library holds
//! the logic they share with their tests.

pub mod histogram;
