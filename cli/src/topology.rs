//! The topology model: which services to run and in which pattern, as read
//! from `mp.toml`, built from `mp deploy` flags, or declared in code.
//!
//! A [`ServiceSpec`] is the loose, user-facing form (every field optional, as
//! in a file or on a command line); [`ServiceSpec::validate`] turns it into a
//! [`Service`] whose [`Pattern`] holds exactly what that pattern needs, or says
//! in one line what is wrong.
//!
//! ```toml
//! [[service]]
//! name = "histogram-service"
//! pattern = "scatter"
//! shards = 10
//! leaf = "target/release/examples/histogram-leaf"
//! merge = "target/release/examples/histogram-merge"
//! port = 7700
//!
//! [[service]]
//! name = "hello"
//! pattern = "spread"
//! replicas = 3
//! handler = ["python3", "examples/python/leaf.py"]
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Why a topology is not valid. Each message is one line that names the
/// service and the field, and says what would be accepted.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the expected shape.
    #[error("invalid {path}: {message}")]
    Parse {
        /// The file (or `mp.toml` for text).
        path: String,
        /// What the parser said, on one line.
        message: String,
    },
    /// A service's fields do not make a valid pattern.
    #[error("service `{service}`: {message}")]
    Invalid {
        /// The service's name.
        service: String,
        /// What is wrong and what would be accepted.
        message: String,
    },
    /// The file declares no service.
    #[error("{path} declares no service: add a [[service]] table with a name and a pattern")]
    Empty {
        /// The file.
        path: String,
    },
}

/// The patterns a service can be deployed in.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum PatternKind {
    /// One handler process; it is the front itself.
    #[default]
    Service,
    /// N replicas of a handler behind mp-lb (round robin).
    Spread,
    /// N leaves (shard i of N) behind mp-gather, merged by a merge handler or a reducer.
    Scatter,
}

impl PatternKind {
    /// The lowercase name, as written in `mp.toml` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PatternKind::Service => "service",
            PatternKind::Spread => "spread",
            PatternKind::Scatter => "scatter",
        }
    }
}

impl fmt::Display for PatternKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for PatternKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "service" => Ok(PatternKind::Service),
            "spread" => Ok(PatternKind::Spread),
            "scatter" => Ok(PatternKind::Scatter),
            other => Err(format!(
                "unknown pattern `{other}`: expected service, spread or scatter"
            )),
        }
    }
}

/// What runs a handler: a command line, or (for container runners) an image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Program {
    /// A program and its arguments, e.g. `["python3", "examples/python/leaf.py"]`.
    /// Never empty once validated.
    Command(Vec<String>),
    /// A container image used as given (its own entrypoint), e.g. `my/leaf:1`.
    Image(String),
}

impl Program {
    /// Splits a shell-like command line (`python3 "my leaf.py" --x`) into a
    /// [`Program::Command`]. Quotes group words; no shell is involved.
    pub fn parse_command_line(line: &str) -> Result<Program, String> {
        let words = shlex::split(line).ok_or_else(|| {
            format!("cannot split the command line `{line}` (unbalanced quotes?)")
        })?;
        if words.is_empty() {
            return Err("the command line is empty".to_string());
        }
        Ok(Program::Command(words))
    }

    /// The program and its arguments, if this is a command.
    pub fn argv(&self) -> Option<&[String]> {
        match self {
            Program::Command(argv) => Some(argv),
            Program::Image(_) => None,
        }
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Program::Command(argv) => {
                let quoted: Vec<String> = argv
                    .iter()
                    .map(|w| shlex::try_quote(w).map_or_else(|_| w.clone(), |q| q.into_owned()))
                    .collect();
                f.write_str(&quoted.join(" "))
            }
            Program::Image(image) => write!(f, "image {image}"),
        }
    }
}

// A program is written as a command line string, an argv array, or a table
// `{ command = "..." }` / `{ command = [...] }` / `{ image = "..." }`. A custom
// visitor gives better messages than an untagged enum ("data did not match").
impl<'de> Deserialize<'de> for Program {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ProgramVisitor;
        impl<'de> Visitor<'de> for ProgramVisitor {
            type Value = Program;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a command line string, an array of words, or a table with `command` or `image`",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Program, E> {
                Program::parse_command_line(v).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Program, A::Error> {
                let mut words = Vec::new();
                while let Some(w) = seq.next_element::<String>()? {
                    words.push(w);
                }
                if words.is_empty() {
                    return Err(de::Error::custom("the command is an empty array"));
                }
                Ok(Program::Command(words))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Program, A::Error> {
                let mut out = None;
                while let Some(key) = map.next_key::<String>()? {
                    if out.is_some() {
                        return Err(de::Error::custom(
                            "give either `command` or `image`, not both",
                        ));
                    }
                    out = Some(match key.as_str() {
                        "command" => map.next_value::<Program>()?,
                        "image" => {
                            let image: String = map.next_value()?;
                            if image.trim().is_empty() {
                                return Err(de::Error::custom("the image name is empty"));
                            }
                            Program::Image(image)
                        }
                        other => {
                            return Err(de::Error::unknown_field(other, &["command", "image"]))
                        }
                    });
                }
                out.ok_or_else(|| de::Error::custom("expected `command` or `image`"))
            }
        }
        d.deserialize_any(ProgramVisitor)
    }
}

impl Serialize for Program {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Program::Command(argv) => argv.serialize(s),
            Program::Image(image) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("image", image)?;
                m.end()
            }
        }
    }
}

/// A built-in way for mp-gather to combine the leaves' replies (instead of a
/// merge handler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Reducer {
    /// A JSON array of the leaves' JSON replies, in shard order.
    JsonArray,
    /// The leaves' reply messages concatenated (protobuf merge semantics).
    Concat,
    /// The first successful reply.
    First,
}

impl Reducer {
    /// The name mp-gather's `--reducer` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Reducer::JsonArray => "json-array",
            Reducer::Concat => "concat",
            Reducer::First => "first",
        }
    }
}

impl fmt::Display for Reducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What mp-gather does when some leaves fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Every shard must answer (the default).
    All,
    /// At least K shards must answer.
    Quorum(u32),
    /// Merge whatever answered.
    BestEffort,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::All => f.write_str("all"),
            Policy::Quorum(k) => write!(f, "quorum={k}"),
            Policy::BestEffort => f.write_str("best-effort"),
        }
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Policy::All),
            "best-effort" => Ok(Policy::BestEffort),
            _ => s
                .strip_prefix("quorum=")
                .and_then(|k| k.parse().ok())
                .filter(|k| *k > 0)
                .map(Policy::Quorum)
                .ok_or_else(|| {
                    format!("unknown policy `{s}`: expected all, quorum=K (K > 0) or best-effort")
                }),
        }
    }
}

impl Serialize for Policy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Policy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// How a scatter service combines its leaves' replies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Combine {
    /// A merge handler (`mp.v1.Merger`) run as its own part.
    Merge(Program),
    /// A reducer built into mp-gather.
    Reducer(Reducer),
}

/// A validated pattern: exactly what each pattern needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "pattern", rename_all = "lowercase")]
pub enum Pattern {
    /// One handler, serving the front itself.
    Service {
        /// The handler.
        handler: Program,
    },
    /// `replicas` copies of a handler behind mp-lb.
    Spread {
        /// How many replicas (at least 1).
        replicas: u32,
        /// The handler every replica runs.
        handler: Program,
    },
    /// `shards` leaves behind mp-gather.
    Scatter {
        /// How many shards (at least 1).
        shards: u32,
        /// Replicas of each shard's leaf (at least 1); mp-gather hedges across them.
        replicas: u32,
        /// The leaf every shard runs (told its shard by `MP_SHARD`).
        leaf: Program,
        /// How replies are combined.
        combine: Combine,
        /// What to do when leaves fail (mp-gather's default when `None`).
        policy: Option<Policy>,
    },
}

impl Pattern {
    /// Which pattern this is.
    pub fn kind(&self) -> PatternKind {
        match self {
            Pattern::Service { .. } => PatternKind::Service,
            Pattern::Spread { .. } => PatternKind::Spread,
            Pattern::Scatter { .. } => PatternKind::Scatter,
        }
    }
}

/// A validated service: a name, a pattern, the front port and extra environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// The service's name: lowercase letters, digits and `-`, at most 40
    /// characters, so it fits in process, container and Kubernetes names.
    pub name: String,
    /// What runs.
    pub pattern: Pattern,
    /// The front's port on the host, or `None` for a free one.
    pub port: Option<u16>,
    /// Extra environment for every handler part (not the data plane).
    pub env: BTreeMap<String, String>,
}

/// A set of services deployed together (one `mp.toml`, or one `mp deploy`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Topology {
    /// The services, in the order they were declared.
    pub services: Vec<Service>,
}

/// The loose form of a service, as written in `mp.toml` or given as flags:
/// every field optional; [`ServiceSpec::validate`] checks the combination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The service's name.
    pub name: String,
    /// The pattern.
    pub pattern: PatternKind,
    /// The handler (service, spread).
    pub handler: Option<Program>,
    /// Replicas (spread; for scatter, replicas of each shard).
    pub replicas: Option<u32>,
    /// Shards (scatter).
    pub shards: Option<u32>,
    /// The leaf (scatter).
    pub leaf: Option<Program>,
    /// The merge handler (scatter).
    pub merge: Option<Program>,
    /// A built-in reducer (scatter), instead of a merge handler.
    pub reducer: Option<Reducer>,
    /// mp-gather's failure policy (scatter).
    pub policy: Option<Policy>,
    /// The front's port.
    pub port: Option<u16>,
    /// Extra environment for handler parts.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// The longest service name accepted: part names add up to ~20 characters
/// (`mp-<name>-leaf-99-9`) and Docker/Kubernetes names stop at 63.
pub const MAX_NAME_LEN: usize = 40;

/// The most parts of one role (replicas or shards) accepted.
pub const MAX_PARTS: u32 = 1000;

/// Checks a service name: lowercase letters, digits and `-`, starting with a
/// letter, not ending with `-`, at most [`MAX_NAME_LEN`] characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if name.is_empty() {
        return Err("the service name is empty".into());
    }
    if !ok_chars
        || !name.starts_with(|c: char| c.is_ascii_lowercase())
        || name.ends_with('-')
        || name.len() > MAX_NAME_LEN
    {
        return Err(format!(
            "invalid service name `{name}`: use lowercase letters, digits and `-`, starting with a \
             letter, at most {MAX_NAME_LEN} characters (e.g. histogram-service)"
        ));
    }
    Ok(())
}

impl ServiceSpec {
    /// Checks the combination of fields for the pattern and builds the
    /// [`Service`]. Fields that the pattern does not use are errors, so a typo'd
    /// intent (`--leaf` on a spread) is not silently ignored.
    pub fn validate(self) -> Result<Service, TopologyError> {
        let name = self.name.clone();
        let bad = |message: String| TopologyError::Invalid {
            service: name.clone(),
            message,
        };
        validate_name(&self.name).map_err(|m| TopologyError::Invalid {
            service: self.name.clone(),
            message: m,
        })?;
        let count =
            |what: &str, n: Option<u32>, default: Option<u32>| -> Result<u32, TopologyError> {
                match n.or(default) {
                    None => Err(bad(format!(
                        "a {} pattern needs `{what}` (e.g. {what} = 3)",
                        self.pattern
                    ))),
                    Some(0) => Err(bad(format!("`{what}` must be at least 1"))),
                    Some(n) if n > MAX_PARTS => {
                        Err(bad(format!("`{what}` = {n} is more than {MAX_PARTS}")))
                    }
                    Some(n) => Ok(n),
                }
            };
        let unused = |field: &str, present: bool| -> Result<(), TopologyError> {
            if present {
                Err(bad(format!(
                    "`{field}` is not used by the {} pattern",
                    self.pattern
                )))
            } else {
                Ok(())
            }
        };
        let need = |field: &str, p: Option<Program>| -> Result<Program, TopologyError> {
            p.ok_or_else(|| {
                bad(format!(
                    "a {} pattern needs `{field}` (a command line, e.g. {field} = \"target/release/examples/hello\")",
                    self.pattern
                ))
            })
        };
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.starts_with("MP_") {
                return Err(bad(format!(
                    "environment variable `{key}` is not allowed (MP_* are set by mp)"
                )));
            }
        }
        let pattern = match self.pattern {
            PatternKind::Service => {
                unused("replicas", self.replicas.is_some())?;
                unused("shards", self.shards.is_some())?;
                unused("leaf", self.leaf.is_some())?;
                unused("merge", self.merge.is_some())?;
                unused("reducer", self.reducer.is_some())?;
                unused("policy", self.policy.is_some())?;
                Pattern::Service {
                    handler: need("handler", self.handler)?,
                }
            }
            PatternKind::Spread => {
                unused("shards", self.shards.is_some())?;
                unused("leaf", self.leaf.is_some())?;
                unused("merge", self.merge.is_some())?;
                unused("reducer", self.reducer.is_some())?;
                unused("policy", self.policy.is_some())?;
                Pattern::Spread {
                    replicas: count("replicas", self.replicas, None)?,
                    handler: need("handler", self.handler)?,
                }
            }
            PatternKind::Scatter => {
                unused("handler", self.handler.is_some())?;
                let combine = match (self.merge, self.reducer) {
                    (Some(_), Some(_)) => {
                        return Err(bad("give either `merge` or `reducer`, not both".into()))
                    }
                    (Some(m), None) => Combine::Merge(m),
                    (None, Some(r)) => Combine::Reducer(r),
                    (None, None) => Combine::Reducer(Reducer::JsonArray),
                };
                let shards = count("shards", self.shards, None)?;
                if let Some(Policy::Quorum(k)) = self.policy {
                    if k > shards {
                        return Err(bad(format!(
                            "policy quorum={k} is more than the {shards} shards"
                        )));
                    }
                }
                Pattern::Scatter {
                    shards,
                    replicas: count("replicas", self.replicas, Some(1))?,
                    leaf: need("leaf", self.leaf)?,
                    combine,
                    policy: self.policy,
                }
            }
        };
        if self.port == Some(0) {
            return Err(bad(
                "`port` must be between 1 and 65535 (omit it for a free port)".into(),
            ));
        }
        Ok(Service {
            name: self.name,
            pattern,
            port: self.port,
            env: self.env,
        })
    }
}

/// The shape of `mp.toml`: `[[service]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    #[serde(default)]
    service: Vec<ServiceSpec>,
}

impl Topology {
    /// A topology of one service.
    pub fn single(service: Service) -> Topology {
        Topology {
            services: vec![service],
        }
    }

    /// Parses and validates the text of an `mp.toml`; `path` names it in errors.
    pub fn from_toml(text: &str, path: &str) -> Result<Topology, TopologyError> {
        let file: TopologyFile = toml::from_str(text).map_err(|e| TopologyError::Parse {
            path: path.to_string(),
            message: one_line_toml_error(&e, text),
        })?;
        if file.service.is_empty() {
            return Err(TopologyError::Empty {
                path: path.to_string(),
            });
        }
        let mut services = Vec::new();
        for spec in file.service {
            let service = spec.validate()?;
            if services.iter().any(|s: &Service| s.name == service.name) {
                return Err(TopologyError::Invalid {
                    service: service.name,
                    message: "declared twice".into(),
                });
            }
            if let Some(port) = service.port {
                if let Some(other) = services.iter().find(|s| s.port == Some(port)) {
                    return Err(TopologyError::Invalid {
                        service: service.name,
                        message: format!("port {port} is already the front of `{}`", other.name),
                    });
                }
            }
            services.push(service);
        }
        Ok(Topology { services })
    }

    /// Reads, parses and validates an `mp.toml`.
    pub fn from_file(path: &Path) -> Result<Topology, TopologyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: shown.clone(),
            source,
        })?;
        Topology::from_toml(&text, &shown)
    }
}

// toml's errors span several lines (a snippet with a caret); keep the message
// and the line number so the error stays one line.
fn one_line_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests;
