//! edgewatch, an eBPF observability exporter: the library behind the
//! `edgewatch` binary.
//!
//! Layers, top to bottom; a module imports only modules below it (checked
//! by tests/repo/layers.rs):
//!
//! | layer | modules | what |
//! |---|---|---|
//! | 9 | `cli` | command line, exit codes |
//! | 8 | `app` | start-up shared by check and run; `build_registry` |
//! | 8 | `bench` | `edgewatch bench maps`: map-type costs on this kernel |
//! | 7 | `config` | the YAML file and flags, validated into `Settings` |
//! | 6 | `export`, `web` | the typed snapshot, /metrics, OTLP push; the HTTP server (TLS, auth, limits) |
//! | 5 | `pipeline` | ring-buffer consumer, the kind -> aggregator table |
//! | 4 | `probe`, `datapath` | probe definitions and attach chains; the XDP datapath |
//! | 3 | `aggregate`, `scrape` | records into metrics; kernel state read at scrape time |
//! | 2 | `workload` | cgroup ids to workloads (unit, container, pod), cached |
//! | 1 | `telemetry` | self-metrics and internal events |
//! | 0 | `vocab`, `system`, `bpfobj`, `caps` | shared vocabularies; host and object preparation; capabilities |
//!
//! Data flows hooks -> ring buffer -> `pipeline` -> `aggregate` -> registry
//! -> `export`; the second flow, BPF maps read at scrape time, goes
//! `scrape` -> registry -> `export`.

pub mod aggregate;
pub mod app;
pub mod bench;
pub mod bpfobj;
pub mod caps;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod export;
pub mod pipeline;
pub mod probe;
pub mod scrape;
pub mod system;
pub mod telemetry;
pub mod vocab;
pub mod web;
pub mod workload;
