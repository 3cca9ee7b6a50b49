//! How calls and connections end: answers of our own, deadlines,
//! keepalive, drain, and the poll loop that drives a connection.

use super::*;

impl Conn {
    // ---- ending calls ----------------------------------------------------------

    /// Answers stream `id` with a status of our own, resetting its backend
    /// stream.
    pub(super) fn answer(&mut self, id: u32, status: u16, msg: &str) {
        let Some(mut s) = self.streams.remove(&id) else {
            return;
        };
        s.to_client.clear();
        self.client.put_status(id, s.head_sent, status, msg);
        self.end_stream(id, s, status, true);
    }

    /// Records the end of a call and frees its backend stream.
    pub(super) fn end_stream(&mut self, id: u32, s: Stream, status: u16, reset_up: bool) {
        let elapsed = s.start.elapsed();
        match &s.endpoint {
            Some(ep) => ep.record(status, elapsed),
            None => {
                self.shared.local.request();
                self.shared.local.response(status, elapsed);
            }
        }
        s.method.response(status, elapsed);
        let freed = s.up.map(|(ui, _)| ui);
        if let Some((ui, uid)) = s.up {
            if let Some(up) = self.ups[ui].as_mut() {
                up.streams.remove(&uid);
                if reset_up || !s.up_end_sent {
                    put_rst(&mut up.side.wbuf, uid, reason::CANCEL);
                }
                // Bytes of theirs we hold no more: give them back.
                let held = s.to_client.len();
                if held > 0 {
                    up.side.credit += held as u32;
                }
            }
        }
        // The client is done with a stream we ended early: stop its sending.
        if !s.req_end && status != code::CANCELLED {
            put_rst(&mut self.client.wbuf, id, reason::NO_ERROR);
        }
        if !s.to_up.is_empty() {
            self.client.credit += s.to_up.len() as u32;
        }
        if let Some(h) = s.head {
            self.give_back(h);
        }
        if let Some(ui) = freed {
            self.release(ui);
        }
        // Deadlines of ended calls linger in the heap until due: sweep them
        // when they outnumber the calls (long deadlines, many calls).
        if self.deadlines.len() > 2 * self.streams.len() + 64 {
            let streams = &self.streams;
            self.deadlines.retain(|Reverse((at, id))| {
                streams.get(id).is_some_and(|s| s.deadline == Some(*at))
            });
        }
    }

    // ---- deadlines and shutdown -------------------------------------------------

    pub(super) fn arm_timer(&mut self) {
        let Some(Reverse((at, _))) = self.deadlines.peek() else {
            self.timer = None;
            return;
        };
        match &mut self.timer {
            Some(t) if t.deadline() == *at => {}
            Some(t) => t.as_mut().reset(*at),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(*at))),
        }
    }

    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, id))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if self
                .streams
                .get(&id)
                .is_some_and(|s| s.deadline == Some(at))
            {
                self.answer(id, code::DEADLINE_EXCEEDED, DEADLINE_MSG);
            }
        }
        self.arm_timer();
    }

    /// A keepalive tick: a backend connection with calls that said nothing
    /// since the last tick gets a PING; one that did not answer the last
    /// PING either is closed.
    pub(super) fn keepalive_tick(&mut self) {
        for ui in 0..self.ups.len() {
            let Some(up) = self.ups[ui].as_mut() else {
                continue;
            };
            if up.streams.is_empty() || !up.connected {
                up.pinged = false;
                continue;
            }
            if std::mem::take(&mut up.heard) {
                up.pinged = false;
            } else if !up.pinged {
                up.pinged = true;
                wire::put_ping(&mut up.side.wbuf, *b"mp-lb\0\0\0");
            } else {
                let why = format!(
                    "no answer to a PING within {:?}",
                    self.shared.cfg.keepalive * 2
                );
                warn!(endpoint = %up.endpoint.addr(), "backend silent; closing its connection: {why}");
                self.up_closed(ui, &why);
            }
        }
    }

    /// The drain signal, call deadlines and the keepalive tick.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> bool {
        let mut busy = false;
        if self.drain.poll(cx) {
            side::start_drain(self);
            busy = true;
        }
        if let Some(t) = &mut self.timer {
            if t.as_mut().poll(cx).is_ready() {
                self.expire();
                busy = true;
            }
        }
        let every = self.shared.cfg.keepalive;
        if let Some(t) = &mut self.keepalive {
            if t.as_mut().poll(cx).is_ready() {
                t.as_mut().reset(Instant::now() + every);
                self.keepalive_tick();
                busy = true;
            }
        } else if !every.is_zero() && self.ups.iter().flatten().any(|u| !u.streams.is_empty()) {
            let mut t = Box::pin(tokio::time::sleep(every));
            // Registers the timer with this task.
            let _ = t.as_mut().poll(cx);
            self.keepalive = Some(t);
        }
        busy
    }

    /// Finishes connects, reads what the backends sent and acts on it.
    fn read_backends(&mut self, cx: &mut Context<'_>) -> bool {
        let mut busy = false;
        let client_backed_up = self.client.pending_out() > WRITE_HIGH;
        for ui in 0..self.ups.len() {
            let Some(up) = self.ups[ui].as_mut() else {
                continue;
            };
            if let Some(c) = &mut up.connecting {
                match c.as_mut().poll(cx) {
                    Poll::Pending => continue,
                    Poll::Ready(Ok(io)) => {
                        up.connecting = None;
                        up.connected = true;
                        up.side.io = Some(io);
                        up._counted = Some(up.endpoint.metrics().call_connection());
                        busy = true;
                    }
                    Poll::Ready(Err(e)) => {
                        busy = true;
                        let why = format!("cannot connect: {e}");
                        self.up_closed(ui, &why);
                        continue;
                    }
                }
            }
            if client_backed_up {
                continue;
            }
            match up.side.poll_read(cx) {
                Poll::Ready(Ok(0)) => {
                    busy = true;
                    self.up_closed(ui, "connection closed");
                }
                Poll::Ready(Ok(_)) => {
                    busy = true;
                    up.heard = true;
                    if let Err(e) = self.up_input(ui) {
                        if let Some(up) = self.ups[ui].as_mut() {
                            warn!(endpoint = %up.endpoint.addr(), error = %e, "backend broke the protocol; closing its connection");
                            put_goaway(&mut up.side.wbuf, 0, e.code, e.what.as_bytes());
                            let _ = up.side.poll_flush(cx);
                        }
                        self.up_closed(ui, &format!("protocol error: {e}"));
                    }
                }
                Poll::Ready(Err(e)) => {
                    busy = true;
                    self.up_closed(ui, &format!("connection failed: {e}"));
                }
                Poll::Pending => {}
            }
        }
        busy
    }

    /// Writes what is due to every socket; drops backend connections that
    /// went away and carry nothing.
    fn flush_all(&mut self, cx: &mut Context<'_>) -> bool {
        let mut busy = false;
        for ui in 0..self.ups.len() {
            let Some(up) = self.ups[ui].as_mut() else {
                continue;
            };
            match up.side.poll_flush(cx) {
                Ok(w) => busy |= w,
                Err(e) => {
                    busy = true;
                    self.up_closed(ui, &format!("write failed: {e}"));
                    continue;
                }
            }
            // A backend connection that went away and has no calls left.
            let up = self.ups[ui].as_ref().expect("live");
            if up.streams.is_empty()
                && up.waiting.is_empty()
                && (up.goaway.is_some() || up.side.eof)
            {
                self.ups[ui] = None;
            }
        }
        match self.client.poll_flush(cx) {
            Ok(w) => busy |= w,
            Err(e) => {
                debug!(error = %e, "writing to the client failed");
                self.cancel_all();
                self.state.closing = Some(Close::Now);
                busy = true;
            }
        }
        busy
    }
}

impl Engine for Conn {
    /// One round: read what is there, act on it, write what is due.
    /// Returns whether anything happened.
    fn round(&mut self, cx: &mut Context<'_>) -> bool {
        // Every part runs every round: each registers its wakeups.
        let timers = self.poll_timers(cx);
        // Reading the client waits while any output it would feed is
        // backed up.
        let backed_up = self.client.pending_out() > WRITE_HIGH
            || self
                .ups
                .iter()
                .flatten()
                .any(|u| u.side.pending_out() > WRITE_HIGH);
        let client = side::read_client(self, cx, backed_up);
        let backends = self.read_backends(cx);
        let written = self.flush_all(cx);
        timers || client || backends || written
    }

    fn finished(&self) -> bool {
        self.state.finished(&self.client, self.streams.is_empty())
    }

    fn main_side(&mut self) -> &mut Side {
        &mut self.client
    }
}

impl Future for Conn {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        side::poll_engine(self.get_mut(), cx)
    }
}
