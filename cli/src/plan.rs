//! The plan: every part to run for a topology, as a pure value.
//!
//! [`plan`] turns a [`Topology`] into a [`Plan`] without starting anything:
//! each [`Part`] says its role, its shard, what to execute, its environment
//! (`MP_PORT`, `MP_SERVICE`, `MP_ROLE`, `MP_SHARD`, `MP_SHARDS`) and where it
//! listens; the front (mp-lb or mp-gather) gets the flags that point it at the
//! other parts. Runners differ only in addresses (loopback ports for local
//! processes, container names on a network for Docker), which they supply
//! through [`Addressing`]; everything else is decided here, once, and unit
//! tested.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::topology::{Combine, Pattern, PatternKind, Policy, Program, Reducer, Service, Topology};

/// Why a plan could not be made (the runner could not give addresses).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// No address could be assigned to a part.
    #[error("service `{service}`, part {part}: {message}")]
    Address {
        /// The service.
        service: String,
        /// The part.
        part: String,
        /// What went wrong.
        message: String,
    },
}

/// What a part does in its service. The lowercase name is `MP_ROLE`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The handler of a `service` (it is the front).
    Handler,
    /// A replica of a `spread` handler.
    Replica,
    /// A leaf of a `scatter` (one shard).
    Leaf,
    /// The merge handler of a `scatter`.
    Merge,
    /// mp-lb, the front of a `spread`.
    Lb,
    /// mp-gather, the front of a `scatter`.
    Gather,
}

impl Role {
    /// The lowercase name (`MP_ROLE`, part names, `mp logs --role`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Handler => "handler",
            Role::Replica => "replica",
            Role::Leaf => "leaf",
            Role::Merge => "merge",
            Role::Lb => "lb",
            Role::Gather => "gather",
        }
    }

    /// Whether this part runs one of mp's own data-plane programs.
    pub fn is_data_plane(self) -> bool {
        matches!(self, Role::Lb | Role::Gather)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Role as clap::ValueEnum>::from_str(s, true).map_err(|_| {
            format!("unknown role `{s}`: expected handler, replica, leaf, merge, lb or gather")
        })
    }
}

/// One of mp's own data-plane programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataPlane {
    /// `mp-lb`.
    MpLb,
    /// `mp-gather`.
    MpGather,
}

impl DataPlane {
    /// The program's file name.
    pub fn binary_name(self) -> &'static str {
        match self {
            DataPlane::MpLb => "mp-lb",
            DataPlane::MpGather => "mp-gather",
        }
    }
}

/// What a part executes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Exec {
    /// A user's command line (program, then arguments), as given.
    Command {
        /// The program (a path or a name looked up on `PATH`).
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// A user's container image, run with its own entrypoint.
    Image {
        /// The image reference.
        image: String,
    },
    /// mp-lb or mp-gather with these arguments; the runner finds the program.
    DataPlane {
        /// Which program.
        binary: DataPlane,
        /// Its arguments (`--listen`, `--backend`, ...).
        args: Vec<String>,
    },
}

impl fmt::Display for Exec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |program: &str, args: &[String]| {
            std::iter::once(program)
                .chain(args.iter().map(String::as_str))
                .map(|w| shlex::try_quote(w).map_or_else(|_| w.to_string(), |q| q.into_owned()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        match self {
            Exec::Command { program, args } => f.write_str(&show(program, args)),
            Exec::Image { image } => write!(f, "image {image}"),
            Exec::DataPlane { binary, args } => f.write_str(&show(binary.binary_name(), args)),
        }
    }
}

/// A host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Address {
    /// A host name or an IP address (`127.0.0.1`, `0.0.0.0`, `mp-hello-replica-0`).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl Address {
    /// An address from its parts.
    pub fn new(host: impl Into<String>, port: u16) -> Address {
        Address {
            host: host.into(),
            port,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Which part is being given an address, for [`Addressing::assign`].
#[derive(Debug, Clone, Copy)]
pub struct PartKey<'a> {
    /// The service.
    pub service: &'a Service,
    /// The part's name within the service (`leaf-3`).
    pub name: &'a str,
    /// Its role.
    pub role: Role,
    /// Whether it is the service's front (mp-lb, mp-gather, or a `service`'s handler).
    pub front: bool,
}

/// Where a part listens and how the other parts reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// What the part binds (`MP_PORT`, and the host for `--listen`).
    pub listen: Address,
    /// How the front (and health checks) reach it.
    pub reach: Address,
    /// Where a data-plane part serves its admin endpoint (`/ready`,
    /// `/metrics`), if the runner wants one.
    pub admin: Option<Address>,
}

/// Gives every part an [`Endpoint`]; supplied by the runner.
pub trait Addressing {
    /// The endpoint of `part`. Called once per part, in plan order (all
    /// handler parts before the front).
    fn assign(&mut self, part: PartKey<'_>) -> Result<Endpoint, PlanError>;

    /// mp-lb's arguments that name the replicas of `service`, reached at
    /// `backends` (`host:port` each): by default one `--backend` per replica.
    /// A runner that feeds mp-lb its replicas another way says so here, so the
    /// plan (and `mp deploy --dry-run`) shows exactly what runs.
    fn lb_backend_args(&self, service: &Service, backends: &[String]) -> Vec<String> {
        let _ = service;
        backend_flags(backends)
    }

    /// Whether a `service` (one handler) gets an mp-lb of one backend in
    /// front, as its front. Then a re-deploy starts the new handler beside
    /// the old one and moves the same mp-lb over, with no gap, as for a
    /// spread. Default: no, the handler itself is the front.
    fn service_behind_lb(&self) -> bool {
        false
    }

    /// mp-gather's arguments that name the shards of `service` (for each
    /// shard in order, `host:port` of each replica) and its merge handler:
    /// by default one `--shard` per shard and `--merge`. A runner that feeds
    /// mp-gather another way (a shards file) says so here, so the plan (and
    /// `mp deploy --dry-run`) shows exactly what runs.
    fn gather_shard_args(
        &self,
        service: &Service,
        shards: &[Vec<String>],
        merge: Option<&str>,
    ) -> Vec<String> {
        let _ = service;
        shard_flags(shards, merge)
    }
}

/// One `--shard` per shard and `--merge`: [`Addressing::gather_shard_args`]'s default.
pub(crate) fn shard_flags(shards: &[Vec<String>], merge: Option<&str>) -> Vec<String> {
    let mut args = Vec::new();
    for addrs in shards {
        args.extend(["--shard".to_string(), addrs.join(",")]);
    }
    if let Some(m) = merge {
        args.extend(["--merge".to_string(), m.to_string()]);
    }
    args
}

/// One `--backend` per replica: [`Addressing::lb_backend_args`]'s default.
pub(crate) fn backend_flags(backends: &[String]) -> Vec<String> {
    backends
        .iter()
        .flat_map(|b| ["--backend".to_string(), b.clone()])
        .collect()
}

/// Loopback addresses from consecutive ports: for tests and `--dry-run`
/// output that must not depend on which ports happen to be free. A front with
/// a requested port gets that port.
#[derive(Debug, Clone)]
pub struct SequentialPorts {
    next: u16,
}

impl SequentialPorts {
    /// Ports from `first` upwards.
    pub fn from(first: u16) -> SequentialPorts {
        SequentialPorts { next: first }
    }
}

impl Addressing for SequentialPorts {
    fn assign(&mut self, part: PartKey<'_>) -> Result<Endpoint, PlanError> {
        let mut take = || {
            let p = self.next;
            self.next = self.next.checked_add(1).ok_or_else(|| PlanError::Address {
                service: part.service.name.clone(),
                part: part.name.to_string(),
                message: "ran out of ports".into(),
            })?;
            Ok::<u16, PlanError>(p)
        };
        let port = match (part.front, part.service.port) {
            (true, Some(p)) => p,
            _ => take()?,
        };
        let admin = if part.role.is_data_plane() {
            Some(Address::new("127.0.0.1", take()?))
        } else {
            None
        };
        let a = Address::new("127.0.0.1", port);
        Ok(Endpoint {
            listen: a.clone(),
            reach: a,
            admin,
        })
    }
}

/// One process or container to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Unique within the service: `handler`, `replica-2`, `leaf-3` (or
    /// `leaf-3-1` for replica 1 of shard 3), `merge`, `lb`, `gather`.
    pub name: String,
    /// What it does.
    pub role: Role,
    /// The replica index within its role (or within its shard).
    pub index: u32,
    /// The shard a leaf serves.
    pub shard: Option<u32>,
    /// What to execute.
    pub exec: Exec,
    /// Its whole `MP_*` environment plus the service's extra variables.
    pub env: BTreeMap<String, String>,
    /// Where it listens and how it is reached.
    pub endpoint: Endpoint,
}

/// How the front is configured, in structured form (the same facts as the
/// front part's arguments), for runners that feed the front differently (a
/// backends file, DNS names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Front {
    /// The `service` handler is the front.
    Handler,
    /// mp-lb over these backends (the replicas' addresses).
    Lb {
        /// `host:port` of every replica.
        backends: Vec<String>,
    },
    /// mp-gather over these shards.
    Gather {
        /// For each shard in order, `host:port` of each of its replicas.
        shards: Vec<Vec<String>>,
        /// `host:port` of the merge handler, if any.
        merge: Option<String>,
        /// The built-in reducer, if no merge handler.
        reducer: Option<Reducer>,
        /// The failure policy, if not mp-gather's default.
        policy: Option<Policy>,
    },
}

impl Front {
    /// The text of the file a front that follows a file reads (mp-lb's
    /// `--backends-file`, mp-gather's `--shards-file`): the same facts as
    /// this configuration. `None` for a handler front.
    pub fn file_text(&self) -> Option<String> {
        match self {
            Front::Lb { backends } => {
                let mut s =
                    String::from("# Written by mp: the replicas this mp-lb balances over.\n");
                for b in backends {
                    s.push_str(b);
                    s.push('\n');
                }
                Some(s)
            }
            Front::Gather { shards, merge, .. } => {
                let mut s = String::from(
                    "# Written by mp: the shards this mp-gather scatters to, in order, one line each\n\
                     # (its replicas comma-separated), and the merger.\n",
                );
                for replicas in shards {
                    s.push_str(&replicas.join(","));
                    s.push('\n');
                }
                if let Some(m) = merge {
                    s.push_str(&format!("merge {m}\n"));
                }
                Some(s)
            }
            Front::Handler => None,
        }
    }
}

/// The flags with which mp-lb and mp-gather follow a file of their backends
/// or shards.
pub const FILE_FLAGS: [&str; 2] = ["--backends-file", "--shards-file"];

/// Everything to run for one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePlan {
    /// The service as declared.
    pub service: Service,
    /// Its parts: handler parts first, the front last, so starting them in
    /// order brings the front up after what it depends on.
    pub parts: Vec<Part>,
    /// The name of the front part.
    pub front: String,
    /// The front's configuration.
    pub front_config: Front,
}

impl ServicePlan {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.service.name
    }

    /// The pattern.
    pub fn pattern(&self) -> PatternKind {
        self.service.pattern.kind()
    }

    /// The front part.
    pub fn front_part(&self) -> &Part {
        self.parts
            .iter()
            .find(|p| p.name == self.front)
            .expect("a plan always contains its front part")
    }

    /// The part called `name`.
    pub fn part(&self, name: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.name == name)
    }
}

impl fmt::Display for ServicePlan {
    /// A readable listing (what `mp deploy --dry-run` prints).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "service {} ({}, {} parts, front {})",
            self.service.name,
            self.pattern(),
            self.parts.len(),
            self.front
        )?;
        for p in &self.parts {
            let env: Vec<String> = p.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(
                f,
                "  {:<12} {:<7} listen {}  {}",
                p.name, p.role, p.endpoint.listen, p.exec
            )?;
            writeln!(f, "  {:<12} env {}", "", env.join(" "))?;
            // A front that follows a file: what the file will hold, so the
            // listing says which addresses it is pointed at.
            if let (Exec::DataPlane { args, .. }, true) = (&p.exec, p.name == self.front) {
                let file = args
                    .windows(2)
                    .find(|w| FILE_FLAGS.contains(&w[0].as_str()))
                    .map(|w| &w[1]);
                if let (Some(file), Some(text)) = (file, self.front_config.file_text()) {
                    writeln!(f, "  {:<12} {file} (written by mp) holds:", "")?;
                    for line in text.lines().filter(|l| !l.starts_with('#')) {
                        writeln!(f, "  {:<12}   {line}", "")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Everything to run for a topology.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Plan {
    /// One plan per service, in the topology's order.
    pub services: Vec<ServicePlan>,
}

/// Plans every service of `topology`, with addresses from `addressing`.
pub fn plan(topology: &Topology, addressing: &mut dyn Addressing) -> Result<Plan, PlanError> {
    let services = topology
        .services
        .iter()
        .map(|s| plan_service(s, addressing))
        .collect::<Result<_, _>>()?;
    Ok(Plan { services })
}

/// The environment variable names mp sets on every part.
pub mod env {
    /// The port to listen on.
    pub const PORT: &str = "MP_PORT";
    /// The host to bind (`127.0.0.1` for local processes, `0.0.0.0` in containers).
    pub const HOST: &str = "MP_HOST";
    /// The service's name.
    pub const SERVICE: &str = "MP_SERVICE";
    /// The part's role (`handler`, `replica`, `leaf`, `merge`, `lb`, `gather`).
    pub const ROLE: &str = "MP_ROLE";
    /// The shard a leaf serves, from 0 (leaves only).
    pub const SHARD: &str = "MP_SHARD";
    /// How many shards the service has (leaves only).
    pub const SHARDS: &str = "MP_SHARDS";
    /// The replica index within the role (or shard).
    pub const REPLICA: &str = "MP_REPLICA";
}

/// Plans one service.
pub fn plan_service(
    service: &Service,
    addressing: &mut dyn Addressing,
) -> Result<ServicePlan, PlanError> {
    let mut parts = Vec::new();
    let mut add = |addressing: &mut dyn Addressing,
                   name: String,
                   role: Role,
                   index: u32,
                   shard: Option<(u32, u32)>,
                   program: &Program,
                   front: bool|
     -> Result<Part, PlanError> {
        let endpoint = addressing.assign(PartKey {
            service,
            name: &name,
            role,
            front,
        })?;
        let mut env = service.env.clone();
        env.extend(base_env(service, role, index, shard, &endpoint));
        let exec = match program {
            Program::Command(argv) => Exec::Command {
                program: argv[0].clone(),
                args: argv[1..].to_vec(),
            },
            Program::Image(image) => Exec::Image {
                image: image.clone(),
            },
        };
        let part = Part {
            name,
            role,
            index,
            shard: shard.map(|(s, _)| s),
            exec,
            env,
            endpoint,
        };
        parts.push(part.clone());
        Ok(part)
    };

    let (front, front_config) = match &service.pattern {
        Pattern::Service { handler } => {
            let behind_lb = addressing.service_behind_lb();
            let p = add(
                addressing,
                "handler".into(),
                Role::Handler,
                0,
                None,
                handler,
                !behind_lb,
            )?;
            if behind_lb {
                let backends = vec![p.endpoint.reach.to_string()];
                parts.push(lb_part(service, &backends, addressing)?);
                ("lb".to_string(), Front::Lb { backends })
            } else {
                ("handler".to_string(), Front::Handler)
            }
        }
        Pattern::Spread { replicas, handler } => {
            let mut backends = Vec::new();
            for i in 0..*replicas {
                let p = add(
                    addressing,
                    format!("replica-{i}"),
                    Role::Replica,
                    i,
                    None,
                    handler,
                    false,
                )?;
                backends.push(p.endpoint.reach.to_string());
            }
            parts.push(lb_part(service, &backends, addressing)?);
            ("lb".to_string(), Front::Lb { backends })
        }
        Pattern::Scatter {
            shards,
            replicas,
            leaf,
            combine,
            policy,
        } => {
            let mut shard_addrs = Vec::new();
            for s in 0..*shards {
                let mut addrs = Vec::new();
                for r in 0..*replicas {
                    let name = if *replicas == 1 {
                        format!("leaf-{s}")
                    } else {
                        format!("leaf-{s}-{r}")
                    };
                    let p = add(
                        addressing,
                        name,
                        Role::Leaf,
                        r,
                        Some((s, *shards)),
                        leaf,
                        false,
                    )?;
                    addrs.push(p.endpoint.reach.to_string());
                }
                shard_addrs.push(addrs);
            }
            let (merge, reducer) = match combine {
                Combine::Merge(program) => {
                    let p = add(
                        addressing,
                        "merge".into(),
                        Role::Merge,
                        0,
                        None,
                        program,
                        false,
                    )?;
                    (Some(p.endpoint.reach.to_string()), None)
                }
                Combine::Reducer(r) => (None, Some(*r)),
            };
            let ep = front_endpoint(service, "gather", Role::Gather, addressing)?;
            let mut args = vec!["--listen".to_string(), ep.listen.to_string()];
            args.extend(addressing.gather_shard_args(service, &shard_addrs, merge.as_deref()));
            if let Some(r) = reducer {
                args.extend(["--reducer".to_string(), r.to_string()]);
            }
            if let Some(p) = policy {
                args.extend(["--policy".to_string(), p.to_string()]);
            }
            push_admin(&mut args, &ep);
            parts.push(data_plane_part(
                service,
                "gather",
                Role::Gather,
                DataPlane::MpGather,
                args,
                ep,
            ));
            (
                "gather".to_string(),
                Front::Gather {
                    shards: shard_addrs,
                    merge,
                    reducer,
                    policy: *policy,
                },
            )
        }
    };
    Ok(ServicePlan {
        service: service.clone(),
        parts,
        front,
        front_config,
    })
}

/// The mp-lb front part over `backends`.
fn lb_part(
    service: &Service,
    backends: &[String],
    addressing: &mut dyn Addressing,
) -> Result<Part, PlanError> {
    let ep = front_endpoint(service, "lb", Role::Lb, addressing)?;
    let mut args = vec!["--listen".to_string(), ep.listen.to_string()];
    args.extend(addressing.lb_backend_args(service, backends));
    push_admin(&mut args, &ep);
    Ok(data_plane_part(
        service,
        "lb",
        Role::Lb,
        DataPlane::MpLb,
        args,
        ep,
    ))
}

fn front_endpoint(
    service: &Service,
    name: &str,
    role: Role,
    addressing: &mut dyn Addressing,
) -> Result<Endpoint, PlanError> {
    addressing.assign(PartKey {
        service,
        name,
        role,
        front: true,
    })
}

fn push_admin(args: &mut Vec<String>, ep: &Endpoint) {
    if let Some(admin) = &ep.admin {
        args.extend(["--admin".to_string(), admin.to_string()]);
    }
}

fn data_plane_part(
    service: &Service,
    name: &str,
    role: Role,
    binary: DataPlane,
    args: Vec<String>,
    endpoint: Endpoint,
) -> Part {
    // The data plane gets the MP_* facts too (for its logs), but not the
    // user's extra environment, which is meant for handlers.
    let env = base_env(service, role, 0, None, &endpoint);
    Part {
        name: name.to_string(),
        role,
        index: 0,
        shard: None,
        exec: Exec::DataPlane { binary, args },
        env,
        endpoint,
    }
}

fn base_env(
    service: &Service,
    role: Role,
    index: u32,
    shard: Option<(u32, u32)>,
    endpoint: &Endpoint,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(env::PORT.to_string(), endpoint.listen.port.to_string());
    env.insert(env::HOST.to_string(), endpoint.listen.host.clone());
    env.insert(env::SERVICE.to_string(), service.name.clone());
    env.insert(env::ROLE.to_string(), role.to_string());
    env.insert(env::REPLICA.to_string(), index.to_string());
    if let Some((s, n)) = shard {
        env.insert(env::SHARD.to_string(), s.to_string());
        env.insert(env::SHARDS.to_string(), n.to_string());
    }
    env
}

#[cfg(test)]
mod tests;
