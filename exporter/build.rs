//! Embeds the git commit edgewatch is built from as `EDGEWATCH_REVISION`,
//! for `edgewatch_build_info{revision}` and `--version`: an image, a package
//! and a test binary can then be matched to one commit.
//!
//! `EDGEWATCH_REVISION` in the environment wins (a build from a source
//! tarball that knows its commit); otherwise `git rev-parse HEAD` in this
//! checkout; otherwise "unknown". No crate for this: vergen-gitcl would bring
//! a dozen build dependencies for one git call, and it reports a failed call
//! with warnings and empty values rather than one plain "unknown".

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    println!("cargo:rerun-if-env-changed=EDGEWATCH_REVISION");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let revision = match env::var("EDGEWATCH_REVISION") {
        Ok(r) if !r.trim().is_empty() => {
            let r = r.trim().to_string();
            if !is_commit(&r) {
                eprintln!("EDGEWATCH_REVISION={r:?} is not a git commit id (7 to 64 hex digits)");
                std::process::exit(1);
            }
            r
        }
        _ => git_revision(&manifest).unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=EDGEWATCH_REVISION={revision}");
}

/// `git rev-parse HEAD`, and the files whose change moves HEAD registered
/// with cargo so the build script runs again after a commit or checkout.
fn git_revision(dir: &Path) -> Option<String> {
    let head = git(dir, &["rev-parse", "HEAD"]).filter(|h| is_commit(h))?;
    // HEAD itself (checkout), the branch it points to (commit), packed-refs
    // (gc), and HEAD's reflog, which every commit and checkout appends to
    // even when the branch was packed. Paths come from git so that worktrees
    // (where .git is a file) resolve too. Only existing files are named:
    // cargo reruns on every build for a missing one.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".into(), "logs/HEAD".into()];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(dir, &["rev-parse", "--git-path", &name]) {
            let path = dir.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    Some(head)
}

/// A full or abbreviated commit id (SHA-1 or SHA-256 repositories).
fn is_commit(s: &str) -> bool {
    (7..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}
