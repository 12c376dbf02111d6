//! Ring-buffer records: any bytes decode to a record or an error value,
//! never a panic, for every record type on the wire.
#![no_main]
#![allow(dead_code, unused_imports, reason = "only the parsers are driven")]

include!("exporter.rs");

use edgewatch_common as c;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = decode::header(data) {
        let _ = (h.kind, h.size);
    }
    let _ = decode::record::<c::ConnectCall>(data);
    let _ = decode::record::<c::TcpConnect>(data);
    let _ = decode::record::<c::Retransmit>(data);
    let _ = decode::record::<c::MapOp>(data);
});
