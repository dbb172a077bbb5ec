//! How sizes, durations and checksum names are written, on command lines and in reports:
//! one parser and one printer each, shared by the binary, the benches and the topology.
use monarch_proto::Algo;
use std::time::Duration;
use thiserror::Error;

/// A value written the wrong way, with the form that is expected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValueError {
    /// Not a size.
    #[error("{0:?} is not a size; write e.g. 30MiB, 1GiB")]
    Size(String),
    /// Not a duration.
    #[error("{text}; write e.g. 500ms, 5s, 2m")]
    Duration {
        /// What the duration parser said.
        text: String,
    },
    /// Not a checksum algorithm monarch knows.
    #[error("unknown checksum {0:?}; use crc32c, xxh3 or blake3")]
    Algo(String),
}

/// A size as people write it: `30MiB`, `1GiB`, `4096`.
pub fn parse_size(s: &str) -> Result<u64, ValueError> {
    s.parse::<bytesize::ByteSize>().map(|b| b.as_u64()).map_err(|_| ValueError::Size(s.to_string()))
}

/// The longest duration monarch takes: no step of a boot waits a day, and anything longer
/// (a typo, a hostile file) would overflow the arithmetic done with it.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);

/// A duration as people write it: `500ms`, `5s`, `2m`; at most [`DURATION_MAX`].
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let d = humantime::parse_duration(s).map_err(|e| ValueError::Duration { text: e.to_string() })?;
    if d > DURATION_MAX {
        return Err(ValueError::Duration { text: "longer than a day, which no step of a boot waits".into() });
    }
    Ok(d)
}

/// A checksum algorithm by name: `crc32c`, `xxh3`, `blake3`.
pub fn parse_algo(s: &str) -> Result<Algo, ValueError> {
    Algo::from_name(s).ok_or_else(|| ValueError::Algo(s.to_string()))
}

/// A size for people: the largest binary unit that divides it (`30MiB`), else bytes.
pub fn fmt_size(b: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if b >= 1 << shift && b % (1 << shift) == 0 {
            return format!("{}{unit}", b >> shift);
        }
    }
    format!("{b} bytes")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_duration_longer_than_a_day_is_refused_not_overflowed() {
        assert_eq!(super::parse_duration("24h").unwrap(), super::DURATION_MAX);
        let e = super::parse_duration("20000112743y").unwrap_err().to_string();
        assert!(e.contains("longer than a day") && e.contains("5s"), "{e}");
    }

    use super::*;

    #[test]
    fn sizes_read_and_print_in_binary_units() {
        assert_eq!(parse_size("30MiB"), Ok(30 << 20));
        assert_eq!(fmt_size(30 << 20), "30MiB");
        assert_eq!(fmt_size(1000), "1000 bytes");
        assert_eq!(
            parse_size("lots").unwrap_err().to_string(),
            "\"lots\" is not a size; write e.g. 30MiB, 1GiB"
        );
    }

    #[test]
    fn a_bad_duration_or_checksum_says_what_to_write() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("soon").unwrap_err().to_string().ends_with("write e.g. 500ms, 5s, 2m"));
        assert_eq!(
            parse_algo("md5").unwrap_err().to_string(),
            "unknown checksum \"md5\"; use crc32c, xxh3 or blake3"
        );
    }
}
