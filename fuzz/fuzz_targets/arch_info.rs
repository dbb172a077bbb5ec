//! An `arch_info.bin` that may hold anything: parsing never panics; whatever parses
//! re-encodes (from its owned model) to a file that parses to the same description; every
//! cluster's boot info is built (or refused with an error) without a panic, and what is
//! built encodes and reads back the same.
#![no_main]
use monarch_proto::arch::{ArchView, BootInfoView, boot_info, encode};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(view) = ArchView::parse(data) else { return };
    let owned = view.to_owned();
    let again = encode(&owned);
    let reparsed = ArchView::parse(&again).expect("a re-encoded description parses");
    assert_eq!(reparsed.to_owned(), owned);
    for c in view.clusters() {
        if let Ok(info) = boot_info(&view, c.id()) {
            let block = info.encode().expect("a built boot info encodes");
            let read = BootInfoView::parse(&block).expect("an encoded boot info parses");
            assert_eq!(read.to_owned(), info);
        }
    }
});
