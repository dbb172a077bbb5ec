//! Socket options that rustix, socket2 and nix do not offer.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// `TCP_NOTSENT_LOWAT`: how many bytes of a TCP socket's send queue may wait unsent (not
/// yet allowed on the wire by the peer's window) before the socket stops taking more and
/// reports itself not writable.
pub fn set_tcp_notsent_lowat(socket: impl AsFd, bytes: u32) -> io::Result<()> {
    let fd = socket.as_fd();
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: `fd` is a borrowed, open descriptor for the duration of the call; the option
    // value points at a live c_int of the length given, which the kernel only reads.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            std::ptr::from_ref(&value).cast(),
            len,
        )
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notsent_lowat(socket: &impl AsFd) -> libc::c_int {
        let mut value: libc::c_int = -1;
        let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap();
        // SAFETY: a live descriptor; value and len point at live locals of the stated size.
        let r = unsafe {
            libc::getsockopt(
                socket.as_fd().as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                std::ptr::from_mut(&mut value).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        value
    }

    #[test]
    fn the_unsent_limit_is_set_on_a_tcp_socket_and_refused_elsewhere() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        set_tcp_notsent_lowat(&stream, 256 << 10).unwrap();
        assert_eq!(notsent_lowat(&stream), 256 << 10);
        let file = tempfile::tempfile().unwrap();
        let e = set_tcp_notsent_lowat(&file, 1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTSOCK), "{e}");
    }
}
