//! The administrative state (IFF_UP) of this machine's network interfaces, read and set
//! through route netlink (`RTM_GETLINK`, `RTM_SETLINK`): the supervisor holds a secondary's
//! ports down until it is ready, takes them down when it crashes and up when it is back.
//!
//! Synchronous: one netlink socket per call, one request, its reply read to the kernel's
//! acknowledgement (bounded by [`REPLY_TIMEOUT`]). Requests are built with
//! `netlink-packet-route`; of a reply only the netlink header, the error code and the fixed
//! `ifinfomsg` header are read (never the attributes, whose set grows with each kernel), and
//! every length is checked: nothing the kernel sends can make this panic.
//!
//! Interfaces are named as in `ports`. A name is checked as the kernel checks it
//! (`dev_valid_name`) before any netlink call; the interface is looked up by name in the
//! network namespace of the calling thread.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use netlink_packet_core::{
    ErrorBuffer, NLM_F_ACK, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkHeader, LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// How long the kernel may take to answer one request before the call fails.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest interface name the kernel accepts (`IFNAMSIZ` less the final NUL).
pub const MAX_NAME_BYTES: usize = 15;

/// Why a port could not be read or set.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The name is not one the kernel would accept; nothing was asked of the kernel.
    #[error(
        "invalid network interface name {name:?}: {why} (a name is 1 to 15 bytes, without '/', ':', \
         whitespace or control characters, and not \".\" or \"..\"); fix `ports`"
    )]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No interface of that name in this network namespace.
    #[error("network interface {name} does not exist in this network namespace; create it or fix `ports`")]
    NotFound {
        /// The interface.
        name: String,
    },
    /// The kernel refused: setting a link needs CAP_NET_ADMIN.
    #[error("cannot {op} network interface {name}: permission denied (needs CAP_NET_ADMIN: run as root)")]
    PermissionDenied {
        /// The interface.
        name: String,
        /// What was being done: "read", "set up" or "set down".
        op: &'static str,
    },
    /// Any other failure of the netlink socket or of the request.
    #[error("cannot {op} network interface {name}: netlink: {source}")]
    Netlink {
        /// The interface.
        name: String,
        /// What was being done: "read", "set up" or "set down".
        op: &'static str,
        /// The cause (the kernel's error code, or the socket's).
        source: io::Error,
    },
    /// The kernel's reply could not be understood.
    #[error("cannot {op} network interface {name}: malformed netlink reply: {why}")]
    BadReply {
        /// The interface.
        name: String,
        /// What was being done: "read", "set up" or "set down".
        op: &'static str,
        /// What is wrong with the reply.
        why: String,
    },
}

/// Set interface `name` administratively up (`up = true`) or down.
pub fn set_up(name: &str, up: bool) -> Result<(), LinkError> {
    check_name(name)?;
    let op = if up { "set up" } else { "set down" };
    let mut msg = LinkMessage::default();
    msg.header.flags = if up { LinkFlags::Up } else { LinkFlags::empty() };
    // Only IFF_UP changes; every other flag is left as it is.
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    request(name, op, RouteNetlinkMessage::SetLink(msg), 0).map(|_| ())
}

/// Whether interface `name` is administratively up (IFF_UP).
pub fn is_up(name: &str) -> Result<bool, LinkError> {
    Ok(get(name)?.flags.contains(LinkFlags::Up))
}

/// Whether interface `name` exists in this network namespace.
pub fn exists(name: &str) -> Result<bool, LinkError> {
    match get(name) {
        Ok(_) => Ok(true),
        Err(LinkError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The `ifinfomsg` header of interface `name` (`RTM_GETLINK` by name).
fn get(name: &str) -> Result<LinkHeader, LinkError> {
    check_name(name)?;
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    request(name, "read", RouteNetlinkMessage::GetLink(msg), 0)?.ok_or_else(|| LinkError::BadReply {
        name: name.to_string(),
        op: "read",
        why: "the kernel acknowledged the request without describing the interface".into(),
    })
}

/// Refuse a name the kernel would refuse (`dev_valid_name`), and a NUL, which would cut the
/// name short and name another interface.
fn check_name(name: &str) -> Result<(), LinkError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("it is a path component")
    } else if name.contains('/') {
        Some("it contains '/'")
    } else if name.contains(':') {
        Some("it contains ':'")
    } else if name.chars().any(char::is_whitespace) {
        Some("it contains whitespace")
    } else if name.chars().any(char::is_control) {
        Some("it contains a control character")
    } else {
        None
    };
    match why {
        Some(why) => Err(LinkError::InvalidName { name: name.to_string(), why }),
        None => Ok(()),
    }
}

/// Sequence numbers of this process's requests (each socket sees only its own replies; the
/// number tells a reply from a stale one all the same).
static SEQUENCE: AtomicU32 = AtomicU32::new(1);

/// Send `msg` about interface `name` (flags `NLM_F_REQUEST | NLM_F_ACK | extra_flags`) and
/// read the replies to it up to the kernel's acknowledgement. Returns the `ifinfomsg` header
/// of the `RTM_NEWLINK` the kernel sent before it, if any.
fn request(
    name: &str,
    op: &'static str,
    msg: RouteNetlinkMessage,
    extra_flags: u16,
) -> Result<Option<LinkHeader>, LinkError> {
    let io_err = |source: io::Error| LinkError::Netlink { name: name.to_string(), op, source };
    let bad = |why: String| LinkError::BadReply { name: name.to_string(), op, why };

    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
    packet.header.flags = NLM_F_REQUEST | NLM_F_ACK | extra_flags;
    packet.header.sequence_number = seq;
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);

    let mut socket = Socket::new(NETLINK_ROUTE).map_err(io_err)?;
    socket.bind_auto().map_err(io_err)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(io_err)?;
    rustix::net::sockopt::set_socket_timeout(
        &socket,
        rustix::net::sockopt::Timeout::Recv,
        Some(REPLY_TIMEOUT),
    )
    .map_err(|e| io_err(e.into()))?;
    let sent = socket.send(&bytes, 0).map_err(io_err)?;
    if sent != bytes.len() {
        return Err(io_err(io::Error::other(format!("sent {sent} of the request's {} bytes", bytes.len()))));
    }

    let mut link = None;
    let mut datagram = Vec::new();
    loop {
        receive(&socket, &mut datagram).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io_err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the kernel did not answer within {} s", REPLY_TIMEOUT.as_secs()),
            )),
            _ => io_err(e),
        })?;
        match read_replies(&datagram, seq).map_err(bad)? {
            Replies::More(header) => link = header.or(link),
            Replies::Ack(header) => return Ok(header.or(link)),
            Replies::Failed(errno) => {
                return Err(match errno {
                    libc::ENODEV => LinkError::NotFound { name: name.to_string() },
                    libc::EPERM | libc::EACCES => LinkError::PermissionDenied { name: name.to_string(), op },
                    _ => io_err(io::Error::from_raw_os_error(errno)),
                });
            }
        }
    }
}

/// Receive one whole datagram into `buf` (sized to it first: a link's description grows
/// with its attributes).
fn receive(socket: &Socket, buf: &mut Vec<u8>) -> io::Result<()> {
    let len = socket.recv(&mut &mut [0u8; 0][..], libc::MSG_PEEK | libc::MSG_TRUNC)?;
    buf.clear();
    buf.resize(len, 0);
    let got = socket.recv(&mut &mut buf[..], libc::MSG_TRUNC)?;
    if got != len {
        return Err(io::Error::other(format!("a {len}-byte reply arrived as {got} bytes")));
    }
    Ok(())
}

/// What one datagram of replies says about our request.
#[derive(Debug, PartialEq)]
enum Replies {
    /// Not finished; the link's header if the datagram described it.
    More(Option<LinkHeader>),
    /// The kernel acknowledged the request (after the link's header, if in this datagram).
    Ack(Option<LinkHeader>),
    /// The kernel refused it with this errno.
    Failed(i32),
}

/// Read the netlink messages of one datagram that answer request `seq` (others are
/// skipped). Every length is checked before it is used.
fn read_replies(datagram: &[u8], seq: u32) -> Result<Replies, String> {
    let mut link = None;
    let mut offset = 0;
    while offset < datagram.len() {
        let rest = &datagram[offset..];
        let msg = NetlinkBuffer::new_checked(rest).map_err(|e| format!("at byte {offset}: {e}"))?;
        // The length is at least the 16-byte header (checked above), so this advances.
        let step = (msg.length() as usize).next_multiple_of(4);
        offset = offset.saturating_add(step);
        if msg.sequence_number() != seq {
            continue;
        }
        let payload = msg.payload();
        match msg.message_type() {
            NLMSG_ERROR => {
                let error = ErrorBuffer::new_checked(payload).map_err(|e| format!("error message: {e}"))?;
                return Ok(match error.code() {
                    None => Replies::Ack(link),
                    // The kernel sends a negative errno.
                    Some(code) => Replies::Failed(code.get().checked_neg().unwrap_or(i32::MAX)),
                });
            }
            NLMSG_DONE => return Ok(Replies::Ack(link)),
            libc::RTM_NEWLINK => {
                link = Some(LinkHeader::parse(payload).map_err(|e| format!("RTM_NEWLINK: {e}"))?);
            }
            _ => {}
        }
    }
    Ok(Replies::More(link))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_would_refuse_are_refused_before_any_netlink_call() {
        for (name, why) in [
            ("", "empty"),
            ("sixteen-bytes-xx", "longer than 15"),
            (".", "path component"),
            ("..", "path component"),
            ("a/b", "'/'"),
            ("eth0:1", "':'"),
            ("eth 0", "whitespace"),
            ("eth0\t", "whitespace"),
            ("eth\u{0}0", "control"),
        ] {
            for result in [set_up(name, true).map(|_| false), is_up(name), exists(name)] {
                let e = result.unwrap_err();
                assert!(matches!(e, LinkError::InvalidName { .. }), "{name:?}: {e}");
                let text = e.to_string();
                assert!(text.contains(why) && text.contains("fix `ports`"), "{name:?}: {text}");
            }
        }
        // Fifteen bytes is the longest valid name.
        assert!(check_name("fifteen-bytes-x").is_ok());
    }

    #[test]
    fn errors_name_the_interface_the_operation_and_the_fix() {
        let e = LinkError::NotFound { name: "p0".into() }.to_string();
        assert_eq!(
            e,
            "network interface p0 does not exist in this network namespace; create it or fix `ports`"
        );
        let e = LinkError::PermissionDenied { name: "p0".into(), op: "set up" }.to_string();
        assert!(e.contains("set up network interface p0") && e.contains("CAP_NET_ADMIN: run as root"), "{e}");
        let source = io::Error::from_raw_os_error(libc::EBUSY);
        let e = LinkError::Netlink { name: "p0".into(), op: "set down", source }.to_string();
        assert!(e.contains("set down network interface p0") && e.contains("busy"), "{e}");
    }

    /// One netlink message: header (length, type, flags, sequence, port) and payload.
    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(16 + payload.len()).unwrap();
        let mut m =
            [&len.to_ne_bytes()[..], &kind.to_ne_bytes(), &0u16.to_ne_bytes(), &seq.to_ne_bytes()].concat();
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(m.len().next_multiple_of(4), 0);
        m
    }

    #[test]
    fn replies_are_read_by_sequence_and_garbage_is_an_error_not_a_panic() {
        // ifinfomsg: family, pad, type, index, flags (IFF_UP), change mask.
        let info =
            [&[0u8, 0][..], &1u16.to_ne_bytes(), &7i32.to_ne_bytes(), &1u32.to_ne_bytes(), &[0; 4]].concat();
        let ack = message(NLMSG_ERROR, 9, &[0u8; 20]);
        let up = [message(libc::RTM_NEWLINK, 9, &info), ack.clone()].concat();
        let Ok(Replies::Ack(Some(h))) = read_replies(&up, 9) else { panic!("{:?}", read_replies(&up, 9)) };
        assert!(h.flags.contains(LinkFlags::Up) && h.index == 7);
        // A stale reply (another sequence) is skipped.
        assert_eq!(read_replies(&up, 10), Ok(Replies::More(None)));
        let enodev = message(NLMSG_ERROR, 9, &[&(-libc::ENODEV).to_ne_bytes()[..], &[0; 16]].concat());
        assert_eq!(read_replies(&enodev, 9), Ok(Replies::Failed(libc::ENODEV)));
        let min = message(NLMSG_ERROR, 9, &i32::MIN.to_ne_bytes());
        assert_eq!(read_replies(&min, 9), Ok(Replies::Failed(i32::MAX)));
        // Truncations, lengths past the end or below the header, short payloads.
        assert!(read_replies(&up[..up.len() - 1], 9).is_err());
        assert!(read_replies(&message(NLMSG_ERROR, 9, &[0; 2]), 9).is_err());
        assert!(read_replies(&message(libc::RTM_NEWLINK, 9, &info[..15]), 9).is_err());
        let mut lying = ack.clone();
        lying[..4].copy_from_slice(&4096u32.to_ne_bytes());
        assert!(read_replies(&lying, 9).is_err());
        lying[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(read_replies(&lying, 9).is_err());
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let mut d = up.clone();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..d.len());
                d[i] = rng.u8(..);
            }
            d.truncate(rng.usize(..=d.len()));
            let _ = read_replies(&d, 9);
        }
    }

    /// Create a veth pair `a`/`b` through netlink in the calling thread's namespace (veth
    /// rather than dummy: the dummy driver is a module some kernels, this project's CI among
    /// them, do not have).
    fn add_veth(a: &str, b: &str) -> Result<(), LinkError> {
        use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkInfo};
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName(b.to_string()));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(a.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        let flags = netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL;
        request(a, "create", RouteNetlinkMessage::NewLink(msg), flags).map(|_| ())
    }

    /// Everything against real interfaces, in a network namespace of its own: a thread
    /// unshares its network namespace, makes a veth pair there, and the namespace (with the
    /// pair) goes when the thread ends. The host's interfaces are never touched.
    #[test]
    fn set_up_and_down_in_a_network_namespace_of_its_own() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: setting links needs root (CAP_NET_ADMIN, a network namespace of its own)");
            return;
        }
        let outcome = std::thread::spawn(|| {
            // SAFETY: only the network namespace is unshared, and only for this thread; the
            // file descriptor table stays shared (`unshare_unsafe`'s concern is FILES).
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                .expect("unshare(CLONE_NEWNET) (needs root)");
            // A fresh namespace holds only `lo`, down.
            assert!(!is_up("lo").unwrap());
            assert!(!exists("mnlink0").unwrap());
            add_veth("mnlink0", "mnlink1").unwrap();
            assert!(exists("mnlink0").unwrap() && exists("mnlink1").unwrap());
            assert!(!is_up("mnlink0").unwrap());

            set_up("mnlink0", true).unwrap();
            assert!(is_up("mnlink0").unwrap());
            assert!(!is_up("mnlink1").unwrap(), "only the interface named changes");
            set_up("mnlink0", true).unwrap(); // already up: no error
            assert!(is_up("mnlink0").unwrap());
            set_up("mnlink0", false).unwrap();
            assert!(!is_up("mnlink0").unwrap());
            set_up("lo", true).unwrap();
            assert!(is_up("lo").unwrap());

            for result in [set_up("mnmissing", true).map(|_| false), set_up("mnmissing", false).map(|_| false), is_up("mnmissing")] {
                let e = result.unwrap_err();
                assert!(matches!(&e, LinkError::NotFound { name } if name == "mnmissing"), "{e}");
                assert_eq!(
                    e.to_string(),
                    "network interface mnmissing does not exist in this network namespace; create it or fix `ports`"
                );
            }
            let e = set_up("bad/name", true).unwrap_err();
            assert!(matches!(e, LinkError::InvalidName { .. }), "{e}");
            let e = add_veth("mnlink0", "mnlink2").unwrap_err();
            assert!(matches!(&e, LinkError::Netlink { source, .. } if source.raw_os_error() == Some(libc::EEXIST)), "{e}");

            // Without CAP_NET_ADMIN (dropped from this thread only), reading still works
            // and setting is refused with the fix.
            let mut caps = rustix::thread::capabilities(None).unwrap();
            caps.effective.remove(rustix::thread::CapabilitySet::NET_ADMIN);
            rustix::thread::set_capabilities(None, caps).unwrap();
            assert!(is_up("lo").unwrap());
            let e = set_up("mnlink0", true).unwrap_err();
            assert!(matches!(&e, LinkError::PermissionDenied { name, op: "set up" } if name == "mnlink0"), "{e}");
            assert_eq!(
                e.to_string(),
                "cannot set up network interface mnlink0: permission denied (needs CAP_NET_ADMIN: run as root)"
            );
        })
        .join();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
        // The host's namespace never saw the pair.
        assert!(!exists("mnlink0").unwrap());
    }
}
