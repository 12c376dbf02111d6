//! The scrape endpoint's transport: TLS, basic authentication and response
//! headers from a web configuration file in the Prometheus
//! exporter-toolkit format (`--web.config.file`, re-read when it changes),
//! and an HTTP server whose every wait is bounded.
//!
//! Start-up: [`Web::new`] loads and checks the file (a bad one is a
//! one-line error), then [`serve`] runs the server over a bound listener
//! until the shutdown future resolves.

pub mod auth;
pub mod config;
pub mod reload;
pub mod server;
pub mod tls;

pub use reload::load;
pub use server::{DEFAULT_MAX_CONNECTIONS, Limits, Web, serve};
