//! The inventory of every BPF map and program on the host, read at scrape
//! time: map metadata and fullness, program run counts and run time.
//!
//! Map element counts come from edgewatch's `iter/bpf_map` program (see
//! exporter-ebpf/src/probes/map.bpf.c), one pass over the maps per scrape: cost
//! grows with the number of maps, not with their entries. Counted exactly:
//! hash, percpu_hash, lru_hash, lru_percpu_hash (kernel 6.6+: the per-CPU
//! element counter, `bpf_map_sum_elem_count`) and lpm_trie (`n_entries`).
//! Other types have no `entries`/`pressure` series: arrays are always full
//! by construction, and the rest have no cheap exact count.
//!
//! Program statistics are the kernel's own (`run_cnt`, `run_time_ns`),
//! which it keeps only while someone holds BPF_ENABLE_STATS; edgewatch
//! holds it for its lifetime unless `bpf.enable_stats` is false.
//!
//! Before 6.6 the hash-table types are counted by walking them
//! (elemcount.rs) within a per-scrape budget; a map past it has
//! `edgewatch_bpf_map_entries_exact 0` and no entries/pressure that scrape.
//!
//! Worst-case series: 5 per map and 2 per program on the host.

use std::{
    collections::HashMap,
    io::Read,
    sync::{Arc, Mutex},
};

use aya::{Btf, Ebpf, programs::Iter};
use edgewatch_common::{ENTRIES_KNOWN, MapEntries};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::elemcount;
use crate::{
    telemetry::{CollectorLabel, Telemetry, events::CollectorFailed},
    vocab::kernel::{map_type_name, prog_type_name},
};

pub const ITER_PROGRAM: &str = "ew_map_iter";

/// The map iterator's `edgewatch_scrape_errors_total` label.
const ENTRIES_COLLECTOR: &str = "bpf_map_entries";
/// The element iterator's (before 6.6).
const ELEM_COUNT_COLLECTOR: &str = "bpf_map_elem_count";

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("program {ITER_PROGRAM} is missing from the embedded object")]
    Missing,
    #[error("{0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("{0}")]
    Link(#[from] aya::programs::links::LinkError),
    #[error("reading the iterator: {0}")]
    Io(#[from] std::io::Error),
    #[error("reading vmlinux BTF: {0}")]
    Btf(#[from] aya::BtfError),
}

/// Loads the map iterator program (kernel 5.9+).
pub fn load_iterator(bpf: &mut Ebpf) -> Result<(), InventoryError> {
    let btf = Btf::from_sys_fs()?;
    let prog: &mut Iter = bpf
        .program_mut(ITER_PROGRAM)
        .ok_or(InventoryError::Missing)?
        .try_into()?;
    prog.load("bpf_map", &btf)?;
    Ok(())
}

/// Runs the iterator once: map id -> exact element count, for the maps
/// whose count is known.
fn read_entries(bpf: &Mutex<Ebpf>) -> Result<HashMap<u32, u64>, InventoryError> {
    let mut bpf = bpf.lock().unwrap_or_else(|e| e.into_inner());
    let prog: &mut Iter = bpf
        .program_mut(ITER_PROGRAM)
        .ok_or(InventoryError::Missing)?
        .try_into()?;
    let link_id = prog.attach()?;
    let link = prog.take_link(link_id)?;
    let mut file = link.into_file()?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    Ok(parse_entries(&buf))
}

/// Parses the iterator's output: a sequence of `ew_map_entries` records.
pub fn parse_entries(buf: &[u8]) -> HashMap<u32, u64> {
    buf.chunks_exact(size_of::<MapEntries>())
        .map(bytemuck::pod_read_unaligned::<MapEntries>)
        .filter(|e| e.flags & ENTRIES_KNOWN != 0)
        .map(|e| (e.map_id, e.entries))
        .collect()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapInfoLabels {
    map_id: Arc<str>,
    map_name: Arc<str>,
    map_type: &'static str,
    key_size: String,
    value_size: String,
    flags: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map_id: Arc<str>,
    map_name: Arc<str>,
    map_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgLabels {
    prog_id: String,
    prog_name: String,
    prog_type: &'static str,
}

/// One map as the inventory reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct MapRow {
    pub id: u32,
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    pub entries: Option<u64>,
}

/// One program as the inventory reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgRow {
    pub id: u32,
    pub name: String,
    pub prog_type: u32,
    pub runs: u64,
    pub run_seconds: f64,
}

/// A collector name and what went wrong reading it.
pub type ReadError = (&'static str, Box<dyn std::fmt::Display>);

/// Where the inventory comes from: the kernel in production, fixed rows in
/// golden tests.
pub trait InventorySource: Send + Sync + 'static {
    fn maps(&self, errors: &mut Vec<ReadError>) -> Vec<MapRow>;
    fn programs(&self, errors: &mut Vec<ReadError>) -> Vec<ProgRow>;
}

/// The running kernel, through BPF_*_GET_NEXT_ID / GET_FD_BY_ID /
/// OBJ_GET_INFO_BY_FD and the map iterator.
pub struct KernelInventory {
    pub bpf: Arc<Mutex<Ebpf>>,
    pub iterator: bool,
    /// Before 6.6: count hash maps with the element iterator within this
    /// many slots per scrape (see elemcount.rs).
    pub elem_budget: Option<u64>,
}

impl InventorySource for KernelInventory {
    fn maps(&self, errors: &mut Vec<ReadError>) -> Vec<MapRow> {
        let entries = if self.iterator {
            match read_entries(&self.bpf) {
                Ok(e) => e,
                Err(e) => {
                    errors.push((ENTRIES_COLLECTOR, Box::new(e)));
                    HashMap::new()
                }
            }
        } else {
            HashMap::new()
        };
        let mut rows = Vec::new();
        for info in aya::maps::loaded_maps() {
            let info = match info {
                Ok(i) => i,
                Err(e) => {
                    // A map can vanish between GET_NEXT_ID and GET_FD_BY_ID.
                    tracing::debug!(error = %e, "reading a map's info failed");
                    continue;
                }
            };
            let map_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
            rows.push(MapRow {
                id: info.id(),
                name: info.name_as_str().unwrap_or("").to_string(),
                map_type,
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
                flags: info.map_flags(),
                entries: entries.get(&info.id()).copied(),
            });
        }
        if let Some(budget) = self.elem_budget {
            let candidates: Vec<_> = rows
                .iter()
                .filter(|r| r.entries.is_none() && elemcount::countable(r.map_type))
                .map(|r| elemcount::Candidate {
                    id: r.id,
                    max_entries: r.max_entries,
                })
                .collect();
            let mut failed = 0;
            let bpf = self.bpf.lock().unwrap_or_else(|e| e.into_inner());
            let counts = elemcount::count(&bpf, &candidates, budget, &mut failed);
            if failed > 0 {
                errors.push((
                    ELEM_COUNT_COLLECTOR,
                    Box::new(format!("{failed} maps could not be walked")),
                ));
            }
            for r in &mut rows {
                r.entries = r.entries.or_else(|| counts.get(&r.id).copied());
            }
        }
        rows
    }

    fn programs(&self, _errors: &mut Vec<ReadError>) -> Vec<ProgRow> {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| ProgRow {
                id: p.id(),
                name: p.name_as_str().unwrap_or("").to_string(),
                prog_type: p.program_type() as u32,
                runs: p.run_count(),
                run_seconds: p.run_time().as_secs_f64(),
            })
            .collect()
    }
}

pub struct InventoryCollector {
    source: Box<dyn InventorySource>,
    telemetry: Telemetry,
}

impl std::fmt::Debug for InventoryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InventoryCollector").finish_non_exhaustive()
    }
}

impl InventoryCollector {
    pub fn new(source: Box<dyn InventorySource>, telemetry: Telemetry) -> Self {
        telemetry
            .scrape_errors
            .get_or_create_owned(&CollectorLabel {
                collector: ENTRIES_COLLECTOR,
            });
        Self { source, telemetry }
    }
}

impl Collector for InventoryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut errors = Vec::new();
        let mut maps = self.source.maps(&mut errors);
        let mut progs = self.source.programs(&mut errors);
        for (collector, error) in &errors {
            self.telemetry.emit(CollectorFailed {
                collector,
                error: error.as_ref(),
            });
        }
        maps.sort_by_key(|m| m.id);
        progs.sort_by_key(|p| p.id);
        let ids: Vec<Arc<str>> = maps.iter().map(|m| Arc::from(m.id.to_string())).collect();
        let names: Vec<Arc<str>> = maps.iter().map(|m| Arc::from(m.name.as_str())).collect();

        let mut f = encoder.encode_descriptor(
            "edgewatch_bpf_map_info",
            "Every BPF map on the host, 1 per map.",
            None,
            MetricType::Gauge,
        )?;
        for ((m, id), name) in maps.iter().zip(&ids).zip(&names) {
            let l = MapInfoLabels {
                map_id: id.clone(),
                map_name: name.clone(),
                map_type: map_type_name(m.map_type),
                key_size: m.key_size.to_string(),
                value_size: m.value_size.to_string(),
                flags: format!("{:#x}", m.flags),
            };
            ConstGauge::new(1i64).encode(f.encode_family(&l)?)?;
        }
        let mut f = encoder.encode_descriptor(
            "edgewatch_bpf_map_max_entries",
            "max_entries of every BPF map on the host.",
            None,
            MetricType::Gauge,
        )?;
        for ((m, id), name) in maps.iter().zip(&ids).zip(&names) {
            let l = MapLabels {
                map_id: id.clone(),
                map_name: name.clone(),
                map_type: map_type_name(m.map_type),
            };
            ConstGauge::new(i64::from(m.max_entries)).encode(f.encode_family(&l)?)?;
        }
        let mut f = encoder.encode_descriptor(
            "edgewatch_bpf_map_entries",
            "Elements in each BPF map whose count is known exactly (hash types, LPM tries).",
            None,
            MetricType::Gauge,
        )?;
        for ((m, id), name) in maps.iter().zip(&ids).zip(&names) {
            if let Some(n) = m.entries {
                let l = MapLabels {
                    map_id: id.clone(),
                    map_name: name.clone(),
                    map_type: map_type_name(m.map_type),
                };
                ConstGauge::new(n as i64).encode(f.encode_family(&l)?)?;
            }
        }
        let mut f = encoder.encode_descriptor(
            "edgewatch_bpf_map_entries_exact",
            "1 when a hash map's or LPM trie's entries series is an exact count this scrape, 0 when it has none (before kernel 6.6: past bpf.map_count_budget, or no way to count).",
            None,
            MetricType::Gauge,
        )?;
        for ((m, id), name) in maps.iter().zip(&ids).zip(&names) {
            if elemcount::has_entries(m.map_type) {
                let l = MapLabels {
                    map_id: id.clone(),
                    map_name: name.clone(),
                    map_type: map_type_name(m.map_type),
                };
                ConstGauge::new(i64::from(m.entries.is_some())).encode(f.encode_family(&l)?)?;
            }
        }
        let mut f = encoder.encode_descriptor(
            "edgewatch_bpf_map_pressure",
            "entries / max_entries of each BPF map whose count is known; 1 means full.",
            None,
            MetricType::Gauge,
        )?;
        for ((m, id), name) in maps.iter().zip(&ids).zip(&names) {
            if let (Some(n), true) = (m.entries, m.max_entries > 0) {
                let l = MapLabels {
                    map_id: id.clone(),
                    map_name: name.clone(),
                    map_type: map_type_name(m.map_type),
                };
                ConstGauge::new(n as f64 / f64::from(m.max_entries))
                    .encode(f.encode_family(&l)?)?;
            }
        }

        let plabels: Vec<ProgLabels> = progs
            .iter()
            .map(|p| ProgLabels {
                prog_id: p.id.to_string(),
                prog_name: p.name.clone(),
                prog_type: prog_type_name(p.prog_type),
            })
            .collect();
        let mut f = encoder.encode_descriptor(
            "edgewatch_bpf_prog_runs",
            "Runs of every BPF program on the host (kernel run_cnt; counts only while BPF stats are enabled).",
            None,
            MetricType::Counter,
        )?;
        for (p, l) in progs.iter().zip(&plabels) {
            ConstCounter::new(p.runs).encode(f.encode_family(l)?)?;
        }
        let mut f = encoder.encode_descriptor(
            "edgewatch_bpf_prog_run_seconds",
            "Time spent running every BPF program on the host (kernel run_time_ns; counts only while BPF stats are enabled).",
            None,
            MetricType::Counter,
        )?;
        for (p, l) in progs.iter().zip(&plabels) {
            ConstCounter::new(p.run_seconds).encode(f.encode_family(l)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iterator_output() {
        let recs = [
            MapEntries {
                map_id: 7,
                flags: ENTRIES_KNOWN,
                entries: 3,
            },
            MapEntries {
                map_id: 8,
                flags: 0,
                entries: 0,
            },
            MapEntries {
                map_id: 9,
                flags: ENTRIES_KNOWN,
                entries: 0,
            },
        ];
        let mut buf = bytemuck::bytes_of(&recs).to_vec();
        buf.extend([1, 2, 3]); // a torn tail is ignored
        let e = parse_entries(&buf);
        assert_eq!(e.get(&7), Some(&3));
        assert_eq!(e.get(&8), None);
        assert_eq!(e.get(&9), Some(&0));
    }
}
