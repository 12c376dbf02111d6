//! Checks on the repository that need no privileges, one test binary: the
//! command line and its errors, the shipped deploy files, dashboards and
//! rules against what edgewatch exports, and the library's layering.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly at the first broken expectation"
)]

#[path = "../common/mod.rs"]
mod common;

mod bad_inputs;
mod cli;
mod dashboards;
mod deploy;
mod layers;
mod lockfiles;
