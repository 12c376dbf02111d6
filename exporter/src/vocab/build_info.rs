//! What this binary was built from: `edgewatch_build_info{version,revision}`.
//!
//! The revision is the git commit the build script found (exporter/build.rs),
//! or "unknown" outside a git checkout. It lets an operator, and the image
//! test, tell which commit a running binary or a container image holds.
//! Golden expositions pass a fixed [`BuildInfo`] so they don't change with
//! every commit, the way they pass a fixed clock.

use prometheus_client::{metrics::info::Info, registry::Registry};

/// Version and revision, as exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: &'static str,
    pub revision: &'static str,
}

impl BuildInfo {
    /// This binary's.
    pub const CURRENT: Self = Self {
        version: env!("CARGO_PKG_VERSION"),
        revision: env!("EDGEWATCH_REVISION"),
    };

    /// `--version` output: "0.1.0 (revision <commit>)".
    pub const VERSION_LINE: &'static str = concat!(
        env!("CARGO_PKG_VERSION"),
        " (revision ",
        env!("EDGEWATCH_REVISION"),
        ")"
    );

    /// Registers `edgewatch_build_info`, a constant 1 carrying the labels.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "edgewatch_build",
            "edgewatch build information: version, and the git commit it was built from (unknown outside git)",
            Info::new(vec![("version", self.version), ("revision", self.revision)]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_revision_is_a_commit_or_unknown() {
        let r = BuildInfo::CURRENT.revision;
        // build.rs refuses an EDGEWATCH_REVISION override that is no commit id.
        assert!(
            r == "unknown"
                || ((7..=64).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_hexdigit())),
            "{r}"
        );
        assert!(BuildInfo::VERSION_LINE.contains(r));
    }

    #[test]
    fn exports_version_and_revision() {
        let mut registry = Registry::default();
        BuildInfo {
            version: "1.2.3",
            revision: "abc",
        }
        .register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("edgewatch_build_info{version=\"1.2.3\",revision=\"abc\"} 1"),
            "{text}"
        );
    }
}
