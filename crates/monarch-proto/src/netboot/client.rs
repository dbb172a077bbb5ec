//! The agent's side of the discovery flow, as a state machine: [`Client`].

use std::time::Duration;

use crate::checksum::{Algo, Digest};
use crate::mac::Mac;
use crate::netboot::wire::{Discover, Download, Message, Offer, RefuseCode, canonical};

/// What the agent asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientConfig {
    /// Transaction id (the driver picks a random one per boot).
    pub xid: u32,
    /// This machine's MAC.
    pub mac: Mac,
    /// The image this machine already has (sent in DISCOVER; an OFFER of the same digest
    /// ends the flow with [`Outcome::UpToDate`]).
    pub current: Option<(Algo, Digest)>,
    /// Rebroadcast the DISCOVER this often while nobody answers.
    pub interval: Duration,
    /// Give up (→ [`Outcome::NoServer`]) this long after the first DISCOVER.
    pub give_up_after: Duration,
    /// Refuse offers larger than this: the buffer is one allocation of the offered size,
    /// and a forged or mistaken offer must not make the agent ask for absurd memory.
    pub max_size: u64,
}

/// Inputs from the driver, each at a time `now` (any monotonic clock, same origin throughout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientInput<'a> {
    /// Begin: broadcast the first DISCOVER.
    Start,
    /// A UDP datagram arrived (anything: it is decoded and checked here).
    Datagram(&'a [u8]),
    /// Time passed; check [`Client::deadline`].
    Tick,
    /// The buffer of the offered size is posted.
    BufferPosted,
    /// The buffer could not be allocated.
    BufferFailed,
    /// The server's reply frame to the DOWNLOAD (without the 2-byte length prefix).
    Reply(&'a [u8]),
    /// Exactly the accepted number of bytes landed in the buffer.
    Received,
    /// The connection failed before every byte landed (connect, I/O, timeout, short read);
    /// the text says what happened.
    TransferFailed(&'a str),
    /// The driver computed the digest of the buffer with the offered algorithm.
    Verified(Digest),
}

/// Actions for the driver, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientAction {
    /// Send this DISCOVER datagram to the server address (broadcast or unicast).
    SendDiscover(Vec<u8>),
    /// Allocate the receive buffer: exactly `size` bytes (the pre-posted buffer).
    PostBuffer {
        /// Bytes.
        size: u64,
    },
    /// Connect to `tcp_port` on the address the OFFER came from and send this frame, then
    /// read the reply frame and feed it as [`ClientInput::Reply`].
    RequestDownload {
        /// The offering server's TCP port.
        tcp_port: u16,
        /// The framed DOWNLOAD.
        frame: Vec<u8>,
    },
    /// Read exactly `size` bytes from the connection into the posted buffer.
    Receive {
        /// Bytes.
        size: u64,
    },
    /// Compute the digest of the buffer with `algo`; feed [`ClientInput::Verified`].
    Verify {
        /// Algorithm.
        algo: Algo,
    },
    /// The flow ended.
    Finish(Outcome),
}

/// How the flow ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The buffer holds the offered block and it verified: hand it over.
    Delivered(Offer),
    /// The server offers the image this machine already has: boot it, nothing was transferred.
    UpToDate(Offer),
    /// Nobody answered within `give_up_after`: boot what the machine has.
    NoServer {
        /// Time from the first DISCOVER to giving up.
        waited: Duration,
        /// DISCOVERs sent.
        discovers: u32,
    },
    /// The flow failed; the buffer must not be used.
    Failed(ClientFailure),
}

/// Why the flow failed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ClientFailure {
    /// The offer is larger than the configured limit.
    #[error(
        "the boot server offers {name} of {size} bytes, above this agent's limit of {limit} bytes: raise the limit or offer a smaller image"
    )]
    TooLarge {
        /// Offered image.
        name: String,
        /// Offered size.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// The offer is for an empty image.
    #[error("the boot server offers {0}, an empty image: fix the server's catalog")]
    Empty(String),
    /// The buffer could not be allocated.
    #[error(
        "cannot allocate a buffer of {0} bytes for the offered image: free memory or lower the image size"
    )]
    NoMemory(u64),
    /// The server refused the download.
    #[error("the boot server refused the download ({code:?}): {reason}")]
    Refused {
        /// Code.
        code: RefuseCode,
        /// Server's reason.
        reason: String,
    },
    /// The server's reply was not an ACCEPT/REFUSE for this download, or announced another size.
    #[error("the boot server's reply to the download makes no sense: {0}")]
    Protocol(String),
    /// The download failed (connect, I/O error, timeout, connection closed early).
    #[error("the download of {name} failed: {reason}; nothing was handed over")]
    Transfer {
        /// Image.
        name: String,
        /// What happened.
        reason: String,
    },
    /// What landed does not match the offered digest.
    #[error("{name} arrived corrupted: {algo} digest {got} instead of {expected}; nothing was handed over")]
    DigestMismatch {
        /// Image.
        name: String,
        /// Algorithm.
        algo: Algo,
        /// Offered digest (hex).
        expected: String,
        /// Computed digest (hex).
        got: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ClientState {
    Idle,
    Discovering { started: Duration, next_send: Duration, sent: u32 },
    Posting(Offer),
    Requesting(Offer),
    Receiving(Offer),
    Verifying(Offer),
    Done,
}

/// The agent's side of the flow: Discovering (rebroadcast every `interval` until
/// `give_up_after`) → Offered (buffer posted, download requested) → Downloading → Verifying →
/// Done | NoServer | Failed.
///
/// Safety invariant: [`Outcome::Delivered`] is returned only after the driver fed a digest
/// of the buffer equal to the offered one, computed after every offered byte landed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Client {
    cfg: ClientConfig,
    state: ClientState,
    ignored: u32,
}

impl Client {
    /// A client that has not started yet.
    pub fn new(cfg: ClientConfig) -> Client {
        Client { cfg, state: ClientState::Idle, ignored: 0 }
    }

    /// When to feed [`ClientInput::Tick`] at the latest (only while discovering).
    pub fn deadline(&self) -> Option<Duration> {
        match &self.state {
            ClientState::Discovering { started, next_send, .. } => {
                Some((*next_send).min(started.saturating_add(self.cfg.give_up_after)))
            }
            _ => None,
        }
    }

    /// True once [`ClientAction::Finish`] has been returned.
    pub fn is_done(&self) -> bool {
        self.state == ClientState::Done
    }

    /// Datagrams ignored so far (garbage, other transactions, late offers): for diagnostics.
    pub fn ignored(&self) -> u32 {
        self.ignored
    }

    /// A short name of the current state, for events and logs.
    pub fn phase(&self) -> &'static str {
        match self.state {
            ClientState::Idle => "idle",
            ClientState::Discovering { .. } => "discovering",
            ClientState::Posting(_) => "offered",
            ClientState::Requesting(_) | ClientState::Receiving(_) => "downloading",
            ClientState::Verifying(_) => "verifying",
            ClientState::Done => "done",
        }
    }

    fn discover(&self) -> Vec<u8> {
        Message::Discover(Discover { xid: self.cfg.xid, mac: self.cfg.mac, current: self.cfg.current })
            .encode()
    }

    fn finish(&mut self, o: Outcome) -> Vec<ClientAction> {
        self.state = ClientState::Done;
        vec![ClientAction::Finish(o)]
    }

    fn fail(&mut self, f: ClientFailure) -> Vec<ClientAction> {
        self.finish(Outcome::Failed(f))
    }

    /// Feed one input at time `now`; returns the actions to carry out, in order. Inputs that
    /// make no sense in the current state are ignored (no actions).
    pub fn handle(&mut self, now: Duration, input: ClientInput<'_>) -> Vec<ClientAction> {
        use ClientInput as I;
        match (self.state.clone(), input) {
            (ClientState::Idle, I::Start) => {
                self.state = ClientState::Discovering {
                    started: now,
                    next_send: now.saturating_add(self.cfg.interval),
                    sent: 1,
                };
                vec![ClientAction::SendDiscover(self.discover())]
            }
            (ClientState::Discovering { started, next_send, sent }, I::Tick) => {
                if now >= started.saturating_add(self.cfg.give_up_after) {
                    return self.finish(Outcome::NoServer { waited: now - started, discovers: sent });
                }
                if now < next_send {
                    return vec![];
                }
                // A zero interval would spin: rebroadcast at most once per millisecond.
                let step = self.cfg.interval.max(Duration::from_millis(1));
                self.state = ClientState::Discovering {
                    started,
                    next_send: now.saturating_add(step),
                    sent: sent.saturating_add(1),
                };
                vec![ClientAction::SendDiscover(self.discover())]
            }
            (ClientState::Discovering { .. }, I::Datagram(bytes)) => match Message::decode(bytes) {
                Ok(Message::Offer(o)) if o.xid == self.cfg.xid => self.offered(o),
                _ => {
                    self.ignored = self.ignored.saturating_add(1);
                    vec![]
                }
            },
            (ClientState::Posting(o), I::BufferPosted) => {
                let frame = Message::Download(Download { xid: o.xid, token: o.token, size: o.size }).frame();
                let tcp_port = o.tcp_port;
                self.state = ClientState::Requesting(o);
                vec![ClientAction::RequestDownload { tcp_port, frame }]
            }
            (ClientState::Posting(o), I::BufferFailed) => self.fail(ClientFailure::NoMemory(o.size)),
            (ClientState::Requesting(o), I::Reply(bytes)) => match Message::decode(bytes) {
                Ok(Message::Accept { xid, size }) if xid == o.xid && size == o.size => {
                    self.state = ClientState::Receiving(o);
                    vec![ClientAction::Receive { size }]
                }
                Ok(Message::Accept { xid, size }) => self.fail(ClientFailure::Protocol(format!(
                    "ACCEPT for xid {xid:#x} of {size} bytes, expected xid {:#x} of {} bytes",
                    o.xid, o.size
                ))),
                Ok(Message::Refuse { code, reason, .. }) => {
                    self.fail(ClientFailure::Refused { code, reason })
                }
                Ok(other) => self.fail(ClientFailure::Protocol(format!("unexpected {other:?}"))),
                Err(e) => self.fail(ClientFailure::Protocol(e.to_string())),
            },
            (ClientState::Requesting(o) | ClientState::Receiving(o), I::TransferFailed(why)) => {
                self.fail(ClientFailure::Transfer { name: o.name, reason: why.to_string() })
            }
            (ClientState::Receiving(o), I::Received) => {
                let algo = o.algo;
                self.state = ClientState::Verifying(o);
                vec![ClientAction::Verify { algo }]
            }
            (ClientState::Verifying(o), I::Verified(got)) => {
                if canonical(o.algo, got) == canonical(o.algo, o.digest) {
                    self.finish(Outcome::Delivered(o))
                } else {
                    self.fail(ClientFailure::DigestMismatch {
                        expected: o.digest.to_hex(o.algo),
                        got: got.to_hex(o.algo),
                        algo: o.algo,
                        name: o.name,
                    })
                }
            }
            _ => vec![],
        }
    }

    fn offered(&mut self, o: Offer) -> Vec<ClientAction> {
        if o.size == 0 {
            return self.fail(ClientFailure::Empty(o.name));
        }
        if o.size > self.cfg.max_size {
            return self.fail(ClientFailure::TooLarge {
                name: o.name,
                size: o.size,
                limit: self.cfg.max_size,
            });
        }
        if let Some((algo, d)) = self.cfg.current {
            if algo == o.algo && canonical(algo, d) == canonical(o.algo, o.digest) {
                return self.finish(Outcome::UpToDate(o));
            }
        }
        let size = o.size;
        self.state = ClientState::Posting(o);
        vec![ClientAction::PostBuffer { size }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netboot::wire::frame_len;
    use crate::netboot::wire::tests::offer;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg() -> ClientConfig {
        ClientConfig {
            xid: 0x1234_5678,
            mac: Mac::new([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            current: None,
            interval: ms(500),
            give_up_after: ms(2000),
            max_size: 1 << 30,
        }
    }

    /// Drive a client through the whole happy path, with `landed` as what arrives.
    fn run(c: &mut Client, o: &Offer, landed: &[u8]) -> Outcome {
        assert!(matches!(c.handle(ms(0), ClientInput::Start)[..], [ClientAction::SendDiscover(_)]));
        let a = c.handle(ms(10), ClientInput::Datagram(&Message::Offer(o.clone()).encode()));
        assert_eq!(a, vec![ClientAction::PostBuffer { size: o.size }]);
        let a = c.handle(ms(11), ClientInput::BufferPosted);
        let [ClientAction::RequestDownload { tcp_port, frame }] = &a[..] else { panic!("{a:?}") };
        assert_eq!(*tcp_port, 4012);
        let len = frame_len([frame[0], frame[1]]).unwrap();
        assert_eq!(
            Message::decode(&frame[2..2 + len]).unwrap(),
            Message::Download(Download { xid: o.xid, token: o.token, size: o.size })
        );
        let accept = Message::Accept { xid: o.xid, size: o.size }.encode();
        assert_eq!(
            c.handle(ms(12), ClientInput::Reply(&accept)),
            vec![ClientAction::Receive { size: o.size }]
        );
        assert_eq!(c.handle(ms(20), ClientInput::Received), vec![ClientAction::Verify { algo: o.algo }]);
        let a = c.handle(ms(30), ClientInput::Verified(o.algo.digest(landed)));
        assert!(c.is_done());
        let [ClientAction::Finish(out)] = &a[..] else { panic!("{a:?}") };
        out.clone()
    }

    #[test]
    fn happy_path_delivers() {
        let data = b"kernel and initrd".to_vec();
        let o = offer(&data);
        assert_eq!(run(&mut Client::new(cfg()), &o, &data), Outcome::Delivered(o));
    }

    #[test]
    fn corrupted_landing_is_never_delivered() {
        let data = b"kernel and initrd".to_vec();
        let o = offer(&data);
        let mut bad = data.clone();
        bad[3] ^= 1;
        let out = run(&mut Client::new(cfg()), &o, &bad);
        assert!(matches!(out, Outcome::Failed(ClientFailure::DigestMismatch { .. })), "{out:?}");
        assert!(out_message(&out).contains("nothing was handed over"));
    }

    fn out_message(o: &Outcome) -> String {
        match o {
            Outcome::Failed(f) => f.to_string(),
            o => format!("{o:?}"),
        }
    }

    #[test]
    fn rebroadcasts_then_gives_up() {
        let mut c = Client::new(cfg());
        let mut sent = c.handle(ms(0), ClientInput::Start).len();
        let mut now;
        let out = loop {
            now = c.deadline().unwrap();
            let a = c.handle(now, ClientInput::Tick);
            match &a[..] {
                [ClientAction::SendDiscover(_)] => sent += 1,
                [ClientAction::Finish(o)] => break o.clone(),
                other => panic!("{other:?}"),
            }
        };
        // Sends at 0, 500, 1000, 1500; gives up at 2000.
        assert_eq!(sent, 4);
        assert_eq!(now, ms(2000));
        assert_eq!(out, Outcome::NoServer { waited: ms(2000), discovers: 4 });
        assert!(c.is_done() && c.deadline().is_none());
    }

    #[test]
    fn early_tick_does_nothing_and_garbage_is_ignored() {
        let mut c = Client::new(cfg());
        c.handle(ms(0), ClientInput::Start);
        assert!(c.handle(ms(100), ClientInput::Tick).is_empty());
        assert!(c.handle(ms(101), ClientInput::Datagram(b"garbage")).is_empty());
        let mut other = offer(b"x");
        other.xid = 1;
        assert!(c.handle(ms(102), ClientInput::Datagram(&Message::Offer(other).encode())).is_empty());
        assert_eq!(c.ignored(), 2);
        assert_eq!(c.phase(), "discovering");
    }

    #[test]
    fn too_large_empty_and_up_to_date_offers() {
        let mut c = Client::new(ClientConfig { max_size: 4, ..cfg() });
        c.handle(ms(0), ClientInput::Start);
        let a = c.handle(ms(1), ClientInput::Datagram(&Message::Offer(offer(b"12345")).encode()));
        assert!(matches!(
            &a[..],
            [ClientAction::Finish(Outcome::Failed(ClientFailure::TooLarge { size: 5, .. }))]
        ));

        let mut c = Client::new(cfg());
        c.handle(ms(0), ClientInput::Start);
        let a = c.handle(ms(1), ClientInput::Datagram(&Message::Offer(offer(b"")).encode()));
        assert!(matches!(&a[..], [ClientAction::Finish(Outcome::Failed(ClientFailure::Empty(_)))]));

        let o = offer(b"same image");
        let mut c = Client::new(ClientConfig { current: Some((o.algo, o.digest)), ..cfg() });
        c.handle(ms(0), ClientInput::Start);
        let a = c.handle(ms(1), ClientInput::Datagram(&Message::Offer(o.clone()).encode()));
        assert_eq!(a, vec![ClientAction::Finish(Outcome::UpToDate(o))]);
    }

    #[test]
    fn refusals_and_bad_replies_fail() {
        for (reply, want) in [
            (
                Message::Refuse { xid: 0x1234_5678, code: RefuseCode::BadToken, reason: "no".into() }
                    .encode(),
                "refused",
            ),
            (Message::Accept { xid: 0x1234_5678, size: 99 }.encode(), "makes no sense"),
            (b"nonsense".to_vec(), "makes no sense"),
        ] {
            let o = offer(b"abc");
            let mut c = Client::new(cfg());
            c.handle(ms(0), ClientInput::Start);
            c.handle(ms(1), ClientInput::Datagram(&Message::Offer(o).encode()));
            c.handle(ms(2), ClientInput::BufferPosted);
            let a = c.handle(ms(3), ClientInput::Reply(&reply));
            let [ClientAction::Finish(out @ Outcome::Failed(_))] = &a[..] else { panic!("{a:?}") };
            assert!(out_message(out).contains(want), "{out:?}");
        }
    }

    #[test]
    fn buffer_and_transfer_failures() {
        let o = offer(b"abc");
        let mut c = Client::new(cfg());
        c.handle(ms(0), ClientInput::Start);
        c.handle(ms(1), ClientInput::Datagram(&Message::Offer(o.clone()).encode()));
        let a = c.handle(ms(2), ClientInput::BufferFailed);
        assert_eq!(a, vec![ClientAction::Finish(Outcome::Failed(ClientFailure::NoMemory(3)))]);

        let mut c = Client::new(cfg());
        c.handle(ms(0), ClientInput::Start);
        c.handle(ms(1), ClientInput::Datagram(&Message::Offer(o.clone()).encode()));
        c.handle(ms(2), ClientInput::BufferPosted);
        c.handle(ms(3), ClientInput::Reply(&Message::Accept { xid: o.xid, size: 3 }.encode()));
        let a = c.handle(ms(4), ClientInput::TransferFailed("connection reset"));
        let [ClientAction::Finish(Outcome::Failed(f @ ClientFailure::Transfer { .. }))] = &a[..] else {
            panic!("{a:?}")
        };
        assert_eq!(
            f.to_string(),
            "the download of payload.efi failed: connection reset; nothing was handed over"
        );
    }

    proptest! {
        /// Arbitrary inputs at arbitrary times never panic, and Delivered only ever follows a
        /// Verified input carrying the offered digest, after Received.
        #[test]
        fn client_never_delivers_unverified(
            steps in proptest::collection::vec((0u64..700, 0usize..9, any::<bool>()), 0..60),
            data in proptest::collection::vec(any::<u8>(), 1..64),
        ) {
            let o = offer(&data);
            let offer_bytes = Message::Offer(o.clone()).encode();
            let accept = Message::Accept { xid: o.xid, size: o.size }.encode();
            let mut c = Client::new(cfg());
            let mut now = 0u64;
            let mut received = false;
            for (dt, which, good) in steps {
                now += dt;
                let wrong = o.algo.digest(b"something else");
                let input = match which {
                    0 => ClientInput::Start,
                    1 => ClientInput::Tick,
                    2 => ClientInput::Datagram(if good { &offer_bytes } else { b"junk" }),
                    3 => ClientInput::BufferPosted,
                    4 => ClientInput::Reply(if good { &accept } else { &offer_bytes }),
                    5 => ClientInput::Received,
                    6 => ClientInput::TransferFailed("reset"),
                    7 => ClientInput::Verified(if good { o.digest } else { wrong }),
                    _ => ClientInput::BufferFailed,
                };
                let was_receiving = c.phase() == "downloading";
                let was_done = c.is_done();
                let actions = c.handle(ms(now), input);
                if was_done {
                    prop_assert!(actions.is_empty());
                }
                if matches!(input, ClientInput::Received) && was_receiving {
                    received = true;
                }
                for a in actions {
                    if let ClientAction::Finish(Outcome::Delivered(d)) = a {
                        prop_assert!(received);
                        prop_assert_eq!(input, ClientInput::Verified(o.digest));
                        prop_assert_eq!(d, o.clone());
                    }
                }
            }
        }

        /// Without an answer the client gives up at exactly `give_up_after`, having sent one
        /// DISCOVER per interval.
        #[test]
        fn no_server_bound(interval in 1u64..1000, give_up in 0u64..5000) {
            let mut c = Client::new(ClientConfig { interval: ms(interval), give_up_after: ms(give_up), ..cfg() });
            c.handle(ms(0), ClientInput::Start);
            let mut sends = 1u32;
            loop {
                let d = c.deadline().unwrap();
                prop_assert!(d <= ms(give_up));
                match &c.handle(d, ClientInput::Tick)[..] {
                    [ClientAction::SendDiscover(_)] => sends += 1,
                    [ClientAction::Finish(Outcome::NoServer { waited, discovers })] => {
                        prop_assert_eq!(*waited, ms(give_up));
                        prop_assert_eq!(*discovers, sends);
                        break;
                    }
                    [] => {}
                    other => prop_assert!(false, "{:?}", other),
                }
            }
            prop_assert_eq!(u64::from(sends), give_up.div_ceil(interval).max(1));
        }
    }
}
