//! HTTP range requests (RFC 9110 §14): which answer a `Range` request gets, given its
//! `If-Range` and the representation's validators. The HTTP service applies the decision;
//! this file holds the rules.
//!
//! - A `Range` whose unit is not `bytes`, or that does not parse, is ignored: 200 with the
//!   whole representation (§14.2: a server MUST ignore a range unit it does not understand,
//!   and MAY ignore the field).
//! - `If-Range` (§13.1.5) that does not match the current validator: 200, whole. An entity
//!   tag matches only strongly (the same opaque tag, neither weak); a date matches only when
//!   it is exactly the `Last-Modified` that would be sent and that date is a strong
//!   validator (the caller says so: the file last changed at least a second before it).
//!   No validator to compare with: no match.
//! - One satisfiable range: 206 with it. Several: 200 with the whole representation (a
//!   server may ignore ranges; monarch sends no `multipart/byteranges`). None satisfiable:
//!   416.

/// What a request with a `Range` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// 200 with the whole representation.
    Whole,
    /// 206 with bytes `first..=last`.
    Part {
        /// First byte.
        first: u64,
        /// Last byte (inclusive).
        last: u64,
    },
    /// 416: no range is satisfiable.
    Unsatisfiable,
}

/// The representation's validators, as the server would send them in a 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Validators<'a> {
    /// The `ETag` value, quotes included.
    pub etag: Option<&'a str>,
    /// The `Last-Modified` value (an IMF-fixdate).
    pub last_modified: Option<&'a str>,
    /// Whether `last_modified` is a strong validator (RFC 9110 §8.8.2.2).
    pub date_is_strong: bool,
}

/// More ranges than this in one header: ignored (200), not worth parsing.
pub const MAX_RANGES: usize = 64;

/// The answer to a request for a representation of `size` bytes with these `Range` and
/// `If-Range` field values.
pub fn decide(range: Option<&str>, if_range: Option<&str>, size: u64, v: Validators<'_>) -> RangeAnswer {
    let Some(range) = range else { return RangeAnswer::Whole };
    if let Some(cond) = if_range.map(str::trim) {
        if !if_range_matches(cond, v) {
            return RangeAnswer::Whole;
        }
    }
    let Some((unit, set)) = range.split_once('=') else { return RangeAnswer::Whole };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeAnswer::Whole;
    }
    let mut satisfiable = Vec::new();
    let mut specs = 0;
    for spec in set.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        specs += 1;
        if specs > MAX_RANGES {
            return RangeAnswer::Whole;
        }
        match parse_spec(spec) {
            None => return RangeAnswer::Whole, // syntax error: ignore the field
            Some(Spec::From(first, last)) => {
                if first < size {
                    satisfiable.push((first, last.map_or(size - 1, |l| l.min(size - 1))));
                }
            }
            Some(Spec::Suffix(n)) => {
                if n > 0 && size > 0 {
                    satisfiable.push((size - n.min(size), size - 1));
                }
            }
        }
    }
    match satisfiable[..] {
        _ if specs == 0 => RangeAnswer::Whole,
        [] => RangeAnswer::Unsatisfiable,
        [(first, last)] => RangeAnswer::Part { first, last },
        _ => RangeAnswer::Whole,
    }
}

enum Spec {
    /// `first-` or `first-last`.
    From(u64, Option<u64>),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // More digits than u64 holds: larger than any file, as good as u64::MAX.
    Some(s.parse().unwrap_or(u64::MAX))
}

fn parse_spec(spec: &str) -> Option<Spec> {
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return digits(b).map(Spec::Suffix);
    }
    let first = digits(a)?;
    if b.is_empty() {
        return Some(Spec::From(first, None));
    }
    let last = digits(b)?;
    // last < first is an invalid range-spec (§14.1.1): the field is ignored.
    (last >= first).then_some(Spec::From(first, Some(last)))
}

fn if_range_matches(cond: &str, v: Validators<'_>) -> bool {
    if cond.starts_with('"') || cond.starts_with("W/") {
        // Strong comparison: a weak tag never matches.
        !cond.starts_with("W/") && v.etag.is_some_and(|e| !e.starts_with("W/") && e == cond)
    } else {
        v.date_is_strong && v.last_modified.is_some_and(|d| d == cond)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: Validators<'static> = Validators {
        etag: Some("\"abc-10\""),
        last_modified: Some("Sun, 06 Nov 1994 08:49:37 GMT"),
        date_is_strong: true,
    };

    fn d(range: &str) -> RangeAnswer {
        decide(Some(range), None, 10, V)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(decide(None, None, 10, V), RangeAnswer::Whole);
        assert_eq!(d("bytes=0-4"), RangeAnswer::Part { first: 0, last: 4 });
        assert_eq!(d("Bytes = 5-"), RangeAnswer::Part { first: 5, last: 9 });
        assert_eq!(d("bytes=-3"), RangeAnswer::Part { first: 7, last: 9 });
        assert_eq!(d("bytes=-30"), RangeAnswer::Part { first: 0, last: 9 });
        assert_eq!(d("bytes=8-100"), RangeAnswer::Part { first: 8, last: 9 });
        assert_eq!(d("bytes=99999999999999999999999-"), RangeAnswer::Unsatisfiable);
        assert_eq!(d("bytes=10-"), RangeAnswer::Unsatisfiable);
        assert_eq!(d("bytes=-0"), RangeAnswer::Unsatisfiable);
        assert_eq!(decide(Some("bytes=0-"), None, 0, V), RangeAnswer::Unsatisfiable);
    }

    #[test]
    fn unknown_units_and_bad_syntax_are_ignored() {
        for r in [
            "items=0-5",
            "bytes",
            "bytes=",
            "bytes=a-b",
            "bytes=5-1",
            "bytes=1-2-3",
            "bytes=+1-2",
            "bytes=0-0,x",
        ] {
            assert_eq!(d(r), RangeAnswer::Whole, "{r}");
        }
    }

    #[test]
    fn several_ranges_get_the_whole_file_unless_one_is_satisfiable() {
        assert_eq!(d("bytes=0-0,5-9"), RangeAnswer::Whole);
        assert_eq!(d("bytes=0-0, 50-90"), RangeAnswer::Part { first: 0, last: 0 });
        assert_eq!(d("bytes=20-30,50-90"), RangeAnswer::Unsatisfiable);
        let many = format!("bytes={}", vec!["0-0"; MAX_RANGES + 1].join(","));
        assert_eq!(d(&many), RangeAnswer::Whole);
    }

    #[test]
    fn if_range_must_match_the_current_validator() {
        let r = Some("bytes=0-4");
        let part = RangeAnswer::Part { first: 0, last: 4 };
        assert_eq!(decide(r, Some("\"abc-10\""), 10, V), part);
        assert_eq!(decide(r, Some("\"other\""), 10, V), RangeAnswer::Whole);
        assert_eq!(decide(r, Some("W/\"abc-10\""), 10, V), RangeAnswer::Whole, "weak tags never match");
        assert_eq!(decide(r, Some("Sun, 06 Nov 1994 08:49:37 GMT"), 10, V), part);
        assert_eq!(decide(r, Some("Sun, 06 Nov 1994 08:49:38 GMT"), 10, V), RangeAnswer::Whole);
        let weak_date = Validators { date_is_strong: false, ..V };
        assert_eq!(decide(r, Some("Sun, 06 Nov 1994 08:49:37 GMT"), 10, weak_date), RangeAnswer::Whole);
        let none = Validators::default();
        assert_eq!(decide(r, Some("\"abc-10\""), 10, none), RangeAnswer::Whole);
        assert_eq!(decide(r, Some("Sun, 06 Nov 1994 08:49:37 GMT"), 10, none), RangeAnswer::Whole);
        assert_eq!(decide(r, Some(""), 10, V), RangeAnswer::Whole);
    }
}
