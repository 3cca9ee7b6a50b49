//! From a plan's part to the container that runs it: name, image, command,
//! environment, labels, network aliases and published port, as a pure value
//! with a digest, so a re-deploy replaces exactly the containers that changed.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::labels;
use crate::plan::{
    Address, Addressing, Endpoint, Exec, Part, PartKey, PlanError, Role, ServicePlan,
};
use crate::topology::Service;

/// The port every part serves gRPC on inside its container. Each container
/// has its own address on the service's network, so they can all use one.
pub const PORT: u16 = 8080;

/// Where mp-lb and mp-gather serve their admin endpoint (`/metrics`,
/// `/ready`) inside their container: reachable on the service's network.
pub const ADMIN_PORT: u16 = 9901;

/// The container name of the part called `part` (`replica-2`, `leaf-3`,
/// `lb`) of `service`: `mp-<service>-<role>-<i>`; parts that are one of a
/// kind get index 0 (`mp-hello-lb-0`).
pub fn container_name(service: &str, part: &str) -> String {
    if part.ends_with(|c: char| c.is_ascii_digit()) {
        format!("mp-{service}-{part}")
    } else {
        format!("mp-{service}-{part}-0")
    }
}

/// The network alias every replica of a spread (and the handler of a
/// `service`, which runs behind an mp-lb of one backend) carries. mp-lb
/// follows it with `--dns` (all its A records, resolved again every second)
/// rather than a fixed `--backend` list, so scaling a spread or replacing a
/// replica or a service's handler never restarts the front.
pub fn replicas_alias(service: &str) -> String {
    format!("mp-{service}-replicas")
}

/// How often mp-lb resolves the replicas' alias again, and mp-gather its
/// leaves' names (`--dns-interval`).
pub const DNS_INTERVAL: &str = "1s";

/// Addresses on the docker runner: every part listens on `0.0.0.0:`[`PORT`]
/// in its own container and is reached by its container name on the
/// service's network.
#[derive(Debug, Clone, Copy, Default)]
pub struct DockerAddressing;

impl Addressing for DockerAddressing {
    fn assign(&mut self, part: PartKey<'_>) -> Result<Endpoint, PlanError> {
        labels::validate_service_name(&part.service.name).map_err(|e| PlanError::Address {
            service: part.service.name.clone(),
            part: part.name.to_string(),
            message: e.to_string(),
        })?;
        let admin = part
            .role
            .is_data_plane()
            .then(|| Address::new("0.0.0.0", ADMIN_PORT));
        Ok(Endpoint {
            listen: Address::new("0.0.0.0", PORT),
            reach: Address::new(container_name(&part.service.name, part.name), PORT),
            admin,
        })
    }

    /// Yes: the published port then belongs to an mp-lb container that
    /// outlives the handler, so a re-deploy starts the new handler beside
    /// the old one under the same alias and mp-lb moves over to it, with no
    /// gap (the handler itself holding the published port would have to
    /// give it up before its successor could take it).
    fn service_behind_lb(&self) -> bool {
        true
    }

    /// One `--dns` name for all replicas (see [`replicas_alias`]) instead of
    /// a fixed `--backend` list.
    fn lb_backend_args(&self, service: &Service, _backends: &[String]) -> Vec<String> {
        vec![
            "--dns".to_string(),
            format!("{}:{PORT}", replicas_alias(&service.name)),
            // Docker's DNS is local and cheap to ask; a short interval lets a
            // rolling update move on quickly.
            "--dns-interval".to_string(),
            DNS_INTERVAL.to_string(),
        ]
    }

    /// The default `--shard` flags, and leaves' names resolved again as
    /// often as mp-lb's alias: a replaced leaf is followed within a second,
    /// so a rolling update moves on quickly.
    fn gather_shard_args(
        &self,
        _service: &Service,
        shards: &[Vec<String>],
        merge: Option<&str>,
    ) -> Vec<String> {
        let mut args = crate::plan::shard_flags(shards, merge);
        args.extend(["--dns-interval".to_string(), DNS_INTERVAL.to_string()]);
        args
    }
}

/// How a part's program runs in a container: the image, and for packaged
/// binaries the path of the program inside it (a user's image runs with its
/// own entrypoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The image reference (a tag mp built, or the user's image).
    pub image: String,
    /// The program inside the image, for packaged binaries.
    pub program: Option<String>,
}

/// Everything the engine is told about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The container's name (also its host name and DNS name).
    pub name: String,
    /// The plan's part name (`replica-0`).
    pub part: String,
    /// The part's role.
    pub role: Role,
    /// The image.
    pub image: String,
    /// The command (program and arguments), or `None` for the image's own.
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// Labels, including [`labels::SPEC`].
    pub labels: BTreeMap<String, String>,
    /// Extra DNS names on the service's network.
    pub aliases: Vec<String>,
    /// The host port the front is published on (front only).
    pub front_port: Option<u16>,
}

impl ContainerSpec {
    /// The digest of the specification ([`labels::SPEC`]).
    pub fn digest(&self) -> &str {
        self.labels.get(labels::SPEC).map_or("", String::as_str)
    }
}

/// The container for `part` of `plan`, started as `launch` says, with the
/// front published on `front_port`.
pub fn container_spec(
    plan: &ServicePlan,
    part: &Part,
    launch: &Launch,
    front_port: u16,
) -> ContainerSpec {
    let service = plan.name();
    let name = container_name(service, &part.name);
    let is_front = part.name == plan.front;
    let cmd = match (&part.exec, &launch.program) {
        (Exec::Command { args, .. }, Some(program))
        | (Exec::DataPlane { args, .. }, Some(program)) => Some(
            std::iter::once(program.clone())
                .chain(args.iter().cloned())
                .collect(),
        ),
        // A user's image runs as its author meant it to.
        _ => None,
    };
    let env = part.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut l = BTreeMap::new();
    l.insert(labels::MANAGED_BY.to_string(), labels::MANAGER.to_string());
    l.insert(labels::SERVICE.to_string(), service.to_string());
    l.insert(labels::PATTERN.to_string(), plan.pattern().to_string());
    l.insert(labels::PART.to_string(), part.name.clone());
    l.insert(labels::ROLE.to_string(), part.role.to_string());
    l.insert(labels::INDEX.to_string(), part.index.to_string());
    if let Some(shard) = part.shard {
        l.insert(labels::SHARD.to_string(), shard.to_string());
    }
    if let Some(n) = part.env.get(crate::plan::env::SHARDS) {
        l.insert(labels::SHARDS.to_string(), n.clone());
    }
    l.insert(labels::FRONT.to_string(), is_front.to_string());
    l.insert(labels::FRONT_PORT.to_string(), front_port.to_string());
    l.insert(
        labels::PORT.to_string(),
        part.endpoint.listen.port.to_string(),
    );
    let mut spec = ContainerSpec {
        name: name.clone(),
        part: part.name.clone(),
        role: part.role,
        image: launch.image.clone(),
        cmd,
        env,
        labels: l,
        // The container's own name as an alias too: while a replacement
        // starts next to the container it replaces, the name resolves to
        // both, and callers never see it missing.
        aliases: if part.role == Role::Replica || (part.role == Role::Handler && !is_front) {
            vec![name, replicas_alias(service)]
        } else {
            vec![name]
        },
        front_port: is_front.then_some(front_port),
    };
    let digest = digest_of(&spec);
    spec.labels.insert(labels::SPEC.to_string(), digest);
    spec
}

fn digest_of(spec: &ContainerSpec) -> String {
    let mut h = Sha256::new();
    let mut field = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    field(&spec.name);
    field(&spec.image);
    match &spec.cmd {
        Some(cmd) => cmd.iter().for_each(|a| field(a)),
        None => field("<image entrypoint>"),
    }
    field("env");
    spec.env.iter().for_each(|e| field(e));
    field("labels");
    for (k, v) in &spec.labels {
        field(k);
        field(v);
    }
    field("aliases");
    spec.aliases.iter().for_each(|a| field(a));
    field(&format!("{:?}", spec.front_port));
    h.finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan_service;
    use crate::topology::{PatternKind, Program, ServiceSpec};

    fn spread(replicas: u32) -> ServicePlan {
        let service = ServiceSpec {
            name: "hello".into(),
            pattern: PatternKind::Spread,
            replicas: Some(replicas),
            handler: Some(Program::Command(vec!["/bin/hello".into(), "--x".into()])),
            ..Default::default()
        }
        .validate()
        .unwrap();
        plan_service(&service, &mut DockerAddressing).unwrap()
    }

    fn launch(program: &str) -> Launch {
        Launch {
            image: "mp-handler-hello:abc".into(),
            program: Some(program.into()),
        }
    }

    #[test]
    fn parts_are_reached_by_container_name() {
        let plan = spread(3);
        let lb = plan.front_part();
        let args = match &lb.exec {
            Exec::DataPlane { args, .. } => args.join(" "),
            other => panic!("front is {other:?}"),
        };
        assert!(args.contains("--listen 0.0.0.0:8080"), "{args}");
        // The plan itself says what the container runs: the replicas' alias.
        assert!(
            args.contains("--dns mp-hello-replicas:8080 --dns-interval 1s"),
            "{args}"
        );
        assert!(!args.contains("--backend"), "{args}");
        assert_eq!(
            plan.front_config,
            crate::plan::Front::Lb {
                backends: (0..3)
                    .map(|i| format!("mp-hello-replica-{i}:8080"))
                    .collect()
            }
        );
        assert_eq!(container_name("hello", "lb"), "mp-hello-lb-0");
        assert_eq!(container_name("hello", "leaf-3-1"), "mp-hello-leaf-3-1");
    }

    #[test]
    fn the_lb_follows_the_replicas_by_alias() {
        let plan = spread(3);
        let lb = container_spec(
            &plan,
            plan.front_part(),
            &launch("/usr/local/bin/mp-lb"),
            7700,
        );
        let cmd = lb.cmd.unwrap().join(" ");
        assert!(cmd.contains("--dns mp-hello-replicas:8080"), "{cmd}");
        assert!(!cmd.contains("--backend"), "{cmd}");
        assert!(cmd.contains("--listen 0.0.0.0:8080"), "{cmd}");
        let replica = plan.part("replica-2").unwrap();
        let r = container_spec(&plan, replica, &launch("/usr/local/bin/hello"), 7700);
        assert_eq!(r.aliases, ["mp-hello-replica-2", "mp-hello-replicas"]);
        // More replicas: the same front.
        let bigger = spread(5);
        let lb5 = container_spec(
            &bigger,
            bigger.front_part(),
            &launch("/usr/local/bin/mp-lb"),
            7700,
        );
        assert_eq!(lb.labels[labels::SPEC], lb5.labels[labels::SPEC]);
    }

    #[test]
    fn the_gather_resolves_its_leaves_every_second() {
        let service = ServiceSpec {
            name: "hist".into(),
            pattern: PatternKind::Scatter,
            shards: Some(3),
            leaf: Some(Program::Command(vec!["/bin/leaf".into()])),
            merge: Some(Program::Command(vec!["/bin/merge".into()])),
            ..Default::default()
        }
        .validate()
        .unwrap();
        let plan = plan_service(&service, &mut DockerAddressing).unwrap();
        let gather = container_spec(
            &plan,
            plan.front_part(),
            &launch("/usr/local/bin/mp-gather"),
            7700,
        );
        let cmd = gather.cmd.unwrap().join(" ");
        assert!(
            cmd.contains("--shard mp-hist-leaf-0:8080 --shard mp-hist-leaf-1:8080"),
            "{cmd}"
        );
        assert!(cmd.contains("--merge mp-hist-merge-0:8080"), "{cmd}");
        assert!(
            cmd.contains(&format!("--dns-interval {DNS_INTERVAL}")),
            "{cmd}"
        );
    }

    #[test]
    fn a_service_is_its_handler_behind_an_lb_that_follows_its_alias() {
        let service = ServiceSpec {
            name: "one".into(),
            pattern: PatternKind::Service,
            handler: Some(Program::Command(vec!["/bin/hello".into()])),
            ..Default::default()
        }
        .validate()
        .unwrap();
        let plan = plan_service(&service, &mut DockerAddressing).unwrap();
        assert_eq!(plan.front, "lb");
        let lb = container_spec(
            &plan,
            plan.front_part(),
            &launch("/usr/local/bin/mp-lb"),
            7700,
        );
        assert_eq!(lb.front_port, Some(7700));
        let cmd = lb.cmd.unwrap().join(" ");
        assert!(cmd.contains("--dns mp-one-replicas:8080"), "{cmd}");
        let handler = plan.part("handler").unwrap();
        let h = container_spec(&plan, handler, &launch("/usr/local/bin/hello"), 7700);
        // Not the front: no published port of its own, reached by the alias.
        assert_eq!(h.front_port, None);
        assert_eq!(h.labels[labels::FRONT], "false");
        assert_eq!(h.aliases, ["mp-one-handler-0", "mp-one-replicas"]);
    }

    #[test]
    fn spec_carries_command_env_and_labels() {
        let plan = spread(2);
        let part = plan.part("replica-1").unwrap();
        let spec = container_spec(&plan, part, &launch("/usr/local/bin/hello"), 7700);
        assert_eq!(spec.name, "mp-hello-replica-1");
        assert_eq!(
            spec.cmd.as_deref().unwrap(),
            ["/usr/local/bin/hello", "--x"]
        );
        assert!(spec.env.contains(&"MP_PORT=8080".to_string()));
        assert!(spec.env.contains(&"MP_ROLE=replica".to_string()));
        assert_eq!(spec.labels[labels::SERVICE], "hello");
        assert_eq!(spec.labels[labels::ROLE], "replica");
        assert_eq!(spec.labels[labels::FRONT], "false");
        assert_eq!(spec.front_port, None);
        let front = container_spec(
            &plan,
            plan.front_part(),
            &launch("/usr/local/bin/mp-lb"),
            7700,
        );
        assert_eq!(front.front_port, Some(7700));
        assert_eq!(front.labels[labels::FRONT], "true");
    }

    #[test]
    fn digest_changes_with_what_runs_only() {
        let plan = spread(2);
        let part = plan.part("replica-0").unwrap();
        let a = container_spec(&plan, part, &launch("/usr/local/bin/hello"), 7700);
        let b = container_spec(&plan, part, &launch("/usr/local/bin/hello"), 7700);
        assert_eq!(a.digest(), b.digest());
        let mut other = launch("/usr/local/bin/hello");
        other.image = "mp-handler-hello:def".into();
        let c = container_spec(&plan, part, &other, 7700);
        assert_ne!(a.digest(), c.digest());
    }

    #[test]
    fn user_images_keep_their_entrypoint() {
        let plan = spread(1);
        let part = plan.part("replica-0").unwrap();
        let l = Launch {
            image: "my/leaf:1".into(),
            program: None,
        };
        assert_eq!(container_spec(&plan, part, &l, 7700).cmd, None);
    }
}
