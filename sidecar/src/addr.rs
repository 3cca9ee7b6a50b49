//! Backend addresses (`HOST:PORT`) and name resolution without the C library.
//!
//! Names are resolved with hickory (pure Rust, reading `/etc/resolv.conf` and
//! `/etc/hosts`), never `getaddrinfo`: our binaries also run statically linked
//! in `FROM scratch` containers, where glibc cannot load its NSS modules.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use tracing::warn;

/// A `HOST:PORT` pair where HOST is an IP literal (`[v6]` in brackets) or a
/// DNS name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    /// The host: an IP address or a name (without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

/// A `HOST:PORT` string that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid address {input:?}: {reason} (expected HOST:PORT, e.g. 127.0.0.1:50051, backend.local:50051 or [::1]:50051)")]
pub struct AddrParseError {
    input: String,
    reason: &'static str,
}

impl FromStr for HostPort {
    type Err = AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| AddrParseError {
            input: s.to_string(),
            reason,
        };
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest.split_once("]:").ok_or_else(|| err("missing ]:PORT"))?;
            h.parse::<Ipv6Addr>()
                .map_err(|_| err("not an IPv6 address in brackets"))?;
            (h, p)
        } else {
            let (h, p) = s.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
            if h.contains(':') {
                return Err(err("IPv6 addresses need brackets"));
            }
            (h, p)
        };
        if host.is_empty() {
            return Err(err("empty host"));
        }
        let valid_name = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
        if !valid_name {
            return Err(err("the host has characters a DNS name cannot have"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| err("the port is not a number 0-65535"))?;
        if port == 0 {
            return Err(err("port 0"));
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl HostPort {
    /// The socket address, when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

/// Name resolution failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The name exists in no form the resolver could find (NXDOMAIN, no A/AAAA records).
    #[error("{name}: no such host (no A/AAAA records)")]
    NotFound {
        /// The name looked up.
        name: String,
    },
    /// The lookup itself failed (timeout, no DNS server answered, ...).
    #[error("{name}: lookup failed: {source}")]
    Failed {
        /// The name looked up.
        name: String,
        /// What the resolver said.
        #[source]
        source: hickory_resolver::ResolveError,
    },
}

/// Resolves host names to addresses. Cheap to clone (shares one cache).
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<TokioResolver>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver configured from the system (`/etc/resolv.conf`,
    /// `/etc/hosts`). If that cannot be read (e.g. a container without a
    /// resolv.conf), it falls back to hickory's defaults and says so.
    pub fn system() -> Resolver {
        use hickory_resolver::config::ResolverConfig;
        use hickory_resolver::name_server::TokioConnectionProvider;

        let builder = match TokioResolver::builder_tokio() {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot read the system DNS configuration; using defaults");
                TokioResolver::builder_with_config(
                    ResolverConfig::default(),
                    TokioConnectionProvider::default(),
                )
            }
        };
        let mut builder = builder;
        // Re-resolution is what discovery is for: do not let a cache hide a
        // change for longer than our own interval.
        builder.options_mut().positive_max_ttl = Some(std::time::Duration::from_secs(1));
        builder.options_mut().negative_max_ttl = Some(std::time::Duration::from_secs(1));
        Resolver {
            inner: Arc::new(builder.build()),
        }
    }

    /// A resolver asking only the DNS server at `server` (plain UDP/TCP), e.g.
    /// a test's own server; `/etc/hosts` is not read.
    pub fn with_nameserver(server: SocketAddr) -> Resolver {
        use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
        use hickory_resolver::name_server::TokioConnectionProvider;

        let group = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], group),
            TokioConnectionProvider::default(),
        );
        builder.options_mut().use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        builder.options_mut().cache_size = 0;
        Resolver {
            inner: Arc::new(builder.build()),
        }
    }

    /// All addresses of `hp`: itself for an IP literal; `localhost` is
    /// 127.0.0.1 even without an `/etc/hosts`; else every A and AAAA record.
    /// The result is sorted and without duplicates.
    pub async fn resolve(&self, hp: &HostPort) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Some(sa) = hp.socket_addr() {
            return Ok(vec![sa]);
        }
        if hp.host.eq_ignore_ascii_case("localhost") {
            return Ok(vec![SocketAddr::new(Ipv4Addr::LOCALHOST.into(), hp.port)]);
        }
        match self.inner.lookup_ip(hp.host.as_str()).await {
            Ok(lookup) => {
                let mut v: Vec<SocketAddr> = lookup
                    .iter()
                    .map(|ip| SocketAddr::new(ip, hp.port))
                    .collect();
                v.sort();
                v.dedup();
                if v.is_empty() {
                    return Err(ResolveError::NotFound {
                        name: hp.host.clone(),
                    });
                }
                Ok(v)
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Err(ResolveError::NotFound {
                name: hp.host.clone(),
            }),
            Err(e) => Err(ResolveError::Failed {
                name: hp.host.clone(),
                source: e,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
