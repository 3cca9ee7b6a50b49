//! One end of an HTTP/2 connection as a frame-level engine drives it (`mp-lb`'s
//! relay): the socket, its read and write buffers, the HPACK codecs, the
//! peer's settings and the connection-level flow-control windows. The engine
//! owns the streams; this owns the bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use bytes::BytesMut;
use std::future::Future;

use tokio::io::AsyncWrite;

use crate::grpc;
use crate::hpack::{Decoder, Encoder};
use crate::server::ServerConfig;
use crate::tls::Io;
use crate::wire::{self, flag, kind, put_head, ConnError, Head, Settings, HEAD_LEN};

/// Bytes asked for per read.
pub const READ_CHUNK: usize = 16 * 1024;

/// The largest header block (compressed) a side assembles; past it the
/// connection ends (ENHANCE_YOUR_CALM).
pub const MAX_BLOCK: usize = 1024 * 1024;

/// A hasher for stream ids (small integers): one multiply.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A map keyed by stream id.
pub type Ids<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// What a connection-level frame asks of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Handled here (a PING answered, an acknowledgement): nothing to do.
    Done,
    /// The peer's SETTINGS, applied and acknowledged; its initial stream
    /// window changed by this much (0: unchanged), to apply to every open
    /// stream's send window.
    Settings(i64),
    /// The frame is not a connection-level one: the engine handles it.
    NotMine,
}

/// One end of an HTTP/2 connection: its socket, buffers, header codecs,
/// the peer's settings and the connection-level windows.
pub struct Side {
    /// The socket; `None` while it connects.
    pub io: Option<Io>,
    /// Bytes read and not yet handled (an incomplete frame at most).
    pub rbuf: BytesMut,
    /// Frames to write.
    pub wbuf: Vec<u8>,
    /// Bytes of `wbuf` already written.
    pub wpos: usize,
    /// Decodes the peer's header blocks.
    pub dec: Decoder,
    /// Encodes ours.
    pub enc: Encoder,
    /// The peer's settings.
    pub peer: Settings,
    /// DATA we may still send on the connection.
    pub send_window: i64,
    /// DATA received and passed on, not yet given back (WINDOW_UPDATE).
    pub credit: u32,
    /// A header block in progress: its stream and END_STREAM flag.
    pub cont: Option<(u32, bool)>,
    /// The header block being assembled (HEADERS + CONTINUATION).
    pub block: Vec<u8>,
    /// The read side ended (EOF or error).
    pub eof: bool,
    /// When the engine is done, keep reading (and dropping) what the peer
    /// still sends for a moment after our FIN, so that our last frames (a
    /// GOAWAY naming its error, an HTTP/1 answer) are not lost to the TCP
    /// reset that closing a socket with unread input sends.
    pub linger: bool,
    /// The engine is done: FIN sent; lingering, if at all.
    closing: Option<Option<Pin<Box<tokio::time::Sleep>>>>,
}

impl Side {
    /// A side on `io` (`None` while it connects), with HTTP/2's initial
    /// settings and windows.
    pub fn new(io: Option<Io>) -> Side {
        Side {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            wpos: 0,
            dec: Decoder::new(),
            enc: Encoder::new(),
            peer: Settings::default(),
            send_window: i64::from(wire::DEFAULT_WINDOW),
            credit: 0,
            cont: None,
            block: Vec::new(),
            eof: false,
            linger: false,
            closing: None,
        }
    }

    /// Queues what a client sends first: the connection preface, SETTINGS
    /// (no push; our stream window and frame size) and the connection
    /// window raised to `conn_window`.
    pub fn client_preface(&mut self, stream_window: u32, max_frame_size: u32, conn_window: u32) {
        self.wbuf.extend_from_slice(wire::PREFACE);
        wire::put_settings(
            &mut self.wbuf,
            &[
                (wire::setting::ENABLE_PUSH, 0),
                (wire::setting::INITIAL_WINDOW_SIZE, stream_window),
                (wire::setting::MAX_FRAME_SIZE, max_frame_size),
            ],
        );
        if conn_window > wire::DEFAULT_WINDOW {
            wire::put_window_update(&mut self.wbuf, 0, conn_window - wire::DEFAULT_WINDOW);
        }
    }

    /// Sends what of `pending` the stream's window (`window`) and the
    /// connection's allow, in frames of the peer's size, taking it off
    /// `pending` and both windows. With `end`, the frame that empties
    /// `pending` carries END_STREAM. Returns the bytes sent and whether
    /// END_STREAM went.
    pub fn send_data<B: bytes::Buf + std::ops::Deref<Target = [u8]>>(
        &mut self,
        stream: u32,
        pending: &mut B,
        window: &mut i64,
        end: bool,
    ) -> (usize, bool) {
        let max = i64::from(self.peer.max_frame_size);
        let (mut sent, mut ended) = (0, false);
        while !pending.is_empty() {
            let n = (pending.len() as i64)
                .min(*window)
                .min(self.send_window)
                .min(max);
            if n <= 0 {
                break;
            }
            let n = n as usize;
            let last = end && n == pending.len();
            wire::put_data(&mut self.wbuf, stream, &pending[..n], last);
            pending.advance(n);
            *window -= n as i64;
            self.send_window -= n as i64;
            sent += n;
            ended |= last;
        }
        (sent, ended)
    }

    /// Bytes written to `wbuf` and not yet to the socket.
    pub fn pending_out(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Reads what the socket has. `Ready(Ok(0))`: end of stream.
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Pending;
        };
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK {
            self.rbuf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.rbuf)
    }

    /// Writes what is pending; returns whether anything was written.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let Some(io) = self.io.as_mut() else {
            return Ok(false);
        };
        let mut wrote = false;
        while self.wpos < self.wbuf.len() {
            match Pin::new(&mut *io).poll_write(cx, &self.wbuf[self.wpos..]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.wpos += n;
                    wrote = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        if wrote && !matches!(io, Io::Plain(_)) {
            // TLS keeps records of its own until flushed.
            let _ = Pin::new(&mut *io).poll_flush(cx);
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
            if self.wbuf.capacity() > 256 * 1024 {
                self.wbuf.shrink_to(64 * 1024);
            }
        }
        Ok(wrote)
    }

    /// Appends a header block as HEADERS (and CONTINUATION when it is larger
    /// than the peer's frame size).
    pub fn put_headers<'a>(
        &mut self,
        stream: u32,
        end_stream: bool,
        fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) {
        self.put_header_block(stream, end_stream, |enc, out| {
            enc.begin(out);
            for (n, v) in fields {
                enc.encode(n, v, out);
            }
        });
    }

    /// Appends a header block that `write` encodes (it must begin it, see
    /// [`Encoder::begin`]) as HEADERS (and CONTINUATION when it is
    /// larger than the peer's frame size). For a caller that keeps encoded
    /// blocks to reuse them.
    pub fn put_header_block(
        &mut self,
        stream: u32,
        end_stream: bool,
        write: impl FnOnce(&mut Encoder, &mut Vec<u8>),
    ) {
        let at = self.wbuf.len();
        let end = if end_stream { flag::END_STREAM } else { 0 };
        put_head(
            &mut self.wbuf,
            0,
            kind::HEADERS,
            end | flag::END_HEADERS,
            stream,
        );
        write(&mut self.enc, &mut self.wbuf);
        let len = self.wbuf.len() - at - HEAD_LEN;
        let max = self.peer.max_frame_size as usize;
        if len <= max {
            wire::patch_len(&mut self.wbuf, at, len);
            return;
        }
        let block = self.wbuf.split_off(at + HEAD_LEN);
        self.wbuf.truncate(at);
        let mut chunks = block.chunks(max).peekable();
        let mut first = true;
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            let (k, mut f) = if first {
                (kind::HEADERS, end)
            } else {
                (kind::CONTINUATION, 0)
            };
            if last {
                f |= flag::END_HEADERS;
            }
            put_head(&mut self.wbuf, c.len(), k, f, stream);
            self.wbuf.extend_from_slice(c);
            first = false;
        }
    }

    /// A WINDOW_UPDATE frame, checked (an increment of 0 is a protocol
    /// error). The connection's is applied to `send_window` (`None`); a
    /// stream's increment is returned for the engine to apply.
    pub fn window_update(&mut self, h: &Head, p: &[u8]) -> Result<Option<u32>, ConnError> {
        let inc = wire::window_increment(p)?;
        if inc == 0 {
            return Err(ConnError::protocol("WINDOW_UPDATE of 0"));
        }
        if h.stream == 0 {
            self.send_window += i64::from(inc);
            return Ok(None);
        }
        Ok(Some(inc))
    }

    /// Handles the frames that concern the connection as a whole: SETTINGS
    /// (applied and acknowledged), PING (answered), and checks that nothing
    /// interrupts a header block.
    pub fn control(&mut self, h: &Head, p: &[u8]) -> Result<Control, ConnError> {
        if let Some((id, _)) = self.cont {
            if h.kind != kind::CONTINUATION || h.stream != id {
                return Err(ConnError::protocol("header block interrupted"));
            }
        }
        match h.kind {
            kind::SETTINGS => {
                if h.stream != 0 {
                    return Err(ConnError::protocol("SETTINGS on a stream"));
                }
                if h.has(flag::ACK) {
                    return Ok(Control::Done);
                }
                let delta = self.peer.apply(p)?;
                self.enc.set_peer_table_size(self.peer.header_table_size);
                wire::put_settings_ack(&mut self.wbuf);
                Ok(Control::Settings(delta))
            }
            kind::PING => {
                if h.len != 8 || h.stream != 0 {
                    return Err(ConnError {
                        code: wire::reason::FRAME_SIZE_ERROR,
                        what: "PING length not 8 or on a stream",
                    });
                }
                if !h.has(flag::ACK) {
                    wire::put_ping_ack(&mut self.wbuf, p);
                }
                Ok(Control::Done)
            }
            _ => Ok(Control::NotMine),
        }
    }

    /// Assembles a header block from HEADERS and CONTINUATION frames into
    /// `block`: returns its stream and END_STREAM flag once it is complete.
    pub fn header_frame(&mut self, h: &Head, p: &[u8]) -> Result<Option<(u32, bool)>, ConnError> {
        let (id, end) = if h.kind == kind::HEADERS {
            if h.stream == 0 {
                return Err(ConnError::protocol("HEADERS on stream 0"));
            }
            let r = wire::unpad(h, p)?;
            self.block.clear();
            self.block.extend_from_slice(&p[r]);
            (h.stream, h.has(flag::END_STREAM))
        } else {
            let Some(c) = self.cont else {
                return Err(ConnError::protocol("CONTINUATION without HEADERS"));
            };
            self.block.extend_from_slice(p);
            if self.block.len() > MAX_BLOCK {
                return Err(ConnError {
                    code: wire::reason::ENHANCE_YOUR_CALM,
                    what: "header block over 1 MiB",
                });
            }
            c
        };
        if h.has(flag::END_HEADERS) {
            self.cont = None;
            Ok(Some((id, end)))
        } else {
            self.cont = Some((id, end));
            Ok(None)
        }
    }

    /// A gRPC status of our own (`grpc-message` percent-encoded): trailers-only when no response head went
    /// out yet, else trailers.
    pub fn put_status(&mut self, stream: u32, head_sent: bool, status: u16, msg: &str) {
        let st = status.to_string();
        let msg = grpc::encode_message(msg);
        let mut fields: Vec<(&[u8], &[u8])> = Vec::with_capacity(4);
        if !head_sent {
            fields.push((b":status", b"200"));
            fields.push((b"content-type", grpc::CONTENT_TYPE_GRPC.as_bytes()));
        }
        fields.push((b"grpc-status", st.as_bytes()));
        if !msg.is_empty() {
            fields.push((b"grpc-message", msg.as_bytes()));
        }
        self.put_headers(stream, true, fields.into_iter());
    }
}

/// Why a connection engine stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// At once: no more output (the peer is gone, or is not HTTP/2).
    Now,
    /// Once what is written is flushed (a GOAWAY, an HTTP/1 answer).
    AfterFlush,
}

/// Streams a peer may reset per second before its connection is told to
/// calm down.
pub const MAX_RESETS_PER_SECOND: u32 = 2000;

/// Appends a DATA frame's payload to a message being gathered. The first
/// (mostly the only) payload becomes the buffer at its exact size: growing an
/// empty `BytesMut` costs more than the allocation and copy.
pub fn append(body: &mut BytesMut, data: &[u8]) {
    if body.capacity() == 0 {
        *body = BytesMut::from(data);
    } else {
        body.extend_from_slice(data);
    }
}

/// Counts the streams a peer resets: opening and resetting streams costs it
/// nothing and us a call each ("rapid reset", CVE-2023-44487).
#[derive(Debug)]
pub struct ResetCap {
    since: std::time::Instant,
    count: u32,
}

impl Default for ResetCap {
    fn default() -> Self {
        ResetCap {
            since: std::time::Instant::now(),
            count: 0,
        }
    }
}

impl ResetCap {
    /// Counts one reset; past [`MAX_RESETS_PER_SECOND`] in a second, an
    /// ENHANCE_YOUR_CALM connection error.
    pub fn note(&mut self) -> Result<(), ConnError> {
        let now = std::time::Instant::now();
        if now.duration_since(self.since) > std::time::Duration::from_secs(1) {
            self.since = now;
            self.count = 0;
        }
        self.count += 1;
        if self.count > MAX_RESETS_PER_SECOND {
            return Err(ConnError {
                code: wire::reason::ENHANCE_YOUR_CALM,
                what: "too many streams reset",
            });
        }
        Ok(())
    }
}

/// What a server engine keeps of its client's connection besides the
/// streams.
#[derive(Debug, Default)]
pub struct ServerConn {
    /// The client's connection preface arrived (and our SETTINGS went).
    pub preface: bool,
    /// The highest stream id the client opened.
    pub last_id: u32,
    /// We sent a GOAWAY: new streams are refused.
    pub goaway_sent: bool,
    /// The client sent a GOAWAY: it opens no more streams.
    pub client_goaway: bool,
    /// How the connection ends, once it must.
    pub closing: Option<Close>,
    /// The rapid-reset cap.
    pub resets: ResetCap,
}

impl ServerConn {
    /// Whether the engine is done with `client` (whose streams are all
    /// done when `idle`).
    pub fn finished(&self, client: &Side, idle: bool) -> bool {
        match self.closing {
            Some(Close::Now) => true,
            Some(Close::AfterFlush) => client.pending_out() == 0,
            None => (self.goaway_sent || self.client_goaway) && idle && client.pending_out() == 0,
        }
    }
}

/// How a server connection's input starts ([`Side::server_preface`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preface {
    /// Too few bytes yet to tell.
    Incomplete,
    /// The HTTP/2 preface, consumed; our SETTINGS are queued.
    Http2,
    /// An HTTP/1 request: a plain 505 answer is queued; close once it is
    /// written.
    Http1,
    /// Neither: close now.
    Other,
}

impl Side {
    /// [`Side::server_preface`] as an engine reads it: `Ok(true)` once the
    /// preface is in, `Ok(false)` while incomplete, else how to close.
    pub fn read_server_preface(&mut self, cfg: &ServerConfig, who: &str) -> Result<bool, Close> {
        match self.server_preface(cfg, who) {
            Preface::Incomplete => Ok(false),
            Preface::Http2 => Ok(true),
            Preface::Http1 => {
                self.linger = true;
                Err(Close::AfterFlush)
            }
            Preface::Other => {
                tracing::debug!("not an HTTP/2 client; closing");
                Err(Close::Now)
            }
        }
    }

    /// Checks the client's connection preface at the start of `rbuf`. On
    /// HTTP/2, consumes it and queues our SETTINGS (`cfg`'s stream limit,
    /// windows, frame and header list sizes); an HTTP/1 request line is
    /// answered plainly (505, naming `who`).
    pub fn server_preface(&mut self, cfg: &ServerConfig, who: &str) -> Preface {
        let b = &self.rbuf;
        let n = b.len().min(wire::PREFACE.len());
        if b[..n] == wire::PREFACE[..n] {
            if n < wire::PREFACE.len() {
                return Preface::Incomplete;
            }
            bytes::Buf::advance(&mut self.rbuf, wire::PREFACE.len());
            wire::put_settings(
                &mut self.wbuf,
                &[
                    (
                        wire::setting::MAX_CONCURRENT_STREAMS,
                        cfg.max_concurrent_streams,
                    ),
                    (wire::setting::INITIAL_WINDOW_SIZE, cfg.stream_window),
                    (wire::setting::MAX_FRAME_SIZE, cfg.max_frame_size),
                    (
                        wire::setting::MAX_HEADER_LIST_SIZE,
                        cfg.max_header_list_size,
                    ),
                ],
            );
            if cfg.conn_window > wire::DEFAULT_WINDOW {
                wire::put_window_update(&mut self.wbuf, 0, cfg.conn_window - wire::DEFAULT_WINDOW);
            }
            return Preface::Http2;
        }
        // Not HTTP/2. An HTTP/1 request line gets a plain answer.
        let line_end = b.windows(2).position(|w| w == b"\r\n");
        match line_end {
            None if b.len() < 8192 && !self.eof && b[0].is_ascii_uppercase() => Preface::Incomplete,
            Some(i) if b[..i].ends_with(b" HTTP/1.1") || b[..i].ends_with(b" HTTP/1.0") => {
                let body = format!("{who} speaks HTTP/2 (gRPC); this request was HTTP/1.x\n");
                let res = format!(
                    "HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                self.wbuf.extend_from_slice(res.as_bytes());
                Preface::Http1
            }
            _ => Preface::Other,
        }
    }
}

/// The stream-level work of an engine serving a client's connection
/// (mp-lb's relay, [`h2server`](crate::h2server)); [`server_input`] does
/// the rest: frame boundaries, connection-level frames and every protocol
/// check a server owes its client.
pub trait ServerStreams {
    /// The client's side of the connection.
    fn client(&mut self) -> &mut Side;
    /// The connection's state.
    fn state(&mut self) -> &mut ServerConn;
    /// What we advertise and enforce.
    fn config(&self) -> &ServerConfig;
    /// Who answers (for the HTTP/1 answer), e.g. `mp-lb`.
    fn name(&self) -> &'static str;
    /// DATA on stream `h.stream` (payload `p`, padding included).
    fn data(&mut self, h: Head, p: &[u8]) -> Result<(), ConnError>;
    /// A complete header block of stream `id` is in the client side's
    /// `block`; `end`: it ends the client's side of the stream.
    fn headers(&mut self, id: u32, end: bool) -> Result<(), ConnError>;
    /// The client reset stream `id`; whether it was open (then it counts
    /// against the rapid-reset cap).
    fn reset(&mut self, id: u32) -> bool;
    /// Every stream's send window moved by `delta` (the client's new
    /// initial window): apply it, send what it allows.
    fn windows_moved(&mut self, delta: i64);
    /// The connection's send window grew: send what waits for it.
    fn connection_window_grew(&mut self);
    /// Stream `id`'s send window grew by `inc`.
    fn stream_window_grew(&mut self, id: u32, inc: u32);
    /// The client is gone or broke the protocol: cancel every stream.
    fn cancel_all(&mut self);
}

/// Reads what the client sent and acts on it (the preface first), unless
/// the engine's output is `backed_up`; EOF and read errors cancel every
/// stream, protocol errors end the connection with a GOAWAY naming them.
/// Whether anything happened.
pub fn read_client(e: &mut impl ServerStreams, cx: &mut Context<'_>, backed_up: bool) -> bool {
    if e.state().closing.is_some() || e.client().eof || backed_up {
        return false;
    }
    match e.client().poll_read(cx) {
        Poll::Ready(Ok(0)) => {
            e.client().eof = true;
            if !e.state().preface && !e.client().rbuf.is_empty() {
                if let Err(c) = read_preface(e) {
                    e.state().closing = Some(c);
                }
            }
            if e.state().closing.is_none() {
                e.cancel_all();
                e.state().closing = Some(Close::Now);
            }
        }
        Poll::Ready(Ok(_)) => {
            let ready = e.state().preface
                || match read_preface(e) {
                    Ok(done) => done,
                    Err(c) => {
                        e.state().closing = Some(c);
                        false
                    }
                };
            if ready {
                if let Err(err) = server_input(e) {
                    client_error(e, &err);
                }
            }
        }
        Poll::Ready(Err(err)) => {
            tracing::debug!(error = %err, "client connection failed");
            e.client().eof = true;
            e.cancel_all();
            e.state().closing = Some(Close::Now);
        }
        Poll::Pending => return false,
    }
    true
}

fn read_preface(e: &mut impl ServerStreams) -> Result<bool, Close> {
    let (cfg, name) = (e.config().clone(), e.name());
    let done = e.client().read_server_preface(&cfg, name)?;
    e.state().preface = done;
    Ok(done)
}

/// Starts a graceful end: a GOAWAY naming the last stream the client
/// opened (they finish; newer ones are refused); a client that has not
/// even sent its preface is closed at once.
pub fn start_drain(e: &mut impl ServerStreams) {
    let (preface, sent, last) = {
        let st = e.state();
        (st.preface, st.goaway_sent, st.last_id)
    };
    if !sent && preface {
        wire::put_goaway(&mut e.client().wbuf, last, wire::reason::NO_ERROR, b"");
    }
    e.state().goaway_sent = true;
    if !preface {
        e.state().closing = Some(Close::Now);
    }
}

/// Ends the connection on a protocol error of the client's: a GOAWAY
/// naming it, every stream cancelled, our last bytes flushed (lingering).
pub fn client_error(e: &mut impl ServerStreams, err: &ConnError) {
    tracing::debug!(error = %err, "client connection error");
    let last = e.state().last_id;
    wire::put_goaway(&mut e.client().wbuf, last, err.code, err.what.as_bytes());
    e.state().goaway_sent = true;
    e.cancel_all();
    e.client().linger = true;
    e.state().closing = Some(Close::AfterFlush);
}

/// Handles every complete frame in the client side's read buffer (leaving an
/// incomplete one there); the first protocol error ends it.
pub fn server_input(engine: &mut impl ServerStreams) -> Result<(), ConnError> {
    let buf = std::mem::take(&mut engine.client().rbuf);
    let max = engine.config().max_frame_size as usize;
    let (used, r) = each_frame(&buf, max, |h, p| server_frame(engine, h, p));
    let mut buf = buf;
    bytes::Buf::advance(&mut buf, used);
    engine.client().rbuf = buf;
    r
}

fn server_frame(e: &mut impl ServerStreams, h: Head, p: &[u8]) -> Result<(), ConnError> {
    match e.client().control(&h, p)? {
        Control::Done | Control::Settings(0) => return Ok(()),
        Control::Settings(delta) => {
            e.windows_moved(delta);
            return Ok(());
        }
        Control::NotMine => {}
    }
    match h.kind {
        kind::DATA => e.data(h, p),
        kind::HEADERS | kind::CONTINUATION => {
            if h.kind == kind::HEADERS && h.stream % 2 == 0 {
                return Err(ConnError::protocol("HEADERS on an even stream id"));
            }
            match e.client().header_frame(&h, p)? {
                Some((id, end)) => e.headers(id, end),
                None => Ok(()),
            }
        }
        kind::RST_STREAM => {
            wire::rst_code(p)?;
            if e.reset(h.stream) {
                e.state().resets.note()?;
            }
            Ok(())
        }
        kind::GOAWAY => {
            wire::goaway(p)?;
            e.state().client_goaway = true;
            Ok(())
        }
        kind::WINDOW_UPDATE => {
            match e.client().window_update(&h, p)? {
                None => e.connection_window_grew(),
                Some(inc) => e.stream_window_grew(h.stream, inc),
            }
            Ok(())
        }
        kind::PUSH_PROMISE => Err(ConnError::protocol("PUSH_PROMISE from a client")),
        // PRIORITY is advice we do not take; unknown types are ignored.
        _ => Ok(()),
    }
}

/// A connection engine driven by [`poll_engine`]: one task owning its
/// sockets, working in rounds.
pub trait Engine {
    /// One round: read what is there, act on it, write what is due (every
    /// source polled, so each registers its wakeup). Whether anything
    /// happened.
    fn round(&mut self, cx: &mut Context<'_>) -> bool;
    /// True when the engine is done.
    fn finished(&self) -> bool;
    /// The side to shut down (FIN, TLS close_notify) when done.
    fn main_side(&mut self) -> &mut Side;
}

/// Rounds of work per wakeup before an engine yields to other tasks.
const ROUNDS: usize = 32;

/// How long a side that [lingers](Side::linger) reads after its FIN.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// What [`run_rounds`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounds {
    /// Nothing was there to do.
    Idle,
    /// Frames were read or written, calls started or answered.
    Busy,
    /// The engine is finished.
    Finished,
}

/// Runs rounds of `engine` until nothing happens or it is finished, yielding
/// after 32 busy rounds (its task is woken to come back) so other
/// connections get their turn.
pub fn run_rounds(engine: &mut impl Engine, cx: &mut Context<'_>) -> Rounds {
    let mut seen = Rounds::Idle;
    for _ in 0..ROUNDS {
        let busy = engine.round(cx);
        if engine.finished() {
            return Rounds::Finished;
        }
        if !busy {
            return seen;
        }
        seen = Rounds::Busy;
    }
    cx.waker().wake_by_ref();
    seen
}

/// Polls `engine` as its task's future: rounds until nothing happens
/// (Pending) or it is finished (Ready, its main side shut down and, if it
/// lingers, the peer's last bytes read).
pub fn poll_engine(engine: &mut impl Engine, cx: &mut Context<'_>) -> Poll<()> {
    if engine.main_side().closing.is_some() {
        return engine.main_side().poll_close(cx);
    }
    match run_rounds(engine, cx) {
        Rounds::Finished => {
            let side = engine.main_side();
            side.closing = Some(None);
            side.poll_close(cx)
        }
        Rounds::Idle | Rounds::Busy => Poll::Pending,
    }
}

impl Side {
    /// Ends the connection: FIN (TLS: close_notify) after our last bytes,
    /// then, when lingering, reads until the peer's EOF or [`LINGER`].
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(());
        };
        let first = matches!(self.closing, Some(None));
        if first {
            let _ = Pin::new(&mut *io).poll_shutdown(cx);
            if !self.linger || self.eof {
                return Poll::Ready(());
            }
            let mut t = Box::pin(tokio::time::sleep(LINGER));
            let _ = t.as_mut().poll(cx);
            self.closing = Some(Some(t));
        }
        loop {
            self.rbuf.clear();
            match self.poll_read(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => break,
            }
        }
        match &mut self.closing {
            Some(Some(t)) => t.as_mut().poll(cx),
            _ => Poll::Ready(()),
        }
    }
}

/// Calls `f` on every complete frame at the start of `buf`, refusing frames
/// over `max_frame` bytes. Returns the bytes used (complete frames handled)
/// and the first error.
pub fn each_frame(
    buf: &[u8],
    max_frame: usize,
    mut f: impl FnMut(Head, &[u8]) -> Result<(), ConnError>,
) -> (usize, Result<(), ConnError>) {
    let mut pos = 0;
    loop {
        if buf.len() - pos < HEAD_LEN {
            return (pos, Ok(()));
        }
        let h = Head::parse(&buf[pos..]);
        if h.len > max_frame {
            return (
                pos,
                Err(ConnError {
                    code: wire::reason::FRAME_SIZE_ERROR,
                    what: "frame larger than SETTINGS_MAX_FRAME_SIZE",
                }),
            );
        }
        if buf.len() - pos < HEAD_LEN + h.len {
            return (pos, Ok(()));
        }
        let p = &buf[pos + HEAD_LEN..pos + HEAD_LEN + h.len];
        pos += HEAD_LEN + h.len;
        if let Err(e) = f(h, p) {
            return (pos, Err(e));
        }
    }
}

/// A header block kept to be written again: the same fields encoded while
/// the encoder's table is unchanged give the same bytes, so a block sent on
/// every call (a reply's head, its trailers, a request head shared by calls)
/// is encoded once, not once per call.
#[derive(Debug, Default)]
pub struct KeptBlock {
    generation: u64,
    bytes: Vec<u8>,
    valid: bool,
}

impl KeptBlock {
    /// Writes the block of `fields` to `out` (after [`Encoder::begin`]): the
    /// kept bytes while they are still valid, else the fields encoded anew
    /// (and kept when encoding them changed nothing in the table).
    pub fn write<'a>(
        &mut self,
        enc: &mut Encoder,
        out: &mut Vec<u8>,
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) {
        if self.valid && enc.reusable(self.generation) {
            out.extend_from_slice(&self.bytes);
            return;
        }
        let (at, generation) = (out.len(), enc.generation());
        for (n, v) in fields {
            enc.encode(n, v, out);
        }
        self.valid = enc.reusable(generation);
        if self.valid {
            self.generation = generation;
            self.bytes.clear();
            self.bytes.extend_from_slice(&out[at..]);
        }
    }

    /// Forgets the kept bytes (the fields change).
    pub fn clear(&mut self) {
        self.valid = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hpack::HeaderList;

    #[test]
    fn append_gathers_payloads_in_order() {
        let mut body = BytesMut::new();
        append(&mut body, b"");
        append(&mut body, b"one");
        assert_eq!(&body[..], b"one");
        assert_eq!(body.capacity(), 3, "the first payload at its exact size");
        append(&mut body, b", two");
        append(&mut body, b"");
        assert_eq!(&body[..], b"one, two");
    }

    #[test]
    fn a_kept_block_is_written_again_only_while_the_table_stands() {
        let fields: [(&[u8], &[u8]); 2] = [(b":status", b"200"), (b"x-kept", b"yes")];
        let mut enc = Encoder::new();
        let mut dec = Decoder::new();
        let mut kept = KeptBlock::default();
        let mut blocks = Vec::new();
        for round in 0..4 {
            if round == 3 {
                // The peer shrinks its table: what was kept refers to
                // entries that are gone.
                enc.set_peer_table_size(0);
            }
            let mut out = Vec::new();
            enc.begin(&mut out);
            kept.write(&mut enc, &mut out, fields);
            let mut list = HeaderList::new();
            dec.decode(&out, &mut list).unwrap();
            assert_eq!(list.get(b"x-kept"), Some(&b"yes"[..]), "round {round}");
            blocks.push(out);
        }
        // Indexed from the second block on, and that block kept and reused.
        assert_ne!(blocks[0], blocks[1]);
        assert_eq!(blocks[1], blocks[2]);
        assert_ne!(blocks[2], blocks[3]);
    }

    #[test]
    fn frames_are_cut_at_their_boundaries_and_random_bytes_never_panic() {
        let mut buf = Vec::new();
        wire::put_ping_ack(&mut buf, b"12345678");
        wire::put_data(&mut buf, 1, b"hello", true);
        let whole = buf.len();
        buf.extend_from_slice(&[0, 0, 9, 0, 0, 0, 0, 0, 1, 1, 2]); // incomplete
        let mut seen = Vec::new();
        let (used, r) = each_frame(&buf, 16_384, |h, p| {
            seen.push((h.kind, p.len()));
            Ok(())
        });
        assert!(r.is_ok());
        assert_eq!(used, whole, "the incomplete frame waits");
        assert_eq!(seen, [(kind::PING, 8), (kind::DATA, 5)]);
        let (used, r) = each_frame(&[1, 0, 0, 0, 0, 0, 0, 0, 1], 16_384, |_, _| Ok(()));
        assert_eq!(
            (used, r.unwrap_err().code),
            (0, wire::reason::FRAME_SIZE_ERROR)
        );

        // A header block over HEADERS + CONTINUATION is assembled whole;
        // anything between its frames breaks the connection.
        let mut side = Side::new(None);
        let mut frames = Vec::new();
        wire::put_head(&mut frames, 2, kind::HEADERS, flag::END_STREAM, 1);
        frames.extend_from_slice(&[0x83, 0x86]);
        wire::put_head(&mut frames, 1, kind::CONTINUATION, flag::END_HEADERS, 1);
        frames.push(0x84);
        let mut done = Vec::new();
        let (_, r) = each_frame(&frames, 16_384, |h, p| {
            side.control(&h, p)?;
            if let Some(b) = side.header_frame(&h, p)? {
                done.push(b);
            }
            Ok(())
        });
        assert!(r.is_ok());
        assert_eq!(done, [(1, true)]);
        assert_eq!(side.block, [0x83, 0x86, 0x84]);
        let mut side = Side::new(None);
        let open = Head {
            len: 1,
            kind: kind::HEADERS,
            flags: 0,
            stream: 3,
        };
        assert_eq!(side.header_frame(&open, &[0x82]).unwrap(), None);
        let ping = Head {
            len: 8,
            kind: kind::PING,
            flags: 0,
            stream: 0,
        };
        assert!(
            side.control(&ping, b"12345678").is_err(),
            "PING inside a block"
        );
        let other = Head {
            kind: kind::CONTINUATION,
            stream: 5,
            ..open
        };
        assert!(
            side.control(&other, &[0x82]).is_err(),
            "another stream's CONTINUATION"
        );

        // Random input through the frame loop and a side's handlers.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for i in 0..5_000 {
            let bytes: Vec<u8> = (0..(9 + i % 80))
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 32) as u8
                })
                .collect();
            let mut side = Side::new(None);
            let _ = each_frame(&bytes, 1 << 24, |h, p| {
                side.control(&h, p)?;
                if h.kind == kind::HEADERS || h.kind == kind::CONTINUATION {
                    side.header_frame(&h, p)?;
                }
                Ok(())
            });
        }
    }
}
