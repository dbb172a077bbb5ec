//! The Redfish service of a supervised chassis, over HTTPS: routing, authentication (Basic,
//! and sessions from `SessionService/Sessions`), privileges, and the actions, which go to the
//! supervisor as the control socket's requests do (`monarch reboot`, `shutdown`, `startup`,
//! `power`), with the same negotiation, deadlines and deferrals.

use super::journal::{Entry, Journal};
use super::tls;
use super::tree::{self, Info, ROOT};
use super::users::{Role, Users};
use super::{RedfishError, RedfishOptions};
use crate::supervise::control::{Incoming, Reply, Request};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

/// A session not used for this long ends (`SessionService.SessionTimeout`).
const SESSION_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Sessions open at once; a new one beyond is refused until some end.
const MAX_SESSIONS: usize = 64;

/// Sessions one user may have open; that user's least recently used one is closed to make
/// room (never another user's).
const MAX_SESSIONS_PER_USER: usize = 16;

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 256;

/// Password hash checks at once (each takes tens of milliseconds and MiBs): a flood of wrong
/// passwords waits here instead of taking threads and memory from the supervisor.
const HASHING: usize = 2;

/// Hash checks waiting for their turn; one more is answered 503 at once.
const HASHING_QUEUE: usize = 64;

/// How long a client may take to send a request's head, or its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request body read (a reset, a log-in).
const MAX_BODY: usize = 64 << 10;

/// How long a TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Who is asking.
#[derive(Debug, Clone)]
struct Caller {
    user: String,
    role: Role,
}

struct Session {
    id: String,
    user: String,
    role: Role,
    last: Instant,
}

#[derive(Default)]
struct Sessions {
    next: u64,
    by_token: HashMap<String, Session>,
}

struct Service {
    info: Info,
    users: Arc<Users>,
    sessions: Mutex<Sessions>,
    journal: Arc<Journal>,
    ctl: Mutex<mpsc::Sender<Incoming>>,
    deadline: Duration,
    hashing: Hasher,
}

/// A password check for the hashing threads: the name, the password, where the answer goes.
type HashJob = (String, String, tokio::sync::oneshot::Sender<Option<Role>>);

/// The threads that check passwords, [`HASHING`] of them for the life of the service: a
/// flood of wrong passwords queues here (and is refused when the queue is full) instead of
/// taking threads and memory from the supervisor; each thread reuses its memory for every
/// hash.
#[derive(Clone)]
struct Hasher {
    jobs: mpsc::SyncSender<HashJob>,
}

impl Hasher {
    fn start(users: Arc<Users>) -> std::io::Result<Hasher> {
        let (jobs, rx) = mpsc::sync_channel::<HashJob>(HASHING_QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for k in 0..HASHING {
            let (rx, users) = (rx.clone(), users.clone());
            std::thread::Builder::new().name(format!("redfish-hash{k}")).spawn(move || {
                loop {
                    let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok((name, given, answer)) = job else { return };
                    let _ = answer.send(users.check(&name, &given));
                }
            })?;
        }
        Ok(Hasher { jobs })
    }
}

/// A request the supervisor refused or could not carry out.
struct Refused {
    status: StatusCode,
    message_id: &'static str,
    message: String,
}

impl Refused {
    fn new(status: StatusCode, message_id: &'static str, message: impl Into<String>) -> Refused {
        Refused { status, message_id, message: message.into() }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(tree::error(self.message_id, &self.message))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"monarch\""));
        }
        r
    }
}

type Answer = Result<Response, Refused>;

fn doc(v: Value) -> Answer {
    Ok(axum::Json(v).into_response())
}

impl Service {
    /// A request to the supervisor, answered: its body and the progress lines on the way.
    fn ask(&self, request: Request) -> Result<(Value, Vec<String>), Refused> {
        let (tx, rx) = mpsc::channel();
        let stopping = || {
            Refused::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceShuttingDown", "the supervisor is stopping")
        };
        self.ctl
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(Incoming { request, reply: tx })
            .map_err(|_| stopping())?;
        let mut lines = Vec::new();
        for r in rx {
            match r {
                Reply::Progress { line } => lines.push(line),
                Reply::Event { .. } => {}
                Reply::Done { ok: true, body, .. } => return Ok((body, lines)),
                Reply::Done { ok: false, error, .. } => {
                    let why = error.unwrap_or_else(|| "refused".into());
                    if why.contains("shutting down") {
                        return Err(Refused::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "ServiceShuttingDown",
                            why,
                        ));
                    }
                    lines.insert(0, why);
                    return Err(Refused::new(StatusCode::CONFLICT, "OperationFailed", lines.join("; ")));
                }
            }
        }
        Err(stopping())
    }

    fn status(&self, history: bool) -> Result<Value, Refused> {
        self.ask(Request::Status { id: None, history }).map(|(b, _)| b)
    }

    fn processor(&self, id: &str, history: bool) -> Result<Value, Refused> {
        if !self.info.systems.iter().any(|s| s == id) {
            return Err(missing(&format!("{ROOT}/Systems/{id}")));
        }
        let (body, _) = self.ask(Request::Status { id: Some(id.into()), history })?;
        body["processors"].get(0).cloned().ok_or_else(|| missing(&format!("{ROOT}/Systems/{id}")))
    }

    /// Who a session's token says is asking (`None`: no token given).
    fn session_caller(&self, headers: &HeaderMap) -> Option<Result<Caller, Refused>> {
        let token = headers.get("x-auth-token")?;
        let token = token.to_str().unwrap_or_default();
        let mut s = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        s.prune();
        Some(match s.by_token.get_mut(token) {
            Some(v) => {
                v.last = Instant::now();
                Ok(Caller { user: v.user.clone(), role: v.role })
            }
            None => Err(unauthorized("no such session (it ended, or timed out): log in again")),
        })
    }

    fn log_in(&self, user: &str, role: Role) -> Result<(String, String), Refused> {
        let mut raw = [0u8; 24];
        getrandom::fill(&mut raw).map_err(|e| {
            Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "GeneralError",
                format!("no randomness for a session token: {e}"),
            )
        })?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut s = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        s.prune();
        let oldest_of_mine = {
            let mine: Vec<(&String, Instant)> =
                s.by_token.iter().filter(|(_, v)| v.user == user).map(|(k, v)| (k, v.last)).collect();
            (mine.len() >= MAX_SESSIONS_PER_USER)
                .then(|| mine.iter().min_by_key(|(_, last)| *last).map(|(k, _)| (*k).clone()))
                .flatten()
        };
        if let Some(oldest) = oldest_of_mine {
            s.by_token.remove(&oldest);
        }
        if s.by_token.len() >= MAX_SESSIONS {
            return Err(Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SessionLimitExceeded",
                format!(
                    "{MAX_SESSIONS} sessions are open: log out of one (DELETE its session) or wait until one times out"
                ),
            ));
        }
        s.next += 1;
        let id = s.next.to_string();
        s.by_token
            .insert(token.clone(), Session { id: id.clone(), user: user.into(), role, last: Instant::now() });
        Ok((id, token))
    }
}

impl Sessions {
    /// Forget the sessions that timed out.
    fn prune(&mut self) {
        self.by_token.retain(|_, v| v.last.elapsed() < SESSION_TIMEOUT);
    }
}

fn unauthorized(m: &str) -> Refused {
    Refused::new(StatusCode::UNAUTHORIZED, "NoValidSession", m)
}

/// Whether `name` has password `given`, and its role: from the cache at once, else by the
/// hashing threads (503 when their queue is full).
async fn password(svc: &Arc<Service>, name: &str, given: &str) -> Result<Option<Role>, Refused> {
    if let Some(role) = svc.users.cached(name, given) {
        return Ok(Some(role));
    }
    let busy = || {
        Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceTemporarilyUnavailable",
            "too many password checks at once: try again in a few seconds",
        )
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    svc.hashing.jobs.try_send((name.to_string(), given.to_string(), tx)).map_err(|_| busy())?;
    rx.await.map_err(|_| busy())
}

/// Who is asking: a session's token, or Basic credentials.
async fn caller(svc: &Arc<Service>, headers: &HeaderMap) -> Result<Caller, Refused> {
    if let Some(c) = svc.session_caller(headers) {
        return c;
    }
    let Some(auth) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "credentials required: Basic authentication, or a session's X-Auth-Token (POST /redfish/v1/SessionService/Sessions)",
        ));
    };
    let (name, given) = basic(auth)
        .ok_or_else(|| unauthorized("unreadable Authorization header: Basic credentials expected"))?;
    match password(svc, &name, &given).await? {
        Some(role) => Ok(Caller { user: name, role }),
        None => Err(unauthorized("wrong user name or password")),
    }
}

fn basic(v: &HeaderValue) -> Option<(String, String)> {
    let v = v.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (n, p) = text.split_once(':')?;
    Some((n.to_string(), p.to_string()))
}

fn missing(path: &str) -> Refused {
    Refused::new(StatusCode::NOT_FOUND, "ResourceNotFound", format!("no resource at {path}"))
}

/// Blocking work (the supervisor's answer, a password hash) off the runtime's thread.
async fn blocking<T: Send + 'static>(
    svc: &Arc<Service>,
    f: impl FnOnce(&Service) -> T + Send + 'static,
) -> T {
    let svc = svc.clone();
    match tokio::task::spawn_blocking(move || f(&svc)).await {
        Ok(t) => t,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Paths readable without credentials: the service root and the documents that describe the
/// service (the standard's list), and logging in.
fn open(method: &Method, path: &str) -> bool {
    matches!(
        path,
        "/redfish"
            | "/redfish/"
            | "/redfish/v1"
            | "/redfish/v1/"
            | "/redfish/v1/odata"
            | "/redfish/v1/$metadata"
    ) || path == tree::OEM_SCHEMA_PATH
        || (method == Method::POST && path == "/redfish/v1/SessionService/Sessions")
}

async fn authenticate(State(svc): State<Arc<Service>>, req: axum::extract::Request, next: Next) -> Response {
    // The body first, within a time and a size: a client that trickles it ties up nothing.
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(READ_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            let too_big = format!("the request body is over {} KiB", MAX_BODY >> 10);
            return with_odata(
                Refused::new(StatusCode::PAYLOAD_TOO_LARGE, "GeneralError", too_big).into_response(),
            )
            .await;
        }
        Err(_) => {
            let late = "the request body did not arrive in time";
            return with_odata(
                Refused::new(StatusCode::REQUEST_TIMEOUT, "GeneralError", late).into_response(),
            )
            .await;
        }
    };
    let mut req = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
    if !open(req.method(), req.uri().path()) {
        match caller(&svc, req.headers()).await {
            Ok(c) => {
                req.extensions_mut().insert(c);
            }
            Err(refused) => {
                tracing::debug!(path = %req.uri().path(), "redfish: refused: {}", refused.message);
                return with_odata(refused.into_response()).await;
            }
        }
    }
    with_odata(next.run(req).await).await
}

/// Every answer carries `OData-Version`, and every error is a Redfish error (axum's own
/// rejections, of a path that is not UTF-8 say, are plain text).
async fn with_odata(r: Response) -> Response {
    let json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let mut r = if (r.status().is_client_error() || r.status().is_server_error()) && !json {
        let status = r.status();
        let allow = r.headers().get(header::ALLOW).cloned();
        let text = axum::body::to_bytes(r.into_body(), 4096).await.unwrap_or_default();
        let text = monarch_proto::text::printable(&String::from_utf8_lossy(&text), 200);
        let message =
            if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
        let mut e = Refused::new(status, "GeneralError", message).into_response();
        if let Some(a) = allow {
            e.headers_mut().insert(header::ALLOW, a);
        }
        e
    } else {
        r
    };
    r.headers_mut().insert("OData-Version", HeaderValue::from_static("4.0"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `/redfish/v1/Systems/` is `/redfish/v1/Systems` (the service root keeps its slash).
fn without_trailing_slash<B>(mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    let path = req.uri().path();
    if path.len() > 1 && path.ends_with('/') && path != "/redfish/v1/" {
        let trimmed = path.trim_end_matches('/');
        let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
        let new = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_string(),
        };
        if let Ok(uri) = new.parse() {
            *req.uri_mut() = uri;
        }
    }
    req
}

fn may_configure(c: &Caller, users: &Users) -> Result<(), Refused> {
    if c.role.may_configure() {
        return Ok(());
    }
    tracing::info!(
        user = %c.user,
        role = c.role.name(),
        users = %users.path().display(),
        "redfish: refused a change to a user without the ConfigureComponents privilege"
    );
    Err(Refused::new(
        StatusCode::FORBIDDEN,
        "InsufficientPrivilege",
        format!(
            "user {} has role {}, without the ConfigureComponents privilege this needs: give it role Operator or Administrator in the users file",
            c.user,
            c.role.name()
        ),
    ))
}

fn reset_type(body: &Bytes, allowed: &[&str]) -> Result<String, Refused> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        Refused::new(StatusCode::BAD_REQUEST, "MalformedJSON", format!("the request body is not JSON: {e}"))
    })?;
    let Some(t) = v.get("ResetType") else {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "ActionParameterMissing",
            format!("ResetType is missing; give one of {}", allowed.join(", ")),
        ));
    };
    match t.as_str() {
        Some(t) if allowed.contains(&t) => Ok(t.to_string()),
        Some(t) => Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "ActionParameterValueNotInList",
            format!(
                "ResetType {:?} is not one of {}",
                monarch_proto::text::printable(t, 40),
                allowed.join(", ")
            ),
        )),
        None => Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "ActionParameterValueTypeError",
            format!("ResetType must be a string, one of {}", allowed.join(", ")),
        )),
    }
}

fn deadline_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn system_reset(
    State(svc): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    if !svc.info.systems.contains(&id) {
        return Err(missing(&format!("{ROOT}/Systems/{id}")));
    }
    may_configure(&c, &svc.users)?;
    let t = reset_type(&body, tree::RESET_TYPES)?;
    tracing::info!(user = %c.user, processor = %id, reset = %t, "redfish: reset");
    let ms = deadline_ms(svc.deadline);
    let lines = blocking(&svc, move |s| {
        let request = match t.as_str() {
            "On" => {
                let p = s.processor(&id, false)?;
                match p["state"].as_str() {
                    Some("running" | "booting" | "restarting") => {
                        return Ok(vec![format!("{id} is on already")]);
                    }
                    Some("off") => {
                        return Err(Refused::new(
                            StatusCode::CONFLICT,
                            "OperationNotAllowed",
                            format!("{id} is off with main power: reset the chassis with ResetType On"),
                        ));
                    }
                    _ => Request::Startup { id },
                }
            }
            "ForceOff" => Request::Shutdown { id: Some(id), force: true, deadline_ms: ms },
            "GracefulShutdown" => Request::Shutdown { id: Some(id), force: false, deadline_ms: ms },
            "GracefulRestart" => Request::Reboot { id, force: false, deadline_ms: ms },
            _ => Request::Reboot { id, force: true, deadline_ms: ms },
        };
        s.ask(request).map(|(_, lines)| lines)
    })
    .await?;
    doc(tree::success(&lines))
}

async fn chassis_reset(
    State(svc): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    if id != svc.info.chassis_id {
        return Err(missing(&format!("{ROOT}/Chassis/{id}")));
    }
    may_configure(&c, &svc.users)?;
    let t = reset_type(&body, tree::CHASSIS_RESET_TYPES)?;
    tracing::info!(user = %c.user, reset = %t, "redfish: chassis reset");
    let ms = deadline_ms(svc.deadline);
    let request = match t.as_str() {
        "On" => Request::Power { on: true, force: false, deadline_ms: ms },
        "ForceOff" => Request::Power { on: false, force: true, deadline_ms: ms },
        _ => Request::Power { on: false, force: false, deadline_ms: ms },
    };
    let lines = blocking(&svc, move |s| s.ask(request).map(|(_, l)| l)).await?;
    doc(tree::success(&lines))
}

async fn system(State(svc): State<Arc<Service>>, Path(id): Path<String>) -> Answer {
    let p = blocking(&svc, {
        let id = id.clone();
        move |s| s.processor(&id, false)
    })
    .await?;
    doc(tree::system(&svc.info, &p, svc.journal.running_since(&id).as_deref()))
}

async fn systems(State(svc): State<Arc<Service>>) -> Answer {
    let members: Vec<String> = svc.info.systems.iter().map(|s| format!("{ROOT}/Systems/{s}")).collect();
    doc(tree::collection(
        &format!("{ROOT}/Systems"),
        "ComputerSystemCollection",
        "Computer Systems",
        &members,
    ))
}

async fn chassis_list(State(svc): State<Arc<Service>>) -> Answer {
    let members = [format!("{ROOT}/Chassis/{}", svc.info.chassis_id)];
    doc(tree::collection(&format!("{ROOT}/Chassis"), "ChassisCollection", "Chassis", &members))
}

async fn chassis(State(svc): State<Arc<Service>>, Path(id): Path<String>) -> Answer {
    if id != svc.info.chassis_id {
        return Err(missing(&format!("{ROOT}/Chassis/{id}")));
    }
    let status = blocking(&svc, |s| s.status(false)).await?;
    doc(tree::chassis(&svc.info, &status))
}

async fn managers(State(svc): State<Arc<Service>>) -> Answer {
    let members: Vec<String> = svc.info.managers.iter().map(|m| format!("{ROOT}/Managers/{m}")).collect();
    doc(tree::collection(&format!("{ROOT}/Managers"), "ManagerCollection", "Managers", &members))
}

async fn manager(State(svc): State<Arc<Service>>, Path(id): Path<String>) -> Answer {
    if !svc.info.managers.contains(&id) {
        return Err(missing(&format!("{ROOT}/Managers/{id}")));
    }
    let status = blocking(&svc, |s| s.status(false)).await?;
    doc(tree::manager(&svc.info, &id, status["epoch"].as_u64().unwrap_or(0)))
}

/// Whose log a path names: a system (`Some(id)`) or the monarch's manager (`None`).
fn log_owner(svc: &Service, kind: &str, id: &str) -> Result<(String, Option<String>), Refused> {
    match kind {
        "Systems" if svc.info.systems.iter().any(|s| s == id) => {
            Ok((format!("{ROOT}/Systems/{id}"), Some(id.into())))
        }
        "Managers" if id == svc.info.monarch => Ok((format!("{ROOT}/Managers/{id}"), None)),
        _ => Err(missing(&format!("{ROOT}/{kind}/{id}/LogServices"))),
    }
}

async fn log_services(State(svc): State<Arc<Service>>, Path((kind, id)): Path<(String, String)>) -> Answer {
    let (owner, _) = log_owner(&svc, &kind, &id)?;
    let members = [format!("{owner}/LogServices/Log")];
    doc(tree::collection(&format!("{owner}/LogServices"), "LogServiceCollection", "Log Services", &members))
}

async fn log_service(State(svc): State<Arc<Service>>, Path((kind, id)): Path<(String, String)>) -> Answer {
    let (owner, who) = log_owner(&svc, &kind, &id)?;
    // A processor's log holds its reboot causes too; the chassis-wide one only events.
    let causes = if who.is_some() { crate::supervise::causes::KEEP } else { 0 };
    doc(tree::log_service(&owner, &id, super::journal::KEEP + causes))
}

/// A log's entries: a system's reboot causes (kept across runs, `c<n>`), then the events of
/// this run (`e<n>`).
fn entries(svc: &Service, owner: &str, id: Option<&str>) -> Result<Vec<Value>, Refused> {
    let mut out = Vec::new();
    if let Some(id) = id {
        let p = svc.processor(id, true)?;
        for (k, c) in p["history"].as_array().into_iter().flatten().enumerate() {
            let message = format!(
                "reboot cause: {}; {}",
                c["cause"].as_str().unwrap_or_default(),
                c["action"].as_str().unwrap_or_default()
            );
            out.push(tree::log_entry(
                owner,
                &format!("c{k}"),
                c["time"].as_str().unwrap_or_default(),
                "Warning",
                &message,
            ));
        }
    }
    out.extend(
        svc.journal.log(id).iter().map(|e: &Entry| {
            tree::log_entry(owner, &format!("e{}", e.n), &e.created, e.severity, &e.message)
        }),
    );
    Ok(out)
}

async fn log_entries(State(svc): State<Arc<Service>>, Path((kind, id)): Path<(String, String)>) -> Answer {
    let (owner, who) = log_owner(&svc, &kind, &id)?;
    let path = format!("{owner}/LogServices/Log/Entries");
    let list = blocking(&svc, {
        let owner = owner.clone();
        move |s| entries(s, &owner, who.as_deref())
    })
    .await?;
    // The schema has a log's entries expanded in their collection (OData.AutoExpand).
    let mut c = tree::collection(&path, "LogEntryCollection", "Log Entries", &[]);
    c["Members@odata.count"] = json!(list.len());
    c["Members"] = Value::Array(list);
    doc(c)
}

async fn log_entry(
    State(svc): State<Arc<Service>>,
    Path((kind, id, n)): Path<(String, String, String)>,
) -> Answer {
    let (owner, who) = log_owner(&svc, &kind, &id)?;
    let path = format!("{owner}/LogServices/Log/Entries/{n}");
    let list = blocking(&svc, move |s| entries(s, &owner, who.as_deref())).await?;
    list.into_iter().find(|e| e["@odata.id"] == path.as_str()).map_or_else(|| Err(missing(&path)), doc)
}

async fn sessions(State(svc): State<Arc<Service>>, Extension(c): Extension<Caller>) -> Answer {
    let mut s = svc.sessions.lock().unwrap_or_else(PoisonError::into_inner);
    s.prune();
    let mut ids: Vec<u64> = s
        .by_token
        .values()
        .filter(|v| v.last.elapsed() < SESSION_TIMEOUT)
        .filter(|v| c.role == Role::Administrator || v.user == c.user)
        .filter_map(|v| v.id.parse().ok())
        .collect();
    ids.sort_unstable();
    let members: Vec<String> = ids.iter().map(|i| format!("{ROOT}/SessionService/Sessions/{i}")).collect();
    doc(tree::collection(
        &format!("{ROOT}/SessionService/Sessions"),
        "SessionCollection",
        "Sessions",
        &members,
    ))
}

async fn session(
    State(svc): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let mut s = svc.sessions.lock().unwrap_or_else(PoisonError::into_inner);
    s.prune();
    s.by_token
        .values()
        .find(|v| v.id == id && (c.role == Role::Administrator || v.user == c.user))
        .map_or_else(
            || Err(missing(&format!("{ROOT}/SessionService/Sessions/{id}"))),
            |v| doc(tree::session(&v.id, &v.user)),
        )
}

async fn log_out(
    State(svc): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let mut s = svc.sessions.lock().unwrap_or_else(PoisonError::into_inner);
    s.prune();
    let token = s
        .by_token
        .iter()
        .find(|(_, v)| v.id == id && (c.role == Role::Administrator || v.user == c.user))
        .map(|(k, _)| k.clone());
    match token {
        Some(t) => {
            s.by_token.remove(&t);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        None => Err(missing(&format!("{ROOT}/SessionService/Sessions/{id}"))),
    }
}

async fn log_in(State(svc): State<Arc<Service>>, body: Bytes) -> Answer {
    let v: Value = serde_json::from_slice(&body).map_err(|e| {
        Refused::new(StatusCode::BAD_REQUEST, "MalformedJSON", format!("the request body is not JSON: {e}"))
    })?;
    let field = |k: &str| {
        v.get(k).and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
            Refused::new(
                StatusCode::BAD_REQUEST,
                "PropertyMissing",
                format!("{k} is missing: log in with UserName and Password"),
            )
        })
    };
    let (user, given) = (field("UserName")?, field("Password")?);
    let role = password(&svc, &user, &given).await?.ok_or_else(|| {
        Refused::new(StatusCode::UNAUTHORIZED, "NoValidSession", "wrong user name or password")
    })?;
    let (id, token) = svc.log_in(&user, role)?;
    tracing::info!(user = %user, session = %id, "redfish: logged in");
    let location = format!("{ROOT}/SessionService/Sessions/{id}");
    let mut r = (StatusCode::CREATED, axum::Json(tree::session(&id, &user))).into_response();
    if let (Ok(t), Ok(l)) = (HeaderValue::from_str(&token), HeaderValue::from_str(&location)) {
        r.headers_mut().insert("X-Auth-Token", t);
        r.headers_mut().insert(header::LOCATION, l);
    }
    Ok(r)
}

async fn sse(State(svc): State<Arc<Service>>) -> Response {
    let rx = svc.journal.subscribe();
    let chassis_id = svc.info.chassis_id.clone();
    let stream = futures_util::stream::unfold((rx, chassis_id), |(mut rx, chassis_id)| async move {
        loop {
            match rx.recv().await {
                Ok(s) => {
                    let origin = match &s.id {
                        Some(id) => format!("{ROOT}/Systems/{id}"),
                        None => format!("{ROOT}/Chassis/{chassis_id}"),
                    };
                    let ev = tree::event(
                        s.n,
                        &s.entry.created,
                        s.entry.severity,
                        &s.entry.message,
                        &origin,
                        &s.raw,
                    );
                    let frame = SseEvent::default().id(s.n.to_string()).data(ev.to_string());
                    return Some((Ok::<_, std::convert::Infallible>(frame), (rx, chassis_id)));
                }
                // A slow reader misses events rather than slowing the supervisor.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

async fn subscriptions() -> Answer {
    doc(tree::collection(
        &format!("{ROOT}/EventService/Subscriptions"),
        "EventDestinationCollection",
        "Event Subscriptions",
        &[],
    ))
}

async fn subscribe() -> Answer {
    Err(Refused::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "OperationNotAllowed",
        format!(
            "push subscriptions are not offered: read the Server-Sent Events stream at {ROOT}/EventService/SSE"
        ),
    ))
}

async fn not_found(uri: axum::http::Uri) -> Refused {
    missing(uri.path())
}

async fn method_not_allowed() -> Refused {
    Refused::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "OperationNotAllowed",
        "this resource does not take that method",
    )
}

fn router(svc: Arc<Service>) -> Router {
    let info = svc.info.clone();
    let root = move || {
        let info = info.clone();
        async move { axum::Json(tree::service_root(&info)) }
    };
    let logs = "/redfish/v1/{kind}/{id}/LogServices";
    Router::new()
        .route("/redfish", get(|| async { axum::Json(json!({ "v1": "/redfish/v1/" })) }))
        .route("/redfish/", get(|| async { axum::Json(json!({ "v1": "/redfish/v1/" })) }))
        .route("/redfish/v1", get(root.clone()))
        .route("/redfish/v1/", get(root))
        .route("/redfish/v1/odata", get(|| async { axum::Json(tree::odata()) }))
        .route(
            "/redfish/v1/$metadata",
            get(|| async { ([(header::CONTENT_TYPE, "application/xml")], tree::metadata()) }),
        )
        .route(
            tree::OEM_SCHEMA_PATH,
            get(|| async { ([(header::CONTENT_TYPE, "application/xml")], tree::OEM_SCHEMA) }),
        )
        .route("/redfish/v1/Systems", get(systems))
        .route("/redfish/v1/Systems/{id}", get(system))
        .route("/redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset", post(system_reset))
        .route("/redfish/v1/Chassis", get(chassis_list))
        .route("/redfish/v1/Chassis/{id}", get(chassis))
        .route("/redfish/v1/Chassis/{id}/Actions/Chassis.Reset", post(chassis_reset))
        .route("/redfish/v1/Managers", get(managers))
        .route("/redfish/v1/Managers/{id}", get(manager))
        .route(logs, get(log_services))
        .route(&format!("{logs}/Log"), get(log_service))
        .route(&format!("{logs}/Log/Entries"), get(log_entries))
        .route(&format!("{logs}/Log/Entries/{{n}}"), get(log_entry))
        .route(
            "/redfish/v1/SessionService",
            get(|| async { axum::Json(tree::session_service(SESSION_TIMEOUT.as_secs())) }),
        )
        .route("/redfish/v1/SessionService/Sessions", get(sessions).post(log_in))
        .route("/redfish/v1/SessionService/Sessions/{id}", get(session).delete(log_out))
        .route("/redfish/v1/EventService", get(|| async { axum::Json(tree::event_service()) }))
        .route("/redfish/v1/EventService/Subscriptions", get(subscriptions).post(subscribe))
        .route("/redfish/v1/EventService/SSE", get(sse))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(svc.clone(), authenticate))
        .with_state(svc)
}

/// A running Redfish service.
#[derive(Debug, Clone)]
pub struct Served {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate, and whether it was made now.
    pub certificate: std::path::PathBuf,
    /// The certificate was made at this start (self-signed).
    pub made: bool,
    /// The certificate's SHA-256 fingerprint, for clients to pin.
    pub fingerprint: String,
    /// The users file's warnings (its mode, lines left out).
    pub warnings: Vec<String>,
}

/// Start the Redfish service for a supervised chassis: its users and certificate are read
/// (or the certificate made) now, so that a mistake stops `up --hold` before the boot.
pub fn serve(
    opts: &RedfishOptions,
    state_dir: &std::path::Path,
    info: Info,
    ctl: mpsc::Sender<Incoming>,
    journal: Arc<Journal>,
    deadline: Duration,
) -> Result<Served, RedfishError> {
    let users = Users::load(&opts.users)?;
    if users.is_empty() {
        return Err(RedfishError::NoUsers(opts.users.clone()));
    }
    let warnings = users.warnings();
    let identity = tls::identity(opts.certificate.as_deref(), opts.key.as_deref(), state_dir)?;
    let err = |source| RedfishError::Listen { addr: opts.addr, source };
    let listener = std::net::TcpListener::bind(opts.addr).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    // Blocking work: the supervisor's answers (a reset waits for its operation) and the
    // password checks (at most HASHING of them at once).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(64)
        .build()
        .map_err(err)?;
    let users = Arc::new(users);
    let hashing = Hasher::start(users.clone()).map_err(err)?;
    let svc = Arc::new(Service {
        info,
        users,
        sessions: Mutex::new(Sessions::default()),
        journal,
        ctl: Mutex::new(ctl),
        deadline,
        hashing,
    });
    let app = tower::ServiceExt::map_request(router(svc), without_trailing_slash);
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.config.clone());
    std::thread::Builder::new()
        .name("redfish".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                loop {
                    let tcp = match listener.accept().await {
                        Ok((tcp, _)) => tcp,
                        Err(e) => {
                            // Out of descriptors, say: wait rather than spin.
                            tracing::warn!("redfish: cannot accept a connection: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    // Full: the connection is closed at once.
                    let Ok(permit) = connections.clone().try_acquire_owned() else { continue };
                    let (acceptor, app) = (acceptor.clone(), app.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await else {
                            return;
                        };
                        let service = hyper_util::service::TowerToHyperService::new(app);
                        let mut http = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        );
                        http.http1()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(READ_TIMEOUT);
                        let _ = http
                            .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        })
        .map_err(err)?;
    Ok(Served {
        addr,
        certificate: identity.cert_path.clone(),
        made: identity.made,
        fingerprint: identity.fingerprint_sha256.clone(),
        warnings,
    })
}
