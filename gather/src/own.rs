//! The leaf connections a busy caller connection owns: driven by that
//! connection's task, so a call's way out and back is one task reading and
//! writing both sockets in the same rounds (as mp-lb's relay does), not a
//! switch to the shared leaf connection's task and back.
//!
//! A caller connection gets its own leaf connections once it has made
//! [`OWN_AFTER`] calls, and only for topologies of at most
//! [`OWN_MAX_SHARDS`] shards: a caller that makes a call or two per
//! connection (grpcurl, a script) does not open leaf connections for them,
//! and a wide fan-out keeps the shared connections, whose batches of many
//! callers' calls are cheaper than a connection per caller and replica.
//!
//! A replica that leaves the topology (discovery stops listing it, or the
//! shards file drops it) gets no new calls; its own connections close once
//! the calls they carry are done, at the caller connection's next round.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::Context;

use http::uri::Authority;
use mp_sidecar::h2client::{Client, ClientConfig, Rounds};
use mp_sidecar::pool::Endpoint;

use crate::shard::Shard;

/// Calls a caller connection makes on the shared leaf connections before it
/// gets its own.
pub const OWN_AFTER: u64 = 64;
/// Topologies with more shards than this keep to the shared leaf
/// connections.
pub const OWN_MAX_SHARDS: usize = 8;

/// One caller connection's own leaf connections, one per replica (and
/// authority) it called. Dropped with the caller connection, which closes
/// them.
#[derive(Default)]
pub struct OwnLeaves {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Calls the caller connection made.
    calls: u64,
    /// Leaf calls were made since the connections were last driven or
    /// sent.
    new_calls: bool,
    clients: Vec<Own>,
}

/// One own leaf connection.
struct Own {
    addr: SocketAddr,
    authority: Authority,
    client: Client,
    /// The replica as the topology knows it now (the latest seen: a rebuilt
    /// topology has new endpoints for the replicas it keeps).
    endpoint: Arc<Endpoint>,
}

impl Own {
    /// Its replica left the topology and no call is on it: it can go.
    fn retired(&self) -> bool {
        self.endpoint.is_removed() && self.client.is_idle()
    }
}

impl std::fmt::Debug for OwnLeaves {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("OwnLeaves")
            .field("calls", &inner.calls)
            .field("connections", &inner.clients.len())
            .finish()
    }
}

impl OwnLeaves {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one call of the caller connection to a topology of `shards`
    /// shards; whether its leaf calls go on the connection's own leaf
    /// connections.
    pub fn take_call(&self, shards: usize) -> bool {
        let mut inner = self.lock();
        inner.calls += 1;
        inner.calls > OWN_AFTER && shards <= OWN_MAX_SHARDS
    }

    /// The connection's own client of replica `ep` of `shard`: the open one,
    /// or a new one (connecting in the background; counted in the replica's
    /// call connections).
    pub fn client(&self, shard: &Shard, ep: &Arc<Endpoint>) -> Client {
        let addr = ep.addr();
        let authority = shard.authority.as_str();
        let mut inner = self.lock();
        inner.new_calls = true;
        let open = inner
            .clients
            .iter_mut()
            .find(|o| o.addr == addr && o.authority.as_str() == authority && !o.client.is_closed());
        if let Some(o) = open {
            if !Arc::ptr_eq(&o.endpoint, ep) {
                o.endpoint = ep.clone();
            }
            return o.client.clone();
        }
        let c = Client::new_local(
            addr,
            authority,
            &ClientConfig::default(),
            Some(ep.metrics().call_connection()),
        );
        inner.clients.push(Own {
            addr,
            authority: shard.authority.clone(),
            client: c.clone(),
            endpoint: ep.clone(),
        });
        c
    }

    /// Drives every own leaf connection (their wakeups go to `cx`); those that
    /// ended (closed, their calls done), and idle ones of replicas that left
    /// the topology, are dropped (which closes them). Whether anything
    /// happened.
    pub fn drive(&self, cx: &mut Context<'_>) -> bool {
        let mut inner = self.lock();
        inner.new_calls = false;
        let mut busy = false;
        inner.clients.retain(|o| match o.client.drive(cx) {
            Rounds::Idle => !o.retired(),
            Rounds::Busy => {
                busy = true;
                true
            }
            Rounds::Finished => false,
        });
        busy
    }

    /// Sends the requests of the leaf calls made since the connections were
    /// last driven or sent (nothing is read). Whether anything was written.
    pub fn send(&self, cx: &mut Context<'_>) -> bool {
        let mut inner = self.lock();
        if !std::mem::take(&mut inner.new_calls) {
            return false;
        }
        let mut wrote = false;
        for o in &inner.clients {
            wrote |= o.client.send(cx);
        }
        wrote
    }
}
