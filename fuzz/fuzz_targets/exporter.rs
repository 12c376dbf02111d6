// The exporter's modules that the targets reach, compiled into each fuzz
// binary from their own files: the exporter is a binary crate today, so
// there is no library to depend on. When it becomes one, depend on it and
// drop this file.

#[path = "../../exporter/src/aggregate/mod.rs"]
pub mod aggregate;
#[path = "../../exporter/src/bounded.rs"]
pub mod bounded;
#[path = "../../exporter/src/caps.rs"]
pub mod caps;
#[path = "../../exporter/src/config.rs"]
pub mod config;
#[path = "../../exporter/src/decode.rs"]
pub mod decode;
#[path = "../../exporter/src/errno.rs"]
pub mod errno;
#[path = "../../exporter/src/redact.rs"]
pub mod redact;
#[path = "../../exporter/src/telemetry.rs"]
pub mod telemetry;
#[path = "../../exporter/src/web/mod.rs"]
pub mod web;
#[path = "../../exporter/src/xdp.rs"]
pub mod xdp;
