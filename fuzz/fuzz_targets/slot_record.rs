//! A commit record sector read from a disk that may hold anything: decoding never panics,
//! and whatever decodes re-encodes to the very same bytes.
#![no_main]
use monarch_proto::slots::{Layout, Record, Slot};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(layout) = Layout::for_target(64 << 20) else { return };
    for slot in Slot::BOTH {
        if let Ok(record) = Record::decode(data, slot, &layout) {
            let again = record.encode(&layout).expect("a decoded record encodes");
            assert_eq!(&again[..], &data[..again.len()]);
        }
    }
});
