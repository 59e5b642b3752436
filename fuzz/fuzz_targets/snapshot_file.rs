//! Snapshot files (header, chunks, digest), as read from disk or a download.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use tidemark::ops_log::LwwMap;
use tidemark::snapshot::{read_header, read_snapshot};

fuzz_target!(|data: &[u8]| {
    let _ = read_header(&mut Cursor::new(data));
    let _ = read_snapshot::<LwwMap>(&mut Cursor::new(data));
});
