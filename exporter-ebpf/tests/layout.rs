//! The C header is the wire contract's source; this test fails when the Rust
//! mirror in `edgewatch-common` drifts from it in any record, field, offset,
//! size or constant.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly at the first broken expectation"
)]

use std::collections::BTreeMap;

use edgewatch_common::{DEFINES, RECORDS};
use edgewatch_ebpf::{C_DEFINES, C_LAYOUT};

type Layout = BTreeMap<String, (Option<usize>, Vec<(String, usize)>)>;

fn c_layout() -> Layout {
    let mut out = Layout::new();
    for line in C_LAYOUT.lines() {
        let mut parts = line.split_whitespace();
        let (Some(record), Some(field), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            panic!("bad layout line {line:?}");
        };
        let value: usize = value.parse().expect("numeric layout value");
        let entry = out.entry(record.to_string()).or_default();
        if field == "=size" {
            entry.0 = Some(value);
        } else {
            entry.1.push((field.to_string(), value));
        }
    }
    out
}

#[test]
fn rust_records_match_the_c_header() {
    let mut rust = Layout::new();
    for (name, size, fields) in RECORDS {
        let fields = fields
            .iter()
            .map(|(f, off, _)| (f.to_string(), *off))
            .collect();
        rust.insert(name.to_string(), (Some(*size), fields));
    }
    let c = c_layout();
    assert!(!c.is_empty(), "clang dumped no ew_* records");
    assert_eq!(rust, c, "Rust records (left) differ from events.h (right)");
}

/// Ring-buffer records (those starting with the common header) keep their
/// tail padding explicit. Map keys and values follow the kernel's layout.
#[test]
fn every_ring_buffer_record_is_a_multiple_of_8_bytes() {
    for (name, size, fields) in RECORDS {
        if fields.first().is_some_and(|f| f.0 == "hdr") {
            assert_eq!(size % 8, 0, "{name} is {size} bytes");
        }
    }
}

#[test]
fn rust_constants_match_the_c_header() {
    let c: BTreeMap<String, u64> = C_DEFINES
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().parse().expect("numeric #define")))
        .collect();
    let rust: BTreeMap<String, u64> = DEFINES.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(
        rust, c,
        "Rust constants (left) differ from events.h (right)"
    );
}
