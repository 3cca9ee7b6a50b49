//! Per-method call metrics (`method="/pkg.Service/Method"`), bounded in
//! number because a drop-in proxy's paths come from its clients.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mp_sidecar::metrics::{CallHandles, CallMetrics};

/// How many distinct methods get series of their own; the paths of a drop-in
/// proxy come from clients, so the count must be bounded.
const MAX_METHODS: usize = 512;

/// Per-method call metrics: a copy-on-write map, so the call path only reads.
#[derive(Debug)]
pub struct Methods {
    calls: CallMetrics,
    map: ArcSwap<HashMap<Box<str>, Arc<CallHandles>>>,
    other: Arc<CallHandles>,
}

impl Methods {
    /// Series registered in `calls`.
    pub fn new(calls: CallMetrics) -> Methods {
        Methods {
            other: Arc::new(calls.handles("other")),
            calls,
            map: ArcSwap::default(),
        }
    }

    /// The handles for `path` (`/package.Service/Method`); anything that is
    /// not a gRPC path, and new methods past the limit, count as `other`.
    pub fn get(&self, path: &str) -> Arc<CallHandles> {
        if let Some(h) = self.map.load().get(path) {
            return h.clone();
        }
        let grpc_path = path.len() <= 256
            && path.starts_with('/')
            && path[1..].split('/').count() == 2
            && !path.ends_with('/');
        if !grpc_path {
            return self.other.clone();
        }
        let mut found = None;
        self.map.rcu(|m| {
            if let Some(h) = m.get(path) {
                found = Some(h.clone());
                return m.clone();
            }
            if m.len() >= MAX_METHODS {
                found = Some(self.other.clone());
                return m.clone();
            }
            let h = Arc::new(self.calls.handles(path));
            found = Some(h.clone());
            let mut next = HashMap::clone(m);
            next.insert(path.into(), h);
            Arc::new(next)
        });
        found.unwrap_or_else(|| self.other.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn method_series_are_bounded() {
        let m = Methods::new(CallMetrics::register(&mut Registry::default(), "method"));
        let a = m.get("/pkg.Svc/A");
        assert!(
            Arc::ptr_eq(&a, &m.get("/pkg.Svc/A")),
            "one series per method"
        );
        for p in ["/", "/x", "/a/b/c", "no-slash", "/pkg.Svc/"] {
            assert!(Arc::ptr_eq(&m.get(p), &m.other), "{p:?} is not a gRPC path");
        }
        for i in 0..2 * MAX_METHODS {
            m.get(&format!("/pkg.Svc/M{i}"));
        }
        assert_eq!(m.map.load().len(), MAX_METHODS);
        assert!(Arc::ptr_eq(&m.get("/pkg.Svc/Late"), &m.other));
    }
}
