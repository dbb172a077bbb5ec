//! Any discovery datagram or download request a boot server or agent can receive: decoding
//! never panics, and whatever decodes re-encodes to something that decodes the same.
#![no_main]
use monarch_proto::netboot::wire::Message;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::decode(data) {
        let again = Message::decode(&msg.encode()).expect("what we encode decodes");
        assert_eq!(again, msg);
    }
});
