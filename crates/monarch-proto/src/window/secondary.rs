//! The secondary (agent) side of the window handshake, as a sans-IO state machine.
//!
//! Safety invariant: [`SecondaryAction::Handoff`] is emitted only after this machine itself
//! computed the written checksum of an attempt (fed back as [`SecondaryInput::Verified`]) and
//! the primary's OK names *that* attempt and *that* checksum. A wrong, stale or forged OK
//! fails the secondary instead.

use crate::checksum::Digest;
use crate::window::msg::{Command, FailCode, RegisterError, Status, WindowConfig};
use std::time::Duration;

/// Inputs from the driver.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecondaryInput {
    /// The agent mapped the window and validated its header.
    Start,
    /// The primary posted RELEASE; the config block decoded (or not).
    Release(Result<WindowConfig, RegisterError>),
    /// A new monarch (a higher epoch, see [`Fence`]) posted RELEASE: start the handshake
    /// over with it, dropping whatever attempt was in flight. Ignored once handing off.
    Restart(Result<WindowConfig, RegisterError>),
    /// Any other new command from the primary.
    Command(Command),
    /// The command block could not be decoded.
    Garbage(RegisterError),
    /// The driver computed the written checksum of `attempt`.
    Verified {
        /// The attempt verified.
        attempt: u32,
        /// The written checksum.
        digest: Digest,
    },
    /// The driver checked the signature of the bytes it verified for `attempt` and refused
    /// it (fed right after [`SecondaryInput::Verified`]). The checksum still decides whether
    /// the copy arrived intact, so VERIFIED is posted as usual and the monarch may copy
    /// again; an OK for this attempt fails the secondary with
    /// [`FailCode::SignatureRefused`] instead of handing off.
    SignatureRefused {
        /// The attempt whose bytes were refused.
        attempt: u32,
    },
    /// The handoff could not be carried out.
    HandoffFailed(FailCode),
    /// The primary holds this secondary at its rendezvous (`life.hold`: configuration
    /// retry, its dependencies are not ready): before RELEASE, the wait for it starts over.
    Held,
    /// Time passed; check deadlines.
    Tick,
}

/// Actions for the driver.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecondaryAction {
    /// Post a status and ring the primary's doorbell.
    Post(Status),
    /// Compute the written checksum of what landed (pull mode: copy it in first).
    Verify {
        /// The attempt.
        attempt: u32,
        /// The config to verify with.
        config: WindowConfig,
    },
    /// Jump into the verified image.
    Handoff {
        /// The attempt handed off into.
        attempt: u32,
        /// Its verified checksum (the driver re-checks what it loads against it).
        digest: Digest,
        /// Its config.
        config: WindowConfig,
    },
    /// Stop: `Ok(())` after a handoff the driver completed, or the reason for failing.
    Exit(Result<(), SecondaryFailure>),
}

/// Why the secondary stopped without handing off.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecondaryFailure {
    /// The secondary gave up with this code (also posted to the primary).
    Failed(FailCode),
    /// The primary aborted, with its reason code.
    Aborted(crate::window::msg::AbortReason),
    /// A register value from the primary was invalid.
    Protocol(RegisterError),
}

impl std::fmt::Display for SecondaryFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecondaryFailure::Failed(c) => f.write_str(&c.describe()),
            SecondaryFailure::Aborted(r) => write!(f, "the monarch aborted this secondary ({r:?})"),
            SecondaryFailure::Protocol(e) => write!(f, "{e}"),
        }
    }
}

/// What the secondary does with a command, given the epoch it carries (the fencing rules'
/// fencing): see [`Fence::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Admit {
    /// From the monarch this secondary follows: handle it.
    Current,
    /// From a newer monarch: follow it from now on, then handle the command (a RELEASE
    /// becomes [`SecondaryInput::Restart`]).
    Takeover,
    /// From an older epoch, or another block claiming the current epoch: ignore it.
    Stale,
}

/// Fencing: which monarch a secondary obeys. Every command carries its writer's epoch and
/// comes from the writer's own command block. The secondary follows the block of the
/// highest epoch it has seen; a monarch that was deposed while paused and wakes up writes
/// into its old block with its old epoch, and is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Fence {
    followed: Option<(usize, u32)>,
    fenced: u64,
    floor: u32,
}

impl Fence {
    /// A fence that also refuses anything older than `floor`: the epoch of the monarch that
    /// configured the window (`cfg.epoch`), so an agent started by a new monarch never obeys
    /// a deposed one, even if the deposed one speaks first.
    pub fn with_floor(floor: u32) -> Fence {
        Fence { floor, ..Fence::default() }
    }

    /// Raise the floor to `floor` (never lowers it). A new monarch claims every window by
    /// raising `cfg.epoch` before it posts anything; the secondary reads `cfg.epoch` after
    /// each command it reads and raises its floor, so from the moment a window is claimed
    /// no command of an older epoch is obeyed, not even from the monarch followed until then.
    pub fn raise_floor(&mut self, floor: u32) {
        self.floor = self.floor.max(floor);
    }

    /// The lowest epoch still obeyed.
    pub fn floor(&self) -> u32 {
        self.floor
    }

    /// Decide on a command from command block `block` stamped with `epoch`.
    pub fn admit(&mut self, block: usize, epoch: u32) -> Admit {
        if epoch < self.floor {
            self.fenced += 1;
            return Admit::Stale;
        }
        match self.followed {
            None => {
                self.followed = Some((block, epoch));
                Admit::Current
            }
            Some((b, e)) if b == block && e == epoch => Admit::Current,
            Some((_, e)) if epoch > e => {
                self.followed = Some((block, epoch));
                Admit::Takeover
            }
            Some(_) => {
                self.fenced += 1;
                Admit::Stale
            }
        }
    }

    /// The block and epoch followed, once a monarch has spoken.
    pub fn followed(&self) -> Option<(usize, u32)> {
        self.followed
    }

    /// The epoch followed (0 before any command).
    pub fn epoch(&self) -> u32 {
        self.followed.map_or(0, |(_, e)| e)
    }

    /// Commands ignored so far.
    pub fn fenced(&self) -> u64 {
        self.fenced
    }
}

/// Where the secondary stands.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum State {
    Idle,
    AwaitRelease,
    AwaitStaged { config: WindowConfig, last_attempt: u32 },
    Verifying { config: WindowConfig, attempt: u32 },
    AwaitDecision { config: WindowConfig, attempt: u32, digest: Digest, refused: bool },
    HandingOff { attempt: u32 },
    Done,
}

/// The secondary's handshake.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Secondary {
    pid: u64,
    timeout: Duration,
    state: State,
    deadline: Option<Duration>,
}

impl Secondary {
    /// `pid` goes into READY; `timeout` bounds every wait for the primary.
    pub fn new(pid: u64, timeout: Duration) -> Secondary {
        Secondary { pid, timeout, state: State::Idle, deadline: None }
    }

    /// When the driver must feed [`SecondaryInput::Tick`] at the latest.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// True once [`SecondaryAction::Exit`] has been returned.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True between the handoff action and its completion.
    pub fn is_handing_off(&self) -> bool {
        matches!(self.state, State::HandingOff { .. })
    }

    fn wait(&mut self, state: State, now: Duration) {
        self.state = state;
        self.deadline = Some(now.saturating_add(self.timeout));
    }

    fn fail(&mut self, attempt: u32, error: FailCode, why: SecondaryFailure) -> Vec<SecondaryAction> {
        self.state = State::Done;
        self.deadline = None;
        vec![SecondaryAction::Post(Status::Failed { attempt, error }), SecondaryAction::Exit(Err(why))]
    }

    fn attempt(&self) -> u32 {
        match self.state {
            State::AwaitStaged { last_attempt, .. } => last_attempt,
            State::Verifying { attempt, .. }
            | State::AwaitDecision { attempt, .. }
            | State::HandingOff { attempt } => attempt,
            _ => 0,
        }
    }

    /// Feed one input at time `now`.
    pub fn handle(&mut self, now: Duration, input: SecondaryInput) -> Vec<SecondaryAction> {
        use SecondaryInput as I;
        let attempt = self.attempt();
        match (self.state.clone(), input) {
            (State::Done, _) => Vec::new(),
            (State::Idle, I::Start) => {
                self.wait(State::AwaitRelease, now);
                Vec::new()
            }
            (State::Idle, _) => Vec::new(),
            (State::HandingOff { .. }, I::HandoffFailed(code)) => {
                self.fail(attempt, code, SecondaryFailure::Failed(code))
            }
            // Handing off: the image is ours now; the primary can no longer stop it.
            (State::HandingOff { .. }, _) => Vec::new(),
            (_, I::Start) => Vec::new(),
            (State::AwaitRelease, I::Held) => {
                self.wait(State::AwaitRelease, now);
                Vec::new()
            }
            (_, I::Held) => Vec::new(),
            (_, I::Tick) => match self.deadline {
                Some(d) if now >= d => {
                    self.fail(attempt, FailCode::Timeout, SecondaryFailure::Failed(FailCode::Timeout))
                }
                _ => Vec::new(),
            },
            (_, I::Garbage(e)) => self.fail(attempt, FailCode::ProtocolError, SecondaryFailure::Protocol(e)),
            (_, I::Command(Command::Abort { reason })) => {
                self.state = State::Done;
                self.deadline = None;
                vec![SecondaryAction::Exit(Err(SecondaryFailure::Aborted(reason)))]
            }
            (State::AwaitRelease, I::Release(Ok(config))) => {
                self.wait(State::AwaitStaged { config, last_attempt: 0 }, now);
                vec![SecondaryAction::Post(Status::Ready { pid: self.pid })]
            }
            (State::AwaitRelease, I::Release(Err(e)) | I::Restart(Err(e))) => {
                self.fail(0, FailCode::BadConfig, SecondaryFailure::Protocol(e))
            }
            (_, I::Restart(Ok(config))) => {
                // Nothing verified so far is handed off: the new monarch stages again (or
                // adopts a verified attempt with OK instead of restarting; see `Fence`).
                self.wait(State::AwaitStaged { config, last_attempt: 0 }, now);
                vec![SecondaryAction::Post(Status::Ready { pid: self.pid })]
            }
            (_, I::Restart(Err(e))) => self.fail(attempt, FailCode::BadConfig, SecondaryFailure::Protocol(e)),
            (State::AwaitStaged { config, last_attempt }, I::Command(Command::Staged { attempt: a }))
            | (
                State::AwaitDecision { config, attempt: last_attempt, .. },
                I::Command(Command::Staged { attempt: a }),
            ) if a == last_attempt + 1 => {
                self.state = State::Verifying { config, attempt: a };
                self.deadline = None;
                vec![SecondaryAction::Verify { attempt: a, config }]
            }
            (State::Verifying { config, attempt: a }, I::Verified { attempt: v, digest }) if v == a => {
                self.wait(State::AwaitDecision { config, attempt: a, digest, refused: false }, now);
                vec![SecondaryAction::Post(Status::Verified { attempt: a, digest })]
            }
            (State::AwaitDecision { config, attempt: a, digest, .. }, I::SignatureRefused { attempt: r })
                if r == a =>
            {
                self.state = State::AwaitDecision { config, attempt: a, digest, refused: true };
                Vec::new()
            }
            (
                State::AwaitDecision { config, attempt: a, digest, refused },
                I::Command(Command::Ok { attempt: oa, digest: od }),
            ) => {
                if oa == a && od == digest && refused {
                    // Never hand off into bytes whose signature this side refused.
                    self.fail(
                        a,
                        FailCode::SignatureRefused,
                        SecondaryFailure::Failed(FailCode::SignatureRefused),
                    )
                } else if oa == a && od == digest {
                    self.state = State::HandingOff { attempt: a };
                    self.deadline = None;
                    vec![
                        SecondaryAction::Post(Status::HandingOff { attempt: a }),
                        SecondaryAction::Handoff { attempt: a, digest, config },
                    ]
                } else {
                    self.fail(a, FailCode::OkMismatch, SecondaryFailure::Failed(FailCode::OkMismatch))
                }
            }
            (_, I::Command(Command::Shutdown)) => {
                self.state = State::Done;
                self.deadline = None;
                vec![SecondaryAction::Exit(Err(SecondaryFailure::Aborted(
                    crate::window::msg::AbortReason::Stopped,
                )))]
            }
            // Anything else from the primary, in this state, breaks the protocol.
            (_, I::Command(_) | I::Release(_)) => {
                self.fail(attempt, FailCode::ProtocolError, SecondaryFailure::Failed(FailCode::ProtocolError))
            }
            // Driver inputs that do not belong to this state are ignored.
            (_, I::Verified { .. } | I::SignatureRefused { .. } | I::HandoffFailed(_)) => Vec::new(),
        }
    }

    /// The driver finished the handoff (for `none`, or after an exec that returned control).
    pub fn handed_off(&mut self) -> Vec<SecondaryAction> {
        if self.is_handing_off() {
            self.state = State::Done;
            vec![SecondaryAction::Exit(Ok(()))]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::Algo;
    use crate::window::msg::{AbortReason, Mode};
    use proptest::prelude::*;

    const CFG: WindowConfig = WindowConfig {
        image_size: 100,
        load_offset: 0,
        algo: Algo::Crc32c,
        mode: Mode::Pull,
        epoch: 0,
        chunk_size: 0,
        ring_size: 0,
    };

    fn d(b: u8) -> Digest {
        Digest([b; 32])
    }
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn verified(digest: Digest) -> Secondary {
        let mut s = Secondary::new(42, ms(1000));
        assert!(s.handle(ms(0), SecondaryInput::Start).is_empty());
        assert_eq!(
            s.handle(ms(1), SecondaryInput::Release(Ok(CFG))),
            vec![SecondaryAction::Post(Status::Ready { pid: 42 })]
        );
        assert_eq!(
            s.handle(ms(2), SecondaryInput::Command(Command::Staged { attempt: 1 })),
            vec![SecondaryAction::Verify { attempt: 1, config: CFG }]
        );
        assert_eq!(
            s.handle(ms(3), SecondaryInput::Verified { attempt: 1, digest }),
            vec![SecondaryAction::Post(Status::Verified { attempt: 1, digest })]
        );
        s
    }

    #[test]
    fn success_path() {
        let mut s = verified(d(7));
        let a = s.handle(ms(4), SecondaryInput::Command(Command::Ok { attempt: 1, digest: d(7) }));
        assert_eq!(
            a,
            vec![
                SecondaryAction::Post(Status::HandingOff { attempt: 1 }),
                SecondaryAction::Handoff { attempt: 1, digest: d(7), config: CFG }
            ]
        );
        assert_eq!(s.handed_off(), vec![SecondaryAction::Exit(Ok(()))]);
    }

    #[test]
    fn a_refused_signature_fails_the_ok_instead_of_handing_off_but_a_new_copy_may_still_pass() {
        let mut s = verified(d(7));
        assert!(s.handle(ms(4), SecondaryInput::SignatureRefused { attempt: 1 }).is_empty());
        let a = s.handle(ms(5), SecondaryInput::Command(Command::Ok { attempt: 1, digest: d(7) }));
        assert_eq!(
            a,
            vec![
                SecondaryAction::Post(Status::Failed { attempt: 1, error: FailCode::SignatureRefused }),
                SecondaryAction::Exit(Err(SecondaryFailure::Failed(FailCode::SignatureRefused))),
            ]
        );
        // A refusal of a copy damaged in transit: the monarch sees the checksum mismatch and
        // copies again; the new copy is judged afresh.
        let mut s = verified(d(1));
        s.handle(ms(4), SecondaryInput::SignatureRefused { attempt: 1 });
        s.handle(ms(5), SecondaryInput::Command(Command::Staged { attempt: 2 }));
        s.handle(ms(6), SecondaryInput::Verified { attempt: 2, digest: d(7) });
        let a = s.handle(ms(7), SecondaryInput::Command(Command::Ok { attempt: 2, digest: d(7) }));
        assert_eq!(a[0], SecondaryAction::Post(Status::HandingOff { attempt: 2 }));
    }

    #[test]
    fn retry_path_verifies_the_next_attempt() {
        let mut s = verified(d(1));
        let a = s.handle(ms(4), SecondaryInput::Command(Command::Staged { attempt: 2 }));
        assert_eq!(a, vec![SecondaryAction::Verify { attempt: 2, config: CFG }]);
    }

    #[test]
    fn ok_for_another_checksum_or_attempt_is_refused() {
        let mut s = verified(d(1));
        let a = s.handle(ms(4), SecondaryInput::Command(Command::Ok { attempt: 1, digest: d(7) }));
        assert_eq!(a[0], SecondaryAction::Post(Status::Failed { attempt: 1, error: FailCode::OkMismatch }));
        let mut s = verified(d(1));
        let a = s.handle(ms(4), SecondaryInput::Command(Command::Ok { attempt: 2, digest: d(1) }));
        assert_eq!(a[0], SecondaryAction::Post(Status::Failed { attempt: 1, error: FailCode::OkMismatch }));
    }

    #[test]
    fn a_held_secondary_waits_for_release_past_its_timeout_and_only_then() {
        let mut s = Secondary::new(7, ms(1000));
        assert!(s.handle(ms(0), SecondaryInput::Start).is_empty());
        // Held at 900 ms: the wait for RELEASE starts over.
        assert!(s.handle(ms(900), SecondaryInput::Held).is_empty());
        assert!(s.handle(ms(1500), SecondaryInput::Tick).is_empty(), "held: no timeout yet");
        assert_eq!(s.deadline(), Some(ms(1900)));
        let a = s.handle(ms(1901), SecondaryInput::Tick);
        assert_eq!(a[0], SecondaryAction::Post(Status::Failed { attempt: 0, error: FailCode::Timeout }));
        // Once released, a hold changes nothing: the verify wait is the monarch's business.
        let mut s = verified(d(1));
        let before = s.deadline();
        assert!(s.handle(ms(900), SecondaryInput::Held).is_empty());
        assert_eq!(s.deadline(), before);
    }

    #[test]
    fn abort_timeout_garbage_and_bad_config() {
        let mut s = verified(d(1));
        let a = s
            .handle(ms(4), SecondaryInput::Command(Command::Abort { reason: AbortReason::ChecksumMismatch }));
        assert_eq!(
            a,
            vec![SecondaryAction::Exit(Err(SecondaryFailure::Aborted(AbortReason::ChecksumMismatch)))]
        );

        let mut s = verified(d(1));
        assert!(s.handle(ms(1002), SecondaryInput::Tick).is_empty());
        let a = s.handle(ms(1003), SecondaryInput::Tick);
        assert_eq!(a[0], SecondaryAction::Post(Status::Failed { attempt: 1, error: FailCode::Timeout }));

        let mut s = verified(d(1));
        let a = s.handle(ms(4), SecondaryInput::Garbage(RegisterError::UnknownCommand(99)));
        assert_eq!(
            a[0],
            SecondaryAction::Post(Status::Failed { attempt: 1, error: FailCode::ProtocolError })
        );

        let mut s = Secondary::new(1, ms(10));
        s.handle(ms(0), SecondaryInput::Start);
        let a = s.handle(ms(1), SecondaryInput::Release(Err(RegisterError::EmptyImage)));
        assert_eq!(a[0], SecondaryAction::Post(Status::Failed { attempt: 0, error: FailCode::BadConfig }));
    }

    #[test]
    fn skipped_or_repeated_attempt_is_a_protocol_error() {
        let mut s = verified(d(1));
        let a = s.handle(ms(4), SecondaryInput::Command(Command::Staged { attempt: 1 }));
        assert_eq!(
            a[0],
            SecondaryAction::Post(Status::Failed { attempt: 1, error: FailCode::ProtocolError })
        );
        let mut s = verified(d(1));
        let a = s.handle(ms(4), SecondaryInput::Command(Command::Staged { attempt: 3 }));
        assert_eq!(
            a[0],
            SecondaryAction::Post(Status::Failed { attempt: 1, error: FailCode::ProtocolError })
        );
    }

    #[test]
    fn failed_handoff_is_reported() {
        let mut s = verified(d(7));
        s.handle(ms(4), SecondaryInput::Command(Command::Ok { attempt: 1, digest: d(7) }));
        let a = s.handle(ms(5), SecondaryInput::HandoffFailed(FailCode::ImageChanged));
        assert_eq!(a[0], SecondaryAction::Post(Status::Failed { attempt: 1, error: FailCode::ImageChanged }));
    }

    #[test]
    fn a_new_monarch_restarts_an_attempt_in_flight_but_not_a_handoff() {
        let mut s = verified(d(1));
        let a = s.handle(ms(4), SecondaryInput::Restart(Ok(CFG)));
        assert_eq!(a, vec![SecondaryAction::Post(Status::Ready { pid: 42 })]);
        // Attempts count again from 1 for the new monarch.
        let a = s.handle(ms(5), SecondaryInput::Command(Command::Staged { attempt: 1 }));
        assert_eq!(a, vec![SecondaryAction::Verify { attempt: 1, config: CFG }]);

        let mut s = verified(d(7));
        s.handle(ms(4), SecondaryInput::Command(Command::Ok { attempt: 1, digest: d(7) }));
        assert!(s.is_handing_off());
        assert!(s.handle(ms(5), SecondaryInput::Restart(Ok(CFG))).is_empty());
        assert!(s.is_handing_off());
    }

    #[test]
    fn fence_follows_the_highest_epoch_and_ignores_the_rest() {
        let mut f = Fence::default();
        assert_eq!(f.admit(0, 1), Admit::Current);
        assert_eq!(f.admit(0, 1), Admit::Current);
        assert_eq!(f.admit(1, 2), Admit::Takeover);
        assert_eq!(f.followed(), Some((1, 2)));
        // The deposed monarch wakes up: its block, its old epoch.
        assert_eq!(f.admit(0, 1), Admit::Stale);
        // A block that claims the current epoch without owning it.
        assert_eq!(f.admit(2, 2), Admit::Stale);
        assert_eq!(f.admit(1, 2), Admit::Current);
        assert_eq!(f.fenced(), 2);
        assert_eq!(f.admit(0, 3), Admit::Takeover);
        assert_eq!(f.epoch(), 3);

        let mut f = Fence::with_floor(2);
        assert_eq!(f.admit(0, 1), Admit::Stale, "older than the window's config");
        assert_eq!(f.followed(), None);
        assert_eq!(f.admit(1, 2), Admit::Current);
    }

    #[test]
    fn a_claimed_window_ignores_the_monarch_it_followed() {
        // Regression: a paused monarch woke up after its successor was elected but before the
        // successor had written to this window; its ABORT came from the block the secondary
        // still followed, and was obeyed. The successor claims cfg.epoch first: that fences it.
        let mut f = Fence::with_floor(1);
        assert_eq!(f.admit(0, 1), Admit::Current);
        f.raise_floor(2);
        assert_eq!(f.admit(0, 1), Admit::Stale, "the deposed monarch, though followed");
        assert_eq!(f.admit(1, 2), Admit::Takeover);
        f.raise_floor(1);
        assert_eq!(f.floor(), 2, "a floor never goes down");
        assert_eq!(f.fenced(), 1);
    }

    proptest! {
        /// Fencing under any mix of blocks and epochs: once a command of epoch e was admitted,
        /// no command of an epoch below e is ever admitted again, and at any time every
        /// admitted command of the current epoch comes from one block.
        #[test]
        fn fenced_commands_never_get_through(
            cmds in proptest::collection::vec((0usize..3, 0u32..5, proptest::option::of(0u32..5)), 0..60)
        ) {
            let mut f = Fence::default();
            let mut high = 0u32;
            let mut claimed = 0u32;
            let mut owner: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
            for (block, epoch, claim) in cmds {
                if let Some(c) = claim {
                    // A monarch claims the window (cfg.epoch only grows).
                    claimed = claimed.max(c);
                    f.raise_floor(claimed);
                }
                let admitted = f.admit(block, epoch);
                if admitted != Admit::Stale {
                    prop_assert!(epoch >= claimed, "epoch {epoch} admitted in a window claimed by {claimed}");
                }
                match admitted {
                    Admit::Current | Admit::Takeover => {
                        prop_assert!(epoch >= high, "epoch {epoch} admitted after {high}");
                        high = epoch;
                        let o = *owner.entry(epoch).or_insert(block);
                        prop_assert_eq!(o, block, "two blocks admitted for epoch {}", epoch);
                    }
                    Admit::Stale => prop_assert!(
                        epoch < high || epoch < claimed || owner.get(&epoch) != Some(&block)
                    ),
                }
            }
        }
    }

    fn arb_input() -> impl Strategy<Value = SecondaryInput> {
        let dg = prop_oneof![Just(d(7)), Just(d(1))];
        let dg2 = dg.clone();
        prop_oneof![
            Just(SecondaryInput::Start),
            Just(SecondaryInput::Tick),
            Just(SecondaryInput::Held),
            Just(SecondaryInput::Release(Ok(CFG))),
            Just(SecondaryInput::Release(Err(RegisterError::EmptyImage))),
            Just(SecondaryInput::Restart(Ok(CFG))),
            (1u32..4).prop_map(|attempt| SecondaryInput::Command(Command::Staged { attempt })),
            ((1u32..4), dg)
                .prop_map(|(attempt, digest)| SecondaryInput::Command(Command::Ok { attempt, digest })),
            ((1u32..4), dg2).prop_map(|(attempt, digest)| SecondaryInput::Verified { attempt, digest }),
            Just(SecondaryInput::Command(Command::Abort { reason: AbortReason::Timeout })),
            Just(SecondaryInput::Command(Command::Release)),
            Just(SecondaryInput::Garbage(RegisterError::UnknownCommand(5))),
            (1u32..4).prop_map(|attempt| SecondaryInput::SignatureRefused { attempt }),
        ]
    }

    proptest! {
        /// The safety invariant under any sequence of inputs: a handoff happens only into an
        /// attempt this side verified, with the checksum this side computed and the primary
        /// confirmed, and whose signature this side did not refuse; at most one handoff and
        /// at most one exit.
        #[test]
        fn never_hands_off_into_an_unverified_image(inputs in proptest::collection::vec((arb_input(), 0u64..600), 0..40)) {
            let mut s = Secondary::new(1, ms(1000));
            let mut now = 0;
            let mut requested: Option<u32> = None;
            let mut computed: Vec<(u32, Digest)> = Vec::new();
            let mut confirmed: Vec<(u32, Digest)> = Vec::new();
            let (mut handoffs, mut exits) = (0, 0);
            let mut refused: Vec<u32> = Vec::new();
            let mut last_verified = None;
            for (input, dt) in inputs {
                now += dt;
                // The driver only answers Verify for the attempt it was asked to verify.
                if let SecondaryInput::Verified { attempt, digest } = &input {
                    if requested == Some(*attempt) {
                        computed.push((*attempt, *digest));
                        refused.retain(|r| r != attempt);
                        last_verified = Some(*attempt);
                    }
                }
                // ... and refuses a signature right after verifying those bytes.
                if let SecondaryInput::SignatureRefused { attempt } = &input {
                    if last_verified == Some(*attempt) { refused.push(*attempt); }
                }
                if let SecondaryInput::Command(Command::Ok { attempt, digest }) = &input {
                    confirmed.push((*attempt, *digest));
                }
                for a in s.handle(ms(now), input) {
                    match a {
                        SecondaryAction::Verify { attempt, .. } => requested = Some(attempt),
                        SecondaryAction::Handoff { attempt, digest, .. } => {
                            handoffs += 1;
                            prop_assert!(computed.contains(&(attempt, digest)), "handoff into an attempt never verified here");
                            prop_assert!(confirmed.contains(&(attempt, digest)), "handoff without the primary's OK");
                            prop_assert!(!refused.contains(&attempt), "handoff into bytes whose signature was refused");
                        }
                        SecondaryAction::Exit(_) => exits += 1,
                        SecondaryAction::Post(_) => prop_assert_eq!(exits, 0),
                    }
                }
            }
            prop_assert!(handoffs <= 1);
            prop_assert!(exits <= 1);
        }
    }
}
