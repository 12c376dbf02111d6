//! Aggregation: decoded records in, metric updates out. Pure and
//! synchronous (no aya, no tokio), so it is unit-tested on plain data.

pub mod connect;
pub mod labels;
pub mod map;
pub mod retransmit;
pub mod spans;

use std::sync::Arc;

/// Address family label values.
pub fn family_label(family: u16) -> &'static str {
    match i32::from(family) {
        libc::AF_INET => "ipv4",
        libc::AF_INET6 => "ipv6",
        libc::AF_UNIX => "unix",
        _ => "other",
    }
}

/// A process name as a label value (lossy UTF-8, shared).
pub fn comm_label(comm: &[u8; edgewatch_common::COMM_LEN]) -> Arc<str> {
    Arc::from(String::from_utf8_lossy(edgewatch_common::comm_str(comm)).as_ref())
}

/// Nanoseconds to seconds, the base unit of every duration we export.
pub fn ns_to_seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}
