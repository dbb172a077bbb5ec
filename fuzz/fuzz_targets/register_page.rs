//! The monarch reading a register page a hostile secondary writes: any bytes, at any
//! register, in any order. The input is a sequence of writes (offset, length, bytes) to one
//! page; after each, the monarch polls as its driver does — a new, unbusy `status.seq` is a
//! message: decoded (or reported as garbage), its report text made printable, and fed to the
//! primary's state machine with the copies it asks for answered. Nothing panics, the
//! report stays one bounded printable line, and once the machine is done it stays done.
#![no_main]
use monarch_proto::text::{MAX_CHARS, printable};
use monarch_proto::window::layout;
use monarch_proto::window::msg::{self, SEQ_BUSY};
use monarch_proto::window::page::Page;
use monarch_proto::window::primary::{Primary, PrimaryAction, PrimaryInput, PrimarySpec, Timeouts};
use monarch_proto::Digest;
use std::time::Duration;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else { return };
    let second = Duration::from_secs(1);
    let mut p = Primary::new(PrimarySpec {
        expected: Digest::default(),
        max_attempts: 1 + u32::from(flags & 3),
        expect_running: flags & 4 != 0,
        stream: flags & 8 != 0,
        timeouts: Timeouts { rendezvous: second, verify: second, handoff: second },
    });
    let mut now = Duration::ZERO;
    let mut inputs = vec![PrimaryInput::Start];
    let mut page = Page::new();
    let mut last_seq = 0u32;
    let mut was_done = false;
    while !rest.is_empty() || !inputs.is_empty() {
        for input in std::mem::take(&mut inputs) {
            for action in p.handle(now, input) {
                if let PrimaryAction::Copy { attempt } = action {
                    inputs.push(PrimaryInput::Copied { attempt });
                }
            }
        }
        if was_done {
            assert!(p.is_done(), "a finished machine stays finished");
        }
        was_done = p.is_done();
        if !inputs.is_empty() {
            continue;
        }
        // The secondary's next write: 2 bytes of offset, 1 of length, then the bytes.
        let [a, b, n, tail @ ..] = rest else { break };
        let off = usize::from(u16::from_le_bytes([*a, *b])) % layout::REGS_SIZE;
        let len = usize::from(*n).min(tail.len()).min(layout::REGS_SIZE - off);
        let mut bytes = page.bytes().to_vec();
        bytes[off..off + len].copy_from_slice(&tail[..len]);
        page = Page::from_bytes(&bytes);
        rest = &tail[len..];
        now += Duration::from_millis(u64::from(*n));
        // The monarch's poll.
        let seq = u32::try_from(page.read(layout::ST_SEQ)).unwrap_or(0);
        if seq & SEQ_BUSY != 0 || seq == last_seq {
            inputs.push(PrimaryInput::Tick);
            continue;
        }
        last_seq = seq;
        let read = |r| page.read(r);
        let report = printable(&msg::decode_report(&read), MAX_CHARS);
        assert!(!report.chars().any(char::is_control), "{report:?}");
        assert!(report.chars().count() <= MAX_CHARS + 1, "{} chars", report.chars().count());
        inputs.push(match msg::decode_status(&read) {
            Ok(st) => PrimaryInput::Status(st),
            Err(e) => PrimaryInput::Garbage(e),
        });
    }
});
