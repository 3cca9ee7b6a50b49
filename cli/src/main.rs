//! `mp`: deploy, call, list, follow and delete topologies.

fn main() {
    eprintln!("mp: not ready yet");
    std::process::exit(2);
}
