//! BPF program statistics (BPF_ENABLE_STATS, kernel 5.8+): when, and for how
//! long, edgewatch asks the kernel to count every program's runs and run
//! time (`edgewatch_bpf_prog_*`).
//!
//! Counting is not free: while anyone holds BPF_ENABLE_STATS, every run of
//! every BPF program on the host (other people's XDP and tc datapaths
//! included) reads the clock twice and updates per-CPU counters
//! (kernel/bpf/core.c, `__bpf_prog_run` with `bpf_stats_enabled_key`).
//! BENCHMARKS.md measures the tax on an XDP program. So it is off unless
//! asked for, in one of two modes:
//!
//! - `Always` (`bpf.enable_stats: true`): held for edgewatch's lifetime;
//!   the counters are complete.
//! - `Window` (`bpf.enable_stats: true` with `bpf.stats_window_ms: W`): held
//!   for W ms out of every `bpf.stats_interval_ms`: the tax is paid W/I of
//!   the time, and the counters are a sample of the same fraction.
//!
//! The kernel's counters only say what ran while stats were held, so the
//! metrics say what they cover: `edgewatch_bpf_stats_held_seconds_total`
//! (time edgewatch held stats; `rate(edgewatch_bpf_prog_run_seconds_total)
//! / rate(edgewatch_bpf_stats_held_seconds_total)` is the CPU share of a
//! program while it was measured) and `edgewatch_bpf_stats_coverage_ratio`
//! (the configured fraction: 0, W/I or 1). Another process holding stats,
//! or the `kernel.bpf_stats_enabled` sysctl, makes the kernel count beyond
//! these windows; edgewatch cannot see that.
//!
//! The fd is scoped: the sysctl is not touched and the kernel stops
//! counting when edgewatch exits.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        gauge::ConstGauge,
    },
    registry::Registry,
};
use tokio::sync::watch;

/// When edgewatch holds BPF_ENABLE_STATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsMode {
    Off,
    Always,
    /// Held for `window` at the start of every `interval`.
    Window {
        window: Duration,
        interval: Duration,
    },
}

/// Shortest interval of the window mode: a shorter one would spend more on
/// the two syscalls per window than it saves.
const MIN_INTERVAL_MS: u64 = 1000;

impl StatsMode {
    /// From the configuration: `bpf.enable_stats`, `bpf.stats_window_ms`
    /// (0: held all the time) and `bpf.stats_interval_ms`.
    pub fn new(enable: bool, window_ms: u64, interval_ms: u64) -> Result<Self, String> {
        if !enable {
            return Ok(Self::Off);
        }
        if window_ms == 0 {
            return Ok(Self::Always);
        }
        if !(MIN_INTERVAL_MS..=3_600_000).contains(&interval_ms) {
            return Err(format!(
                "bpf.stats_interval_ms: {interval_ms} must be from {MIN_INTERVAL_MS} to 3600000"
            ));
        }
        if window_ms >= interval_ms {
            return Err(format!(
                "bpf.stats_window_ms: {window_ms} must be shorter than bpf.stats_interval_ms ({interval_ms}); 0 holds stats all the time"
            ));
        }
        Ok(Self::Window {
            window: Duration::from_millis(window_ms),
            interval: Duration::from_millis(interval_ms),
        })
    }

    /// The fraction of wall-clock time the kernel counts.
    pub fn coverage(&self) -> f64 {
        match self {
            Self::Off => 0.0,
            Self::Always => 1.0,
            Self::Window { window, interval } => window.as_secs_f64() / interval.as_secs_f64(),
        }
    }
}

/// Turns the kernel's counting on for as long as the guard lives.
pub trait StatsSwitch: Send + 'static {
    type Guard: Send;
    fn enable(&mut self) -> std::io::Result<Self::Guard>;
}

/// The kernel: BPF_ENABLE_STATS (BPF_STATS_RUN_TIME), fd-scoped.
pub struct KernelStats;

impl StatsSwitch for KernelStats {
    type Guard = std::os::fd::OwnedFd;

    fn enable(&mut self) -> std::io::Result<Self::Guard> {
        aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(std::io::Error::other)
    }
}

/// Time stats were held: the closed windows' sum, plus the open one.
#[derive(Debug, Default)]
pub struct Held {
    total: Duration,
    since: Option<Instant>,
}

impl Held {
    pub fn start(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }

    pub fn stop(&mut self, now: Instant) {
        if let Some(t) = self.since.take() {
            self.total += now.saturating_duration_since(t);
        }
    }

    pub fn seconds(&self, now: Instant) -> f64 {
        let open = self
            .since
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default();
        (self.total + open).as_secs_f64()
    }
}

/// `edgewatch_bpf_stats_*`, computed at scrape time.
#[derive(Debug)]
struct StatsCollector {
    mode: StatsMode,
    held: Arc<Mutex<Held>>,
    errors: Counter,
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let held = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seconds(Instant::now());
        let f = encoder.encode_descriptor(
            "edgewatch_bpf_stats_held_seconds",
            "Time edgewatch held BPF_ENABLE_STATS, the only time the kernel counted edgewatch_bpf_prog_runs_total and edgewatch_bpf_prog_run_seconds_total for it.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(held).encode(f)?;
        let f = encoder.encode_descriptor(
            "edgewatch_bpf_stats_coverage_ratio",
            "Configured fraction of wall-clock time edgewatch holds BPF_ENABLE_STATS: 0 off, 1 always, window/interval in window mode.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.mode.coverage()).encode(f)?;
        let f = encoder.encode_descriptor(
            "edgewatch_bpf_stats_errors",
            "Failed attempts to enable BPF_ENABLE_STATS.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.errors.get()).encode(f)?;
        Ok(())
    }
}

/// Registers the metrics and spawns the task that holds stats per `mode`
/// until `shutdown` turns true.
pub fn spawn<S: StatsSwitch>(
    mode: StatsMode,
    mut switch: S,
    registry: &mut Registry,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let held = Arc::new(Mutex::new(Held::default()));
    let errors = Counter::default();
    registry.register_collector(Box::new(StatsCollector {
        mode,
        held: held.clone(),
        errors: errors.clone(),
    }));
    // Always: taken here, before start-up drops CAP_SYS_ADMIN (a task
    // spawned to take it raced the drop and could lose).
    let first = matches!(mode, StatsMode::Always).then(|| switch.enable());
    tokio::spawn(run(mode, switch, first, held, errors, shutdown))
}

async fn run<S: StatsSwitch>(
    mode: StatsMode,
    mut switch: S,
    mut first: Option<std::io::Result<S::Guard>>,
    held: Arc<Mutex<Held>>,
    errors: Counter,
    mut shutdown: watch::Receiver<bool>,
) {
    let (window, interval) = match mode {
        StatsMode::Off => return,
        StatsMode::Always => (None, None),
        StatsMode::Window { window, interval } => (Some(window), Some(interval)),
    };
    let lock = |h: &Arc<Mutex<Held>>| {
        h.lock()
            .unwrap_or_else(|e| e.into_inner())
            .start(Instant::now())
    };
    let unlock = |h: &Arc<Mutex<Held>>| {
        h.lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop(Instant::now())
    };
    let mut tick = interval.map(|i| {
        let mut t = tokio::time::interval(i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        t
    });
    let mut logged = false;
    loop {
        if let Some(t) = tick.as_mut() {
            tokio::select! {
                _ = t.tick() => {}
                _ = shutdown.changed() => return,
            }
        }
        let guard = match first.take().unwrap_or_else(|| switch.enable()) {
            Ok(g) => g,
            Err(error) => {
                errors.inc();
                if !logged {
                    tracing::warn!(%error, "BPF_ENABLE_STATS failed: program run counts will not move (counted in edgewatch_bpf_stats_errors_total)");
                    logged = true;
                }
                if tick.is_none() {
                    return;
                }
                continue;
            }
        };
        lock(&held);
        match window {
            Some(w) => {
                tokio::select! {
                    _ = tokio::time::sleep(w) => {}
                    _ = shutdown.changed() => {}
                }
            }
            None => {
                let _ = shutdown.changed().await;
            }
        }
        drop(guard);
        unlock(&held);
        if *shutdown.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn modes_from_the_configuration() {
        assert_eq!(StatsMode::new(false, 500, 10_000), Ok(StatsMode::Off));
        assert_eq!(StatsMode::new(true, 0, 10_000), Ok(StatsMode::Always));
        assert_eq!(
            StatsMode::new(true, 500, 10_000),
            Ok(StatsMode::Window {
                window: Duration::from_millis(500),
                interval: Duration::from_secs(10)
            })
        );
        assert!(StatsMode::new(true, 10_000, 10_000).is_err());
        assert!(StatsMode::new(true, 100, 999).is_err());
        assert_eq!(StatsMode::Off.coverage(), 0.0);
        assert_eq!(StatsMode::Always.coverage(), 1.0);
        assert_eq!(StatsMode::new(true, 500, 10_000).unwrap().coverage(), 0.05);
    }

    #[test]
    fn held_time_sums_closed_and_open_windows() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut h = Held::default();
        assert_eq!(h.seconds(t0), 0.0);
        h.start(t0);
        h.start(t0 + s(1)); // already open: no restart
        h.stop(t0 + s(2));
        h.stop(t0 + s(3)); // already closed: nothing added
        assert_eq!(h.seconds(t0 + s(10)), 2.0);
        h.start(t0 + s(10));
        assert_eq!(h.seconds(t0 + s(13)), 5.0);
    }

    /// A switch that counts how often it was turned on and whether a guard
    /// is alive.
    #[derive(Clone, Default)]
    struct Fake {
        enables: Arc<AtomicUsize>,
        live: Arc<AtomicUsize>,
    }

    struct FakeGuard(Arc<AtomicUsize>);

    impl Drop for FakeGuard {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl StatsSwitch for Fake {
        type Guard = FakeGuard;
        fn enable(&mut self) -> std::io::Result<FakeGuard> {
            self.enables.fetch_add(1, Ordering::SeqCst);
            self.live.fetch_add(1, Ordering::SeqCst);
            Ok(FakeGuard(self.live.clone()))
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn window_mode_holds_for_the_window_of_each_interval() {
        let fake = Fake::default();
        let (tx, rx) = watch::channel(false);
        let mut registry = Registry::default();
        let mode = StatsMode::new(true, 1_000, 10_000).unwrap();
        let task = spawn(mode, fake.clone(), &mut registry, rx);
        // Windows open at 0 s, 10 s, 20 s (paused clock: sleeps advance it).
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            fake.live.load(Ordering::SeqCst),
            1,
            "inside the first window"
        );
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(fake.live.load(Ordering::SeqCst), 0, "between windows");
        tokio::time::sleep(Duration::from_millis(20_000)).await;
        assert_eq!(fake.enables.load(Ordering::SeqCst), 3);
        tx.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(fake.live.load(Ordering::SeqCst), 0, "released at shutdown");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("edgewatch_bpf_stats_coverage_ratio 0.1\n"),
            "{text}"
        );
    }

    /// Always is taken before `spawn` returns, with no task having run:
    /// start-up drops CAP_SYS_ADMIN right after, and a task taking it
    /// later raced the drop (and lost, in CI).
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn always_is_taken_before_spawn_returns() {
        let fake = Fake::default();
        let (tx, rx) = watch::channel(false);
        let task = spawn(
            StatsMode::Always,
            fake.clone(),
            &mut Registry::default(),
            rx,
        );
        assert_eq!(fake.enables.load(Ordering::SeqCst), 1);
        assert_eq!(fake.live.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(fake.enables.load(Ordering::SeqCst), 1, "taken once");
        tx.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(fake.live.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn off_never_enables_and_always_holds_until_shutdown() {
        for (mode, enables) in [(StatsMode::Off, 0), (StatsMode::Always, 1)] {
            let fake = Fake::default();
            let (tx, rx) = watch::channel(false);
            let mut registry = Registry::default();
            let task = spawn(mode, fake.clone(), &mut registry, rx);
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert_eq!(fake.live.load(Ordering::SeqCst), enables);
            // Off: the task has returned and dropped its receiver already.
            let _ = tx.send(true);
            task.await.unwrap();
            assert_eq!(fake.enables.load(Ordering::SeqCst), enables);
            assert_eq!(fake.live.load(Ordering::SeqCst), 0);
        }
    }
}
