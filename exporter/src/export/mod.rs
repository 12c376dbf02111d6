//! Exporters: Prometheus scrape endpoint.

pub mod prometheus;
