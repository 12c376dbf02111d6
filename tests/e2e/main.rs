//! The privileged end-to-end suite, one test binary: each module drives the
//! real edgewatch binary and the real kernel with an exact workload in
//! network namespaces it creates, and compares with the kernel's own
//! counters. One binary so that `crate::common::serial()` runs them one at a time
//! (they load BPF programs host-wide), and so that the harness is compiled
//! once. Needs root: not root is a failure, not a skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly at the first broken expectation"
)]

#[path = "../common/mod.rs"]
mod common;

mod caps;
mod connect;
mod dashboards;
mod doctor;
mod image;
mod map;
mod new_probe;
mod otlp;
mod prometheus;
mod retransmit;
mod ringbuf;
mod sigkill;
mod system;
mod web;
mod workload;
mod xdp;
mod xdp_gate;
