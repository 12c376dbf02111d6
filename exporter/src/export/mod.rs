//! Exporters: the Prometheus scrape endpoint and the OTLP push, both
//! reading one typed snapshot of the registry (model.rs).

pub mod model;
pub mod otlp;
pub mod prometheus;
