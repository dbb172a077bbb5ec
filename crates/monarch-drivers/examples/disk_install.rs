//! Install an image into an A/B disk target: the smallest installer, and the process the
//! crash test (`tests/disk_install.rs`) kills at random points.
//!
//! ```text
//! disk_install TARGET IMAGE [NAME] [ALGO]     ALGO: crc32c | xxh3 | blake3 (default)
//! ```
//!
//! It prints `ready` once the image is read and the target opened (so a killer's clock
//! starts at the install itself), then `installed slot X generation N`.
//!
//! Fault injection: `MONARCH_DISK_CUT_AFTER=N` makes the install stop dead after N bytes of
//! device writes — the write in progress cut short, nothing written or synced after it, the
//! process gone (exit status 3) — i.e. a power cut mid-write. Exit status 1 is any other
//! error, 2 a usage error.

use std::io::Write;
use std::process::ExitCode;

use monarch_drivers::disk::{DiskError, Target};
use monarch_proto::checksum::Algo;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(target), Some(image)) = (args.first(), args.get(1)) else {
        eprintln!("usage: disk_install TARGET IMAGE [NAME] [crc32c|xxh3|blake3]");
        return ExitCode::from(2);
    };
    let name = args.get(2).cloned().unwrap_or_else(|| {
        std::path::Path::new(image).file_name().map_or("image".into(), |n| n.to_string_lossy().into_owned())
    });
    let algo = match args.get(3) {
        None => Algo::Blake3,
        Some(a) => match Algo::from_name(a) {
            Some(a) => a,
            None => {
                eprintln!("unknown checksum {a:?}: use crc32c, xxh3 or blake3");
                return ExitCode::from(2);
            }
        },
    };
    let cut_after = match std::env::var("MONARCH_DISK_CUT_AFTER") {
        Err(_) => None,
        Ok(v) => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                eprintln!("MONARCH_DISK_CUT_AFTER={v:?} is not a byte count: set a whole number or unset it");
                return ExitCode::from(2);
            }
        },
    };
    let bytes = match std::fs::read(image) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot read image {image}: {e}");
            return ExitCode::from(1);
        }
    };
    let mut target = match Target::open(target) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    target.set_write_limit(cut_after);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    match target.install(&bytes, &name, algo) {
        Ok(done) => {
            let _ = writeln!(out, "installed {} generation {}", done.slot, done.generation);
            ExitCode::SUCCESS
        }
        // Stop dead: no destructor, no flush, nothing more reaches the target.
        Err(DiskError::PowerCut { .. }) => std::process::exit(3),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
