//! One lease and the task that keeps it alive: the *session* a campaign runs on.
//!
//! A session is one term of candidacy. Once it is lost (proof lapsed, lease expired on the
//! server, leader key gone, resigned, dropped) it is never trusted again, even if etcd later
//! acknowledges a keep-alive that was stuck in a socket: the next campaign grants a new lease.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::watch;

use crate::proof;

/// Leadership is gone, or can no longer be proven: stop acting as monarch now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("monarch leadership lost: {why}")]
pub struct Lost {
    /// What happened, in words for the operator.
    pub why: String,
}

/// Why a session ended; decides whether we still revoke the lease on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LossKind {
    /// No keep-alive acknowledged recently enough: the lease may still live on the server
    /// (a stuck keep-alive may even renew it), so revoke it once etcd answers again (never
    /// before last send + TTL), letting the next monarch in without waiting another TTL.
    Lapsed,
    /// etcd said the lease no longer exists: nothing left to revoke.
    Expired,
    /// Our leader key was deleted or replaced by someone else: revoke, the session is useless.
    KeyGone,
    /// `resign()` releases the key and the lease itself.
    Resigned,
    /// Dropped without resigning: behave like a crashed process, the lease runs out on its own.
    Dropped,
}

struct State {
    last_acked_send: Instant,
    /// The last keep-alive failure, to explain a lapse.
    last_failure: Option<String>,
    lost: Option<(Lost, LossKind)>,
}

/// The shared state of one lease, read by the blocking API and written by the keep-alive task.
pub(crate) struct Session {
    /// The etcd lease id (positive, checked at grant).
    pub lease: i64,
    /// The TTL proofs are built on: the smaller of the asked and the granted TTL.
    pub ttl: Duration,
    /// What etcd said it granted, in seconds (for reporting etcd's minimum TTL).
    pub granted_secs: i64,
    margin: Duration,
    state: Mutex<State>,
    changed: Condvar,
    lost_tx: watch::Sender<bool>,
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ok while the lease is provably ours at `now`; the first time the proof lapses this
    /// latches the loss, so every later call (and every waiter) sees the same reason.
    pub fn check(&self, now: Instant) -> Result<(), Lost> {
        let mut st = self.lock();
        if let Some((lost, _)) = &st.lost {
            return Err(lost.clone());
        }
        if proof::provably_ours(now, st.last_acked_send, self.ttl, self.margin) {
            return Ok(());
        }
        let lost = self.lapse_reason(now, st.last_acked_send, st.last_failure.as_deref());
        st.lost = Some((lost.clone(), LossKind::Lapsed));
        drop(st);
        self.announce();
        Err(lost)
    }

    fn lapse_reason(&self, now: Instant, last: Instant, failure: Option<&str>) -> Lost {
        let mut why = format!(
            "no lease keep-alive acknowledged by etcd for {:?} (lease TTL {:?}, safety margin {:?}): \
             etcd is unreachable or too slow, standing down before the lease can expire on the server",
            now.saturating_duration_since(last),
            self.ttl,
            self.margin
        );
        if let Some(f) = failure {
            why.push_str(&format!(" (last keep-alive error: {f})"));
        }
        Lost { why }
    }

    /// Record an acknowledged keep-alive sent at `sent`, unless the session is already lost
    /// (a late acknowledgement never revives a session).
    fn acked(&self, sent: Instant) {
        let mut st = self.lock();
        if st.lost.is_none() && sent > st.last_acked_send {
            st.last_acked_send = sent;
            st.last_failure = None;
        }
    }

    fn failed(&self, why: String) {
        self.lock().last_failure = Some(why);
    }

    /// Latch a loss (the first reason wins) and wake every waiter.
    pub fn latch(&self, why: impl Into<String>, kind: LossKind) {
        let mut st = self.lock();
        if st.lost.is_some() {
            return;
        }
        st.lost = Some((Lost { why: why.into() }, kind));
        drop(st);
        self.announce();
    }

    fn announce(&self) {
        self.changed.notify_all();
        self.lost_tx.send_replace(true);
    }

    /// The earliest instant etcd could expire the lease on its own: the send time of the
    /// last acknowledged keep-alive plus the TTL (the proof deadline plus the margin).
    fn earliest_server_expiry(&self) -> Instant {
        self.lock().last_acked_send + self.ttl
    }

    fn loss_kind(&self) -> Option<LossKind> {
        self.lock().lost.as_ref().map(|(_, k)| *k)
    }

    /// Block until the session is lost or `timeout` passes (`None`: no limit). Wakes at the
    /// proof deadline by itself, so a stalled keep-alive task cannot keep it asleep.
    pub fn wait_lost(&self, timeout: Option<Duration>) -> Option<Lost> {
        let until = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut st = self.lock();
        loop {
            if let Some((lost, _)) = &st.lost {
                return Some(lost.clone());
            }
            let now = Instant::now();
            let deadline = proof::proof_deadline(st.last_acked_send, self.ttl, self.margin);
            if now >= deadline {
                drop(st);
                return self.check(now).err();
            }
            let mut wake = deadline;
            if let Some(u) = until {
                if now >= u {
                    return None;
                }
                wake = wake.min(u);
            }
            st = self.changed.wait_timeout(st, wake - now).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// A receiver that turns `true` once the session is lost, for the async side.
    pub fn lost_signal(&self) -> watch::Receiver<bool> {
        self.lost_tx.subscribe()
    }
}

/// The owner's handle on a session; dropping it latches [`LossKind::Dropped`], which ends
/// the keep-alive task without touching the network (a revoke already under way finishes).
pub(crate) struct SessionHandle {
    pub session: Arc<Session>,
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.session.latch("the etcd session was dropped without resigning", LossKind::Dropped);
    }
}

/// How one lease RPC went, as far as the session is concerned.
pub(crate) enum RpcFailure {
    /// etcd could not be reached or did not answer in time: maybe transient.
    Unreachable(String),
    /// etcd answered with something we must not ignore.
    Rejected(String),
}

/// Sort a client error into "etcd not reachable (maybe transient)" and "etcd said no".
pub(crate) fn classify(e: &etcd_client::Error) -> RpcFailure {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::TransportError(_) | E::IoError(_) => RpcFailure::Unreachable(e.to_string()),
        E::GRpcStatus(s) => match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                RpcFailure::Unreachable(format!("{:?}: {}", s.code(), s.message()))
            }
            _ => RpcFailure::Rejected(format!("{:?}: {}", s.code(), s.message())),
        },
        _ => RpcFailure::Rejected(e.to_string()),
    }
}

/// Grant a lease for `ttl` and start keeping it alive. Must run inside the runtime.
pub(crate) async fn start(
    client: &Client,
    ttl: Duration,
    margin: Duration,
    rpc_timeout: Duration,
) -> Result<SessionHandle, RpcFailure> {
    let sent = Instant::now();
    let resp =
        match tokio::time::timeout(rpc_timeout, client.lease_client().grant(proof::grant_seconds(ttl), None))
            .await
        {
            Err(_) => {
                return Err(RpcFailure::Unreachable(format!(
                    "no answer to a lease grant within {rpc_timeout:?}"
                )));
            }
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(resp)) => resp,
        };
    if !resp.error().is_empty() {
        return Err(RpcFailure::Rejected(format!("lease grant refused: {}", resp.error())));
    }
    let lease = resp.id();
    if lease <= 0 {
        return Err(RpcFailure::Rejected(format!("lease grant returned an invalid lease id {lease}")));
    }
    let Some(proof_ttl) = proof::proof_ttl(ttl, resp.ttl()) else {
        return Err(RpcFailure::Rejected(format!("lease grant returned an invalid TTL {}", resp.ttl())));
    };
    let (lost_tx, _) = watch::channel(false);
    let session = Arc::new(Session {
        lease,
        ttl: proof_ttl,
        granted_secs: resp.ttl(),
        margin,
        state: Mutex::new(State { last_acked_send: sent, last_failure: None, lost: None }),
        changed: Condvar::new(),
        lost_tx,
    });
    // Detached: the task ends by itself once the session is lost, and with the runtime.
    drop(tokio::spawn(keep_alive_loop(client.clone(), session.clone(), rpc_timeout)));
    Ok(SessionHandle { session })
}

enum KeepAlive {
    /// etcd acknowledged with a positive TTL.
    Acked,
    /// etcd says the lease is gone.
    Expired,
    /// Anything else (transport, stream ended): reopen the stream and retry.
    Failed(String),
}

/// One keep-alive round trip with exactly one request in flight, so the acknowledgement can
/// be paired with its send time without trusting the server's ordering.
async fn keep_alive_once(
    client: &Client,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    lease: i64,
) -> KeepAlive {
    if let Some((keeper, responses)) = stream.as_mut() {
        if let Err(e) = keeper.keep_alive().await {
            return KeepAlive::Failed(e.to_string());
        }
        return match responses.message().await {
            Ok(Some(resp)) if resp.ttl() > 0 => KeepAlive::Acked,
            Ok(Some(_)) => KeepAlive::Expired,
            Ok(None) => KeepAlive::Failed("etcd closed the keep-alive stream".into()),
            Err(e) => KeepAlive::Failed(e.to_string()),
        };
    }
    // Opening the stream sends the first keep-alive and waits for its answer.
    match client.lease_client().keep_alive(lease).await {
        Ok(pair) => {
            *stream = Some(pair);
            KeepAlive::Acked
        }
        Err(etcd_client::Error::LeaseKeepAliveError(msg)) if msg.contains("not found") => KeepAlive::Expired,
        Err(e) => KeepAlive::Failed(e.to_string()),
    }
}

/// Keep the lease alive every TTL/3 until the session is lost; retry quickly after a failure;
/// latch [`LossKind::Lapsed`] once the proof window has passed, then revoke if that is useful.
async fn keep_alive_loop(client: Client, session: Arc<Session>, rpc_timeout: Duration) {
    let period = proof::keepalive_period(session.ttl);
    let mut lost = session.lost_signal();
    let mut stream = None;
    let mut next = Instant::now() + period;
    loop {
        tokio::select! {
            _ = lost.wait_for(|l| *l) => break,
            () = tokio::time::sleep_until(next.into()) => {}
        }
        let sent = Instant::now();
        // Never wait past a period for one answer: a fresh attempt may get through where a
        // stuck stream does not.
        let outcome = tokio::select! {
            _ = lost.wait_for(|l| *l) => break,
            r = tokio::time::timeout(period, keep_alive_once(&client, &mut stream, session.lease)) => r,
        };
        match outcome {
            Ok(KeepAlive::Acked) => {
                session.acked(sent);
                next = sent + period;
            }
            Ok(KeepAlive::Expired) => {
                session.latch(
                    format!(
                        "etcd says lease {:x} has expired (no keep-alive reached it within its TTL {:?})",
                        session.lease, session.ttl
                    ),
                    LossKind::Expired,
                );
                break;
            }
            Ok(KeepAlive::Failed(why)) => {
                stream = None;
                session.failed(why);
                next = Instant::now() + (period / 4).min(Duration::from_millis(200));
            }
            Err(_) => {
                stream = None;
                session.failed(format!("no answer within {period:?}"));
                next = Instant::now();
            }
        }
        if session.check(Instant::now()).is_err() {
            break;
        }
    }
    if matches!(session.loss_kind(), Some(LossKind::Lapsed | LossKind::KeyGone)) {
        // Not before the earliest moment the server could have expired the lease by itself:
        // a caller whose check() said Ok just before the lapse is promised its margin, and an
        // early revoke would let the next monarch in while that caller may still be acting.
        tokio::time::sleep_until(session.earliest_server_expiry().into()).await;
        revoke_best_effort(&client, session.lease, session.ttl, rpc_timeout).await;
    }
}

/// Revoke a lease we no longer claim, retrying for a few TTLs: this deletes our leader key
/// instead of making the next monarch wait for a server-side expiry that a stale keep-alive,
/// stuck in a socket while etcd was paused and delivered late, could postpone by a TTL. Failure is harmless: the lease still
/// expires on its own, since nobody keeps it alive any more.
async fn revoke_best_effort(client: &Client, lease: i64, ttl: Duration, rpc_timeout: Duration) {
    let give_up = Instant::now() + ttl * 3;
    while Instant::now() < give_up {
        match tokio::time::timeout(rpc_timeout, client.lease_client().revoke(lease)).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) if e.to_string().contains("not found") => return,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
