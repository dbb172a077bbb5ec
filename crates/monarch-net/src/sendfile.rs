//! Sending a file's bytes on a TCP connection with `sendfile(2)`: the HTTP service's fast
//! path and the discovery service's bulk transfer.
//!
//! The bytes go from the page cache to the socket without being copied through this
//! process. The socket is corked while the body goes, as nginx's `tcp_nopush` does, so only
//! full segments leave.
//!
//! A transfer that holds a [`SpinSlot`] does not sleep as soon as the socket is full: it
//! polls for room for up to its budget first, and meanwhile keeps at most [`NOTSENT_LOWAT`]
//! bytes queued unsent, so that each `sendfile` finds room soon and sends what the client's
//! window allows at once. Measured with curl fetching 1 GiB over loopback on a 2-core VM
//! (docs/performance.md), where curl's core is the limit (it runs at 100 %):
//! - sleeping as before: 0.68–1.03× nginx in `bench netboot`, 3 of 10 figures at or above 1;
//! - polling with the short queue: 0.82–1.24×, 12 of 14 figures at or above 1, and curl
//!   spends less CPU per GiB; the server's core is busy for the whole transfer;
//! - the short queue alone (the server sleeping between ACKs) and polling alone (with the
//!   kernel's 4 MiB queue) gain nothing.
//!
//! Profiles of curl show the same shares of its time in copying and in TCP with either
//! server; what changes is how fast curl runs, not what it does. The likely reason is the
//! virtual machine: this guest halts an idle vCPU at once (no halt polling), and a server
//! that sleeps between wake-ups leaves its vCPU halting and waking hundreds of times per
//! GiB. This is the same cost TFTP's polling saves. It cannot be confirmed from inside the
//! guest, and on bare metal the gain may be smaller.

use crate::spin::{Backoff, SpinSlot};
use std::io;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Unsent bytes a polling transfer keeps queued at most (`TCP_NOTSENT_LOWAT`): a few
/// loopback segments. Measured with 4 KiB, 16 KiB, 64 KiB, 128 KiB, 512 KiB and 1 MiB: the
/// rate was within the noise of this one from 128 KiB up, and lower below 64 KiB.
pub const NOTSENT_LOWAT: u32 = 256 << 10;

/// Longest a polling transfer keeps its tokio worker without yielding to other tasks.
const SLICE: Duration = Duration::from_millis(1);

/// Linux sends at most this many bytes per `sendfile` call.
const MAX_PER_CALL: u64 = 0x7fff_f000;

/// Why a send stopped: the client read nothing for `stall`.
#[derive(Debug, thiserror::Error)]
#[error("the client read nothing for {0:?} (the send stall)")]
struct SendStalled(Duration);

/// The error a send that made no progress for `stall` ends with (kind `TimedOut`).
pub(crate) fn send_stalled(stall: Duration) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, SendStalled(stall))
}

/// Whether `e` is [`send_stalled`]'s, and not, say, the kernel's own `ETIMEDOUT`.
pub(crate) fn is_send_stall(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<SendStalled>())
}

/// Send `file[off..end]` on `stream`. Ok(bytes sent) — fewer than asked only if the file
/// shrank; Err((bytes sent, error)) when the peer went away, or read nothing for `stall`
/// ([`is_send_stall`]). With a `slot` that polls, the transfer polls for room before it
/// sleeps (see the module doc).
///
/// The socket is non-blocking (tokio); the file read may block on a page-cache miss, as in
/// nginx.
pub(crate) async fn sendfile_to(
    stream: &TcpStream,
    file: &std::fs::File,
    off: u64,
    end: u64,
    stall: Duration,
    slot: &SpinSlot,
) -> Result<u64, (u64, io::Error)> {
    // Corked: only full segments leave while the body is sent, whatever TCP_NODELAY says
    // (the HTTP service sets it for its small answers). Measured 2026-12-02, 1 GiB over
    // loopback with curl: 1.0–1.2 GB/s without, 1.5–1.8 with — nginx's speed. Uncorking at
    // the end pushes the last partial segment.
    let _ = rustix::net::sockopt::set_tcp_cork(stream, true);
    let budget = slot.budget();
    if !budget.is_zero() {
        // Best effort: without it the transfer still works, with the kernel's long queue.
        let _ = monarch_drivers::sockopt::set_tcp_notsent_lowat(stream, NOTSENT_LOWAT);
    }
    let sent = send_loop(stream, file, off, end, stall, Backoff::new(budget)).await;
    let _ = rustix::net::sockopt::set_tcp_cork(stream, false);
    sent
}

async fn send_loop(
    stream: &TcpStream,
    file: &std::fs::File,
    off: u64,
    end: u64,
    stall: Duration,
    mut backoff: Backoff,
) -> Result<u64, (u64, io::Error)> {
    let mut pos = off;
    while pos < end {
        // No room in the socket for `stall`: the client stopped reading.
        tokio::time::timeout(stall, stream.writable())
            .await
            .map_err(|_| (pos - off, send_stalled(stall)))?
            .map_err(|e| (pos - off, e))?;
        // Through tokio, so that a full socket clears its readiness and the wait above
        // sleeps until the kernel reports room again.
        match stream.try_io(Interest::WRITABLE, || send(stream, file, &mut pos, end)) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err((pos - off, e)),
        }
        let budget = backoff.poll_for();
        if budget.is_zero() {
            continue;
        }
        loop {
            match push(stream, file, &mut pos, end, budget) {
                Pushed::End => return Ok(pos - off),
                Pushed::Full { moved } => {
                    if moved {
                        backoff.hit()
                    } else {
                        backoff.miss()
                    }
                    // The last call found the socket full, so the kernel reports the next
                    // room it makes: the wait above will not miss it.
                    break;
                }
                Pushed::Slice => {
                    backoff.hit();
                    tokio::task::yield_now().await;
                }
                Pushed::Failed(e) => return Err((pos - off, e)),
            }
        }
    }
    Ok(pos - off)
}

/// One `sendfile` of as much of `file[*pos..end]` as the socket takes.
fn send(stream: &TcpStream, file: &std::fs::File, pos: &mut u64, end: u64) -> io::Result<usize> {
    let want = usize::try_from((end - *pos).min(MAX_PER_CALL)).unwrap_or(usize::MAX);
    rustix::fs::sendfile(stream, file, Some(pos), want).map_err(io::Error::from)
}

/// How a [`push`] ended.
enum Pushed {
    /// Everything was sent, or the file ended early.
    End,
    /// The socket stayed full for the budget; `moved` if anything was sent before.
    Full {
        moved: bool,
    },
    /// Still sending after [`SLICE`]: time to let the worker's other tasks run.
    Slice,
    Failed(io::Error),
}

/// Send without sleeping: whenever the socket has room, fill it, until the file is sent,
/// the socket stays full for `budget`, or [`SLICE`] has passed.
fn push(stream: &TcpStream, file: &std::fs::File, pos: &mut u64, end: u64, budget: Duration) -> Pushed {
    let start = Instant::now();
    let mut last = start;
    let mut moved = false;
    while *pos < end {
        match send(stream, file, pos, end) {
            Ok(0) => return Pushed::End,
            Ok(_) => {
                moved = true;
                last = Instant::now();
                if last - start >= SLICE {
                    return Pushed::Slice;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if last.elapsed() >= budget {
                    return Pushed::Full { moved };
                }
                std::hint::spin_loop();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Pushed::Failed(e),
        }
    }
    Pushed::End
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spin::SpinSlots;
    use std::io::{Read, Write};

    /// A file of `len` bytes that differ from their neighbours, and a connected pair.
    async fn setup(len: usize) -> (std::fs::File, Vec<u8>, TcpStream, std::net::TcpStream) {
        let bytes: Vec<u8> = (0..len).map(|i| ((i * 7 + i / 4096) % 251).to_le_bytes()[0]).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (file, bytes, server, client)
    }

    fn polling_slot() -> SpinSlot {
        SpinSlots::new(Duration::from_micros(100), 1).take()
    }

    /// Read everything, pausing now and then so that the sender finds its socket full,
    /// polls, runs out and sleeps.
    fn read_with_pauses(mut client: std::net::TcpStream, len: usize) -> Vec<u8> {
        let mut got = Vec::with_capacity(len);
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = client.read(&mut buf).unwrap();
            if n == 0 {
                return got;
            }
            let before = got.len();
            got.extend_from_slice(&buf[..n]);
            if before / (4 << 20) != got.len() / (4 << 20) {
                std::thread::sleep(Duration::from_millis(3));
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_polling_transfer_delivers_every_byte_in_order_to_a_reader_that_pauses() {
        for slot in [polling_slot(), SpinSlot::never()] {
            let len = 48 << 20;
            let (file, bytes, server, client) = setup(len).await;
            let reader = std::thread::spawn(move || read_with_pauses(client, len));
            let sent = sendfile_to(&server, &file, 0, len as u64, Duration::from_secs(30), &slot).await;
            assert_eq!(sent.map_err(|(_, e)| e.to_string()), Ok(len as u64));
            drop(server);
            assert!(reader.join().unwrap() == bytes, "the bytes differ ({slot:?})");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_polling_transfer_sends_a_middle_range_and_stops_at_a_reader_that_stopped() {
        let len = 40 << 20;
        let (file, bytes, server, client) = setup(len).await;
        let reader = std::thread::spawn(move || read_with_pauses(client, len));
        let (off, end) = (12_345u64, 9_000_001u64);
        let sent = sendfile_to(&server, &file, off, end, Duration::from_secs(30), &polling_slot()).await;
        assert_eq!(sent.map_err(|(_, e)| e.to_string()), Ok(end - off));
        drop(server);
        assert!(reader.join().unwrap()[..] == bytes[12_345..9_000_001]);

        // A client that reads nothing: the send stalls, and says so.
        let (file, _, server, client) = setup(len).await;
        let stall = Duration::from_millis(300);
        let (sent, e) = sendfile_to(&server, &file, 0, len as u64, stall, &polling_slot()).await.unwrap_err();
        assert!(is_send_stall(&e), "{e}");
        assert!(sent > 0 && sent < len as u64, "{sent}");
        drop(client);
    }
}
