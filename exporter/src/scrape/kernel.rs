//! The running kernel as the scrape-time collectors' source: edgewatch's
//! own maps (`ew_lost`, `ew_xdp_stats`), its programs' run counters, and
//! every map and program on the host (and which programs use which maps).

use std::sync::{Arc, Mutex};

use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuArray},
};

use super::{
    Sources, elemcount,
    inventory::{InventorySource, KernelInventory, load_iterator},
    lost::LostSource,
    missed::MissSource,
    refs::KernelRefs,
    xdp::CounterSource,
};
use crate::vocab::refs::RefSource;

pub struct KernelSources {
    pub bpf: Arc<Mutex<Ebpf>>,
    pub lost: Option<PerCpuArray<MapData, u64>>,
    pub xdp_stats: Option<PerCpuArray<MapData, [u64; 2]>>,
    /// Whether the inventory's map iterator loaded; None until asked for.
    pub iterator: Option<Result<(), String>>,
    /// Before 6.6, the slots the element iterator may walk per scrape.
    pub map_count_budget: u64,
    /// How hash maps are counted: Ok(None) by the kernel's kfunc, Ok(Some)
    /// by the element iterator within that budget; None until asked for.
    pub elem_count: Option<Result<Option<u64>, String>>,
}

/// A map that could not be opened: every read fails, and is counted.
struct Unavailable(&'static str);

impl Unavailable {
    fn error(&self) -> MapError {
        MapError::InvalidName {
            name: self.0.to_string(),
        }
    }
}

impl LostSource for Unavailable {
    fn lost(&self, _: u32) -> Result<u64, MapError> {
        Err(self.error())
    }
}

impl CounterSource for Unavailable {
    fn read(&self, _: u32) -> Result<(u64, u64), MapError> {
        Err(self.error())
    }
}

impl Sources for KernelSources {
    fn lost(&mut self) -> Box<dyn LostSource> {
        match self.lost.take() {
            Some(m) => Box::new(Mutex::new(m)),
            None => Box::new(Unavailable("ew_lost")),
        }
    }

    fn missed(&mut self) -> Box<dyn MissSource> {
        Box::new(self.bpf.clone())
    }

    fn inventory(&mut self) -> Box<dyn InventorySource> {
        let loaded = {
            let mut bpf = self.bpf.lock().unwrap_or_else(|e| e.into_inner());
            load_iterator(&mut bpf).map_err(|e| e.to_string())
        };
        if let Err(error) = &loaded {
            tracing::warn!(%error, "map iterator failed to load: no entries/pressure series");
        }
        let iterator = loaded.is_ok();
        self.iterator = Some(loaded);
        let elem_budget = if iterator {
            let counted = {
                let mut bpf = self.bpf.lock().unwrap_or_else(|e| e.into_inner());
                elemcount::setup(&mut bpf, self.map_count_budget).map_err(|e| e.to_string())
            };
            if let Err(error) = &counted {
                tracing::warn!(%error, "map element iterator failed to load: no hash-map entries/pressure");
            }
            self.elem_count = Some(counted.clone());
            counted.ok().flatten()
        } else {
            None
        };
        Box::new(KernelInventory {
            bpf: self.bpf.clone(),
            iterator,
            elem_budget,
        })
    }

    fn xdp_counters(&mut self) -> Box<dyn CounterSource> {
        match self.xdp_stats.take() {
            Some(m) => Box::new(Mutex::new(m)),
            None => Box::new(Unavailable("ew_xdp_stats")),
        }
    }

    fn references(&mut self) -> Box<dyn RefSource> {
        Box::new(KernelRefs)
    }
}
