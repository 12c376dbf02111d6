//! The second data flow: kernel state read at scrape time, never copied on
//! a timer. Records lost in the kernel (`ew_lost`), runs the kernel skipped
//! for our programs (`recursion_misses`), the inventory of every map and
//! program on the host, which programs use which maps (read on demand for
//! the map probe's doctor), and the XDP datapath's per-CPU counters.
//!
//! Each collector reads through a source trait: the kernel in production
//! ([`kernel::KernelSources`]), fixed numbers in the golden test, so the
//! golden exposition runs the binary's real wiring.

pub mod elemcount;
pub mod inventory;
pub mod kernel;
pub mod lost;
pub mod missed;
pub mod refs;
pub mod xdp;

/// Where the scrape-time collectors read from.
pub trait Sources {
    /// Records each probe could not reserve, by probe id.
    fn lost(&mut self) -> Box<dyn lost::LostSource>;
    /// Runs the kernel skipped for the named programs.
    fn missed(&mut self) -> Box<dyn missed::MissSource>;
    /// Every map and program on the host.
    fn inventory(&mut self) -> Box<dyn inventory::InventorySource>;
    /// The XDP datapath's counter cells.
    fn xdp_counters(&mut self) -> Box<dyn xdp::CounterSource>;
    /// Which loaded programs use which maps.
    fn references(&mut self) -> Box<dyn crate::vocab::refs::RefSource>;
}
