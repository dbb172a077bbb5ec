//! Hot paths of the window driver, each beside its reference in the same criterion group:
//! - copy into a window vs memcpy between two private buffers;
//! - copy-out-and-checksum of a chunk vs checksumming the same bytes in private memory;
//! - a command/status round trip through registers and futex doorbells between two threads
//!   vs the same round trip over a pair of std channels.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use monarch_drivers::Window;
use monarch_proto::Algo;
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

criterion_group!(benches, copy, chunk_verify, round_trip);
criterion_main!(benches);
