//! Any datagram a TFTP server can receive: parse it, and for a request, run the checks the
//! server runs before it opens a file. No input may panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = monarch_proto::tftp::wire::parse(data) {
        let _ = monarch_proto::tftp::request::check_read_request(&packet);
        let mut out = Vec::new();
        packet.encode(&mut out);
        // What we encode parses back.
        assert!(monarch_proto::tftp::wire::parse(&out).is_ok());
    }
});
