//! The primary (monarch) side of the window handshake, as a sans-IO state machine.
//!
//! The driver feeds [`PrimaryInput`]s with the current time and carries out the returned
//! [`PrimaryAction`]s (post a command, copy the image, report the outcome). The machine owns
//! every decision of the window boot: configure → release → rendezvous → copy → compare the written
//! checksum with the retrieved one → OK, or rewrite up to `max_attempts` times, then abort.

use crate::checksum::Digest;
use crate::window::msg::{AbortReason, Command, FailCode, RegisterError, Status};
use std::time::Duration;
use thiserror::Error;

/// How long the primary waits for each answer of the secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// From release to the secondary's READY.
    pub rendezvous: Duration,
    /// From STAGED to the written checksum.
    pub verify: Duration,
    /// From OK to the delivered image reporting RUNNING (or the secondary HANDING_OFF).
    pub handoff: Duration,
}

/// What the primary needs to know to drive one secondary.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrimarySpec {
    /// The retrieved checksum of the image.
    pub expected: Digest,
    /// Copies to try before aborting (at least 1).
    pub max_attempts: u32,
    /// Wait for the delivered image to report RUNNING (`exec`), or stop at HANDING_OFF (`none`).
    pub expect_running: bool,
    /// Push mode streams: STAGED is posted *before* the copy, which then runs alongside the
    /// secondary's verification (through the ring); the copy's end is only informative.
    /// Otherwise (pull) the image is complete in the window before STAGED.
    pub stream: bool,
    /// Timeouts.
    pub timeouts: Timeouts,
}

/// Where the handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Not started.
    Idle,
    /// Released; waiting for READY.
    Rendezvous,
    /// Copying the image for an attempt.
    Copying,
    /// Waiting for the written checksum.
    Verifying,
    /// OK sent; waiting for the handoff to show.
    Handoff,
    /// Final: the delivered image reported RUNNING.
    Running,
    /// Final: the secondary accepted OK and jumped (handoff `none`).
    Released,
    /// Final: failed.
    Failed,
}

impl Phase {
    /// Name used in events and output.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Rendezvous => "rendezvous",
            Phase::Copying => "copying",
            Phase::Verifying => "verifying",
            Phase::Handoff => "handoff",
            Phase::Running => "running",
            Phase::Released => "released",
            Phase::Failed => "failed",
        }
    }
}

/// Why a secondary failed, from the primary's point of view.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Error)]
pub enum Failure {
    /// Every attempt's written checksum differed from the retrieved checksum.
    #[error(
        "written checksum {last_written:?} did not match the retrieved checksum on any of {attempts} attempts"
    )]
    ChecksumMismatch {
        /// Attempts made.
        attempts: u32,
        /// The last written checksum the secondary posted.
        last_written: Digest,
    },
    /// No answer in time.
    #[error("no answer from the secondary within {after:?} while {}", phase.name())]
    Timeout {
        /// What the primary was waiting for.
        phase: Phase,
        /// The timeout that expired.
        after: Duration,
    },
    /// The secondary's registers hold garbage.
    #[error("invalid register contents from the secondary: {0}")]
    Protocol(RegisterError),
    /// A valid status that makes no sense now.
    #[error("secondary posted {status:?} while the monarch was {}", phase.name())]
    Unexpected {
        /// The status.
        status: Status,
        /// The primary's phase.
        phase: Phase,
    },
    /// The secondary reported a failure.
    #[error("secondary failed in attempt {attempt}: {}", error.describe())]
    SecondaryFailed {
        /// Its code.
        error: FailCode,
        /// Its attempt.
        attempt: u32,
    },
    /// The driver saw the secondary disappear (process exited, VM stopped).
    #[error("secondary is gone: {0}")]
    PeerGone(String),
}

/// Inputs from the driver.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PrimaryInput {
    /// The window is configured and the secondary released from reset.
    Start,
    /// A new status message, decoded.
    Status(Status),
    /// The status block could not be decoded.
    Garbage(RegisterError),
    /// The copy for `attempt` is complete.
    Copied {
        /// The attempt copied.
        attempt: u32,
    },
    /// The driver knows the secondary is gone.
    PeerGone(String),
    /// Time passed; check deadlines.
    Tick,
}

/// Actions for the driver.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PrimaryAction {
    /// Post a command and ring the secondary's doorbell.
    Post(Command),
    /// Copy the image into the window (push) or expose it (pull) for `attempt`.
    Copy {
        /// 1-based attempt.
        attempt: u32,
    },
    /// The written checksum of `attempt` did not match; a retry follows if attempts remain.
    Mismatch {
        /// The attempt.
        attempt: u32,
        /// What the secondary computed.
        written: Digest,
    },
    /// Final outcome: `Ok(phase)` with `Running` or `Released`, or the failure.
    Done(Result<Phase, Failure>),
}

/// The primary's handshake with one secondary.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Primary {
    spec: PrimarySpec,
    phase: Phase,
    attempt: u32,
    deadline: Option<Duration>,
}

impl Primary {
    /// A machine for one secondary. `max_attempts` of 0 is treated as 1.
    pub fn new(mut spec: PrimarySpec) -> Primary {
        spec.max_attempts = spec.max_attempts.max(1);
        Primary { spec, phase: Phase::Idle, attempt: 0, deadline: None }
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Current attempt (0 before the first copy).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the driver must feed [`PrimaryInput::Tick`] at the latest.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// True once an outcome has been returned.
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Running | Phase::Released | Phase::Failed)
    }

    fn wait(&mut self, phase: Phase, now: Duration, timeout: Duration) {
        self.phase = phase;
        self.deadline = Some(now.saturating_add(timeout));
    }

    fn fail(&mut self, failure: Failure, reason: AbortReason) -> Vec<PrimaryAction> {
        self.phase = Phase::Failed;
        self.deadline = None;
        vec![PrimaryAction::Post(Command::Abort { reason }), PrimaryAction::Done(Err(failure))]
    }

    fn succeed(&mut self, phase: Phase) -> Vec<PrimaryAction> {
        self.phase = phase;
        self.deadline = None;
        vec![PrimaryAction::Done(Ok(phase))]
    }

    fn copy(&mut self, now: Duration, attempt: u32) -> Vec<PrimaryAction> {
        self.attempt = attempt;
        if self.spec.stream {
            self.wait(Phase::Verifying, now, self.spec.timeouts.verify);
            vec![PrimaryAction::Post(Command::Staged { attempt }), PrimaryAction::Copy { attempt }]
        } else {
            self.phase = Phase::Copying;
            self.deadline = None;
            vec![PrimaryAction::Copy { attempt }]
        }
    }

    /// Feed one input at time `now`.
    pub fn handle(&mut self, now: Duration, input: PrimaryInput) -> Vec<PrimaryAction> {
        use PrimaryInput as I;
        if self.is_done() {
            return Vec::new();
        }
        let t = self.spec.timeouts;
        match (self.phase, input) {
            (Phase::Idle, I::Start) => {
                self.wait(Phase::Rendezvous, now, t.rendezvous);
                vec![PrimaryAction::Post(Command::Release)]
            }
            (Phase::Idle, _) => Vec::new(),
            (_, I::Start) => Vec::new(),
            (_, I::Tick) => match self.deadline {
                Some(d) if now >= d => {
                    let after = match self.phase {
                        Phase::Rendezvous => t.rendezvous,
                        Phase::Verifying => t.verify,
                        _ => t.handoff,
                    };
                    let phase = self.phase;
                    self.fail(Failure::Timeout { phase, after }, AbortReason::Timeout)
                }
                _ => Vec::new(),
            },
            (_, I::Garbage(e)) => self.fail(Failure::Protocol(e), AbortReason::ProtocolError),
            (_, I::PeerGone(why)) => self.fail(Failure::PeerGone(why), AbortReason::SecondaryFailed),
            (_, I::Status(Status::Failed { attempt, error })) => {
                self.fail(Failure::SecondaryFailed { error, attempt }, AbortReason::SecondaryFailed)
            }
            (Phase::Copying, I::Copied { attempt }) if attempt == self.attempt => {
                self.wait(Phase::Verifying, now, t.verify);
                vec![PrimaryAction::Post(Command::Staged { attempt })]
            }
            (_, I::Copied { .. }) => Vec::new(),
            (Phase::Rendezvous, I::Status(Status::Ready { .. })) => self.copy(now, 1),
            (Phase::Verifying, I::Status(Status::Verified { attempt, digest }))
                if attempt == self.attempt =>
            {
                if digest == self.spec.expected {
                    self.wait(Phase::Handoff, now, t.handoff);
                    vec![PrimaryAction::Post(Command::Ok { attempt, digest })]
                } else if attempt < self.spec.max_attempts {
                    let mut a = vec![PrimaryAction::Mismatch { attempt, written: digest }];
                    a.extend(self.copy(now, attempt + 1));
                    a
                } else {
                    let mut a = vec![PrimaryAction::Mismatch { attempt, written: digest }];
                    a.extend(self.fail(
                        Failure::ChecksumMismatch { attempts: attempt, last_written: digest },
                        AbortReason::ChecksumMismatch,
                    ));
                    a
                }
            }
            (Phase::Handoff, I::Status(Status::HandingOff { attempt })) if attempt == self.attempt => {
                if self.spec.expect_running { Vec::new() } else { self.succeed(Phase::Released) }
            }
            (Phase::Handoff, I::Status(Status::Running { .. })) => self.succeed(Phase::Running),
            (phase, I::Status(status)) => {
                self.fail(Failure::Unexpected { status, phase }, AbortReason::ProtocolError)
            }
        }
    }
}

/// What a new monarch does with a secondary it finds in a window after a takeover
/// (monarch failover: the serf that usurps the monarch resumes the boot, it does not redo it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// The delivered image is running: leave it alone.
    LeaveRunning,
    /// Handing off, or verified with the retrieved checksum: not staged again. The machine
    /// waits for the handoff; the actions (an OK in the new epoch, for a verified attempt)
    /// are for the driver to carry out.
    Adopt(Primary, Vec<PrimaryAction>),
    /// In flight, failed or never started: stage it again from RELEASE (the new epoch
    /// makes the secondary drop whatever attempt it had).
    Restart,
}

/// Decide how to take over one secondary, from the last status found in its window
/// (`None`: no status posted yet, or none that decodes).
pub fn resume(spec: PrimarySpec, found: Option<&Status>, now: Duration) -> Resume {
    let mut p = Primary::new(spec);
    match found {
        Some(Status::Running { .. }) => Resume::LeaveRunning,
        Some(Status::HandingOff { attempt }) => {
            p.attempt = *attempt;
            if p.spec.expect_running {
                p.wait(Phase::Handoff, now, p.spec.timeouts.handoff);
                Resume::Adopt(p, Vec::new())
            } else {
                let a = p.succeed(Phase::Released);
                Resume::Adopt(p, a)
            }
        }
        Some(Status::Verified { attempt, digest }) if *digest == p.spec.expected => {
            p.attempt = *attempt;
            p.wait(Phase::Handoff, now, p.spec.timeouts.handoff);
            Resume::Adopt(p, vec![PrimaryAction::Post(Command::Ok { attempt: *attempt, digest: *digest })])
        }
        _ => Resume::Restart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::Digest;
    use proptest::prelude::*;

    const T: Timeouts = Timeouts {
        rendezvous: Duration::from_secs(5),
        verify: Duration::from_secs(10),
        handoff: Duration::from_secs(3),
    };

    fn d(b: u8) -> Digest {
        Digest([b; 32])
    }

    fn spec(max_attempts: u32, expect_running: bool) -> PrimarySpec {
        PrimarySpec { expected: d(7), max_attempts, expect_running, stream: false, timeouts: T }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn started(s: PrimarySpec) -> Primary {
        let mut p = Primary::new(s);
        assert_eq!(p.handle(ms(0), PrimaryInput::Start), vec![PrimaryAction::Post(Command::Release)]);
        assert_eq!(
            p.handle(ms(1), PrimaryInput::Status(Status::Ready { pid: 9 })),
            vec![PrimaryAction::Copy { attempt: 1 }]
        );
        assert_eq!(
            p.handle(ms(2), PrimaryInput::Copied { attempt: 1 }),
            vec![PrimaryAction::Post(Command::Staged { attempt: 1 })]
        );
        p
    }

    #[test]
    fn success_path_exec() {
        let mut p = started(spec(3, true));
        let a = p.handle(ms(3), PrimaryInput::Status(Status::Verified { attempt: 1, digest: d(7) }));
        assert_eq!(a, vec![PrimaryAction::Post(Command::Ok { attempt: 1, digest: d(7) })]);
        assert_eq!(p.handle(ms(4), PrimaryInput::Status(Status::HandingOff { attempt: 1 })), vec![]);
        assert_eq!(
            p.handle(ms(5), PrimaryInput::Status(Status::Running { pid: 9 })),
            vec![PrimaryAction::Done(Ok(Phase::Running))]
        );
        assert!(p.is_done());
        assert_eq!(p.handle(ms(6), PrimaryInput::Tick), vec![]);
    }

    #[test]
    fn success_path_handoff_none_ends_released() {
        let mut p = started(spec(1, false));
        p.handle(ms(3), PrimaryInput::Status(Status::Verified { attempt: 1, digest: d(7) }));
        assert_eq!(
            p.handle(ms(4), PrimaryInput::Status(Status::HandingOff { attempt: 1 })),
            vec![PrimaryAction::Done(Ok(Phase::Released))]
        );
    }

    #[test]
    fn mismatch_rewrites_then_succeeds() {
        let mut p = started(spec(3, true));
        let a = p.handle(ms(3), PrimaryInput::Status(Status::Verified { attempt: 1, digest: d(1) }));
        assert_eq!(
            a,
            vec![PrimaryAction::Mismatch { attempt: 1, written: d(1) }, PrimaryAction::Copy { attempt: 2 }]
        );
        assert_eq!(
            p.handle(ms(4), PrimaryInput::Copied { attempt: 2 }),
            vec![PrimaryAction::Post(Command::Staged { attempt: 2 })]
        );
        let a = p.handle(ms(5), PrimaryInput::Status(Status::Verified { attempt: 2, digest: d(7) }));
        assert_eq!(a, vec![PrimaryAction::Post(Command::Ok { attempt: 2, digest: d(7) })]);
    }

    #[test]
    fn streaming_posts_staged_before_the_copy_and_retries_the_same_way() {
        let mut p = Primary::new(PrimarySpec { stream: true, ..spec(2, true) });
        p.handle(ms(0), PrimaryInput::Start);
        let a = p.handle(ms(1), PrimaryInput::Status(Status::Ready { pid: 1 }));
        assert_eq!(
            a,
            vec![PrimaryAction::Post(Command::Staged { attempt: 1 }), PrimaryAction::Copy { attempt: 1 }]
        );
        assert_eq!(p.phase(), Phase::Verifying);
        assert_eq!(p.deadline(), Some(ms(1) + T.verify));
        assert_eq!(p.handle(ms(2), PrimaryInput::Copied { attempt: 1 }), vec![], "copy end is informative");
        let a = p.handle(ms(3), PrimaryInput::Status(Status::Verified { attempt: 1, digest: d(1) }));
        assert_eq!(
            a,
            vec![
                PrimaryAction::Mismatch { attempt: 1, written: d(1) },
                PrimaryAction::Post(Command::Staged { attempt: 2 }),
                PrimaryAction::Copy { attempt: 2 }
            ]
        );
        let a = p.handle(ms(4), PrimaryInput::Status(Status::Verified { attempt: 2, digest: d(7) }));
        assert_eq!(a, vec![PrimaryAction::Post(Command::Ok { attempt: 2, digest: d(7) })]);
    }

    #[test]
    fn mismatch_on_every_attempt_aborts_after_max() {
        let mut p = started(spec(2, true));
        p.handle(ms(3), PrimaryInput::Status(Status::Verified { attempt: 1, digest: d(1) }));
        p.handle(ms(4), PrimaryInput::Copied { attempt: 2 });
        let a = p.handle(ms(5), PrimaryInput::Status(Status::Verified { attempt: 2, digest: d(2) }));
        assert_eq!(
            a,
            vec![
                PrimaryAction::Mismatch { attempt: 2, written: d(2) },
                PrimaryAction::Post(Command::Abort { reason: AbortReason::ChecksumMismatch }),
                PrimaryAction::Done(Err(Failure::ChecksumMismatch { attempts: 2, last_written: d(2) })),
            ]
        );
    }

    #[test]
    fn timeouts_in_each_waiting_phase() {
        let mut p = Primary::new(spec(1, true));
        p.handle(ms(0), PrimaryInput::Start);
        assert_eq!(p.handle(ms(4999), PrimaryInput::Tick), vec![]);
        let a = p.handle(ms(5000), PrimaryInput::Tick);
        assert_eq!(
            a[1],
            PrimaryAction::Done(Err(Failure::Timeout { phase: Phase::Rendezvous, after: T.rendezvous }))
        );

        let mut p = started(spec(1, true));
        assert_eq!(p.deadline(), Some(ms(2) + T.verify));
        let a = p.handle(ms(2) + T.verify, PrimaryInput::Tick);
        assert_eq!(a[0], PrimaryAction::Post(Command::Abort { reason: AbortReason::Timeout }));

        let mut p = started(spec(1, true));
        p.handle(ms(3), PrimaryInput::Status(Status::Verified { attempt: 1, digest: d(7) }));
        p.handle(ms(4), PrimaryInput::Status(Status::HandingOff { attempt: 1 }));
        let a = p.handle(ms(3) + T.handoff, PrimaryInput::Tick);
        assert_eq!(
            a[1],
            PrimaryAction::Done(Err(Failure::Timeout { phase: Phase::Handoff, after: T.handoff }))
        );
    }

    #[test]
    fn garbage_and_peer_death_fail_at_once() {
        let mut p = started(spec(3, true));
        let a = p.handle(ms(3), PrimaryInput::Garbage(RegisterError::UnknownStatus(77)));
        assert_eq!(a[0], PrimaryAction::Post(Command::Abort { reason: AbortReason::ProtocolError }));
        let mut p = started(spec(3, true));
        let a = p.handle(ms(3), PrimaryInput::PeerGone("killed by signal 9".into()));
        assert!(matches!(&a[1], PrimaryAction::Done(Err(Failure::PeerGone(_)))));
    }

    #[test]
    fn out_of_order_status_is_a_protocol_failure() {
        let mut p = started(spec(3, true));
        // A VERIFIED for an attempt that was never staged.
        let a = p.handle(ms(3), PrimaryInput::Status(Status::Verified { attempt: 5, digest: d(7) }));
        assert!(matches!(&a[1], PrimaryAction::Done(Err(Failure::Unexpected { .. }))));
        // RUNNING before any OK.
        let mut p = started(spec(3, true));
        let a = p.handle(ms(3), PrimaryInput::Status(Status::Running { pid: 1 }));
        assert!(matches!(&a[1], PrimaryAction::Done(Err(Failure::Unexpected { .. }))));
    }

    fn arb_input() -> impl Strategy<Value = PrimaryInput> {
        let dg = prop_oneof![Just(d(7)), Just(d(1))];
        prop_oneof![
            Just(PrimaryInput::Start),
            Just(PrimaryInput::Tick),
            (1u32..4).prop_map(|attempt| PrimaryInput::Copied { attempt }),
            Just(PrimaryInput::Status(Status::Ready { pid: 1 })),
            ((1u32..4), dg)
                .prop_map(|(attempt, digest)| PrimaryInput::Status(Status::Verified { attempt, digest })),
            (1u32..4).prop_map(|attempt| PrimaryInput::Status(Status::HandingOff { attempt })),
            Just(PrimaryInput::Status(Status::Running { pid: 1 })),
            Just(PrimaryInput::Status(Status::Failed { attempt: 1, error: FailCode::Timeout })),
            Just(PrimaryInput::Garbage(RegisterError::UnknownStatus(9))),
        ]
    }

    proptest! {
        /// Whatever the secondary posts, in whatever order: OK is only ever sent for the
        /// expected checksum, attempts never exceed the maximum, exactly one outcome is
        /// reported, and nothing happens after it.
        #[test]
        fn any_input_sequence_keeps_the_invariants(max in 1u32..4, inputs in proptest::collection::vec((arb_input(), 0u64..20_000), 0..40)) {
            let mut p = Primary::new(spec(max, true));
            let mut done = 0;
            let mut now = 0u64;
            for (input, dt) in inputs {
                now += dt;
                for a in p.handle(ms(now), input) {
                    match a {
                        PrimaryAction::Post(Command::Ok { digest, attempt }) => {
                            prop_assert_eq!(digest, d(7));
                            prop_assert!(attempt <= max);
                        }
                        PrimaryAction::Copy { attempt } => prop_assert!(attempt >= 1 && attempt <= max),
                        PrimaryAction::Done(_) => done += 1,
                        _ => prop_assert_eq!(done, 0, "action after the outcome"),
                    }
                }
            }
            prop_assert!(done <= 1);
            prop_assert_eq!(done == 1, p.is_done());
        }
    }

    #[test]
    fn takeover_leaves_running_adopts_verified_and_restarts_the_rest() {
        assert_eq!(resume(spec(3, true), Some(&Status::Running { pid: 4 }), ms(0)), Resume::LeaveRunning);
        // Verified with the retrieved checksum: OK in the new epoch, no second copy.
        let Resume::Adopt(mut p, a) =
            resume(spec(3, true), Some(&Status::Verified { attempt: 2, digest: d(7) }), ms(0))
        else {
            panic!("a verified secondary is adopted")
        };
        assert_eq!(a, vec![PrimaryAction::Post(Command::Ok { attempt: 2, digest: d(7) })]);
        assert_eq!(p.phase(), Phase::Handoff);
        assert!(p.handle(ms(1), PrimaryInput::Status(Status::HandingOff { attempt: 2 })).is_empty());
        assert_eq!(
            p.handle(ms(2), PrimaryInput::Status(Status::Running { pid: 5 })),
            vec![PrimaryAction::Done(Ok(Phase::Running))]
        );
        // Handing off: wait for RUNNING, or done at once for handoff "none".
        let Resume::Adopt(p, a) = resume(spec(3, true), Some(&Status::HandingOff { attempt: 1 }), ms(0))
        else {
            panic!("handing off is adopted")
        };
        assert!(a.is_empty());
        assert_eq!(p.phase(), Phase::Handoff);
        let Resume::Adopt(_, a) = resume(spec(3, false), Some(&Status::HandingOff { attempt: 1 }), ms(0))
        else {
            panic!("handing off is adopted")
        };
        assert_eq!(a, vec![PrimaryAction::Done(Ok(Phase::Released))]);
        // Everything else starts over.
        for found in [
            None,
            Some(Status::Ready { pid: 1 }),
            Some(Status::Verified { attempt: 1, digest: d(1) }),
            Some(Status::Failed { attempt: 1, error: FailCode::Timeout }),
        ] {
            assert_eq!(resume(spec(3, true), found.as_ref(), ms(0)), Resume::Restart, "{found:?}");
        }
    }
}
