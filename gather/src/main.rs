//! mp-gather: scatter a request to every shard, gather and merge the replies.
fn main() {}
