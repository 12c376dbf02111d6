//! Which loaded programs use which maps: the snapshot the map probe judges
//! every map write by ("can any program read what was just written?"),
//! shared by the aggregator that counts the writes and the collector that
//! exports the gauges. `scrape::refs` reads it from the kernel through
//! [`RefSource`]; this module only holds it and decides when to re-read.
//!
//! When it is re-read (see [`References::judge_at`]):
//! - after every program load, program-to-map binding and link change that
//!   edgewatch sees go through bpf() ([`References::changed`]), before the
//!   next write is judged (a burst of changes costs one read);
//! - whenever it is more than [`MAX_AGE_NS`] older than the write being
//!   judged, or than now at scrape time.
//!
//! An unload is not a bpf() call (the kernel frees a program when its last
//! fd or link closes), so it is seen only at the next re-read: writes in
//! the second after an unload may still be judged referenced. A write
//! judged by a snapshot re-read after it (because the previous one had
//! expired; records are processed up to one flush interval, 100 ms by
//! default, after the write) already sees an unload that happened in
//! between.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use super::clock::Clock;

/// The oldest a snapshot may be, relative to what it judges.
pub const MAX_AGE_NS: u64 = 1_000_000_000;

/// One map as the snapshot knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapUse {
    /// The kernel's name (up to 15 bytes).
    pub name: Arc<str>,
    /// enum bpf_map_type.
    pub map_type: u32,
    /// Loaded programs that can read the map: it is in their `map_ids`, or
    /// it is an inner map of a map-in-map in their `map_ids`.
    pub programs: u32,
}

/// Every map on the host and how many loaded programs use it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefSnapshot {
    pub maps: HashMap<u32, MapUse>,
}

impl RefSnapshot {
    /// Programs that use map `id`. A map the snapshot does not list was
    /// created after it was read, and no program load came in between
    /// (a load re-reads it first): 0.
    pub fn programs(&self, id: u32) -> u32 {
        self.maps.get(&id).map_or(0, |m| m.programs)
    }

    /// For a map no program uses: the newest map with the same non-empty
    /// name, created after it (map ids grow), that a program does use.
    /// Reloading a data plane creates maps anew under the same names; a
    /// writer still holding the old map writes where nothing reads.
    pub fn successor(&self, id: u32) -> Option<u32> {
        let m = self.maps.get(&id)?;
        if m.programs > 0 || m.name.is_empty() {
            return None;
        }
        self.maps
            .iter()
            .filter(|&(&other, o)| other > id && o.programs > 0 && o.name == m.name)
            .map(|(&other, _)| other)
            .max()
    }
}

/// Where snapshots come from: the kernel in production, fixed maps in
/// golden tests.
pub trait RefSource: Send + Sync + 'static {
    /// Reads a snapshot. `errors` collects problems that leave it usable
    /// (a partial walk); `Err` means there is no usable snapshot.
    fn read(&self, errors: &mut Vec<String>) -> Result<RefSnapshot, String>;
}

/// Called with each problem reading a snapshot.
pub type OnError = Box<dyn Fn(&str) + Send + Sync>;

struct Shared {
    source: Box<dyn RefSource>,
    clock: Clock,
    on_error: OnError,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// None before the first read, and after a failed one.
    snapshot: Option<Arc<RefSnapshot>>,
    /// Monotonic time the last read started; None before the first.
    read_at: Option<u64>,
    /// A change was seen since the last read.
    changed: bool,
}

/// The shared, lazily re-read snapshot. The default one reads nothing and
/// judges nothing.
#[derive(Clone, Default)]
pub struct References(Option<Arc<Shared>>);

impl std::fmt::Debug for References {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("References")
            .field("on", &self.0.is_some())
            .finish_non_exhaustive()
    }
}

impl References {
    pub fn new(source: Box<dyn RefSource>, clock: Clock, on_error: OnError) -> Self {
        Self(Some(Arc::new(Shared {
            source,
            clock,
            on_error,
            state: Mutex::new(State::default()),
        })))
    }

    /// A program was loaded or bound to a map, or a link changed: re-read
    /// before judging anything else, so that every write after this record
    /// is judged with a snapshot taken after the change.
    pub fn changed(&self) {
        if let Some(s) = &self.0 {
            s.state.lock().unwrap_or_else(|e| e.into_inner()).changed = true;
        }
    }

    /// The snapshot to judge something that happened at `ts_ns`
    /// (CLOCK_MONOTONIC) by, re-read first when it is more than
    /// [`MAX_AGE_NS`] older. None when there is none (never read, or the
    /// last read failed).
    pub fn judge_at(&self, ts_ns: u64) -> Option<Arc<RefSnapshot>> {
        let s = self.0.as_ref()?;
        let mut state = s.state.lock().unwrap_or_else(|e| e.into_inner());
        let expired = match state.read_at {
            None => true,
            Some(at) => at.saturating_add(MAX_AGE_NS) < ts_ns,
        };
        if expired || state.changed {
            s.reread(&mut state);
        }
        state.snapshot.clone()
    }

    /// The snapshot as of now (re-read when more than [`MAX_AGE_NS`] old).
    pub fn current(&self) -> Option<Arc<RefSnapshot>> {
        let now = self.0.as_ref()?.clock.monotonic_ns();
        self.judge_at(now)
    }
}

impl Shared {
    fn reread(&self, state: &mut State) {
        state.read_at = Some(self.clock.monotonic_ns());
        state.changed = false;
        let mut errors = Vec::new();
        let result = self.source.read(&mut errors);
        for e in &errors {
            (self.on_error)(e);
        }
        state.snapshot = match result {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                (self.on_error)(&e);
                None
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn map(name: &str, programs: u32) -> MapUse {
        MapUse {
            name: Arc::from(name),
            map_type: 1,
            programs,
        }
    }

    #[test]
    fn successor_is_the_newest_used_twin() {
        let s = RefSnapshot {
            maps: HashMap::from([
                (5, map("routes", 0)),
                (7, map("routes", 2)),
                (9, map("routes", 1)),
                (11, map("routes", 0)),
                (3, map("routes", 1)),
                (6, map("other", 1)),
                (8, map("", 0)),
                (10, map("", 1)),
            ]),
        };
        assert_eq!(s.successor(5), Some(9));
        // Used maps are nobody's stale twin; older used twins don't count.
        assert_eq!(s.successor(7), None);
        assert_eq!(s.successor(11), None);
        // Unnamed maps are not twins of each other.
        assert_eq!(s.successor(8), None);
        assert_eq!(s.successor(99), None);
        assert_eq!(s.programs(7), 2);
        assert_eq!(s.programs(99), 0);
    }

    /// Counts reads; fails when told to.
    struct Counting(Arc<AtomicU32>, bool);

    impl RefSource for Counting {
        fn read(&self, _: &mut Vec<String>) -> Result<RefSnapshot, String> {
            self.0.fetch_add(1, Ordering::SeqCst);
            if self.1 {
                Err("no".into())
            } else {
                Ok(RefSnapshot::default())
            }
        }
    }

    #[test]
    fn rereads_when_changed_or_expired() {
        let reads = Arc::new(AtomicU32::new(0));
        let r = References::new(
            Box::new(Counting(reads.clone(), false)),
            Clock::fixed(0),
            Box::new(|_| {}),
        );
        let n = || reads.load(Ordering::SeqCst);
        // The fixed clock stands at 0: the first read is at 0.
        assert!(r.judge_at(5).is_some());
        assert_eq!(n(), 1);
        assert!(r.judge_at(MAX_AGE_NS).is_some());
        assert_eq!(n(), 1, "still fresh");
        r.judge_at(MAX_AGE_NS + 1);
        assert_eq!(n(), 2, "expired");
        // Changes are read before the next judgement, once for a burst.
        r.changed();
        r.changed();
        assert_eq!(n(), 2);
        r.judge_at(MAX_AGE_NS + 2);
        assert_eq!(n(), 3);
        r.current();
        assert_eq!(n(), 3);
    }

    #[test]
    fn a_failed_read_judges_nothing_and_is_reported() {
        let reads = Arc::new(AtomicU32::new(0));
        let errors = Arc::new(AtomicU32::new(0));
        let e = errors.clone();
        let r = References::new(
            Box::new(Counting(reads, true)),
            Clock::fixed(0),
            Box::new(move |_| {
                e.fetch_add(1, Ordering::SeqCst);
            }),
        );
        assert!(r.judge_at(1).is_none());
        assert_eq!(errors.load(Ordering::SeqCst), 1);
        assert!(References::default().judge_at(1).is_none());
    }
}
