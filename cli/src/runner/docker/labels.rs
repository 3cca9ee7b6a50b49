//! How mp names and labels what it creates on the engine. Labels are the only
//! state the docker runner keeps: `mp ps`, `logs`, `call` and `delete` find a
//! service from any shell by asking the engine for them.

use super::error::DockerError;

/// Set to [`MANAGER`] on every container, network and image mp creates.
pub const MANAGED_BY: &str = "mp.managed-by";
/// The value of [`MANAGED_BY`].
pub const MANAGER: &str = "mp";
/// The service a container or network belongs to.
pub const SERVICE: &str = "mp.service";
/// The pattern of the service (`service`, `spread`, `scatter`).
pub const PATTERN: &str = "mp.pattern";
/// The plan's name of the part (`replica-2`, `leaf-3`, `lb`).
pub const PART: &str = "mp.part";
/// The part's role (`replica`, `leaf`, `merge`, `lb`, `gather`, ...).
pub const ROLE: &str = "mp.role";
/// The part's index among the parts of its role.
pub const INDEX: &str = "mp.index";
/// The shard the part serves (scatter leaves).
pub const SHARD: &str = "mp.shard";
/// How many shards the service has.
pub const SHARDS: &str = "mp.shards";
/// `true` on the container that is the service's front.
pub const FRONT: &str = "mp.front";
/// The host port the front is published on (on every container of the
/// service, so any one of them tells where to call it).
pub const FRONT_PORT: &str = "mp.front-port";
/// The port the part serves gRPC on inside its container.
pub const PORT: &str = "mp.port";
/// A digest of the part's whole specification (image, command, environment,
/// ports); a re-deploy replaces only the containers whose digest changed.
pub const SPEC: &str = "mp.spec";

/// The longest service name accepted: container names become host names
/// (at most 63 characters) with room for `mp-`, the role and the index.
pub const MAX_SERVICE_NAME: usize = 40;

/// The service's bridge network.
pub fn network_name(service: &str) -> String {
    format!("mp-{service}")
}

/// The container of the `index`th part of `role`.
pub fn container_name(service: &str, role: &str, index: usize) -> String {
    format!("mp-{service}-{role}-{index}")
}

/// A label filter that selects everything mp made for `service`, or for
/// every service when `service` is `None`.
pub fn filter(service: Option<&str>) -> Vec<String> {
    let mut f = vec![format!("{MANAGED_BY}={MANAGER}")];
    if let Some(s) = service {
        f.push(format!("{SERVICE}={s}"));
    }
    f
}

/// Checks that `name` can be part of container, network and host names;
/// says which character Docker would refuse otherwise.
pub fn validate_service_name(name: &str) -> Result<(), DockerError> {
    let refuse = |why: String| {
        Err(DockerError::Invalid(format!(
            "invalid service name {name:?} for the docker runner: {why} (use letters, digits, \
             '-' and '_', starting with a letter or digit, at most {MAX_SERVICE_NAME} characters)"
        )))
    };
    if name.is_empty() {
        return refuse("it is empty".into());
    }
    if name.len() > MAX_SERVICE_NAME {
        return refuse(format!("it has {} characters", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return refuse(format!(
            "Docker refuses {c:?} in container and network names"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return refuse("it must start with a letter or digit".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention() {
        assert_eq!(network_name("hello"), "mp-hello");
        assert_eq!(container_name("hello", "replica", 2), "mp-hello-replica-2");
    }

    #[test]
    fn names_docker_refuses_are_caught_early() {
        for good in ["histogram-service", "a", "svc_2"] {
            validate_service_name(good).unwrap();
        }
        for bad in ["", "bad name", "bad/name", "-x", "é", &"x".repeat(41)] {
            let err = validate_service_name(bad).unwrap_err().to_string();
            assert!(err.contains("invalid service name"), "{err}");
        }
    }
}
