//! Exporters: the Prometheus scrape endpoint (prometheus-client's
//! OpenMetrics encoder, and the classic text from it in text.rs) and the
//! OTLP push, which reads a typed snapshot of the registry (model.rs).

pub mod model;
pub mod otlp;
pub mod prometheus;
pub mod text;
