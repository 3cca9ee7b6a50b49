//! The client side of a relayed connection: the preface, the client's
//! frames, new calls, and the response bytes going back to the client.

use super::*;

impl Conn {
    // ---- the client side --------------------------------------------------

    pub(super) fn client_data(&mut self, h: Head, p: &[u8]) -> Result<(), ConnError> {
        let r = wire::unpad(&h, p)?;
        let data = &p[r];
        let padding = h.len - data.len();
        let Some(s) = self.streams.get_mut(&h.stream) else {
            if h.stream == 0 || h.stream > self.state.last_id {
                return Err(ConnError::protocol("DATA on an idle stream"));
            }
            // A stream we already ended: give its bytes back at once.
            self.credit_client(0, h.len);
            return Ok(());
        };
        if s.req_end {
            self.credit_client(0, h.len);
            return Ok(());
        }
        if s.uncredited + data.len() > self.shared.cfg.server.stream_window as usize * 2 {
            return Err(ConnError {
                code: reason::FLOW_CONTROL_ERROR,
                what: "DATA beyond the stream's window",
            });
        }
        s.uncredited += data.len();
        if let Some(rep) = &mut s.replay {
            if rep.len() + data.len() <= REPLAY_LIMIT {
                rep.extend_from_slice(data);
            } else {
                s.replay = None;
            }
        }
        s.to_up.extend_from_slice(data);
        if h.has(flag::END_STREAM) {
            s.req_end = true;
        }
        if padding > 0 {
            self.credit_client(h.stream, padding);
        }
        self.pump_to_up(h.stream);
        Ok(())
    }

    /// Gives `n` client bytes back: to the connection, and to `stream` (0:
    /// only the connection); WINDOW_UPDATEs go out once half a window is due.
    pub(super) fn credit_client(&mut self, stream: u32, n: usize) {
        let cfg = &self.shared.cfg;
        let n = n as u32;
        self.client.credit += n;
        if self.client.credit >= cfg.server.conn_window / 2 {
            put_window_update(&mut self.client.wbuf, 0, self.client.credit);
            self.client.credit = 0;
        }
        if stream != 0 {
            if let Some(s) = self.streams.get_mut(&stream) {
                s.client_credit += n;
                if !s.req_end && s.client_credit >= cfg.server.stream_window / 2 {
                    put_window_update(&mut self.client.wbuf, stream, s.client_credit);
                    s.client_credit = 0;
                }
            }
        }
    }

    pub(super) fn client_headers(&mut self, id: u32, end: bool) -> Result<(), ConnError> {
        let mut list = self.list();
        self.client.dec.decode(&self.client.block, &mut list)?;
        if let Some(s) = self.streams.get_mut(&id) {
            // Request trailers.
            if !end || s.req_end {
                self.give_back(list);
                put_rst(&mut self.client.wbuf, id, reason::PROTOCOL_ERROR);
                if let Some(s) = self.streams.remove(&id) {
                    self.end_stream(id, s, code::INTERNAL, true);
                }
                return Ok(());
            }
            s.req_end = true;
            s.req_trailers = Some(list);
            self.pump_to_up(id);
            return Ok(());
        }
        if id <= self.state.last_id {
            // A stream we ended (or refused) while the client was still
            // sending: its late trailers are decoded (HPACK) and dropped.
            self.give_back(list);
            return Ok(());
        }
        self.state.last_id = id;
        if self.state.goaway_sent
            || self.streams.len() >= self.shared.cfg.server.max_concurrent_streams as usize
        {
            self.give_back(list);
            put_rst(&mut self.client.wbuf, id, reason::REFUSED_STREAM);
            return Ok(());
        }
        let start = Instant::now();
        let path = list.get(b":path").unwrap_or(b"");
        let method = self
            .shared
            .methods
            .get(std::str::from_utf8(path).unwrap_or(""));
        method.request();
        let valid = !path.is_empty()
            && list.get(b":method").is_some_and(|m| !m.is_empty())
            && list.get(b":scheme").is_some();
        let deadline = list
            .get(grpc::GRPC_TIMEOUT.as_bytes())
            .and_then(grpc::parse_timeout_bytes)
            .map(|t| start + t.min(Duration::from_secs(86_400 * 365)));
        let too_big = list.size() > self.shared.cfg.server.max_header_list_size as usize;
        let stream = Stream {
            up: None,
            queued: None,
            endpoint: None,
            method,
            start,
            attempts: 0,
            deadline,
            head: Some(list),
            replay: Some(Vec::new()),
            req_end: end,
            up_end_sent: false,
            to_up: BytesMut::new(),
            req_trailers: None,
            up_window: 0,
            uncredited: 0,
            client_credit: 0,
            head_sent: false,
            head_status: None,
            to_client: BytesMut::new(),
            resp_end: false,
            resp_trailers: None,
            client_window: i64::from(self.client.peer.initial_window_size),
            up_uncredited: 0,
            up_credit: 0,
        };
        self.streams.insert(id, stream);
        if !valid {
            self.answer(
                id,
                code::INTERNAL,
                "mp-lb: request without :method, :scheme or :path",
            );
            return Ok(());
        }
        if too_big {
            let msg = format!(
                "mp-lb: request header list is over the limit of {} bytes",
                self.shared.cfg.server.max_header_list_size
            );
            self.answer(id, code::RESOURCE_EXHAUSTED, &msg);
            return Ok(());
        }
        if let Some(d) = deadline {
            self.deadlines.push(Reverse((d, id)));
            self.arm_timer();
        }
        self.dispatch(id);
        Ok(())
    }

    /// Moves response bytes to the client as its windows allow, then the
    /// trailers; gives the bytes back to the backend as they go.
    pub(super) fn pump_to_client(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let side = &mut self.client;
        let end = s.resp_end && s.resp_trailers.is_none();
        let (moved, ended) = side.send_data(id, &mut s.to_client, &mut s.client_window, end);
        let mut status = None;
        if s.to_client.is_empty() && s.resp_end {
            match s.resp_trailers.take() {
                Some(mut t) => {
                    status = Some(t.get(b"grpc-status").and_then(grpc::parse_status));
                    side.put_headers(id, true, t.iter());
                    t.clear();
                    self.spare.push(t);
                }
                None => {
                    if !ended {
                        put_data(&mut side.wbuf, id, &[], true);
                    }
                    status = Some(s.head_status);
                }
            }
        }
        let up = s.up;
        if moved > 0 {
            let c = moved.min(s.up_uncredited);
            s.up_uncredited -= c;
            if let (Some((ui, uid)), true) = (up, c > 0) {
                self.credit_up(ui, uid, c);
            }
        }
        if let Some(st) = status {
            if let Some(s) = self.streams.remove(&id) {
                self.end_stream(id, s, st.unwrap_or(code::UNKNOWN), false);
            }
        }
    }
}

impl ServerStreams for Conn {
    fn client(&mut self) -> &mut Side {
        &mut self.client
    }

    fn state(&mut self) -> &mut ServerConn {
        &mut self.state
    }

    fn config(&self) -> &ServerConfig {
        &self.shared.cfg.server
    }

    fn name(&self) -> &'static str {
        "mp-lb"
    }

    /// The client is gone: every call is cancelled.
    fn cancel_all(&mut self) {
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            if let Some(mut s) = self.streams.remove(&id) {
                s.req_end = true;
                self.end_stream(id, s, code::CANCELLED, true);
            }
        }
    }

    fn data(&mut self, h: Head, p: &[u8]) -> Result<(), ConnError> {
        self.client_data(h, p)
    }

    fn headers(&mut self, id: u32, end: bool) -> Result<(), ConnError> {
        self.client_headers(id, end)
    }

    fn reset(&mut self, id: u32) -> bool {
        let Some(s) = self.streams.remove(&id) else {
            return false;
        };
        self.end_stream(id, s, code::CANCELLED, true);
        true
    }

    fn windows_moved(&mut self, delta: i64) {
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            if let Some(s) = self.streams.get_mut(&id) {
                s.client_window += delta;
            }
            self.pump_to_client(id);
        }
    }

    fn connection_window_grew(&mut self) {
        let ids: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.to_client.is_empty() || s.resp_end)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.pump_to_client(id);
        }
    }

    fn stream_window_grew(&mut self, id: u32, inc: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.client_window += i64::from(inc);
            self.pump_to_client(id);
        }
    }
}
