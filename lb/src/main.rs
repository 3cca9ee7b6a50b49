//! mp-lb: a round-robin gRPC load balancer and transparent HTTP/2 proxy.
fn main() {}
