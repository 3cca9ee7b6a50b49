//! mp: deploy, call, list, follow and delete topologies.
