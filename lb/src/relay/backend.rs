//! The backend side: placing calls on backend connections (opened on first
//! use, limited by each backend's stream limit), the backends' frames, and
//! calls a backend did not take sent elsewhere.

use super::*;

impl Conn {
    // ---- sending calls to backends ------------------------------------------

    /// Sends stream `id` to the next available endpoint (again, when a
    /// backend refused it).
    pub(super) fn dispatch(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.attempts += 1;
        if s.attempts > MAX_ATTEMPTS {
            let msg = format!(
                "mp-lb: backends refused the call unprocessed {MAX_ATTEMPTS} times; giving up"
            );
            self.answer(id, code::UNAVAILABLE, &msg);
            return;
        }
        let pool = &self.shared.pool;
        let Some(ep) = pool.pick() else {
            let msg = format!("mp-lb: {}", pool.describe());
            self.answer(id, code::UNAVAILABLE, &msg);
            return;
        };
        ep.metrics().request();
        s.endpoint = Some(ep.clone());
        self.place(id, &ep);
    }

    /// Puts stream `id` on a connection to `ep`: sent at once when one has
    /// room, else queued on one until it has.
    pub(super) fn place(&mut self, id: u32, ep: &Arc<Endpoint>) {
        let ui = self.up_for(ep);
        let up = self.ups[ui].as_mut().expect("up_for returns a live slot");
        if up.settled && up.has_room() && up.waiting.is_empty() {
            self.send_on(ui, id);
        } else {
            up.waiting.push_back(id);
            if let Some(s) = self.streams.get_mut(&id) {
                s.queued = Some(ui);
            }
        }
    }

    /// Opens stream `id` on backend connection `ui` (which has room).
    pub(super) fn send_on(&mut self, ui: usize, id: u32) {
        let up = self.ups[ui].as_mut().expect("live");
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let uid = up.next_id;
        up.next_id += 2;
        up.streams.insert(uid, id);
        s.queued = None;
        s.up = Some((ui, uid));
        s.up_window = i64::from(up.side.peer.initial_window_size);
        s.up_end_sent = false;
        let end = s.req_end && s.to_up.is_empty() && s.req_trailers.is_none();
        if let Some(head) = &s.head {
            up.side.put_headers(uid, end, head.iter());
        }
        if end {
            s.up_end_sent = true;
        }
        self.pump_to_up(id);
    }

    /// Sends what waits on backend connection `ui` as far as it has room;
    /// a connection that can take no more calls hands its queue on.
    pub(super) fn release(&mut self, ui: usize) {
        loop {
            let Some(up) = self.ups[ui].as_mut() else {
                return;
            };
            if up.waiting.is_empty() {
                return;
            }
            if !up.usable() {
                // Going away: its queue goes to other connections.
                let waiting: Vec<u32> = up.waiting.drain(..).collect();
                let ep = up.endpoint.clone();
                for id in waiting {
                    if self.streams.get(&id).is_some_and(|s| s.queued == Some(ui)) {
                        self.place(id, &ep);
                    }
                }
                return;
            }
            if !up.settled || !up.has_room() {
                return;
            }
            let id = up.waiting.pop_front().expect("not empty");
            if self.streams.get(&id).is_some_and(|s| s.queued == Some(ui)) {
                self.send_on(ui, id);
            }
        }
    }

    /// The backend's first SETTINGS arrived on `ui`: what fits goes; the
    /// rest is spread over more connections (up to a limit per endpoint).
    pub(super) fn settled(&mut self, ui: usize) {
        self.release(ui);
        let Some(up) = self.ups[ui].as_mut() else {
            return;
        };
        let rest: Vec<u32> = up.waiting.drain(..).collect();
        let ep = up.endpoint.clone();
        for id in rest {
            if let Some(s) = self.streams.get_mut(&id) {
                if s.queued == Some(ui) {
                    s.queued = None;
                    self.place(id, &ep);
                }
            }
        }
    }

    /// A connection to `ep` for one more call: one with room, else one still
    /// starting (its calls wait for the backend's SETTINGS), else a new one,
    /// else (at the limit per endpoint) the one with the shortest queue.
    pub(super) fn up_for(&mut self, ep: &Arc<Endpoint>) -> usize {
        let addr = ep.addr();
        let pool = usize::from(self.shared.cfg.conns_per_endpoint.max(1));
        let mut count = 0;
        let mut with_room = Vec::new();
        let mut starting = None;
        let mut shortest: Option<(usize, usize)> = None;
        for (i, u) in self.ups.iter().enumerate() {
            let Some(u) = u else { continue };
            if u.endpoint.addr() != addr || !u.usable() {
                continue;
            }
            count += 1;
            if u.waiting.is_empty() && u.settled && u.has_room() {
                with_room.push(i);
            } else if !u.settled && u.waiting.len() < ASSUMED_STREAMS {
                starting.get_or_insert(i);
            }
            if shortest.is_none_or(|(_, n)| u.waiting.len() < n) {
                shortest = Some((i, u.waiting.len()));
            }
        }
        // Calls take the endpoint's connections in turn, opening them up to
        // the pool size; past it, more only when all are at their limit.
        if count >= pool || starting.is_some() {
            if !with_room.is_empty() {
                self.turn = self.turn.wrapping_add(1);
                return with_room[self.turn % with_room.len()];
            }
            if let Some(i) = starting {
                return i;
            }
        }
        if let (Some((i, _)), true) = (shortest, count >= MAX_UPS_PER_ENDPOINT.max(pool)) {
            return i;
        }
        let cfg = &self.shared.cfg;
        let tls = cfg.backend_tls.clone();
        let limit = cfg.connect_timeout;
        let connecting: Connecting = Box::pin(mp_sidecar::tls::dial(addr, tls, limit));
        let mut side = Side::new(None);
        side.client_preface(
            cfg.server.stream_window,
            cfg.server.max_frame_size,
            cfg.server.conn_window,
        );
        let up = Up {
            side,
            endpoint: ep.clone(),
            connecting: Some(connecting),
            connected: false,
            next_id: 1,
            streams: Ids::default(),
            goaway: None,
            settled: false,
            waiting: VecDeque::new(),
            heard: false,
            pinged: false,
            _counted: None,
        };
        match self.ups.iter().position(Option::is_none) {
            Some(i) => {
                self.ups[i] = Some(up);
                i
            }
            None => {
                self.ups.push(Some(up));
                self.ups.len() - 1
            }
        }
    }

    /// Moves request bytes to the backend as its windows allow; gives them
    /// back to the client as they go.
    pub(super) fn pump_to_up(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let Some((ui, uid)) = s.up else { return };
        let Some(up) = self.ups[ui].as_mut() else {
            return;
        };
        let side = &mut up.side;
        let end = s.req_end && s.req_trailers.is_none();
        let (moved, ended) = side.send_data(uid, &mut s.to_up, &mut s.up_window, end);
        s.up_end_sent |= ended;
        if s.to_up.is_empty() && s.req_end && !s.up_end_sent {
            match s.req_trailers.take() {
                Some(mut t) => {
                    side.put_headers(uid, true, t.iter());
                    t.clear();
                    self.spare.push(t);
                }
                None => put_data(&mut side.wbuf, uid, &[], true),
            }
            s.up_end_sent = true;
        }
        if moved > 0 {
            let c = moved.min(s.uncredited);
            s.uncredited -= c;
            if c > 0 {
                self.credit_client(id, c);
            }
        }
    }

    // ---- the backend side ----------------------------------------------------

    pub(super) fn up_input(&mut self, ui: usize) -> Result<(), ConnError> {
        let Some(up) = self.ups[ui].as_mut() else {
            return Ok(());
        };
        let buf = std::mem::take(&mut up.side.rbuf);
        let max = self.shared.cfg.server.max_frame_size as usize;
        let (used, r) = side::each_frame(&buf, max, |h, p| self.up_frame(ui, h, p));
        let mut buf = buf;
        buf.advance(used);
        if let Some(up) = self.ups[ui].as_mut() {
            up.side.rbuf = buf;
        }
        r
    }

    pub(super) fn up_frame(&mut self, ui: usize, h: Head, p: &[u8]) -> Result<(), ConnError> {
        let up = self.ups[ui].as_mut().expect("live");
        match up.side.control(&h, p)? {
            Control::Done => return Ok(()),
            Control::Settings(delta) => {
                let first = !up.settled;
                up.settled = true;
                if delta != 0 {
                    let ids: Vec<u32> = up.streams.values().copied().collect();
                    for id in ids {
                        if let Some(s) = self.streams.get_mut(&id) {
                            s.up_window += delta;
                        }
                        self.pump_to_up(id);
                    }
                }
                if first {
                    self.settled(ui);
                } else {
                    // The stream limit may have grown.
                    self.release(ui);
                }
                return Ok(());
            }
            Control::NotMine => {}
        }
        match h.kind {
            kind::DATA => {
                let r = wire::unpad(&h, p)?;
                let data = &p[r];
                let padding = h.len - data.len();
                let Some(&id) = up.streams.get(&h.stream) else {
                    self.credit_up(ui, 0, h.len);
                    return Ok(());
                };
                let Some(s) = self.streams.get_mut(&id) else {
                    self.credit_up(ui, 0, h.len);
                    return Ok(());
                };
                if s.resp_end || !s.head_sent {
                    return Err(ConnError::protocol(
                        "DATA before the response head or after its end",
                    ));
                }
                s.up_uncredited += data.len();
                s.to_client.extend_from_slice(data);
                if h.has(flag::END_STREAM) {
                    s.resp_end = true;
                }
                if padding > 0 {
                    self.credit_up(ui, h.stream, padding);
                }
                self.pump_to_client(id);
                Ok(())
            }
            kind::HEADERS | kind::CONTINUATION => match up.side.header_frame(&h, p)? {
                Some((uid, end)) => self.up_headers(ui, uid, end),
                None => Ok(()),
            },
            kind::RST_STREAM => {
                let rc = wire::rst_code(p)?;
                if let Some(id) = up.streams.remove(&h.stream) {
                    self.up_stream_failed(id, rc == reason::REFUSED_STREAM, || {
                        format!("reset the stream ({})", reason::name(rc))
                    });
                    self.release(ui);
                }
                Ok(())
            }
            kind::GOAWAY => {
                let (last, rc) = wire::goaway(p)?;
                debug!(endpoint = %up.endpoint.addr(), last, reason = reason::name(rc), "backend sent GOAWAY");
                up.goaway = Some(up.goaway.map_or(last, |l| l.min(last)));
                let refused: Vec<(u32, u32)> = up
                    .streams
                    .iter()
                    .filter(|(uid, _)| **uid > last)
                    .map(|(u, c)| (*u, *c))
                    .collect();
                for (uid, id) in refused {
                    if let Some(up) = self.ups[ui].as_mut() {
                        up.streams.remove(&uid);
                    }
                    self.up_stream_failed(id, true, || "went away (GOAWAY)".into());
                }
                self.release(ui);
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                let inc = wire::window_increment(p)?;
                if h.stream == 0 {
                    up.side.send_window += i64::from(inc);
                    let ids: Vec<u32> = up.streams.values().copied().collect();
                    for id in ids {
                        self.pump_to_up(id);
                    }
                } else if let Some(&id) = up.streams.get(&h.stream) {
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.up_window += i64::from(inc);
                    }
                    self.pump_to_up(id);
                }
                Ok(())
            }
            kind::PUSH_PROMISE => Err(ConnError::protocol("PUSH_PROMISE though push is off")),
            _ => Ok(()),
        }
    }

    pub(super) fn credit_up(&mut self, ui: usize, uid: u32, n: usize) {
        let cfg = &self.shared.cfg;
        let Some(up) = self.ups[ui].as_mut() else {
            return;
        };
        let n = n as u32;
        up.side.credit += n;
        if up.side.credit >= cfg.server.conn_window / 2 {
            put_window_update(&mut up.side.wbuf, 0, up.side.credit);
            up.side.credit = 0;
        }
        if uid != 0 {
            if let Some(s) = up.streams.get(&uid).and_then(|id| self.streams.get_mut(id)) {
                s.up_credit += n;
                if !s.resp_end && s.up_credit >= cfg.server.stream_window / 2 {
                    put_window_update(&mut up.side.wbuf, uid, s.up_credit);
                    s.up_credit = 0;
                }
            }
        }
    }

    pub(super) fn up_headers(&mut self, ui: usize, uid: u32, end: bool) -> Result<(), ConnError> {
        let mut list = self.list();
        let up = self.ups[ui].as_mut().expect("live");
        up.side.dec.decode(&up.side.block, &mut list)?;
        let Some(&id) = up.streams.get(&uid) else {
            self.give_back(list);
            return Ok(());
        };
        let Some(s) = self.streams.get_mut(&id) else {
            self.give_back(list);
            return Ok(());
        };
        if !s.head_sent {
            s.head_sent = true;
            // The backend took the call: it is never sent again.
            let head = s.head.take();
            s.replay = None;
            s.head_status = list.get(b"grpc-status").and_then(grpc::parse_status);
            self.client.put_headers(id, end, list.iter());
            self.give_back(list);
            if let Some(h) = head {
                self.give_back(h);
            }
            if end {
                if let Some(s) = self.streams.remove(&id) {
                    let st = s.head_status.unwrap_or(code::UNKNOWN);
                    self.end_stream(id, s, st, false);
                }
            }
            return Ok(());
        }
        if !end {
            return Err(ConnError::protocol("trailers without END_STREAM"));
        }
        s.resp_end = true;
        s.resp_trailers = Some(list);
        self.pump_to_client(id);
        Ok(())
    }

    /// A backend stream ended without a response: sent to another endpoint
    /// when the backend did not process it and the request can be replayed,
    /// else answered UNAVAILABLE.
    pub(super) fn up_stream_failed(
        &mut self,
        id: u32,
        unprocessed: bool,
        why: impl FnOnce() -> String,
    ) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let ep = s.endpoint.clone();
        s.up = None;
        if unprocessed && !s.head_sent {
            if let Some(rep) = &s.replay {
                s.to_up.clear();
                s.to_up.extend_from_slice(rep);
                s.up_end_sent = false;
                if let Some(ep) = &ep {
                    debug!(endpoint = %ep.addr(), "call refused unprocessed; trying the next endpoint");
                }
                self.dispatch(id);
                return;
            }
        }
        let addr = ep
            .as_ref()
            .map(|e| e.addr().to_string())
            .unwrap_or_default();
        let msg = if s.head_sent {
            format!("mp-lb: backend {addr} stream failed: {}", why())
        } else {
            format!("mp-lb: backend {addr} failed: {}", why())
        };
        self.answer(id, code::UNAVAILABLE, &msg);
    }

    /// Ends every call of backend connection `ui`, which closed (or never
    /// opened): calls it did not take go to other endpoints.
    pub(super) fn up_closed(&mut self, ui: usize, why: &str) {
        let Some(up) = self.ups[ui].take() else {
            return;
        };
        let never = !up.connected;
        if !up.streams.is_empty() {
            debug!(endpoint = %up.endpoint.addr(), streams = up.streams.len(), "backend connection closed: {why}");
        }
        // Calls that waited for room were never sent: another try.
        for id in up.waiting.iter().copied() {
            if let Some(s) = self.streams.get_mut(&id) {
                if s.queued == Some(ui) {
                    s.queued = None;
                    self.dispatch(id);
                }
            }
        }
        let mut ids: Vec<(u32, u32)> = up.streams.iter().map(|(u, c)| (*u, *c)).collect();
        ids.sort_unstable();
        for (uid, id) in ids {
            let unprocessed = never || up.goaway.is_some_and(|l| uid > l);
            self.up_stream_failed(id, unprocessed, || why.to_string());
        }
    }
}
