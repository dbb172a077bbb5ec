//! After the handoff: the running image and the supervisor that keeps the chassis managed.
//!
//! The life block (`layout::LIFE_*`, `NOTICE_*`, `ANSWER_*`) carries, for as long as an image
//! runs:
//! - the image's **heartbeat** (a counter it increments every `life.beat_period`) and its
//!   flags: **ready** (its services are up, which is later than RUNNING) and **fault**;
//! - the supervisor's **notices** (shutdown, reboot, a processor that depends on it reboots,
//!   a dependency lost or restored), each with a deadline, published like a command;
//! - the image's **answers** to them: ACK, or DEFER with a reason (it cannot let go yet);
//! - the **hold** word (configuration retry: the agent keeps waiting for RELEASE while its
//!   dependencies come up) and the list of dependencies the image runs **without**.
//!
//! Encoding is pure, like `msg`: lists of register writes, publication word last; decoding
//! takes a register-read function and validates what the peer wrote.

use crate::window::layout::{self, Reg, Write};
use crate::window::msg::{RegisterError, publish, read_text, read32, text_writes};

/// Notice codes (`notice.code`).
pub mod notice_code {
    /// Shut down: clean up and acknowledge; the supervisor then stops the image.
    pub const SHUTDOWN: u32 = 1;
    /// Reboot: clean up and acknowledge; the supervisor stops the image and delivers it again.
    pub const REBOOT: u32 = 2;
    /// A processor that depends on this one reboots (the host may go to another tenant):
    /// clean up its context, acknowledge, and stay up.
    pub const PEER_REBOOT: u32 = 3;
    /// A dependency went away (crashed, rebooting, shut down): run without it.
    pub const DEPENDENCY_LOST: u32 = 4;
    /// A dependency is back and ready.
    pub const DEPENDENCY_RESTORED: u32 = 5;
    /// A dependency is about to go away (it reboots or shuts down): finish with it and
    /// acknowledge, or defer.
    pub const DEPENDENCY_LEAVING: u32 = 6;
}

/// What a notice announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    /// [`notice_code::SHUTDOWN`].
    Shutdown,
    /// [`notice_code::REBOOT`].
    Reboot,
    /// [`notice_code::PEER_REBOOT`].
    PeerReboot,
    /// [`notice_code::DEPENDENCY_LOST`].
    DependencyLost,
    /// [`notice_code::DEPENDENCY_RESTORED`].
    DependencyRestored,
    /// [`notice_code::DEPENDENCY_LEAVING`].
    DependencyLeaving,
}

impl NoticeKind {
    /// Register code.
    pub fn code(self) -> u32 {
        use notice_code as n;
        match self {
            NoticeKind::Shutdown => n::SHUTDOWN,
            NoticeKind::Reboot => n::REBOOT,
            NoticeKind::PeerReboot => n::PEER_REBOOT,
            NoticeKind::DependencyLost => n::DEPENDENCY_LOST,
            NoticeKind::DependencyRestored => n::DEPENDENCY_RESTORED,
            NoticeKind::DependencyLeaving => n::DEPENDENCY_LEAVING,
        }
    }

    /// The kind of a register code.
    pub fn from_code(code: u32) -> Result<NoticeKind, RegisterError> {
        use notice_code as n;
        Ok(match code {
            n::SHUTDOWN => NoticeKind::Shutdown,
            n::REBOOT => NoticeKind::Reboot,
            n::PEER_REBOOT => NoticeKind::PeerReboot,
            n::DEPENDENCY_LOST => NoticeKind::DependencyLost,
            n::DEPENDENCY_RESTORED => NoticeKind::DependencyRestored,
            n::DEPENDENCY_LEAVING => NoticeKind::DependencyLeaving,
            other => return Err(RegisterError::UnknownNotice(other)),
        })
    }

    /// Its name in events and logs.
    pub fn name(self) -> &'static str {
        match self {
            NoticeKind::Shutdown => "shutdown",
            NoticeKind::Reboot => "reboot",
            NoticeKind::PeerReboot => "peer-reboot",
            NoticeKind::DependencyLost => "dependency-lost",
            NoticeKind::DependencyRestored => "dependency-restored",
            NoticeKind::DependencyLeaving => "dependency-leaving",
        }
    }

    /// Whether the supervisor waits for an answer (ACK or DEFER) to this kind.
    pub fn awaits_answer(self) -> bool {
        match self {
            NoticeKind::Shutdown
            | NoticeKind::Reboot
            | NoticeKind::PeerReboot
            | NoticeKind::DependencyLeaving => true,
            NoticeKind::DependencyLost | NoticeKind::DependencyRestored => false,
        }
    }
}

/// A notice from the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Notice {
    /// What it announces.
    pub kind: NoticeKind,
    /// Milliseconds the image has to answer before the supervisor goes on anyway (0: forced,
    /// no answer awaited).
    pub deadline_ms: u64,
    /// Which processor it concerns, and why (at most [`layout::LIFE_TEXT_MAX`] bytes).
    pub text: String,
}

/// A notice with the epoch of the monarch that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StampedNotice {
    /// The writer's epoch.
    pub epoch: u32,
    /// The notice.
    pub notice: Notice,
}

/// The writes that post `notice` as notice number `seq`, stamped with the writer's `epoch`.
pub fn encode_notice(seq: u32, epoch: u32, notice: &Notice) -> Vec<Write> {
    let mut w = vec![
        (layout::NOTICE_CODE, u64::from(notice.kind.code())),
        (layout::NOTICE_DEADLINE, notice.deadline_ms),
        (layout::NOTICE_EPOCH, u64::from(epoch)),
    ];
    w.extend(notice_text(&notice.text));
    publish(layout::NOTICE_SEQ, seq, w)
}

fn notice_text(text: &str) -> Vec<Write> {
    text_writes(layout::NOTICE_LEN, layout::NOTICE_TEXT, "notice.text", layout::LIFE_TEXT_MAX, text)
}

/// Decode the notice block (the caller has read `notice.seq` before and after).
pub fn decode_notice(read: &dyn Fn(Reg) -> u64) -> Result<StampedNotice, RegisterError> {
    let kind = NoticeKind::from_code(read32(read, layout::NOTICE_CODE))?;
    let text = read_text(read, layout::NOTICE_LEN, layout::NOTICE_TEXT, "notice.text", layout::LIFE_TEXT_MAX);
    Ok(StampedNotice {
        epoch: read32(read, layout::NOTICE_EPOCH),
        notice: Notice { kind, deadline_ms: read(layout::NOTICE_DEADLINE), text },
    })
}

/// Answer codes (`answer.code`).
pub mod answer_code {
    /// Done: the supervisor may go on.
    pub const ACK: u32 = 1;
    /// Not yet: the reason says why; the supervisor waits until the notice's deadline.
    pub const DEFER: u32 = 2;
}

/// The image's answer to a notice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Answer {
    /// Done.
    Ack,
    /// Not yet, because of the reason.
    Defer(String),
}

/// An answer and the notice it answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NoticeAnswer {
    /// The `notice.seq` answered.
    pub notice: u32,
    /// The answer.
    pub answer: Answer,
}

/// The writes that post `answer` to notice `notice` as answer number `seq`.
pub fn encode_answer(seq: u32, notice: u32, answer: &Answer) -> Vec<Write> {
    let (code, reason) = match answer {
        Answer::Ack => (answer_code::ACK, ""),
        Answer::Defer(why) => (answer_code::DEFER, why.as_str()),
    };
    let mut w = vec![(layout::ANSWER_NOTICE, u64::from(notice)), (layout::ANSWER_CODE, u64::from(code))];
    w.extend(text_writes(
        layout::ANSWER_LEN,
        layout::ANSWER_TEXT,
        "answer.text",
        layout::LIFE_TEXT_MAX,
        reason,
    ));
    publish(layout::ANSWER_SEQ, seq, w)
}

/// Decode the answer block (the caller has read `answer.seq` before and after).
pub fn decode_answer(read: &dyn Fn(Reg) -> u64) -> Result<NoticeAnswer, RegisterError> {
    let answer = match read32(read, layout::ANSWER_CODE) {
        answer_code::ACK => Answer::Ack,
        answer_code::DEFER => Answer::Defer(read_text(
            read,
            layout::ANSWER_LEN,
            layout::ANSWER_TEXT,
            "answer.text",
            layout::LIFE_TEXT_MAX,
        )),
        other => return Err(RegisterError::UnknownAnswer(other)),
    };
    Ok(NoticeAnswer { notice: read32(read, layout::ANSWER_NOTICE), answer })
}

/// `life.flags` bit: the image's services are up.
pub const FLAG_READY: u32 = 1;
/// `life.flags` bit: the image reports a failure it cannot recover from by itself.
pub const FLAG_FAULT: u32 = 2;

/// What the running image says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Life {
    /// Its heartbeat counter.
    pub beat: u64,
    /// Its services are up.
    pub ready: bool,
    /// It reports a failure.
    pub fault: bool,
}

/// Read the image's heartbeat and flags (unknown flag bits are ignored).
pub fn decode_life(read: &dyn Fn(Reg) -> u64) -> Life {
    let flags = read32(read, layout::LIFE_FLAGS);
    Life { beat: read(layout::LIFE_BEAT), ready: flags & FLAG_READY != 0, fault: flags & FLAG_FAULT != 0 }
}

/// The write that sets the image's flags.
pub fn encode_flags(ready: bool, fault: bool) -> Write {
    let flags = if ready { FLAG_READY } else { 0 } | if fault { FLAG_FAULT } else { 0 };
    (layout::LIFE_FLAGS, u64::from(flags))
}

/// The writes of the list of dependencies a secondary runs without (ids joined by commas,
/// truncated to [`layout::LIFE_TEXT_MAX`] bytes).
pub fn encode_missing(ids: &[String]) -> Vec<Write> {
    text_writes(
        layout::MISSING_LEN,
        layout::MISSING_TEXT,
        "life.missing",
        layout::LIFE_TEXT_MAX,
        &ids.join(","),
    )
}

/// The dependencies a secondary runs without, as the supervisor wrote them (peer data).
pub fn decode_missing(read: &dyn Fn(Reg) -> u64) -> Vec<String> {
    read_text(read, layout::MISSING_LEN, layout::MISSING_TEXT, "life.missing", layout::LIFE_TEXT_MAX)
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// What a reset of the secondary clears: its status, stream and life registers (the
/// monarch writes them only when it boots again a secondary whose image it knows is gone,
/// so that the new agent does not find the old image's RUNNING).
pub fn reset_secondary_writes() -> Vec<Write> {
    let mut w: Vec<Write> = [
        layout::ST_SEQ,
        layout::ST_CODE,
        layout::ST_ATTEMPT,
        layout::ST_ERROR,
        layout::ST_PID,
        layout::ST_PROGRESS,
        layout::ST_EPOCH,
        layout::ST_FENCED,
        layout::STREAM_CONSUMED,
        layout::STREAM_NAK,
        layout::STREAM_NAK_SEQ,
        layout::LIFE_BEAT,
        layout::LIFE_FLAGS,
        layout::ANSWER_SEQ,
        layout::ANSWER_NOTICE,
        layout::ANSWER_CODE,
        layout::ANSWER_LEN,
        layout::REPORT_LEN,
    ]
    .into_iter()
    .map(|r| (r, 0))
    .collect();
    w.extend(layout::ST_DIGEST.map(|r| (r, 0)));
    w
}

/// The writes that configure supervision before release: the heartbeat period (0: not
/// supervised), the hold word and the missing list.
pub fn encode_life_config(beat_period_ms: u32, hold: bool, missing: &[String]) -> Vec<Write> {
    let mut w =
        vec![(layout::LIFE_BEAT_PERIOD, u64::from(beat_period_ms)), (layout::LIFE_HOLD, u64::from(hold))];
    w.extend(encode_missing(missing));
    w
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::window::msg::{SeqWord, next_seq};
    use crate::window::page::Page;
    use proptest::prelude::*;

    fn page_with(writes: &[Write]) -> Page {
        let mut p = Page::new();
        p.apply(writes);
        p
    }

    #[test]
    fn a_notice_round_trips_and_its_words_are_where_the_protocol_says() {
        let n = Notice { kind: NoticeKind::Reboot, deadline_ms: 5000, text: "dpu0: operator".into() };
        let w = encode_notice(7, 3, &n);
        assert_eq!(w.first(), Some(&(layout::NOTICE_SEQ, 7 | 1 << 31)), "busy marker first");
        assert_eq!(w.last(), Some(&(layout::NOTICE_SEQ, 7)), "publication word last");
        let p = page_with(&w);
        // Golden words: code 2 at 0xb0c, deadline at 0xb10, epoch at 0xb18, text at 0xb20.
        assert_eq!(p.read(layout::NOTICE_CODE), 2);
        assert_eq!(p.read(layout::NOTICE_DEADLINE), 5000);
        assert_eq!(p.read(layout::NOTICE_EPOCH), 3);
        assert_eq!(p.read(layout::NOTICE_LEN), 14);
        let first = Reg { offset: 0xB20, width: layout::Width::W64, name: "t" };
        assert_eq!(p.read(first).to_le_bytes(), *b"dpu0: op");
        assert_eq!(decode_notice(&|r| p.read(r)), Ok(StampedNotice { epoch: 3, notice: n }));
    }

    #[test]
    fn answers_round_trip_and_unknown_codes_are_named() {
        for a in [Answer::Ack, Answer::Defer("flushing the write cache".into())] {
            let p = page_with(&encode_answer(2, 9, &a));
            assert_eq!(decode_answer(&|r| p.read(r)), Ok(NoticeAnswer { notice: 9, answer: a }));
        }
        let p = page_with(&[(layout::ANSWER_CODE, 77)]);
        let e = decode_answer(&|r| p.read(r)).unwrap_err();
        assert!(e.to_string().contains("answer.code") && e.to_string().contains("77"), "{e}");
        let p = page_with(&[(layout::NOTICE_CODE, 0)]);
        assert_eq!(decode_notice(&|r| p.read(r)), Err(RegisterError::UnknownNotice(0)));
    }

    #[test]
    fn flags_missing_list_and_life_config() {
        let p = page_with(&[encode_flags(true, false), (layout::LIFE_BEAT, 41)]);
        assert_eq!(decode_life(&|r| p.read(r)), Life { beat: 41, ready: true, fault: false });
        let p = page_with(&[encode_flags(false, true)]);
        assert!(decode_life(&|r| p.read(r)).fault);
        let ids = vec!["dpu1".to_string(), "dpu2".to_string()];
        let p = page_with(&encode_life_config(100, true, &ids));
        assert_eq!(decode_missing(&|r| p.read(r)), ids);
        assert_eq!(p.read(layout::LIFE_BEAT_PERIOD), 100);
        assert_eq!(p.read(layout::LIFE_HOLD), 1);
        let p = page_with(&encode_life_config(0, false, &[]));
        assert!(decode_missing(&|r| p.read(r)).is_empty());
    }

    #[test]
    fn a_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let n = Notice { kind: NoticeKind::DependencyLost, deadline_ms: 0, text: long };
        let p = page_with(&encode_notice(next_seq(0), 1, &n));
        let got = decode_notice(&|r| p.read(r)).unwrap().notice.text;
        assert_eq!(got.len(), 128);
        assert!(got.chars().all(|c| c == 'é'));
        assert_eq!(
            SeqWord::from_raw(u32::try_from(p.read(layout::NOTICE_SEQ)).unwrap()),
            SeqWord::Published(1)
        );
    }

    proptest! {
        /// Whatever a peer leaves in the life block decodes to a value or an error, never a
        /// panic, and text never exceeds its field.
        #[test]
        fn any_life_block_decodes_without_panicking(words in proptest::collection::vec(any::<u64>(), 96)) {
            let mut p = Page::new();
            for (i, v) in words.iter().enumerate() {
                let offset = 0xA00 + 8 * i;
                p.write(Reg { offset, width: layout::Width::W64, name: "w" }, *v);
            }
            let read = |r: Reg| p.read(r);
            if let Ok(n) = decode_notice(&read) {
                prop_assert!(n.notice.text.len() <= 3 * layout::LIFE_TEXT_MAX);
            }
            let _ = decode_answer(&read);
            let _ = decode_life(&read);
            prop_assert!(decode_missing(&read).iter().map(String::len).sum::<usize>() <= 3 * layout::LIFE_TEXT_MAX);
        }
    }
}
