//! Any datagram that reaches port 67 or 4011: decoding never panics, and the full server
//! and the proxy (on both ports) handle whatever decodes without panicking; their replies
//! encode.
#![no_main]
use monarch_proto::dhcp::boot::{BootConfig, Bootfiles};
use monarch_proto::dhcp::pool::PoolConfig;
use monarch_proto::dhcp::server::{Server, Via};
use monarch_proto::dhcp::wire::decode;
use std::net::Ipv4Addr;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(msg) = decode(data) else { return };
    let me = Ipv4Addr::new(10, 0, 0, 1);
    let boot = || BootConfig {
        tftp_server: me,
        http_base: Some("http://10.0.0.1:8080".into()),
        bootfiles: Bootfiles::default(),
    };
    let pool = PoolConfig::new(Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 103));
    let servers = [Server::full(me, pool, boot()).expect("a valid pool"), Server::proxy(me, boot())];
    for mut server in servers {
        for via in [Via::Dhcp, Via::PxeBoot] {
            if let Some(reply) = server.handle(&msg, via, 1000) {
                let _ = reply.encode();
            }
        }
    }
});
