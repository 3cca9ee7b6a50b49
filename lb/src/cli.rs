//! The command line of `mp-lb` (clap derive: these doc comments are `--help`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mp_sidecar::addr::HostPort;
use mp_sidecar::duration;

/// mp-lb: a round-robin gRPC load balancer and transparent HTTP/2 proxy.
///
/// Forwards every gRPC call (any service, any method, unary or streaming) to
/// the next healthy backend in turn, relaying HTTP/2 frame by frame. Metadata,
/// trailers and deadlines (grpc-timeout) pass untouched. Backends come from
/// --backend, --backends-file and --dns, in any mix.
///
/// Example: mp-lb --listen 127.0.0.1:7700 --backend 127.0.0.1:50051 --backend 127.0.0.1:50052
#[derive(Clone, Debug, Parser)]
#[command(name = "mp-lb", version, max_term_width = 100)]
pub struct Args {
    /// Address to serve gRPC on (HTTP/2 without TLS), e.g. 0.0.0.0:7700.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,

    /// A backend, HOST:PORT. Repeat it, or separate several with commas. A
    /// HOST that is a name stands for all of its addresses.
    #[arg(long = "backend", value_name = "HOST:PORT", value_delimiter = ',')]
    pub backends: Vec<HostPort>,

    /// A file of backends, one HOST:PORT per line (# starts a comment). It is
    /// read again whenever it changes.
    #[arg(long, value_name = "PATH")]
    pub backends_file: Option<PathBuf>,

    /// A DNS name whose every A/AAAA record is a backend (e.g. a Kubernetes
    /// headless service or a Docker network alias), resolved again every
    /// --dns-interval. Repeatable.
    #[arg(long = "dns", value_name = "NAME:PORT")]
    pub dns: Vec<HostPort>,

    /// How often names are resolved again.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration::parse)]
    pub dns_interval: Duration,

    /// Address of the admin HTTP server: /metrics (Prometheus), /ready (200
    /// once a backend is healthy), /live. Keep it on loopback: it has no
    /// authentication. The default picks a free loopback port (logged at start).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub admin: SocketAddr,

    /// HTTP/2 connections each client connection keeps to each backend; its
    /// calls take them in turn. One is the cheapest per call (more calls
    /// share each write); more spread very large messages over more sockets.
    /// (More are opened, up to 8, when a backend's stream limit is reached.)
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub pool_size: u16,

    /// How long connecting to a backend may take.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration::parse)]
    pub connect_timeout: Duration,

    /// Time between grpc.health.v1 checks of each backend; 0 turns them off.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration::parse)]
    pub health_interval: Duration,

    /// How long a health check may take.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration::parse)]
    pub health_timeout: Duration,

    /// Failed health checks in a row that take a backend out of rotation.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub unhealthy_threshold: u32,

    /// Passed health checks in a row that bring it back.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub healthy_threshold: u32,

    /// UNAVAILABLE responses in a row that eject a backend for a while
    /// (1 s, doubling up to 30 s while it keeps failing).
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub eject_after: u32,

    /// On SIGTERM/SIGINT: how long calls in flight may take to finish.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration::parse)]
    pub grace: Duration,

    /// A backend connection with calls in flight that says nothing for this
    /// long gets a PING; silent as long again, it is closed and its calls end
    /// UNAVAILABLE (a backend gone without closing its connections). 0: off.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration::parse)]
    pub keepalive: Duration,

    /// Concurrent calls one client connection may carry.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_concurrent_streams: u32,

    /// Serve TLS (HTTP/2 over TLS, ALPN h2) with this PEM certificate chain;
    /// needs --tls-key.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Speak TLS to the backends, trusting the PEM certificates in this file.
    #[arg(long, value_name = "PATH")]
    pub backend_tls_ca: Option<PathBuf>,

    /// The name backends' certificates must carry (with --backend-tls-ca).
    /// Backends are dialled by address, so it cannot come from the address.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "localhost",
        requires = "backend_tls_ca"
    )]
    pub backend_tls_name: String,

    /// Worker threads; 1 runs everything on one thread (the cheapest per
    /// call). Default: the CPUs this process may run on, at most 2.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
}

impl Args {
    /// Checks what clap cannot: at least one source of backends.
    pub fn validate(&self) -> Result<(), String> {
        if self.backends.is_empty() && self.backends_file.is_none() && self.dns.is_empty() {
            return Err(
                "no backends: give at least one --backend HOST:PORT, --backends-file PATH or --dns NAME:PORT"
                    .into(),
            );
        }
        Ok(())
    }
}
