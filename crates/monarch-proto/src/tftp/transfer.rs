//! The server side of a TFTP read transfer, as a state machine: [`ReadTransfer`].
//!
//! The transfer ignores ACKs that make no sense instead of trusting them.
//!
//! ## Block numbers
//! Block `i` of a file (0-based) covers bytes `[i·blksize, (i+1)·blksize)` and travels as
//! block number `(i + 1) mod 65536`: after 65535 comes 0 ("rollover"), which is what atftp,
//! tftp-hpa and curl expect for files larger than 65535 blocks (32 MiB at 512-byte blocks).
//! A file always ends with a short block (possibly empty), so a file of `n` bytes has
//! `n / blksize + 1` blocks. Internally the machine counts blocks with `u64` and maps a
//! 16-bit ACK onto the only count that can be meant: the one within the window in flight.

use std::time::Duration;

use crate::tftp::negotiate::{Accepted, MAX_WINDOWSIZE, ServerConfig, negotiate};
use crate::tftp::wire::{DEFAULT_BLKSIZE, ErrorCode, MAX_BLKSIZE, Options, Packet};

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the OACK for these options ([`Accepted::encode_oack`]).
    SendOack(Accepted),
    /// Send DATA block number `block` holding the file's bytes `[offset, offset + len)`.
    SendData {
        /// Block number on the wire.
        block: u16,
        /// Offset in the file.
        offset: u64,
        /// Length (shorter than the block size only for the last block).
        len: usize,
    },
    /// Send an ERROR.
    SendError(ErrorCode, &'static str),
    /// The client acknowledged the last block: `bytes` delivered. Nothing follows.
    Done {
        /// The file's size.
        bytes: u64,
    },
    /// The transfer is over without success. Nothing follows.
    Failed(Failure),
}

/// Why a transfer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The client sent an ERROR (e.g. code 8 after reading `tsize`, as firmware does before
    /// asking again with the size it wanted).
    #[error("the client ended the transfer with TFTP error {code}: {message}")]
    ClientError {
        /// Its code.
        code: u16,
        /// Its message.
        message: String,
    },
    /// No acknowledgement after every retransmission.
    #[error("no acknowledgement from the client after {retries} retransmissions of {timeout:?} each")]
    TimedOut {
        /// Retransmissions made.
        retries: u32,
        /// The timeout used.
        timeout: Duration,
    },
}

/// Inputs from the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// Begin: send the OACK or the first window.
    Start,
    /// A packet from the client's transfer ID (the driver drops other sources).
    Packet(Packet<'a>),
    /// Time passed; retransmit if the deadline is reached.
    Tick,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    AwaitOackAck,
    Sending,
    Over,
}

/// The server side of one read transfer. Feed it [`Input`]s with the current time and
/// carry out the [`Action`]s it pushes; call [`ReadTransfer::handle`] with [`Input::Tick`]
/// no later than [`ReadTransfer::deadline`].
///
/// Sliding window (RFC 7440; windowsize 1 is plain RFC 1350): a window of up to
/// `windowsize` blocks is sent from the first unacknowledged block. An ACK of a block inside
/// the window in flight moves the window to the block after it and sends a fresh window
/// (the client acknowledges the last block it got in order, so a gap is re-sent from there).
/// An ACK that acknowledges nothing new — a duplicate — is ignored: answering duplicates is
/// the Sorcerer's Apprentice bug, where every delayed ACK doubles the traffic for the rest of
/// the transfer. Lost windows are re-sent on timeout, at most `retries` times in a row.
///
/// So a transfer whose client goes silent fails [`ReadTransfer::give_up_after`] after its
/// last progress (`retries + 1` timeouts), and since a client can negotiate a timeout of at
/// most [`ServerConfig::max_timeout`], a request that is never acknowledged holds the server
/// for at most `(retries + 1) × max(timeout, max_timeout)` whatever it asked for.
#[derive(Debug, Clone)]
pub struct ReadTransfer {
    size: u64,
    blksize: u64,
    window: u64,
    blocks: u64,
    acked: u64,
    sent: u64,
    timeout: Duration,
    retries: u32,
    retries_left: u32,
    oack: Accepted,
    phase: Phase,
    deadline: Option<Duration>,
}

impl ReadTransfer {
    /// A transfer of a `size`-byte file for a request with `options`.
    pub fn new(options: Options<'_>, size: u64, cfg: &ServerConfig) -> ReadTransfer {
        let oack = negotiate(options, size, cfg);
        let blksize = u64::from(oack.blksize.unwrap_or(DEFAULT_BLKSIZE));
        let timeout = oack.timeout.map_or(cfg.timeout, |t| Duration::from_secs(u64::from(t)));
        ReadTransfer {
            size,
            blksize,
            window: u64::from(oack.windowsize.unwrap_or(1)),
            blocks: size / blksize + 1,
            acked: 0,
            sent: 0,
            timeout,
            retries: cfg.retries,
            retries_left: cfg.retries,
            oack,
            phase: Phase::Idle,
            deadline: None,
        }
    }

    /// The options granted (what the OACK says).
    pub fn accepted(&self) -> Accepted {
        self.oack
    }

    /// The block size in use.
    pub fn blksize(&self) -> u16 {
        u16::try_from(self.blksize).unwrap_or(MAX_BLKSIZE)
    }

    /// The window size in use.
    pub fn windowsize(&self) -> u16 {
        u16::try_from(self.window).unwrap_or(MAX_WINDOWSIZE)
    }

    /// The retransmission timeout in use.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long the transfer goes without progress (no OACK acknowledgement, no ACK that
    /// moves the window) before it fails: the first send and every retransmission wait one
    /// timeout, `retries + 1` in all.
    pub fn give_up_after(&self) -> Duration {
        self.timeout.saturating_mul(self.retries.saturating_add(1))
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes the client has acknowledged so far.
    pub fn acked_bytes(&self) -> u64 {
        (self.acked * self.blksize).min(self.size)
    }

    /// When the driver must feed [`Input::Tick`] at the latest; `None` once over.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// True once [`Action::Done`] or [`Action::Failed`] was pushed.
    pub fn is_over(&self) -> bool {
        self.phase == Phase::Over
    }

    /// Feed one input at time `now` (any monotonic clock); actions are appended to `out`
    /// (a buffer the driver reuses, so the hot path allocates nothing).
    pub fn handle(&mut self, now: Duration, input: Input<'_>, out: &mut Vec<Action>) {
        match (self.phase, input) {
            (Phase::Over, _) => {}
            (Phase::Idle, Input::Start) => {
                if self.oack.is_empty() {
                    self.phase = Phase::Sending;
                    self.send_window(now, out);
                } else {
                    self.phase = Phase::AwaitOackAck;
                    out.push(Action::SendOack(self.oack));
                    self.deadline = Some(now.saturating_add(self.timeout));
                }
            }
            (Phase::Idle, _) => {}
            (_, Input::Packet(Packet::Error { code, message })) => {
                self.finish(
                    out,
                    Action::Failed(Failure::ClientError {
                        code,
                        message: String::from_utf8_lossy(message).into_owned(),
                    }),
                );
            }
            (Phase::AwaitOackAck, Input::Packet(Packet::Ack { block: 0 })) => {
                self.phase = Phase::Sending;
                self.retries_left = self.retries;
                self.send_window(now, out);
            }
            (Phase::Sending, Input::Packet(Packet::Ack { block })) => {
                // The only count this ACK can mean: the one in [acked, acked + 65535] with
                // these low 16 bits. Windows are at most MAX_WINDOWSIZE, so a stale ACK from
                // before the window lands beyond `sent` and is ignored.
                let c = self.acked + u64::from(block.wrapping_sub(low16(self.acked)));
                if c <= self.acked || c > self.sent {
                    return; // duplicate or stale: never answered (Sorcerer's Apprentice)
                }
                self.acked = c;
                self.retries_left = self.retries;
                if self.acked == self.blocks {
                    let bytes = self.size;
                    self.finish(out, Action::Done { bytes });
                } else {
                    self.send_window(now, out);
                }
            }
            (_, Input::Tick) => {
                if self.deadline.is_some_and(|d| now >= d) {
                    if self.retries_left == 0 {
                        out.push(Action::SendError(ErrorCode::NotDefined, "transfer timed out"));
                        let f = Failure::TimedOut { retries: self.retries, timeout: self.timeout };
                        self.finish(out, Action::Failed(f));
                        return;
                    }
                    self.retries_left -= 1;
                    if self.phase == Phase::AwaitOackAck {
                        out.push(Action::SendOack(self.oack));
                        self.deadline = Some(now.saturating_add(self.timeout));
                    } else {
                        self.send_window(now, out);
                    }
                }
            }
            // Anything else from the client (a stray DATA, RRQ, OACK, an early ACK) is
            // ignored: it cannot advance the transfer, and answering could start a loop.
            (_, Input::Start | Input::Packet(_)) => {}
        }
    }

    fn finish(&mut self, out: &mut Vec<Action>, last: Action) {
        self.phase = Phase::Over;
        self.deadline = None;
        out.push(last);
    }

    /// Send blocks `[acked, acked + window)` (those that exist) and arm the timer.
    fn send_window(&mut self, now: Duration, out: &mut Vec<Action>) {
        let end = self.acked.saturating_add(self.window).min(self.blocks);
        for i in self.acked..end {
            let offset = i * self.blksize;
            let len = self.blksize.min(self.size - offset);
            out.push(Action::SendData {
                block: block_number(i),
                offset,
                len: usize::try_from(len).unwrap_or(usize::MAX),
            });
        }
        self.sent = end;
        self.deadline = Some(now.saturating_add(self.timeout));
    }
}

/// The wire block number of block index `i` (0-based): `(i + 1) mod 65536`.
pub fn block_number(i: u64) -> u16 {
    low16(i.wrapping_add(1))
}

/// The low 16 bits: block numbers are counts modulo 65536.
#[allow(clippy::cast_possible_truncation)] // the truncation is the point
fn low16(x: u64) -> u16 {
    x as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tftp::wire::tests::{req_options, rrq};
    use proptest::prelude::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn start(opts: &[(&str, &str)], size: u64, cfg: &ServerConfig) -> (ReadTransfer, Vec<Action>) {
        let b = rrq(opts);
        let mut t = ReadTransfer::new(req_options(&b), size, cfg);
        let mut out = Vec::new();
        t.handle(ms(0), Input::Start, &mut out);
        (t, out)
    }

    fn ack(t: &mut ReadTransfer, now: u64, block: u16) -> Vec<Action> {
        let mut out = Vec::new();
        t.handle(ms(now), Input::Packet(Packet::Ack { block }), &mut out);
        out
    }

    fn data(block: u16, offset: u64, len: usize) -> Action {
        Action::SendData { block, offset, len }
    }

    #[test]
    fn plain_transfer_without_options() {
        let cfg = ServerConfig::default();
        let (mut t, a) = start(&[], 1024, &cfg);
        assert_eq!(a, vec![data(1, 0, 512)]);
        assert_eq!(t.deadline(), Some(ms(1000)));
        assert_eq!(ack(&mut t, 1, 1), vec![data(2, 512, 512)]);
        assert_eq!(ack(&mut t, 2, 1), vec![], "a duplicate ACK is never answered");
        assert_eq!(ack(&mut t, 3, 2), vec![data(3, 1024, 0)], "an exact multiple ends with an empty block");
        assert_eq!(ack(&mut t, 4, 3), vec![Action::Done { bytes: 1024 }]);
        assert!(t.is_over());
        assert_eq!(t.deadline(), None);
        assert_eq!(ack(&mut t, 5, 3), vec![]);
    }

    #[test]
    fn oack_then_window_then_slide_and_gap() {
        let cfg = ServerConfig::default();
        let (mut t, a) = start(&[("blksize", "100"), ("windowsize", "4"), ("tsize", "0")], 950, &cfg);
        assert_eq!(
            a,
            vec![Action::SendOack(Accepted {
                blksize: Some(100),
                tsize: Some(950),
                timeout: None,
                windowsize: Some(4)
            })]
        );
        assert_eq!(ack(&mut t, 1, 1), vec![], "only ACK 0 acknowledges the OACK");
        assert_eq!(
            ack(&mut t, 1, 0),
            (1..=4).map(|b| data(b, u64::from(b - 1) * 100, 100)).collect::<Vec<_>>()
        );
        // The client got 1 and 2 only: the window restarts at 3.
        assert_eq!(
            ack(&mut t, 2, 2),
            (3..=6).map(|b| data(b, u64::from(b - 1) * 100, 100)).collect::<Vec<_>>()
        );
        assert_eq!(ack(&mut t, 3, 2), vec![], "duplicate");
        assert_eq!(ack(&mut t, 3, 7), vec![], "beyond what was sent");
        assert_eq!(
            ack(&mut t, 4, 6),
            vec![data(7, 600, 100), data(8, 700, 100), data(9, 800, 100), data(10, 900, 50)]
        );
        assert_eq!(t.acked_bytes(), 600);
        assert_eq!(ack(&mut t, 5, 10), vec![Action::Done { bytes: 950 }]);
    }

    #[test]
    fn timeouts_resend_then_give_up() {
        let cfg = ServerConfig { retries: 2, ..ServerConfig::default() };
        let (mut t, _) = start(&[("windowsize", "2")], 2000, &cfg);
        let mut out = Vec::new();
        t.handle(ms(999), Input::Tick, &mut out);
        assert!(out.is_empty(), "not yet");
        t.handle(ms(1000), Input::Tick, &mut out);
        assert!(matches!(out[..], [Action::SendOack(_)]));
        out.clear();
        assert_eq!(ack(&mut t, 1100, 0), vec![data(1, 0, 512), data(2, 512, 512)]);
        assert_eq!(ack(&mut t, 1200, 1), vec![data(2, 512, 512), data(3, 1024, 512)]);
        t.handle(ms(2200), Input::Tick, &mut out);
        assert_eq!(out, vec![data(2, 512, 512), data(3, 1024, 512)], "resend from the first unacked");
        out.clear();
        t.handle(ms(3200), Input::Tick, &mut out);
        assert_eq!(out.len(), 2);
        out.clear();
        t.handle(ms(4200), Input::Tick, &mut out);
        assert_eq!(out[0], Action::SendError(ErrorCode::NotDefined, "transfer timed out"));
        assert!(matches!(out[1], Action::Failed(Failure::TimedOut { retries: 2, .. })));
        assert!(t.is_over());
    }

    #[test]
    fn client_error_ends_at_once() {
        // Firmware asks for tsize, reads it from the OACK, and aborts with error 8.
        let (mut t, _) = start(&[("tsize", "0")], 5000, &ServerConfig::default());
        let mut out = Vec::new();
        t.handle(ms(5), Input::Packet(Packet::Error { code: 8, message: b"tsize only" }), &mut out);
        assert_eq!(out, vec![Action::Failed(Failure::ClientError { code: 8, message: "tsize only".into() })]);
        assert_eq!(t.deadline(), None);
        out.clear();
        t.handle(ms(5000), Input::Tick, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn client_timeout_option_sets_the_timer() {
        let (t, _) = start(&[("timeout", "7")], 1, &ServerConfig::default());
        assert_eq!(t.deadline(), Some(Duration::from_secs(7)));
    }

    /// A client that asks for the longest timeout RFC 2349 allows and then never answers:
    /// the option is declined, and the transfer fails after the server's own timeouts.
    #[test]
    fn a_silent_client_asking_a_long_timeout_is_given_up_on_the_servers_timer() {
        let cfg = ServerConfig { retries: 2, ..ServerConfig::default() };
        let (mut t, a) = start(&[("timeout", "255"), ("tsize", "0")], 100, &cfg);
        assert_eq!(a, vec![Action::SendOack(Accepted { tsize: Some(100), ..Accepted::default() })]);
        assert_eq!(t.timeout(), cfg.timeout);
        assert_eq!(t.give_up_after(), cfg.timeout * 3);
        let mut out = Vec::new();
        let mut now = Duration::ZERO;
        while let Some(d) = t.deadline() {
            now = d;
            t.handle(now, Input::Tick, &mut out);
        }
        assert!(matches!(out.last(), Some(Action::Failed(Failure::TimedOut { retries: 2, .. }))), "{out:?}");
        assert_eq!(now, t.give_up_after(), "failed after retries + 1 timeouts");
        // Up to the cap the client's timeout is used, and it bounds the silence the same way.
        let (t, _) = start(&[("timeout", "10")], 100, &cfg);
        assert_eq!(t.give_up_after(), Duration::from_secs(30));
    }

    #[test]
    fn block_numbers_roll_over_to_zero() {
        assert_eq!(block_number(0), 1);
        assert_eq!(block_number(65534), 65535);
        assert_eq!(block_number(65535), 0);
        assert_eq!(block_number(65536), 1);
        // A file of exactly 65536 blocks of 8 bytes: the last full block goes out as 0.
        let size = 8 * 65536 + 3;
        let (mut t, a) = start(&[("blksize", "8")], size, &ServerConfig::default());
        assert!(matches!(a[..], [Action::SendOack(_)]));
        let mut next = ack(&mut t, 0, 0);
        let mut n = 0u64;
        while let [Action::SendData { block, offset, len }] = next[..] {
            assert_eq!(block, block_number(n));
            assert_eq!(offset, n * 8);
            n += 1;
            next = ack(&mut t, 0, block);
            if len < 8 {
                assert_eq!(next, vec![Action::Done { bytes: size }]);
                break;
            }
        }
        assert_eq!(n, 65537, "65536 full blocks and a short one");
    }

    proptest! {
        /// Under random loss and duplication in both directions and a client that follows
        /// RFC 7440, every byte arrives exactly once and in order, and the server finishes.
        #[test]
        fn delivers_every_byte_in_order(
            size in 0u64..40_000,
            blk in prop_oneof![Just(8u16), Just(64), Just(512), Just(1468)],
            window in 1u16..20,
            loss in 0u32..30,
            dup in 0u32..30,
            seed in any::<u64>(),
        ) {
            simulate(size, blk, window, loss, dup, seed)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4))]
        /// The same past a block-number rollover (more than 65535 blocks).
        #[test]
        fn delivers_past_rollover(extra in 0u64..3000, window in 1u16..20, seed in any::<u64>()) {
            simulate(8 * 65536 + extra, 8, window, 5, 5, seed)?;
        }
    }

    /// A tiny deterministic PRNG (xorshift), so the model needs no extra dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn percent(&mut self, p: u32) -> bool {
            self.next() % 100 < u64::from(p)
        }
    }

    /// A loopback world with a fake clock: the server machine, a lossy duplicating network
    /// and an RFC 7440 client that ACKs the end of each window, the last block, and (on its
    /// own timeout, or a block out of order) the last block it got in order.
    fn simulate(
        size: u64,
        blk: u16,
        window: u16,
        loss: u32,
        dup: u32,
        seed: u64,
    ) -> Result<(), TestCaseError> {
        use std::collections::VecDeque;
        let file: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(7) ^ (i >> 8)).to_le_bytes()[0]).collect();
        let cfg = ServerConfig { retries: 1000, ..ServerConfig::default() };
        let (bs, ws) = (blk.to_string(), window.to_string());
        let req = rrq(&[("blksize", &bs), ("windowsize", &ws), ("tsize", "0")]);
        let mut t = ReadTransfer::new(req_options(&req), size, &cfg);
        let mut rng = Rng(seed | 1);
        let mut to_client: VecDeque<Action> = VecDeque::new();
        let mut to_server: VecDeque<u16> = VecDeque::new();
        let mut got: Vec<u8> = Vec::new();
        let (mut received, mut in_window, mut client_done) = (0u64, 0u16, false);
        let mut now = Duration::ZERO;
        let mut out = Vec::new();
        t.handle(now, Input::Start, &mut out);
        let mut done = None;
        for _step in 0..5_000_000u64 {
            for a in out.drain(..) {
                match a {
                    Action::Done { bytes } => done = Some(bytes),
                    Action::Failed(f) => return Err(TestCaseError::fail(format!("failed: {f}"))),
                    Action::SendError(..) => {}
                    send => {
                        if !rng.percent(loss) {
                            to_client.push_back(send.clone());
                        }
                        if rng.percent(dup) {
                            to_client.push_back(send);
                        }
                    }
                }
            }
            if done.is_some() && client_done {
                break;
            }
            if let Some(p) = to_client.pop_front() {
                let mut reply = None;
                match p {
                    Action::SendOack(a) => {
                        prop_assert_eq!(a.tsize, Some(size));
                        if received == 0 {
                            reply = Some(0);
                        }
                    }
                    Action::SendData { block, offset, len } => {
                        prop_assert!(len <= usize::from(blk));
                        if !client_done && block == block_number(received) {
                            let (o, l) = (usize::try_from(offset).unwrap(), len);
                            got.extend_from_slice(&file[o..o + l]);
                            received += 1;
                            in_window += 1;
                            if l < usize::from(blk) {
                                client_done = true;
                                reply = Some(block);
                            } else if in_window == window {
                                in_window = 0;
                                reply = Some(block);
                            }
                        } else if client_done && block == block_number(received - 1) {
                            reply = Some(block); // dallying: re-ACK a repeated last block
                        }
                    }
                    _ => {}
                }
                if let Some(b) = reply {
                    if !rng.percent(loss) {
                        to_server.push_back(b);
                    }
                    if rng.percent(dup) {
                        to_server.push_back(b);
                    }
                }
            } else if let Some(b) = to_server.pop_front() {
                t.handle(now, Input::Packet(Packet::Ack { block: b }), &mut out);
            } else if let Some(d) = t.deadline() {
                // Silence: the client's timer fires first half the time (it re-ACKs the last
                // block it has in order), else the server's.
                if !client_done && rng.percent(50) {
                    in_window = 0;
                    let b = if received == 0 { 0 } else { block_number(received - 1) };
                    if !rng.percent(loss) {
                        to_server.push_back(b);
                    }
                } else {
                    now = now.max(d);
                    t.handle(now, Input::Tick, &mut out);
                }
            } else if client_done && done.is_some() {
                break;
            } else {
                return Err(TestCaseError::fail("stuck: nothing in flight and no deadline"));
            }
        }
        prop_assert_eq!(done, Some(size), "server finished");
        prop_assert!(client_done);
        prop_assert!(got == file, "delivered bytes differ ({} vs {})", got.len(), file.len());
        Ok(())
    }
}
