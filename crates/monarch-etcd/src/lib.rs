//! Monarch election across machines, on etcd.
//!
//! Where candidates share no backplane (the backplane arbitration cannot see them all), the
//! monarch is whoever holds an etcd election: every candidate holds a *lease* that it keeps
//! alive, campaigns with a key attached to that lease, and the candidate whose key has the
//! lowest create revision leads. A monarch that dies stops keeping its lease alive; etcd
//! expires the lease, deletes the key, and the next candidate (a serf usurping the dead
//! monarch) wins with a higher epoch.
//!
//! The part etcd cannot do for us is telling a leader *cut off from etcd* that it must stop:
//! the server expires the lease and lets another candidate win whether or not the old leader
//! heard about it. So [`Leadership::check`] does not ask etcd; it proves locally that the
//! lease still lives on the server, from the send time of the last keep-alive etcd
//! acknowledged (see [`proof`]), and turns `Err` before the server could let anyone else in.
//!
//! The API blocks (our orchestration is plain threads): each [`Candidate`] runs a private
//! tokio runtime with one worker thread for its keep-alives. Do not call it from inside an
//! async runtime (use `spawn_blocking`).
//!
//! Mechanism: etcd's own election service (`v3electionpb`: `Campaign`, `Resign`) with a lease
//! from the lease service, verified: when `Campaign` returns we read the lowest key under the
//! election prefix ourselves and accept only if it is ours, so the guarantee does not rest on
//! the service's internals (such as whether it re-checks its own key after waiting, or how it
//! behaves when the lease expires mid-wait).
//! [`Candidate::leader`] reads the same lowest key directly.

pub mod proof;
pub mod server;
mod session;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaderKey, ResignOptions, SortOrder, SortTarget,
    Txn, TxnOp, WatchOptions,
};
use tokio::runtime::Runtime;

pub use session::Lost;
use session::{LossKind, RpcFailure, Session, SessionHandle, classify};

/// How to reach etcd and which election to run in.
#[derive(Clone, Debug)]
pub struct Config {
    /// etcd client URLs (`http://host:2379`); plain `host:port` means http. TLS is not built in.
    pub endpoints: Vec<String>,
    /// The election's name, e.g. `monarch/<chassis>`: candidates' keys live under `NAME/`.
    pub election: String,
    /// Our id, published as the leader's value for the others to see (host name, slot …).
    pub candidate: String,
    /// Lease TTL: how long a dead monarch keeps the others waiting, and the horizon of the
    /// local proof. etcd counts whole seconds and raises small TTLs to its minimum (2 s with
    /// its default 100 ms heartbeat and 1 s election timeout); we round up to whole seconds
    /// when asking and prove against the smaller of asked and granted.
    pub ttl: Duration,
    /// How much earlier than the server-side expiry the leadership stands down: it must cover
    /// the longest step the monarch takes between two [`Leadership::check`] calls.
    pub margin: Duration,
    /// Bounds connecting and every single request to etcd.
    pub connect_timeout: Duration,
}

impl Config {
    /// A configuration with a 5 s TTL, a margin of a quarter TTL and a 2 s connect timeout.
    pub fn new(endpoints: Vec<String>, election: impl Into<String>, candidate: impl Into<String>) -> Config {
        let ttl = Duration::from_secs(5);
        Config {
            endpoints,
            election: election.into(),
            candidate: candidate.into(),
            ttl,
            margin: proof::default_margin(ttl),
            connect_timeout: Duration::from_secs(2),
        }
    }

    /// The same configuration with another TTL and the default margin for it.
    pub fn with_ttl(mut self, ttl: Duration) -> Config {
        self.ttl = ttl;
        self.margin = proof::default_margin(ttl);
        self
    }

    fn validate(&self) -> Result<(), Error> {
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(Error::Config(
                "no etcd endpoint given: pass --etcd http://HOST:2379 (comma-separated for several)".into(),
            ));
        }
        if let Some(bad) = self.endpoints.iter().find(|e| e.starts_with("https://")) {
            return Err(Error::Config(format!(
                "etcd endpoint {bad} uses TLS, which this build does not support: use an http:// endpoint"
            )));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::Config("connect timeout must be above zero, e.g. 2s".into()));
        }
        proof::validate_election(&self.election)
            .and_then(|()| proof::validate_candidate(&self.candidate))
            .and_then(|()| proof::validate_timing(self.ttl, self.margin))
            .map_err(Error::Config)
    }

    fn endpoints_display(&self) -> String {
        self.endpoints.join(",")
    }
}

/// Everything that can go wrong talking to etcd; each message names the thing and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work.
    #[error("invalid etcd election configuration: {0}")]
    Config(String),
    /// No etcd answered at the configured endpoints.
    #[error(
        "cannot reach etcd at {endpoints} ({cause}): start etcd there (e.g. `etcd --listen-client-urls \
         http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379`) or check the --etcd endpoint"
    )]
    Unreachable {
        /// The endpoints we tried.
        endpoints: String,
        /// What failed, per endpoint where we could tell.
        cause: String,
    },
    /// etcd answered, but refused or sent something we cannot accept.
    #[error("etcd at {endpoints} failed to {op}: {cause}")]
    Rejected {
        /// The endpoints we used.
        endpoints: String,
        /// What we were doing.
        op: &'static str,
        /// What etcd said, or what was wrong with its answer.
        cause: String,
    },
    /// `campaign` waited as long as it was allowed to.
    #[error("gave up campaigning in etcd election {election:?} after {waited:?}: {}", describe_leader(.leader))]
    GaveUp {
        /// The election.
        election: String,
        /// How long we waited.
        waited: Duration,
        /// Who leads instead, as far as we could see: candidate id and epoch.
        leader: Option<(String, u64)>,
    },
    /// The private tokio runtime could not start (out of threads or memory).
    #[error("cannot start the etcd client's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Why [`Leadership::record`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// We no longer lead (or cannot prove it): nothing was written.
    #[error(transparent)]
    Lost(Lost),
    /// etcd could not be asked; the record may or may not have been written.
    #[error(transparent)]
    Etcd(Error),
}

fn describe_leader(leader: &Option<(String, u64)>) -> String {
    match leader {
        Some((who, epoch)) => format!("{who} is monarch (epoch {epoch})"),
        None => "no leader visible, yet our campaign did not complete".into(),
    }
}

/// A connected candidate holding a lease that it keeps alive.
pub struct Candidate {
    /// The idle session the next campaign runs on (dropped first: ends its keep-alives).
    idle: Mutex<Option<SessionHandle>>,
    client: Client,
    cfg: Config,
    rt: Arc<Runtime>,
}

impl fmt::Debug for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidate").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Candidate {
    /// Connect to etcd and take a lease. Fails with [`Error::Unreachable`] naming the endpoint
    /// and the fix when no etcd answers within `connect_timeout`.
    pub fn connect(cfg: Config) -> Result<Candidate, Error> {
        cfg.validate()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("monarch-etcd")
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        // require_leader: a member cut off from its cluster's leader must fail our requests
        // rather than hold them. HTTP/2 pings every 10 s (etcd refuses more often than 5 s)
        // break a connection to a host that vanished without a TCP reset.
        let options = ConnectOptions::new()
            .with_connect_timeout(cfg.connect_timeout)
            .with_require_leader(true)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let connected = rt.block_on(async {
            match tokio::time::timeout(cfg.connect_timeout, Client::connect(&cfg.endpoints, Some(options)))
                .await
            {
                Err(_) => {
                    Err(RpcFailure::Unreachable(format!("no connection within {:?}", cfg.connect_timeout)))
                }
                Ok(Err(e)) => Err(classify(&e)),
                Ok(Ok(client)) => Ok(client),
            }
        });
        let client = match connected {
            Ok(c) => c,
            Err(f) => return Err(rt.block_on(failure(&cfg, f, "connect"))),
        };
        let started = rt.block_on(session::start(&client, cfg.ttl, cfg.margin, cfg.connect_timeout));
        let handle = match started {
            Ok(h) => h,
            Err(f) => return Err(rt.block_on(failure(&cfg, f, "grant a lease"))),
        };
        Ok(Candidate { idle: Mutex::new(Some(handle)), client, cfg, rt: Arc::new(rt) })
    }

    /// The TTL etcd granted the current lease, as it reported it (etcd raises TTLs below its
    /// minimum). `None` while no idle lease is held (between a win and the next campaign).
    pub fn granted_ttl(&self) -> Option<Duration> {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.as_ref().and_then(|h| u64::try_from(h.session.granted_secs).ok()).map(Duration::from_secs)
    }

    /// Block until we lead the election, or until `give_up_after` has passed
    /// ([`Error::GaveUp`], naming who leads; [`Error::Unreachable`] if etcd stayed out of
    /// reach). `None` waits for ever, riding out etcd outages. If our lease is lost while we
    /// wait (etcd unreachable for longer than the proof window) the campaign starts over on a
    /// new lease, so a stale lease never wins.
    pub fn campaign(&self, give_up_after: Option<Duration>) -> Result<Leadership, Error> {
        let started = Instant::now();
        let deadline = give_up_after.and_then(|d| started.checked_add(d));
        let past = |deadline: Option<Instant>| deadline.is_some_and(|d| Instant::now() >= d);
        let mut backoff = Duration::from_millis(100);
        loop {
            let handle = match self.live_session(deadline) {
                Ok(h) => h,
                Err(RpcFailure::Unreachable(_)) if !past(deadline) => {
                    std::thread::sleep(backoff.min(remaining(deadline)));
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
                Err(f) => return Err(self.rt.block_on(failure(&self.cfg, f, "grant a lease"))),
            };
            let outcome = self.rt.block_on(campaign_once(&self.client, &self.cfg, &handle.session, deadline));
            match outcome {
                Outcome::Won { key, epoch } => {
                    let session = handle.session.clone();
                    let guard =
                        guard_key(self.client.clone(), session, key.clone(), self.cfg.connect_timeout);
                    drop(self.rt.spawn(guard));
                    return Ok(Leadership {
                        handle,
                        key,
                        epoch,
                        client: self.client.clone(),
                        cfg: self.cfg.clone(),
                        rt: self.rt.clone(),
                    });
                }
                Outcome::SessionLost => drop(handle),
                Outcome::Deadline => {
                    self.park(handle);
                    return Err(match self.leader() {
                        Ok(leader) => Error::GaveUp {
                            election: self.cfg.election.clone(),
                            waited: started.elapsed(),
                            leader,
                        },
                        Err(e) => e,
                    });
                }
                Outcome::Failed(RpcFailure::Unreachable(cause)) => {
                    self.park(handle);
                    if past(deadline) {
                        return Err(self.rt.block_on(failure(
                            &self.cfg,
                            RpcFailure::Unreachable(cause),
                            "campaign",
                        )));
                    }
                    std::thread::sleep(backoff.min(remaining(deadline)));
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Outcome::Failed(rejected) => {
                    self.park(handle);
                    return Err(self.rt.block_on(failure(&self.cfg, rejected, "campaign")));
                }
                Outcome::NotLowest => {
                    // The service answered early; campaigning again on the same lease resumes
                    // the wait on the same key.
                    self.park(handle);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Who leads now: the candidate id (as published, tamed for display) and the epoch, or
    /// `None` when nobody campaigns. Read straight from etcd, so it may be a monarch that
    /// already stood down but whose lease has not yet expired.
    pub fn leader(&self) -> Result<Option<(String, u64)>, Error> {
        let prefix = proof::election_prefix(&self.cfg.election);
        let got = self.rt.block_on(async {
            let mut kv = self.client.kv_client();
            let req = kv.get(prefix, Some(first_created()));
            match tokio::time::timeout(self.cfg.connect_timeout, req).await {
                Err(_) => {
                    Err(RpcFailure::Unreachable(format!("no answer within {:?}", self.cfg.connect_timeout)))
                }
                Ok(Err(e)) => Err(classify(&e)),
                Ok(Ok(resp)) => Ok(resp),
            }
        });
        let resp = match got {
            Ok(r) => r,
            Err(f) => return Err(self.rt.block_on(failure(&self.cfg, f, "read the election's leader"))),
        };
        let Some(kv) = resp.kvs().first() else { return Ok(None) };
        let epoch = proof::epoch_of(kv.create_revision()).ok_or_else(|| Error::Rejected {
            endpoints: self.cfg.endpoints_display(),
            op: "read the election's leader",
            cause: format!("leader key has an invalid create revision {}", kv.create_revision()),
        })?;
        Ok(Some((proof::display_candidate(kv.value()), epoch)))
    }

    /// Read a plain key (a record a monarch wrote with [`Leadership::record`]); `None` if it
    /// does not exist. The value is untrusted text (lossy UTF-8, at most 4 KiB kept).
    pub fn read(&self, key: &str) -> Result<Option<String>, Error> {
        let got = self.rt.block_on(async {
            let mut kv = self.client.kv_client();
            match tokio::time::timeout(self.cfg.connect_timeout, kv.get(key, None)).await {
                Err(_) => {
                    Err(RpcFailure::Unreachable(format!("no answer within {:?}", self.cfg.connect_timeout)))
                }
                Ok(Err(e)) => Err(classify(&e)),
                Ok(Ok(resp)) => Ok(resp),
            }
        });
        match got {
            Ok(resp) => Ok(resp.kvs().first().map(|kv| {
                let v = kv.value();
                String::from_utf8_lossy(&v[..v.len().min(4096)]).into_owned()
            })),
            Err(f) => Err(self.rt.block_on(failure(&self.cfg, f, "read a record"))),
        }
    }

    /// The idle session if it is still provably alive, else a fresh lease.
    fn live_session(&self, deadline: Option<Instant>) -> Result<SessionHandle, RpcFailure> {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(h) = idle {
            if h.session.check(Instant::now()).is_ok() {
                return Ok(h);
            }
        }
        let limit = self.cfg.connect_timeout.min(remaining(deadline).max(Duration::from_millis(100)));
        self.rt.block_on(session::start(&self.client, self.cfg.ttl, self.cfg.margin, limit))
    }

    fn park(&self, handle: SessionHandle) {
        *self.idle.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
    }
}

fn remaining(deadline: Option<Instant>) -> Duration {
    deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()))
}

/// The options that select the lowest create revision under a prefix: the leader.
fn first_created() -> GetOptions {
    GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1)
}

/// Turn a failure into the public error; for an unreachable etcd, probe each endpoint's TCP
/// port so the message says *why* (refused, no route, timed out, or open but not answering).
async fn failure(cfg: &Config, f: RpcFailure, op: &'static str) -> Error {
    match f {
        RpcFailure::Rejected(cause) => Error::Rejected { endpoints: cfg.endpoints_display(), op, cause },
        RpcFailure::Unreachable(rpc_cause) => {
            let mut causes = Vec::new();
            for ep in &cfg.endpoints {
                let authority = proof::endpoint_authority(ep);
                let probe =
                    tokio::time::timeout(cfg.connect_timeout, tokio::net::TcpStream::connect(authority));
                match probe.await {
                    Err(_) => causes.push(format!("{authority}: TCP connect timed out")),
                    Ok(Err(e)) => causes.push(format!("{authority}: {e}")),
                    Ok(Ok(_)) => {
                        causes.push(format!("{authority}: port open but no etcd answer ({rpc_cause})"))
                    }
                }
            }
            Error::Unreachable { endpoints: cfg.endpoints_display(), cause: causes.join("; ") }
        }
    }
}

enum Outcome {
    Won {
        key: LeaderKey,
        epoch: u64,
    },
    SessionLost,
    Deadline,
    Failed(RpcFailure),
    /// The service returned while an older key still exists (or ours vanished).
    NotLowest,
}

/// One campaign on one lease: the election service's `Campaign`, raced against the session's
/// loss and the deadline, then verified against the key-value store.
async fn campaign_once(
    client: &Client,
    cfg: &Config,
    session: &Session,
    deadline: Option<Instant>,
) -> Outcome {
    let key = proof::leader_key(&cfg.election, session.lease);
    let mut lost = session.lost_signal();
    let mut election = client.election_client();
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        _ = lost.wait_for(|l| *l) => {
            abandon(client, &key, session.lease, cfg.connect_timeout).await;
            return Outcome::SessionLost;
        }
        () = until_deadline => {
            abandon(client, &key, session.lease, cfg.connect_timeout).await;
            return Outcome::Deadline;
        }
        r = election.campaign(cfg.election.as_str(), cfg.candidate.as_str(), session.lease) => r,
    };
    let resp = match result {
        Ok(r) => r,
        Err(e) if e.to_string().contains("lease not found") => {
            // Our lease expired on the server while we waited: this campaign is void.
            session.latch(format!("etcd no longer knows lease {:x}: {e}", session.lease), LossKind::Expired);
            return Outcome::SessionLost;
        }
        Err(_) if session.check(Instant::now()).is_err() => return Outcome::SessionLost,
        Err(e) => return Outcome::Failed(classify(&e)),
    };
    let Some(leader) = resp.leader() else {
        return Outcome::Failed(RpcFailure::Rejected("campaign answer carries no leader key".into()));
    };
    if leader.key() != key.as_bytes() || leader.lease() != session.lease {
        return Outcome::Failed(RpcFailure::Rejected(format!(
            "campaign answer names key {:?} on lease {:x}, expected {key:?} on lease {:x}",
            proof::display_candidate(leader.key()),
            leader.lease(),
            session.lease
        )));
    }
    let Some(epoch) = proof::epoch_of(leader.rev()) else {
        return Outcome::Failed(RpcFailure::Rejected(format!(
            "campaign answer has revision {}",
            leader.rev()
        )));
    };
    // Verify: the lowest key under the prefix must be ours, with the revision we were told.
    let prefix = proof::election_prefix(&cfg.election);
    let mut kv = client.kv_client();
    let first = tokio::time::timeout(cfg.connect_timeout, kv.get(prefix, Some(first_created())));
    let resp = match first.await {
        Err(_) => return Outcome::Failed(RpcFailure::Unreachable("no answer verifying the campaign".into())),
        Ok(Err(e)) => return Outcome::Failed(classify(&e)),
        Ok(Ok(r)) => r,
    };
    match resp.kvs().first() {
        Some(kv)
            if kv.key() == key.as_bytes()
                && kv.create_revision() == leader.rev()
                && kv.lease() == session.lease => {}
        _ => return Outcome::NotLowest,
    }
    // Our key is the lowest and stays so while our lease lives; it must be provably alive.
    if session.check(Instant::now()).is_err() {
        return Outcome::SessionLost;
    }
    Outcome::Won { key: leader.clone(), epoch }
}

/// Withdraw an abandoned campaign: delete our key if it is still on our lease. Best effort;
/// the server also resigns a cancelled campaign, and the lease expiry deletes the key anyway.
async fn abandon(client: &Client, key: &str, lease: i64, rpc_timeout: Duration) {
    let txn =
        Txn::new().when([Compare::lease(key, CompareOp::Equal, lease)]).and_then([TxnOp::delete(key, None)]);
    let _ = tokio::time::timeout(rpc_timeout, client.kv_client().txn(txn)).await;
}

/// While we lead, watch our leader key: if anyone deletes it or re-puts it off our lease
/// (an operator, `etcdctl del`), the leadership is lost even though the lease lives.
async fn guard_key(client: Client, session: Arc<Session>, key: LeaderKey, rpc_timeout: Duration) {
    let mut lost = session.lost_signal();
    tokio::select! {
        _ = lost.wait_for(|l| *l) => {}
        () = watch_key(&client, &session, &key, rpc_timeout) => {}
    }
}

/// Returns only after latching [`LossKind::KeyGone`]. Every watch event, cancellation or
/// error leads to a fresh read of the key (event types from the wire are not interpreted).
async fn watch_key(client: &Client, session: &Session, key: &LeaderKey, rpc_timeout: Duration) {
    let pause = Duration::from_millis(200);
    loop {
        let from = match tokio::time::timeout(rpc_timeout, client.kv_client().get(key.key(), None)).await {
            Ok(Ok(resp)) => {
                let ours = resp
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.create_revision() == key.rev() && kv.lease() == session.lease);
                if !ours {
                    session.latch(
                        format!(
                            "our leader key {} was deleted or replaced in etcd (by an operator, or with an \
                             expired lease)",
                            proof::display_candidate(key.key())
                        ),
                        LossKind::KeyGone,
                    );
                    return;
                }
                resp.header().map(|h| h.revision()).filter(|r| *r > 0).unwrap_or(key.rev()) + 1
            }
            _ => {
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let options = WatchOptions::new().with_start_revision(from);
        if let Ok(mut stream) = client.watch_client().watch(key.key(), Some(options)).await {
            // Skip the creation notice and progress notifications; anything else: re-read.
            while let Ok(Some(resp)) = stream.message().await {
                if resp.canceled() || !resp.events().is_empty() {
                    break;
                }
            }
        }
        tokio::time::sleep(pause).await;
    }
}

/// Proof that we are the monarch, valid while [`Leadership::check`] says so.
///
/// Dropping it without [`Leadership::resign`] behaves like a crash: keep-alives stop and the
/// others take over once the lease expires on the server (about one TTL).
pub struct Leadership {
    handle: SessionHandle,
    key: LeaderKey,
    epoch: u64,
    client: Client,
    cfg: Config,
    rt: Arc<Runtime>,
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("election", &self.cfg.election)
            .field("candidate", &self.cfg.candidate)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// Our epoch: the create revision of our leader key. Every later leader's key was created
    /// after ours, so epochs strictly increase from one monarch to the next; stamp it on what
    /// the monarch writes so stale orders can be told apart.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// `Ok(epoch)` while we may act as monarch; `Err` from the moment leadership is lost or
    /// can no longer be proven, and for ever after. Check before each step that must not be
    /// taken by two monarchs; a step must finish within the configured margin.
    pub fn check(&self) -> Result<u64, Lost> {
        self.handle.session.check(Instant::now()).map(|()| self.epoch)
    }

    /// Write `key = value` only while we lead: one transaction that puts the key if and only
    /// if our leader key still exists with the create revision of our epoch, so a monarch
    /// that lost its lease (even one that does not know it yet) cannot write. The key is not
    /// attached to the lease: it outlives this monarch (for the next one to read).
    pub fn record(&self, key: &str, value: &str) -> Result<(), RecordError> {
        self.check().map_err(RecordError::Lost)?;
        let rev = i64::try_from(self.epoch).unwrap_or(i64::MAX);
        let txn = Txn::new()
            .when([Compare::create_revision(self.key.key(), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key, value, None)]);
        let rpc_timeout = self.cfg.connect_timeout;
        let done = self.rt.block_on(async {
            let mut kv = self.client.kv_client();
            match tokio::time::timeout(rpc_timeout, kv.txn(txn)).await {
                Err(_) => Err(RpcFailure::Unreachable(format!("no answer within {rpc_timeout:?}"))),
                Ok(Err(e)) => Err(classify(&e)),
                Ok(Ok(resp)) => Ok(resp.succeeded()),
            }
        });
        match done {
            Ok(true) => Ok(()),
            Ok(false) => Err(RecordError::Lost(Lost {
                why: format!(
                    "our leader key {} (epoch {}) is gone from etcd: another monarch may lead",
                    proof::display_candidate(self.key.key()),
                    self.epoch
                ),
            })),
            Err(f) => Err(RecordError::Etcd(self.rt.block_on(failure(&self.cfg, f, "write a record")))),
        }
    }

    /// Block until leadership is lost (returns why) or `timeout` passes (`None`). Wakes at
    /// the proof deadline by itself, whatever the network does.
    pub fn wait_lost(&self, timeout: Option<Duration>) -> Option<Lost> {
        self.handle.session.wait_lost(timeout)
    }

    /// Stand down and hand over at once: stop claiming leadership first, then delete our
    /// leader key (the election service's `Resign`) and revoke the lease. If etcd cannot be
    /// reached the error says so; the key then goes with the lease within one TTL.
    pub fn resign(self) -> Result<(), Error> {
        let session = &self.handle.session;
        session.latch("resigned", LossKind::Resigned);
        let rpc_timeout = self.cfg.connect_timeout;
        let (resigned, revoked) = self.rt.block_on(async {
            let mut election = self.client.election_client();
            let resign = election.resign(Some(ResignOptions::new().with_leader(self.key.clone())));
            let resigned = tokio::time::timeout(rpc_timeout, resign).await;
            let mut lease = self.client.lease_client();
            let revoke = lease.revoke(session.lease);
            let revoked = tokio::time::timeout(rpc_timeout, revoke).await;
            (resigned, revoked)
        });
        if matches!(resigned, Ok(Ok(_))) || matches!(revoked, Ok(Ok(_))) {
            return Ok(());
        }
        let why = match resigned {
            Err(_) => RpcFailure::Unreachable(format!("no answer to resign within {rpc_timeout:?}")),
            Ok(Err(e)) => classify(&e),
            Ok(Ok(_)) => RpcFailure::Unreachable("unreachable".into()),
        };
        let mut err = self.rt.block_on(failure(&self.cfg, why, "resign"));
        if let Error::Unreachable { cause, .. } | Error::Rejected { cause, .. } = &mut err {
            cause.push_str(&format!("; our leader key goes with the lease within {:?}", session.ttl));
        }
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Candidate>();
        send_sync::<Leadership>();
        send_sync::<Error>();
        send_sync::<Lost>();
    }

    #[test]
    fn config_mistakes_name_the_fix() {
        let ok = Config::new(vec!["http://127.0.0.1:2379".into()], "monarch/c1", "a");
        assert!(ok.validate().is_ok());
        let mut none = ok.clone();
        none.endpoints.clear();
        assert!(none.validate().unwrap_err().to_string().contains("--etcd"));
        let mut tls = ok.clone();
        tls.endpoints = vec!["https://etcd:2379".into()];
        assert!(tls.validate().unwrap_err().to_string().contains("http://"));
        let short = ok.clone().with_ttl(Duration::from_millis(200));
        assert!(short.validate().unwrap_err().to_string().contains("TTL"));
        assert_eq!(ok.clone().with_ttl(Duration::from_secs(8)).margin, Duration::from_secs(2));
    }

    #[test]
    fn gave_up_names_the_monarch() {
        let e = Error::GaveUp {
            election: "m/c".into(),
            waited: Duration::from_secs(1),
            leader: Some(("b".into(), 7)),
        };
        assert!(e.to_string().contains("b is monarch (epoch 7)"), "{e}");
    }
}
