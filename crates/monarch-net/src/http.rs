//! HTTP boot: images and per-machine iPXE scripts, on axum, with a zero-copy path for
//! whole files.
//!
//! Routes:
//! - `GET /ipxe/{mac}.ipxe` (`mac` as `52-54-00-12-34-56` or with `:`; also `default.ipxe`):
//!   the machine's iPXE script from the [`Catalog`](crate::catalog::Catalog). This is the URL the DHCP service hands
//!   to iPXE clients.
//! - `GET`/`HEAD /{path}`: the file `path` under the root, with Content-Length, `Range`
//!   requests by RFC 9110's rules ([`monarch_proto::http`]: one satisfiable range 206 +
//!   Content-Range; several, an unknown unit, a bad syntax or an `If-Range` that does not
//!   match 200 with the whole file; 416 when none is satisfiable), Last-Modified/ETag.
//!   Confined to the root: `..` and absolute paths are refused (403) before the file system
//!   is touched, and a symlink that leads out of the root is refused (403) after resolving.
//!
//! Two paths serve these. Every connection's first request head is read here: a plain
//! whole-file `GET`/`HEAD` (HTTP/1.1, no `Range`, no conditional headers, no body, nothing
//! pipelined behind it) of a file that resolves inside the root is answered directly with
//! `sendfile(2)` — the file's pages go from the page cache to the socket without passing
//! through this process, which is what nginx does and what hyper cannot (its bodies are
//! buffers). Anything else (scripts, ranges, errors, odd requests) goes to axum with the
//! bytes already read put back in front of the stream, and tower-http's `ServeFile` answers
//! files there. Measured on loopback with curl and a 1 GiB file, servers alternated round by
//! round on a shared 2-core machine (`tests/http_interop.rs::measure_against_nginx`):
//! `ServeFile` alone 0.5–0.9× nginx depending on its chunk (best at 256 KiB) and the load;
//! the sendfile path 0.8–1.2×, i.e. nginx's speed within the noise; and with the polling
//! described in the `sendfile` module ([`DEFAULT_SPIN`]), 0.82–1.24× in `monarch bench
//! netboot` (12 of 14 figures at or above 1).
//! The fast path sends `application/octet-stream` and Last-Modified but no ETag; boot
//! clients need neither.
//!
//! Slow clients: a request head must be complete within [`HEAD_DEADLINE`] of when the server
//! starts waiting for it (one deadline for the whole head, on both paths: the fast path's
//! own, hyper's `header_read_timeout` behind it), and a write that makes no progress for
//! [`SEND_STALL`] closes the connection (sendfile and axum bodies alike), so a client can
//! hold a socket and an open file only as long as it reads. Both are [`HttpConfig`] fields;
//! a connection cut off this way is reported as [`HttpEvent::Dropped`].

use crate::EventSink;
use crate::catalog::{PathError, SharedCatalog, resolve_in};
use crate::sendfile::{is_send_stall, sendfile_to};
use crate::spin::SpinSlots;
use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use monarch_proto::http::{RangeAnswer, Validators};
use monarch_proto::mac::Mac;
use serde::Serialize;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tower_http::services::ServeFile;

/// Read chunk for file bodies served by axum (ranges; whole files when `zero_copy` is off).
/// tower-http's default 64 KiB costs a thread-pool round trip per 64 KiB; 256 KiB measured
/// best here (see the module doc).
pub const DEFAULT_CHUNK: usize = 256 << 10;

/// Longest request head read by the fast path; longer heads go to axum (which refuses them).
const MAX_HEAD: usize = 16 << 10;
/// How long a connection may take to send a whole request head, counted from when the
/// server starts waiting for it (so an idle keep-alive connection counts too). One
/// deadline for the whole head, not per read: a client trickling a header line every few
/// seconds is cut off like one that sends nothing.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(10);
/// How long a write to a client may make no progress before the connection is closed: a
/// client that stops reading would otherwise hold its socket and open file for ever.
pub const SEND_STALL: Duration = Duration::from_secs(30);

/// Where and what to serve.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Listen address (`0.0.0.0:8080`, `127.0.0.1:0` for an ephemeral port…).
    pub bind: SocketAddr,
    /// Directory whose files are served.
    pub root: PathBuf,
    /// Boot instructions for `/ipxe/{mac}.ipxe`.
    pub catalog: SharedCatalog,
    /// Read chunk for file bodies served by axum ([`DEFAULT_CHUNK`]).
    pub chunk: usize,
    /// Serve plain whole-file requests with `sendfile` (default true; the bench turns it
    /// off to show what it buys).
    pub zero_copy: bool,
    /// Deadline for a whole request head ([`HEAD_DEADLINE`]), counted from when the server
    /// starts waiting for it: so it is also how long an idle keep-alive connection stays
    /// open.
    pub head_deadline: Duration,
    /// Longest a write may make no progress ([`SEND_STALL`]).
    pub send_stall: Duration,
    /// How long a fast-path transfer polls its socket for room before it sleeps (zero:
    /// never poll). See [`DEFAULT_SPIN`].
    pub spin: Duration,
    /// Fast-path transfers that may poll at the same time; the others sleep from the start.
    /// Default: one less than the cores (at least one).
    pub max_spinning: usize,
}

/// How long a fast-path transfer polls for room in its socket before it sleeps, keeping at
/// most 256 KiB queued unsent meanwhile (the `sendfile` module says why). Measured with
/// curl over loopback: 30 µs gave a lower rate, 250 µs the same; not polling at all 0.9×
/// nginx's rate where this gives 1.1× (docs/performance.md). The price is the polling core
/// while a transfer runs, which is why the number of polling transfers is capped
/// ([`HttpConfig::max_spinning`]) and a transfer whose socket stays full for the whole
/// budget 8 times in a row (a client slower than this machine can feed) sleeps as before,
/// polling again only now and then.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(DEFAULT_SPIN_MICROS);
/// [`DEFAULT_SPIN`] in microseconds (the command line's unit).
pub const DEFAULT_SPIN_MICROS: u64 = 100;

impl HttpConfig {
    /// A config with the defaults (zero-copy on, [`DEFAULT_CHUNK`]).
    pub fn new(bind: SocketAddr, root: impl Into<PathBuf>, catalog: impl Into<SharedCatalog>) -> HttpConfig {
        HttpConfig {
            bind,
            root: root.into(),
            catalog: catalog.into(),
            chunk: DEFAULT_CHUNK,
            zero_copy: true,
            head_deadline: HEAD_DEADLINE,
            send_stall: SEND_STALL,
            spin: DEFAULT_SPIN,
            max_spinning: crate::spin::default_max_spinning(),
        }
    }
}

/// What the HTTP service reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HttpEvent {
    /// A request was answered; emitted when its body has been handed to the connection in full
    /// or the client went away (then `bytes` is what was handed over).
    Served {
        /// Client address.
        peer: SocketAddr,
        /// `GET`, `HEAD`…
        method: String,
        /// Request path as sent.
        path: String,
        /// Status code.
        status: u16,
        /// Body bytes handed to the connection.
        bytes: u64,
        /// From the request to the last body byte.
        millis: u64,
        /// Sent with `sendfile` (the fast path) rather than through axum.
        zero_copy: bool,
    },
    /// A connection was closed because its client was too slow: its request head was not
    /// complete within the head deadline, or a write made no progress for the send stall.
    Dropped {
        /// Client address.
        peer: SocketAddr,
        /// Which limit it hit.
        reason: String,
    },
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The root is not a directory.
    #[error("HTTP root {root}: {error}: create the directory or pass another root")]
    Root {
        /// As given.
        root: PathBuf,
        /// The I/O error.
        error: io::Error,
    },
    /// The address cannot be bound.
    #[error("cannot listen for HTTP on {addr}: {error}: choose another address/port or stop what uses it")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        error: io::Error,
    },
}

struct Shared {
    root: PathBuf,
    catalog: SharedCatalog,
    chunk: usize,
    zero_copy: bool,
    local: SocketAddr,
    head_deadline: Duration,
    send_stall: Duration,
    /// The fast path's polling ([`HttpConfig::spin`], [`HttpConfig::max_spinning`]).
    spinning: SpinSlots,
    events: EventSink<HttpEvent>,
}

/// A bound, not yet running HTTP boot service.
pub struct HttpServer {
    listener: tokio::net::TcpListener,
    cfg: HttpConfig,
    root: PathBuf,
    local: SocketAddr,
}

impl HttpServer {
    /// Check the root and bind the listener (so [`HttpServer::local_addr`] is known before
    /// [`HttpServer::run`]).
    pub async fn bind(cfg: HttpConfig) -> Result<HttpServer, HttpError> {
        let root = std::fs::canonicalize(&cfg.root)
            .and_then(|r| if r.is_dir() { Ok(r) } else { Err(io::Error::other("not a directory")) })
            .map_err(|error| HttpError::Root { root: cfg.root.clone(), error })?;
        let listener = tokio::net::TcpListener::bind(cfg.bind)
            .await
            .map_err(|error| HttpError::Bind { addr: cfg.bind, error })?;
        let local = listener.local_addr().map_err(|error| HttpError::Bind { addr: cfg.bind, error })?;
        Ok(HttpServer { listener, cfg, root, local })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serve until the task is dropped. Connections already accepted run in their own tasks
    /// and finish their current transfer.
    pub async fn run(self, events: EventSink<HttpEvent>) -> io::Result<()> {
        let shared = Arc::new(Shared {
            root: self.root,
            catalog: self.cfg.catalog,
            chunk: self.cfg.chunk.max(4096),
            zero_copy: self.cfg.zero_copy,
            local: self.local,
            head_deadline: self.cfg.head_deadline,
            send_stall: self.cfg.send_stall,
            spinning: SpinSlots::new(self.cfg.spin, self.cfg.max_spinning),
            events,
        });
        let (tx, rx) = mpsc::channel(64);
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        tokio::select! {
            () = serve_handed_off(rx, app, shared.clone()) => Ok(()),
            r = accept_loop(self.listener, shared, tx) => r,
        }
    }
}

/// Serve the connections the fast path hands over with hyper's HTTP/1, whose request heads
/// get the same deadline as the fast path's (`header_read_timeout`, which runs from when
/// hyper starts waiting for a head, keep-alive idle time included).
async fn serve_handed_off(mut rx: mpsc::Receiver<(Rewind, SocketAddr)>, app: axum::Router, st: Arc<Shared>) {
    while let Some((io, peer)) = rx.recv().await {
        let app = app.clone().layer(Extension(Peer(peer)));
        let st = st.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(st.head_deadline)
                .serve_connection(
                    hyper_util::rt::TokioIo::new(io),
                    hyper_util::service::TowerToHyperService::new(app),
                );
            if let Err(e) = conn.await {
                let stalled = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<io::Error>())
                    .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut);
                if e.is_timeout() {
                    (st.events)(HttpEvent::Dropped { peer, reason: head_late(st.head_deadline) });
                } else if stalled {
                    (st.events)(HttpEvent::Dropped { peer, reason: send_stalled(st.send_stall) });
                }
            }
        });
    }
}

fn head_late(d: Duration) -> String {
    format!("request head not complete within {d:?} (the head deadline)")
}

fn send_stalled(d: Duration) -> String {
    format!("the client read nothing for {d:?} (the send stall)")
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    st: Arc<Shared>,
    tx: mpsc::Sender<(Rewind, SocketAddr)>,
) -> io::Result<()> {
    loop {
        let (stream, peer) = crate::accept(&listener).await;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, peer, st.clone(), tx.clone()));
    }
}

/// The client's address, for handlers behind the hand-off.
#[derive(Clone, Copy, Debug)]
struct Peer(SocketAddr);

/// A TCP stream with bytes already read from it put back in front.
/// (Hand-written: hyper-util's `Rewind` is private; this is a few delegating lines.)
/// Writes that make no progress for `stall` fail with `TimedOut`, which ends the connection.
struct Rewind {
    prefix: Vec<u8>,
    pos: usize,
    inner: TcpStream,
    stall: Duration,
    /// Armed while a write waits; reset by every write that makes progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Rewind {
    fn new(prefix: Vec<u8>, inner: TcpStream, stall: Duration) -> Rewind {
        Rewind { prefix, pos: 0, inner, stall, stalled: None }
    }

    /// `r`, the result of a write-side poll, with the stall timer applied.
    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let stall = self.stall;
                let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, send_stalled(stall))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        if me.pos < me.prefix.len() {
            let n = buf.remaining().min(me.prefix.len() - me.pos);
            buf.put_slice(&me.prefix[me.pos..me.pos + n]);
            me.pos += n;
            if me.pos == me.prefix.len() {
                me.prefix = Vec::new();
                me.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request the fast path answers itself.
struct Plain {
    file: PathBuf,
    head: bool,
    keep_alive: bool,
    path: String,
}

/// One connection: answer plain whole-file requests with sendfile for as long as they come,
/// hand the connection to axum at the first request that is anything else.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    st: Arc<Shared>,
    tx: mpsc::Sender<(Rewind, SocketAddr)>,
) {
    let mut buf = Vec::with_capacity(2048);
    loop {
        let deadline = tokio::time::Instant::now() + st.head_deadline;
        let head_len = match read_head(&mut stream, &mut buf, deadline).await {
            Ok(Some(n)) => Some(n),
            Ok(None) => None,
            Err(late) => {
                if late {
                    (st.events)(HttpEvent::Dropped { peer, reason: head_late(st.head_deadline) });
                }
                return; // closed, or too slow
            }
        };
        let plain = if st.zero_copy { head_len.and_then(|n| plain_request(&st, &buf, n)) } else { None };
        let Some(plain) = plain else {
            let _ = tx.send((Rewind::new(buf, stream, st.send_stall), peer)).await;
            return;
        };
        match send_file(&mut stream, &plain, &st).await {
            Ok((bytes, complete, start, stalled)) => {
                if stalled {
                    (st.events)(HttpEvent::Dropped { peer, reason: send_stalled(st.send_stall) });
                }
                (st.events)(HttpEvent::Served {
                    peer,
                    method: if plain.head { "HEAD" } else { "GET" }.into(),
                    path: plain.path,
                    status: 200,
                    bytes,
                    millis: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                    zero_copy: true,
                });
                if !complete || !plain.keep_alive {
                    let _ = stream.shutdown().await;
                    return;
                }
                buf.clear();
            }
            // The file vanished between resolving and opening: let axum say so.
            Err(()) => {
                let _ = tx.send((Rewind::new(buf, stream, st.send_stall), peer)).await;
                return;
            }
        }
    }
}

/// Read until a whole request head is in `buf`: `Ok(Some(head length))`; `Ok(None)` when
/// the head is too long (axum will refuse it); `Err(late)` when the peer closed, or (`true`)
/// the head was not complete by `deadline`.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: tokio::time::Instant,
) -> Result<Option<usize>, bool> {
    let mut scanned = 0usize;
    loop {
        if let Some(p) = buf[scanned.saturating_sub(3)..].windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(scanned.saturating_sub(3) + p + 4));
        }
        scanned = buf.len();
        if buf.len() >= MAX_HEAD {
            return Ok(None);
        }
        buf.reserve(2048);
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(false),
            Err(_) => return Err(true),
        }
    }
}

/// The request in `buf[..head_len]`, if it is one the fast path may answer alone.
fn plain_request(st: &Shared, buf: &[u8], head_len: usize) -> Option<Plain> {
    if buf.len() != head_len {
        return None; // pipelined bytes behind the head: let hyper deal with them
    }
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(buf), Ok(httparse::Status::Complete(n)) if n == head_len) {
        return None;
    }
    let head = match req.method? {
        "GET" => false,
        "HEAD" => true,
        _ => return None,
    };
    if req.version? != 1 {
        return None;
    }
    let mut keep_alive = true;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "range"
            | "if-range"
            | "if-match"
            | "if-none-match"
            | "if-modified-since"
            | "if-unmodified-since"
            | "transfer-encoding"
            | "expect"
            | "upgrade" => return None,
            "content-length" if h.value != b"0" => return None,
            "connection" => {
                keep_alive &= !String::from_utf8_lossy(h.value).to_ascii_lowercase().contains("close");
            }
            _ => {}
        }
    }
    let raw = req.path?;
    let path = raw.split(['?', '#']).next()?.to_string();
    let rel = path.strip_prefix('/')?;
    if rel.starts_with("ipxe/") {
        return None;
    }
    let file = resolve_in(&st.root, &percent_decode(rel)?).ok()?;
    Some(Plain { file, head, keep_alive, path })
}

/// Answer `plain` with a 200 head and `sendfile`: (body bytes sent, whether all were, start,
/// whether the client stopped reading for `stall`). `Err` only when nothing was sent yet
/// (the file could not be opened).
async fn send_file(
    stream: &mut TcpStream,
    plain: &Plain,
    st: &Shared,
) -> Result<(u64, bool, Instant, bool), ()> {
    let stall = st.send_stall;
    let start = Instant::now();
    let file = std::fs::File::open(&plain.file).map_err(|_| ())?;
    let meta = file.metadata().map_err(|_| ())?;
    let size = meta.len();
    let modified =
        meta.modified().map(|t| format!("last-modified: {}\r\n", http_date(t))).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 200 OK\r\ndate: {}\r\ncontent-type: application/octet-stream\r\ncontent-length: {size}\r\n\
         accept-ranges: bytes\r\n{modified}{}\r\n",
        http_date(std::time::SystemTime::now()),
        if plain.keep_alive { "" } else { "connection: close\r\n" }
    );
    match tokio::time::timeout(stall, stream.write_all(head.as_bytes())).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Ok((0, false, start, false)),
        Err(_) => return Ok((0, false, start, true)),
    }
    if plain.head {
        return Ok((0, true, start, false));
    }
    match sendfile_to(stream, &file, 0, size, stall, &st.spinning.take()).await {
        Ok(n) => Ok((n, n == size, start, false)),
        Err((n, e)) => Ok((n, false, start, is_send_stall(&e))),
    }
}

async fn handle(
    State(st): State<Arc<Shared>>,
    Extension(Peer(peer)): Extension<Peer>,
    req: Request,
) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let resp = route(&st, req).await;
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let mut done = Done { events: st.events.clone(), peer, method, path, status, bytes: 0, start };
    // Count what is handed to the connection; the event fires when the body is dropped, i.e.
    // after the last byte or when the client went away.
    let body = Body::from_stream(body.into_data_stream().map(move |chunk| {
        // `&mut done` moves the whole guard into the closure (edition 2024 would otherwise
        // capture only the `bytes` field, and the event would fire at once).
        let done = &mut done;
        if let Ok(b) = &chunk {
            done.bytes += b.len() as u64;
        }
        chunk
    }));
    Response::from_parts(parts, body)
}

struct Done {
    events: EventSink<HttpEvent>,
    peer: SocketAddr,
    method: String,
    path: String,
    status: u16,
    bytes: u64,
    start: Instant,
}

impl Drop for Done {
    fn drop(&mut self) {
        (self.events)(HttpEvent::Served {
            peer: self.peer,
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
            status: self.status,
            bytes: self.bytes,
            millis: u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX),
            zero_copy: false,
        });
    }
}

fn text(status: StatusCode, msg: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], msg + "\n").into_response()
}

async fn route(st: &Shared, req: Request) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served here".into());
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let raw = req.uri().path();
    if let Some(name) = raw.strip_prefix("/ipxe/").and_then(|n| n.strip_suffix(".ipxe")) {
        return ipxe(st, &req, name);
    }
    let Some(rel) = percent_decode(raw.trim_start_matches('/')) else {
        return text(StatusCode::BAD_REQUEST, format!("{raw}: malformed percent-encoding in the path"));
    };
    let file = match resolve_in(&st.root, &rel) {
        Ok(f) => f,
        Err(e @ (PathError::NotRelative | PathError::Outside)) => {
            return text(
                StatusCode::FORBIDDEN,
                format!("/{rel}: refused: {e}; ask for a file inside the boot root"),
            );
        }
        Err(e @ (PathError::Missing | PathError::NotAFile | PathError::Catalog)) => {
            return text(StatusCode::NOT_FOUND, format!("/{rel}: {e} in the boot root"));
        }
        Err(PathError::Io(e)) => return text(StatusCode::FORBIDDEN, format!("/{rel}: {e}")),
    };
    let req = apply_range_rules(req, &file);
    match ServeFile::new(&file).with_buf_chunk_size(st.chunk).try_call(req).await {
        Ok(r) => r.map(Body::new),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            text(StatusCode::NOT_FOUND, format!("/{rel}: no such file in the boot root"))
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("/{rel}: cannot read: {e}")),
    }
}

/// Decide a `Range` request by RFC 9110's rules ([`monarch_proto::http::decide`]) and
/// rewrite it so `ServeFile` (which ignores `If-Range`, refuses several ranges and unknown
/// units with 416) answers that: no `Range` for a 200, one canonical range for a 206, the
/// original field for a 416. `If-Range` is always removed once decided.
fn apply_range_rules(mut req: Request, file: &std::path::Path) -> Request {
    let headers = req.headers_mut();
    let range = headers.get(header::RANGE).map(|v| v.to_str().unwrap_or("\u{0}").to_string());
    let if_range = headers.remove(header::IF_RANGE).map(|v| v.to_str().unwrap_or("\u{0}").to_string());
    let Some(range) = range else { return req };
    let Ok(meta) = std::fs::metadata(file) else { return req }; // ServeFile says what is wrong
    let size = meta.len();
    let mtime = meta.modified().ok();
    let etag = mtime.and_then(|t| etag_of(size, t));
    let last_modified = mtime.map(http_date);
    // A date is a strong validator once the file has not changed for a second (RFC 9110
    // §8.8.2.2): within its second, two versions could share it.
    let date_is_strong = mtime
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age >= Duration::from_secs(1));
    let v = Validators { etag: etag.as_deref(), last_modified: last_modified.as_deref(), date_is_strong };
    match monarch_proto::http::decide(Some(&range), if_range.as_deref(), size, v) {
        RangeAnswer::Whole => {
            headers.remove(header::RANGE);
        }
        RangeAnswer::Part { first, last } => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes={first}-{last}")) {
                headers.insert(header::RANGE, v);
            }
        }
        RangeAnswer::Unsatisfiable => {}
    }
    req
}

/// The `ETag` tower-http's `ServeFile` sends for a file of `size` bytes modified at `t`
/// (`"SECS.NANOS-SIZE"` in hex; `http_interop.rs` checks that the two agree), so `If-Range`
/// is compared with the tag the client was given.
fn etag_of(size: u64, t: std::time::SystemTime) -> Option<String> {
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(format!("\"{:x}.{:08x}-{size:x}\"", d.as_secs(), d.subsec_nanos()))
}

fn ipxe(st: &Shared, req: &Request, name: &str) -> Response {
    let mac = if name == "default" {
        None
    } else {
        match name.parse::<Mac>() {
            Ok(m) => Some(m),
            Err(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("{name} is not a MAC address: ask for /ipxe/52-54-00-12-34-56.ipxe"),
                );
            }
        }
    };
    // File URLs in the script point back at the address the client used (its Host header,
    // when it looks like a host[:port]; else our own address).
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|c| c.is_ascii_alphanumeric() || b".-:[]".contains(&c)))
        .map_or_else(|| st.local.to_string(), str::to_string);
    let catalog = st.catalog.get();
    match catalog.ipxe_script(mac, &format!("http://{host}")) {
        Some(s) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], s).into_response(),
        None => text(
            StatusCode::NOT_FOUND,
            format!(
                "no boot instructions for {name}: add [machine.\"{}\"] or a [default] with a kernel or an image to {}",
                mac.map_or_else(|| "52:54:00:12:34:56".into(), |m| m.to_string()),
                catalog.root().join(crate::catalog::CATALOG_FILE).display()
            ),
        ),
    }
}

/// `t` as an HTTP date (IMF-fixdate, RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
/// (Hand-written: the civil-from-days conversion is a few lines; `httpdate` is not a
/// dependency of this crate.)
fn http_date(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (non-negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let wd = WD[usize::try_from(days % 7).unwrap_or(0)];
    let mon = MON[usize::try_from(month - 1).unwrap_or(0)];
    format!("{wd}, {day:02} {mon} {year} {:02}:{:02}:{:02} GMT", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Decode `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
/// (Hand-written: a dozen lines; `percent-encoding` is not a dependency of this crate. The
/// decoded path then goes through the same lexical and canonical checks as any other, so
/// `%2e%2e/` is refused like `../`.)
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            // from_str_radix alone would accept a sign (`%+1`).
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::{http_date, percent_decode};
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn http_dates() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        // RFC 9110's example.
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(4_107_542_399)),
            "Sun, 28 Feb 2100 23:59:59 GMT"
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%2e%2E/x").as_deref(), Some("../x"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%+1"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%C3%BC").as_deref(), Some("ü"));
    }
}
