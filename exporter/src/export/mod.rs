//! Exporters: the Prometheus scrape endpoint and the OTLP push.

pub mod openmetrics;
pub mod otlp;
pub mod prometheus;
