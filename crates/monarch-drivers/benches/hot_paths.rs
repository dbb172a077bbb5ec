//! Hot paths of the window driver, each beside its reference in the same criterion group:
//! - copy into a window vs memcpy between two private buffers;
//! - copy-out-and-checksum of a chunk vs checksumming the same bytes in private memory;
//! - an image-sized (32 MiB) write into, read out of and copy-out-and-checksum of the data
//!   area vs memcpy between private buffers and vs a plain memcpy into and out of a second
//!   mapping of the same window file (how the window copied before its copies became
//!   atomic word copies; kept here only as a yardstick);
//! - a command/status round trip through registers and futex doorbells between two threads
//!   vs the same round trip over a pair of std channels.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use monarch_drivers::Window;
use monarch_proto::Algo;
use monarch_proto::checksum::{Digest, Hasher};
use monarch_proto::window::layout;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const CHUNK: usize = 1 << 20;

fn window(len: u64) -> (tempfile::TempDir, Window) {
    let dir = tempfile::Builder::new().prefix("monarch-bench").tempdir_in("/dev/shm").unwrap();
    let w = Window::create(&dir.path().join("w.win"), len).unwrap();
    (dir, w)
}

fn copy(c: &mut Criterion) {
    let (_d, w) = window(4 * CHUNK as u64);
    let src = vec![0x5au8; 4 * CHUNK];
    let mut dst = vec![0u8; 4 * CHUNK];
    let mut g = c.benchmark_group("copy 4 MiB");
    g.throughput(Throughput::Bytes(src.len() as u64));
    g.bench_function("reference: memcpy between private buffers", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&src)))
    });
    g.bench_function("window write_data", |b| b.iter(|| w.write_data(0, black_box(&src)).unwrap()));
    g.finish();
}

const IMAGE: usize = 32 << 20;

/// A second, plain mapping of the window file: the yardstick for the window's own copies.
fn plain_mapping(path: &std::path::Path) -> memmap2::MmapMut {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    // SAFETY: the file is this benchmark's own, in its own temporary folder; nothing else
    // resizes it while mapped, and only this thread touches the window while a benchmark
    // runs, so the slice the mapping derefs to is never written by anyone else meanwhile.
    unsafe { memmap2::MmapOptions::new().populate().map_mut(&f) }.unwrap()
}

/// The former `copy_out_digest`: plain copies out of the mapping, 32 KiB at a time, each
/// hashed right after it is copied.
fn plain_copy_out_digest(data: &[u8], dst: &mut [u8], algo: Algo) -> Digest {
    let mut h = Hasher::new(algo);
    for (i, chunk) in dst.chunks_mut(monarch_drivers::window::CHUNK).enumerate() {
        let at = i * monarch_drivers::window::CHUNK;
        chunk.copy_from_slice(&data[at..at + chunk.len()]);
        h.update(chunk);
    }
    h.finish()
}

fn image(c: &mut Criterion) {
    let (dir, w) = window(IMAGE as u64);
    let mut plain = plain_mapping(&dir.path().join("w.win"));
    let src: Vec<u8> = (0..IMAGE).map(|i| u8::try_from(i % 251).unwrap()).collect();
    let mut dst = vec![0u8; IMAGE];
    let mut g = c.benchmark_group("image 32 MiB");
    g.throughput(Throughput::Bytes(IMAGE as u64));
    g.sample_size(30);
    g.bench_function("reference: memcpy between private buffers", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&src)))
    });
    g.bench_function("reference: plain memcpy into a mapping", |b| {
        b.iter(|| plain[layout::REGS_SIZE..].copy_from_slice(black_box(&src)))
    });
    g.bench_function("window write_data", |b| b.iter(|| w.write_data(0, black_box(&src)).unwrap()));
    g.bench_function("reference: plain memcpy out of a mapping", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&plain[layout::REGS_SIZE..])))
    });
    g.bench_function("window read_data", |b| b.iter(|| w.read_data(0, black_box(&mut dst)).unwrap()));
    g.bench_function("reference: checksum private memory/crc32c", |b| {
        b.iter(|| Algo::Crc32c.digest(black_box(&src)))
    });
    g.bench_function("reference: plain copy out of a mapping + checksum/crc32c", |b| {
        b.iter(|| plain_copy_out_digest(&plain[layout::REGS_SIZE..], &mut dst, Algo::Crc32c))
    });
    g.bench_function("window copy_out_digest/crc32c", |b| {
        b.iter(|| w.copy_out_digest(0, &mut dst, Algo::Crc32c, |_| {}).unwrap())
    });
    g.finish();
}

fn chunk_verify(c: &mut Criterion) {
    let (_d, w) = window(CHUNK as u64);
    let src: Vec<u8> = (0..CHUNK).map(|i| u8::try_from(i % 251).unwrap()).collect();
    w.write_data(0, &src).unwrap();
    let mut dst = vec![0u8; CHUNK];
    let mut g = c.benchmark_group("verify a 1 MiB chunk");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    for algo in [Algo::Crc32c, Algo::Xxh3] {
        g.bench_with_input(BenchmarkId::new("reference: checksum private memory", algo), &algo, |b, a| {
            b.iter(|| a.digest(black_box(&src)))
        });
        g.bench_with_input(BenchmarkId::new("window copy_out_digest", algo), &algo, |b, a| {
            b.iter(|| w.copy_out_digest(0, &mut dst, *a, |_| {}).unwrap())
        });
    }
    g.finish();
}

fn round_trip(c: &mut Criterion) {
    let (dir, w) = window(4096);
    let path = dir.path().join("w.win");
    let stop = Arc::new(AtomicBool::new(false));
    // The peer: answers every ring of the primary's doorbell with a ring of its own.
    let peer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let w = Window::open(&path).unwrap();
            let mut seen = w.bell_value(layout::DB_TO_SECONDARY);
            while !stop.load(Ordering::Relaxed) {
                if w.wait_bell(layout::DB_TO_SECONDARY, seen, Duration::from_millis(50)) {
                    seen = w.bell_value(layout::DB_TO_SECONDARY);
                    w.ring(layout::DB_TO_PRIMARY);
                }
            }
        })
    };
    let (to_tx, to_rx) = std::sync::mpsc::channel::<u32>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<u32>();
    let echo = std::thread::spawn(move || {
        while let Ok(v) = to_rx.recv() {
            if back_tx.send(v).is_err() {
                break;
            }
        }
    });
    let mut g = c.benchmark_group("round trip");
    g.bench_function("reference: std channel pair between two threads", |b| {
        b.iter(|| {
            to_tx.send(1).unwrap();
            back_rx.recv().unwrap()
        })
    });
    g.bench_function("window doorbells (futex) between two threads", |b| {
        b.iter(|| {
            let seen = w.bell_value(layout::DB_TO_PRIMARY);
            w.ring(layout::DB_TO_SECONDARY);
            while !w.wait_bell(layout::DB_TO_PRIMARY, seen, Duration::from_secs(1)) {}
        })
    });
    g.finish();
    stop.store(true, Ordering::Relaxed);
    drop(to_tx);
    peer.join().unwrap();
    echo.join().unwrap();
}

criterion_group!(benches, copy, chunk_verify, image, round_trip);
criterion_main!(benches);
