//! The web configuration as loaded, and its reload when a file changes.
//!
//! The toolkit re-reads its file on every request and its certificate on
//! every handshake. edgewatch does the same check more cheaply: on every
//! new connection and every request it `stat`s the configuration file and
//! the files it names (certificate, key, client CA), and reloads only when
//! one of them changed (device, inode, size, mtime or ctime; an editor's
//! rename-over and an in-place write both show). A file written within the
//! same clock tick as the last load would keep its timestamps, so for two
//! seconds after a file's last change the files are re-read on every check
//! and compared byte for byte (git's "racy" rule).
//!
//! A reload that fails (unreadable file, bad YAML, bad certificate, a
//! switch between TLS and plain HTTP, which needs a restart) is logged once
//! per distinct broken state, counted in
//! `edgewatch_web_config_reloads_total{result="error"}`, and the last good
//! configuration stays in force.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{
    config::{self, WebSpec},
    tls,
};
use crate::vocab::bounded;

/// A loaded web configuration: the validated settings, the rustls
/// configuration when TLS is on, and what was read (for change detection).
pub struct Loaded {
    pub spec: WebSpec,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The configuration file and every file it names, in read order.
    files: Vec<PathBuf>,
    /// Their bytes as read.
    contents: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("tls", &self.tls.is_some())
            .field("users", &self.spec.users.len())
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Loaded {
    /// No file: plain HTTP, no authentication, no extra headers.
    pub fn plain() -> Self {
        Self {
            spec: WebSpec {
                tls: None,
                users: Default::default(),
                headers: Vec::new(),
                rate_limit: None,
            },
            tls: None,
            files: Vec::new(),
            contents: Vec::new(),
        }
    }
}

/// Reads, parses, validates the file and builds its TLS configuration.
/// The error is one line: every problem, each with its key.
pub fn load(path: &Path) -> Result<Loaded, String> {
    let text = bounded::read_to_string(path, bounded::MAX_CONFIG_BYTES)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let spec = config::parse_and_validate(&text).map_err(|errors| {
        let errors: Vec<String> = errors
            .iter()
            .take(10)
            .map(|e| bounded::one_line(e, bounded::MAX_MESSAGE_CHARS))
            .collect();
        format!("{}: {}", path.display(), errors.join("; "))
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files = vec![path.to_path_buf()];
    let mut contents = vec![text.into_bytes()];
    let tls = match &spec.tls {
        Some(t) => {
            let cfg = tls::build(t, dir).map_err(|e| format!("{}: {e}", path.display()))?;
            for f in tls::files(t, dir) {
                // Read again for the snapshot; the build above read them too.
                let bytes = bounded::read(&f, bounded::MAX_PEM_BYTES)
                    .map_err(|e| format!("{}: {}: {e}", path.display(), f.display()))?;
                files.push(f);
                contents.push(bytes);
            }
            Some(Arc::new(cfg))
        }
        None => None,
    };
    Ok(Loaded {
        spec,
        tls,
        files,
        contents,
    })
}

/// What `stat` says about one file; None when it cannot be stat'ed.
type Stamp = Vec<Option<(u64, u64, u64, i64, i64, i64, i64)>>;

fn stamp(files: &[PathBuf]) -> Stamp {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f).ok().map(|m| {
                (
                    m.dev(),
                    m.ino(),
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                )
            })
        })
        .collect()
}

/// True while a file's last change is too recent for its timestamps to
/// tell a later write apart.
fn racy(files: &[PathBuf]) -> bool {
    let now = SystemTime::now();
    files.iter().any(|f| {
        std::fs::metadata(f)
            .and_then(|m| m.modified())
            .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO) < Duration::from_secs(2))
            .unwrap_or(false)
    })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

struct State {
    current: Arc<Loaded>,
    stamp: Stamp,
    /// The stamp of the last failed attempt: the same broken state is not
    /// logged or counted twice.
    failed: Option<Stamp>,
}

/// The web configuration in force, reloaded when its files change.
pub struct WebConfig {
    path: Option<PathBuf>,
    state: Mutex<State>,
    tls_on: bool,
    reloads: Family<ResultLabel, Counter>,
    last_ok: Gauge,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("path", &self.path)
            .field("tls_on", &self.tls_on)
            .finish_non_exhaustive()
    }
}

impl WebConfig {
    /// Loads `path` (None: plain HTTP without authentication) and registers
    /// `edgewatch_web_config_reloads_total` and
    /// `edgewatch_web_config_last_reload_successful`.
    pub fn new(path: Option<&Path>, registry: &mut Registry) -> Result<Self, String> {
        let loaded = match path {
            Some(p) => load(p)?,
            None => Loaded::plain(),
        };
        let reloads = Family::<ResultLabel, Counter>::default();
        let last_ok = Gauge::default();
        last_ok.set(1);
        registry.register(
            "edgewatch_web_config_reloads",
            "Reloads of the web configuration file (--web.config.file) after a change, by result; on error the last good one stays",
            reloads.clone(),
        );
        registry.register(
            "edgewatch_web_config_last_reload_successful",
            "1 if the web configuration file's last reload succeeded (or there was none), 0 if the file in force is an older good one",
            last_ok.clone(),
        );
        let files = loaded.files.clone();
        Ok(Self {
            path: path.map(Path::to_path_buf),
            tls_on: loaded.tls.is_some(),
            state: Mutex::new(State {
                current: Arc::new(loaded),
                stamp: stamp(&files),
                failed: None,
            }),
            reloads,
            last_ok,
        })
    }

    /// Whether connections are TLS (fixed at start-up).
    pub fn tls_on(&self) -> bool {
        self.tls_on
    }

    /// The configuration in force, after reloading it if a file changed.
    pub fn current(&self) -> Arc<Loaded> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(path) = &self.path else {
            return st.current.clone();
        };
        let now = stamp(&st.current.files);
        if now == st.stamp && !racy(&st.current.files) {
            return st.current.clone();
        }
        if st.failed.as_ref() == Some(&now) {
            return st.current.clone();
        }
        match load(path) {
            Ok(new) if new.tls.is_some() != self.tls_on => {
                self.reject(
                    &mut st,
                    now,
                    "switching between TLS and plain HTTP needs a restart".into(),
                );
            }
            Ok(new) => {
                if new.files == st.current.files && new.contents == st.current.contents {
                    // Touched, not changed.
                    st.stamp = stamp(&new.files);
                } else {
                    tracing::info!(file = %path.display(), tls = self.tls_on, users = new.spec.users.len(), "web configuration reloaded");
                    self.reloads
                        .get_or_create(&ResultLabel { result: "ok" })
                        .inc();
                    st.stamp = stamp(&new.files);
                    st.current = Arc::new(new);
                }
                self.last_ok.set(1);
                st.failed = None;
            }
            Err(e) => self.reject(&mut st, now, e),
        }
        st.current.clone()
    }

    fn reject(&self, st: &mut State, now: Stamp, error: String) {
        tracing::error!(%error, "web configuration reload failed; the last good one stays in force");
        self.reloads
            .get_or_create(&ResultLabel { result: "error" })
            .inc();
        self.last_ok.set(0);
        st.failed = Some(now);
    }
}
