//! Serving: a handler and/or a merger plus `grpc.health.v1.Health` and server
//! reflection (v1 and v1alpha) on one port, with a graceful, bounded shutdown.

use crate::env::{Env, EnvError, DEFAULT_GRACE};
use crate::service::{HandlerService, MergerService};
use crate::{Handler, Merger};
use mp_proto::v1::{handler_server::HandlerServer, merger_server::MergerServer};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tracing::{info, warn};

/// The largest message the server accepts or sends by default (16 MiB): a
/// merger receives every leaf's reply in one message, so 4 MiB (gRPC's usual
/// default) is too tight for many leaves.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Why serving failed or could not start.
#[derive(thiserror::Error)]
pub enum ServeError {
    /// An `MP_*` variable is set to something unusable.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// `MP_PORT` is not set, so there is nowhere to listen.
    #[error(
        "MP_PORT is not set: say which port to listen on, e.g. `MP_PORT=7000 {0}` \
         (a runner such as `mp deploy` sets it for you)"
    )]
    NoPort(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another process using the port?)")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Neither a handler nor a merger was given.
    #[error("nothing to serve: give the server a handler or a merger")]
    Nothing,
    /// The signal handlers could not be installed.
    #[error("cannot listen for SIGTERM/SIGINT: {0}")]
    Signal(#[source] std::io::Error),
    /// The gRPC server failed.
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

// `main` returning `Err` prints the Debug form: make it the readable one.
impl std::fmt::Debug for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Builds what one process serves: a handler, a merger or both, with the
/// health and reflection services always added.
///
/// ```no_run
/// # async fn run() -> Result<(), mp_sdk::ServeError> {
/// use std::time::Duration;
/// let echo = mp_sdk::handler(|request: mp_sdk::Request| async move {
///     Ok(mp_sdk::Reply { body: request.body, metadata: request.metadata })
/// });
/// mp_sdk::Server::new()
///     .handler(echo)
///     .grace(Duration::from_secs(30))
///     .serve()
///     .await
/// # }
/// ```
pub struct Server {
    /// Adds one served service to the routes, given the message size limit
    /// (known only at serve time, so the builder calls can come in any order).
    adders: Vec<Box<dyn FnOnce(Routes, usize) -> Routes + Send>>,
    services: Vec<&'static str>,
    grace: Option<Duration>,
    max_message_size: usize,
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("services", &self.services)
            .field("grace", &self.grace)
            .field("max_message_size", &self.max_message_size)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server with nothing to serve yet.
    pub fn new() -> Self {
        Server {
            adders: Vec::new(),
            services: Vec::new(),
            grace: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }

    /// The largest request or reply message, in bytes (default 16 MiB). A
    /// larger request is refused with `OUT_OF_RANGE` (tonic's choice).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Serves `handler` as `mp.v1.Handler`.
    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.adders.push(Box::new(move |routes, max| {
            routes.add_service(
                HandlerServer::new(HandlerService(handler))
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            )
        }));
        self.services.push(mp_proto::names::HANDLER);
        self
    }

    /// Serves `merger` as `mp.v1.Merger`.
    pub fn merger(mut self, merger: impl Merger) -> Self {
        self.adders.push(Box::new(move |routes, max| {
            routes.add_service(
                MergerServer::new(MergerService(merger))
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            )
        }));
        self.services.push(mp_proto::names::MERGER);
        self
    }

    /// How long in-flight calls may run after shutdown begins. [`serve`] uses
    /// this, else `MP_GRACE`, else 10 s; [`Server::serve_on`] this, else 10 s.
    ///
    /// [`serve`]: Server::serve
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// Serves on `MP_HOST:MP_PORT` until SIGTERM or SIGINT, then drains (see
    /// [`Server::serve_on`]); a second signal ends the drain at once. Also sets
    /// up logging (`RUST_LOG`, default `info`, to stderr) unless the program
    /// already has a tracing subscriber.
    ///
    /// Fails before serving when the `MP_*` environment is invalid or
    /// `MP_PORT` is unset, with a message that says what to set.
    pub async fn serve(mut self) -> Result<(), ServeError> {
        init_tracing();
        let env = Env::from_env()?;
        // Before binding: a runner may stop us as soon as the port answers.
        let signals = Signals::install()?;
        let port = env
            .port
            .ok_or_else(|| ServeError::NoPort(env.service.clone()))?;
        let addr = format!("{}:{port}", env.host);
        let listener = TcpListener::bind((env.host.as_str(), port))
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        self.grace = self.grace.or(Some(env.grace));
        info!(
            service = %env.service,
            role = %env.role,
            shard = env.shard,
            shards = env.shards,
            "starting"
        );

        let first = signals.clone();
        let drain = self.serve_on(listener, async move { first.reached(1).await });
        tokio::select! {
            served = drain => served,
            _ = signals.reached(2) => {
                warn!("second signal: exiting without waiting for in-flight calls");
                Ok(())
            }
        }
    }

    /// Serves on `listener` until `shutdown` completes, then: reports
    /// `NOT_SERVING` on the health service, stops accepting (the listener is
    /// closed), lets in-flight calls finish within the grace period, and
    /// returns `Ok`. Calls still running when the grace period ends are
    /// abandoned, with a warning.
    pub async fn serve_on(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        if self.services.is_empty() {
            return Err(ServeError::Nothing);
        }
        let grace = self.grace.unwrap_or(DEFAULT_GRACE);
        let local: Option<SocketAddr> = listener.local_addr().ok();

        let (health, health_service) = tonic_health::server::health_reporter();
        for name in &self.services {
            health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        let (reflection_v1, reflection_v1alpha) = reflection(&self.services);
        let max = self.max_message_size;
        let routes = self
            .adders
            .into_iter()
            .fold(Routes::default(), |routes, add| add(routes, max))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let services = self.services.clone();
        let signal = async move {
            shutdown.await;
            // Tell health checkers first, so balancers stop sending here.
            // Then forget the statuses: that ends every open Watch stream
            // (after it delivered NOT_SERVING), which would otherwise hold
            // its connection, and so the drain, open for the whole grace.
            let mut health = health;
            let all = std::iter::once("").chain(services.iter().copied());
            for name in all.clone() {
                health
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
            for name in all {
                health.clear_service_status(name).await;
            }
            info!(
                ?grace,
                "shutting down: no new connections, draining in-flight calls"
            );
            let _ = draining_tx.send(());
        };

        // Small RPCs: do not let Nagle hold back the last frame of a reply.
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        match local {
            Some(addr) => info!(%addr, services = ?self.services, "serving"),
            None => info!(services = ?self.services, "serving"),
        }
        let serve = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, signal);

        let grace_over = async move {
            match draining_rx.await {
                Ok(()) => tokio::time::sleep(grace).await,
                // The server ended by itself: this branch must never win.
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            served = serve => {
                served?;
                info!("drained, bye");
            }
            _ = grace_over => {
                warn!(?grace, "grace period over: abandoning the calls still in flight");
            }
        }
        Ok(())
    }
}

/// The reflection services (v1 for current tools, v1alpha for grpcurl 1.8 and
/// older clients), advertising exactly what this server serves.
fn reflection(
    services: &[&'static str],
) -> (
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(mp_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for name in services {
            b = b.with_service_name(*name);
        }
        b
    };
    // The descriptor sets are compiled into the binary: failing to read them is
    // a build defect, caught by every test that starts a server.
    let v1 = builder()
        .build_v1()
        .expect("the compiled-in descriptor sets are valid");
    let v1alpha = builder()
        .build_v1alpha()
        .expect("the compiled-in descriptor sets are valid");
    (v1, v1alpha)
}

/// Counts SIGTERM/SIGINT deliveries, so the first can start a drain and the
/// second cut it short.
#[derive(Clone)]
struct Signals(tokio::sync::watch::Receiver<u32>);

impl Signals {
    fn install() -> Result<Signals, ServeError> {
        use tokio::signal::unix::{signal, SignalKind};
        // SIGTERM: what Kubernetes, Docker and `mp delete` send to stop us.
        let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signal)?;
        // SIGINT: Ctrl-C in a terminal.
        let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signal)?;
        let (tx, rx) = tokio::sync::watch::channel(0u32);
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                info!(signal = name, "received");
                tx.send_modify(|n| *n += 1);
            }
        });
        Ok(Signals(rx))
    }

    async fn reached(mut self, n: u32) {
        // The sender lives as long as the runtime: an error means it is gone,
        // and then no signal will ever come.
        if self.0.wait_for(|count| *count >= n).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), unless the program
/// set up its own subscriber.
pub fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Serves `handler` on `MP_PORT` until SIGTERM/SIGINT; see [`Server::serve`].
pub async fn serve(handler: impl Handler) -> Result<(), ServeError> {
    Server::new().handler(handler).serve().await
}

/// Serves `merger` on `MP_PORT` until SIGTERM/SIGINT; see [`Server::serve`].
pub async fn serve_merger(merger: impl Merger) -> Result<(), ServeError> {
    Server::new().merger(merger).serve().await
}

/// Serves `handler` on `listener` until `shutdown` completes; see
/// [`Server::serve_on`].
pub async fn serve_on(
    listener: TcpListener,
    handler: impl Handler,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    Server::new()
        .handler(handler)
        .serve_on(listener, shutdown)
        .await
}
