//! Pure decision logic of the etcd election: when is the lease still provably ours, how often
//! to keep it alive, which TTL to ask for and which to believe, and how to read what etcd sent.
//!
//! No clock, no sockets: every function takes the instants it needs, so the rules are unit
//! tested without waiting.
//!
//! The safety argument, in one place: etcd expires a lease `TTL` after the server *processed*
//! the last keep-alive, and a keep-alive cannot be processed before it was *sent*. So if the
//! last acknowledged keep-alive was sent at `s`, the lease lives on the server at least until
//! `s + TTL`. We stop claiming it at `s + TTL - margin`; the margin covers the time between a
//! successful [`provably_ours`] and the end of whatever the monarch does on the strength of
//! it, plus clock-rate differences between the two machines. Any other candidate can only win
//! once our leader key is gone, which needs our lease expired, resigned, or revoked by us
//! no earlier than `s + TTL`, so two monarchs never act at once.

use std::time::{Duration, Instant};

/// Shortest TTL we accept. etcd counts lease TTLs in whole seconds, and a TTL of one second
/// leaves a keep-alive period of a third of a second, already tight on a loaded machine.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// Longest TTL we accept: a monarch that is gone keeps everybody waiting this long.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// The instant after which the lease can no longer be proven ours: the send time of the last
/// acknowledged keep-alive (or of the grant) plus `ttl` minus `margin`.
pub fn proof_deadline(last_acked_send: Instant, ttl: Duration, margin: Duration) -> Instant {
    last_acked_send + ttl.saturating_sub(margin)
}

/// Whether at `now` the lease is still provably alive on the server, given the send time of
/// the last keep-alive etcd acknowledged. Strict: at the deadline itself it is already lost.
pub fn provably_ours(now: Instant, last_acked_send: Instant, ttl: Duration, margin: Duration) -> bool {
    now < proof_deadline(last_acked_send, ttl, margin)
}

/// How often to send a keep-alive: a third of the TTL, so two can be lost (or be slow) before
/// the proof lapses with the default margin of a quarter TTL.
pub fn keepalive_period(ttl: Duration) -> Duration {
    ttl / 3
}

/// The margin used when the configuration does not choose one: a quarter of the TTL.
pub fn default_margin(ttl: Duration) -> Duration {
    ttl / 4
}

/// The TTL to ask etcd for, in its unit (whole seconds), rounding up: asking for more than we
/// assume is safe, the server simply keeps the key longer than we claim it.
pub fn grant_seconds(ttl: Duration) -> i64 {
    let whole = ttl.as_secs().saturating_add(u64::from(ttl.subsec_nanos() > 0));
    i64::try_from(whole.max(1)).unwrap_or(i64::MAX)
}

/// The TTL to build proofs on, from what we asked for and what etcd says it granted (an
/// untrusted number). etcd raises TTLs below its minimum (about 1.5 × its election timeout,
/// rounded up to whole seconds) and may keep a lease longer than asked; it never grants less.
/// We take the smaller of the two, so a server that grants more costs failover time, never
/// safety. `None` when the server's answer is not a positive TTL.
pub fn proof_ttl(requested: Duration, granted_secs: i64) -> Option<Duration> {
    let granted = u64::try_from(granted_secs).ok().filter(|s| *s > 0)?;
    Some(requested.min(Duration::from_secs(granted)))
}

/// Check a TTL and margin before connecting: the TTL must be within [`MIN_TTL`, `MAX_TTL`]
/// and the margin non-zero and at most half the TTL, so at least one keep-alive period fits
/// in the proof window. The error says what to change.
pub fn validate_timing(ttl: Duration, margin: Duration) -> Result<(), String> {
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(format!(
            "lease TTL {ttl:?} is out of range: use between {MIN_TTL:?} and {MAX_TTL:?} (etcd counts whole seconds)"
        ));
    }
    if margin.is_zero() || margin > ttl / 2 {
        return Err(format!(
            "safety margin {margin:?} must be above zero and at most half the TTL {ttl:?} (default: a quarter)"
        ));
    }
    Ok(())
}

/// Check an election name: non-empty printable ASCII without a trailing `/` (the election's
/// keys live under `NAME/`, so `a/` would put them under `a//`).
pub fn validate_election(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 512 {
        return Err(format!(
            "election name {name:?} must be 1 to 512 characters, e.g. \"monarch/chassis-1\""
        ));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) || name.ends_with('/') {
        return Err(format!(
            "election name {name:?} must be printable ASCII without spaces and must not end in '/', e.g. \"monarch/chassis-1\""
        ));
    }
    Ok(())
}

/// Check a candidate id (the value other candidates see as the leader's name): 1 to 256
/// bytes of printable text.
pub fn validate_candidate(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(format!(
            "candidate id {id:?} must be 1 to 256 bytes of printable text, e.g. the host name"
        ));
    }
    Ok(())
}

/// The key our campaign creates, exactly as etcd's election service names it:
/// `NAME/` followed by the lease id in lower-case hex. Knowing it lets us verify the service's
/// answer and clean up after an abandoned campaign ourselves.
pub fn leader_key(election: &str, lease: i64) -> String {
    format!("{election}/{lease:x}")
}

/// The prefix under which every candidate's key lives.
pub fn election_prefix(election: &str) -> String {
    format!("{election}/")
}

/// An epoch from a key's create revision as etcd reported it (untrusted): revisions start at
/// 1, so zero or negative is not a key that exists.
pub fn epoch_of(create_revision: i64) -> Option<u64> {
    u64::try_from(create_revision).ok().filter(|r| *r > 0)
}

/// Render a leader's candidate id read from etcd (untrusted bytes) for messages: lossy UTF-8,
/// control characters escaped, at most 256 characters.
pub fn display_candidate(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == 256 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The `host:port` part of an etcd endpoint (`http://h:p`, `h:p`, with or without a path),
/// for probing it directly when the client cannot get through.
pub fn endpoint_authority(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn proof_holds_until_ttl_minus_margin_after_the_send() {
        let t0 = Instant::now();
        let (ttl, margin) = (2 * S, 500 * MS);
        assert!(provably_ours(t0, t0, ttl, margin));
        assert!(provably_ours(t0 + 1499 * MS, t0, ttl, margin));
        assert!(!provably_ours(t0 + 1500 * MS, t0, ttl, margin));
        assert!(!provably_ours(t0 + 10 * S, t0, ttl, margin));
        assert_eq!(proof_deadline(t0, ttl, margin), t0 + 1500 * MS);
    }

    #[test]
    fn proof_is_measured_from_the_send_not_the_ack() {
        // A keep-alive sent at t0 and acknowledged 1.4 s later proves only until t0 + 1.5 s:
        // the server may have processed it right at t0.
        let t0 = Instant::now();
        let acked_at = t0 + 1400 * MS;
        assert!(provably_ours(acked_at, t0, 2 * S, 500 * MS));
        assert!(!provably_ours(acked_at + 100 * MS, t0, 2 * S, 500 * MS));
    }

    #[test]
    fn a_margin_as_large_as_the_ttl_proves_nothing() {
        let t0 = Instant::now();
        assert!(!provably_ours(t0, t0, S, S));
        assert!(!provably_ours(t0, t0, S, 2 * S));
    }

    #[test]
    fn keepalives_fit_twice_in_the_default_window() {
        for ttl in [S, 2 * S, 5 * S, 60 * S] {
            let window = ttl - default_margin(ttl);
            assert!(keepalive_period(ttl) * 2 <= window, "{ttl:?}");
        }
    }

    #[test]
    fn grant_rounds_up_to_whole_seconds() {
        assert_eq!(grant_seconds(2 * S), 2);
        assert_eq!(grant_seconds(1500 * MS), 2);
        assert_eq!(grant_seconds(MS), 1);
        assert_eq!(grant_seconds(Duration::ZERO), 1);
        assert_eq!(grant_seconds(Duration::MAX), i64::MAX);
    }

    #[test]
    fn proof_ttl_believes_the_smaller_and_rejects_nonsense() {
        assert_eq!(proof_ttl(2 * S, 2), Some(2 * S));
        // etcd raised 1 s to its minimum of 2 s: we still only count on 1 s.
        assert_eq!(proof_ttl(S, 2), Some(S));
        assert_eq!(proof_ttl(1500 * MS, 2), Some(1500 * MS));
        // A server claiming less than asked: believe it, it is the one expiring the lease.
        assert_eq!(proof_ttl(5 * S, 3), Some(3 * S));
        assert_eq!(proof_ttl(2 * S, 0), None);
        assert_eq!(proof_ttl(2 * S, -7), None);
    }

    #[test]
    fn timing_validation_names_the_fix() {
        assert!(validate_timing(2 * S, 500 * MS).is_ok());
        assert!(validate_timing(2 * S, S).is_ok());
        let e = validate_timing(500 * MS, 100 * MS).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = validate_timing(2 * S, 1001 * MS).unwrap_err();
        assert!(e.contains("at most half"), "{e}");
        assert!(validate_timing(2 * S, Duration::ZERO).is_err());
        assert!(validate_timing(MAX_TTL + S, S).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_election("monarch/chassis-1").is_ok());
        for bad in ["", "a/", "has space", "tab\there", &"x".repeat(513)] {
            assert!(validate_election(bad).is_err(), "{bad:?}");
        }
        assert!(validate_candidate("slot0.bootid2").is_ok());
        assert!(validate_candidate("").is_err());
        assert!(validate_candidate("a\nb").is_err());
        assert!(validate_candidate(&"x".repeat(257)).is_err());
    }

    #[test]
    fn keys_match_the_election_service() {
        assert_eq!(leader_key("monarch/c1", 0x694d_7a1b_2c3d_4e5f), "monarch/c1/694d7a1b2c3d4e5f");
        assert_eq!(election_prefix("monarch/c1"), "monarch/c1/");
    }

    #[test]
    fn epochs_must_be_positive_revisions() {
        assert_eq!(epoch_of(42), Some(42));
        assert_eq!(epoch_of(0), None);
        assert_eq!(epoch_of(-1), None);
        assert_eq!(epoch_of(i64::MAX), Some(i64::MAX as u64));
    }

    #[test]
    fn candidate_names_from_the_wire_are_tamed() {
        assert_eq!(display_candidate(b"node-a"), "node-a");
        assert_eq!(display_candidate(b"a\nb\x1b"), "a\\nb\\u{1b}");
        assert_eq!(display_candidate(&[0xff, b'x']), "\u{fffd}x");
        let long = display_candidate(&[b'y'; 1000]);
        assert_eq!(long.chars().count(), 257);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn endpoint_authorities() {
        assert_eq!(endpoint_authority("http://127.0.0.1:2379"), "127.0.0.1:2379");
        assert_eq!(endpoint_authority("127.0.0.1:2379"), "127.0.0.1:2379");
        assert_eq!(endpoint_authority("https://etcd.example:2379/x"), "etcd.example:2379");
        assert_eq!(endpoint_authority(""), "");
    }
}
