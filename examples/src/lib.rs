//! Examples of mp handlers and topologies.
