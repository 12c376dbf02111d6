//! Compiles edgewatch's BPF programs (C, CO-RE) with clang and dumps the
//! record layouts of the wire contract (common/include/edgewatch/events.h)
//! so a test can compare them with the Rust mirror in `edgewatch-common`.
//!
//! Needs clang (any of clang-19..clang-14, or `CLANG=/path`) and the libbpf
//! headers (`bpf/bpf_helpers.h`). On Debian 12: `apt-get install clang-19
//! llvm-19 libbpf-dev`.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// The probes: every `src/probes/*.bpf.c` goes into one compilation unit,
/// `$OUT_DIR/edgewatch.bpf.o`, so that they share one ring buffer
/// (`ew_events`) and one lost-record array (`ew_lost`) without pinning.
const PROBES_DIR: &str = "probes";
/// The object the probes are compiled into.
const PROBES_OBJECT: &str = "edgewatch";
/// The probes' object again for kernels without task storage (before
/// 5.11), which cannot create its in-flight map (map.bpf.c): built with
/// `-DEW_COMPAT`.
const PROBES_COMPAT_OBJECT: &str = "edgewatch_compat";

const CLANG_CANDIDATES: &[&str] = &[
    "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14", "clang",
];

const INSTALL_HINT: &str = "install them with: apt-get install clang-19 llvm-19 libbpf-dev";

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let src = manifest.join("src");
    let common_inc = manifest.join("../common/include");

    println!("cargo:rerun-if-env-changed=CLANG");
    for dir in [&src, &src.join(PROBES_DIR), &common_inc.join("edgewatch")] {
        println!("cargo:rerun-if-changed={}", dir.display());
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            println!("cargo:rerun-if-changed={}", entry?.path().display());
        }
    }

    let clang = find_clang()?;
    let arch = match env::var("CARGO_CFG_TARGET_ARCH")?.as_str() {
        "x86_64" => ("x86", "x86_64-linux-gnu"),
        "aarch64" => ("arm64", "aarch64-linux-gnu"),
        "riscv64" => ("riscv", "riscv64-linux-gnu"),
        "s390x" => ("s390", "s390x-linux-gnu"),
        "powerpc64" => ("powerpc", "powerpc64le-linux-gnu"),
        other => bail!("edgewatch's BPF build does not know target arch {other}"),
    };
    let multiarch = PathBuf::from("/usr/include").join(arch.1);
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        bail!("libbpf headers (bpf/bpf_helpers.h) not found: {INSTALL_HINT}");
    }

    let includes = [
        format!("-I{}", src.display()),
        format!("-I{}", common_inc.display()),
        format!("-I{}", multiarch.display()),
    ];

    // Every other top-level `src/*.bpf.c` is an object of its own; the
    // probes' unit is built twice, as is and with EW_COMPAT.
    let probes = probes_unit(&src, &out)?;
    let mut units: Vec<(String, PathBuf, Option<&str>)> = c_files(&src)?
        .into_iter()
        .map(|p| (unit_name(&p), p, None))
        .collect();
    units.push((PROBES_OBJECT.to_string(), probes.clone(), None));
    units.push((
        PROBES_COMPAT_OBJECT.to_string(),
        probes,
        Some("-DEW_COMPAT"),
    ));
    for (name, input, define) in &units {
        let output = out.join(format!("{name}.bpf.o"));
        let result = Command::new(&clang)
            .args(["-g", "-O2", "-Wall", "-Werror", "-target", "bpfel"])
            .arg(format!("-D__TARGET_ARCH_{}", arch.0))
            .args(define)
            .args(&includes)
            .arg("-c")
            .arg(input)
            .arg("-o")
            .arg(&output)
            .output()
            .with_context(|| format!("running {clang}"))?;
        if !result.status.success() {
            bail!(
                "{clang} failed on {}:\n{}",
                input.display(),
                String::from_utf8_lossy(&result.stderr)
            );
        }
    }

    // Record layouts of the wire contract, as clang lays them out for BPF.
    let probe = out.join("layout.c");
    fs::write(
        &probe,
        "#include <linux/types.h>\n#include \"edgewatch/events.h\"\n",
    )?;
    let dump = Command::new(&clang)
        .args([
            "-target",
            "bpfel",
            "-fsyntax-only",
            "-Xclang",
            "-fdump-record-layouts-complete",
        ])
        .args(&includes)
        .arg(&probe)
        .output()
        .with_context(|| format!("running {clang}"))?;
    if !dump.status.success() {
        bail!(
            "{clang} layout dump failed:\n{}",
            String::from_utf8_lossy(&dump.stderr)
        );
    }
    fs::write(
        out.join("layout.txt"),
        parse_layouts(&String::from_utf8_lossy(&dump.stdout)),
    )?;

    // The header's #defines, for the constants test.
    let macros = Command::new(&clang)
        .args(["-target", "bpfel", "-E", "-dM"])
        .args(&includes)
        .arg(&probe)
        .output()
        .with_context(|| format!("running {clang}"))?;
    let defines: String = String::from_utf8_lossy(&macros.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("#define "))
        .filter(|l| l.starts_with("EW_"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(out.join("defines.txt"), defines)?;
    Ok(())
}

/// The `*.bpf.c` files directly in `dir`, sorted by name.
fn c_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(".bpf.c") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `foo` for `.../foo.bpf.c`.
fn unit_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".bpf.c").to_string())
        .unwrap_or_default()
}

/// Writes the probes' compilation unit: the shared header, every probe
/// file in name order, and the license every tracing program needs.
fn probes_unit(src: &Path, out: &Path) -> Result<PathBuf> {
    let mut text = String::from(
        "/* Generated by exporter-ebpf/build.rs: every probe file of src/probes/ in one unit. */\n\
         #include \"edgewatch.bpf.h\"\n",
    );
    for file in c_files(&src.join(PROBES_DIR))? {
        text.push_str(&format!("#include \"{}\"\n", file.display()));
    }
    text.push_str("\nchar LICENSE[] SEC(\"license\") = \"GPL\";\n");
    let path = out.join(format!("{PROBES_OBJECT}.bpf.c"));
    fs::write(&path, text)?;
    Ok(path)
}

fn find_clang() -> Result<String> {
    let mut candidates: Vec<String> = Vec::new();
    if let Ok(c) = env::var("CLANG") {
        candidates.push(c);
    }
    candidates.extend(CLANG_CANDIDATES.iter().map(|s| s.to_string()));
    for c in &candidates {
        let ok = Command::new(c)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Ok(c.clone());
        }
    }
    bail!(
        "no clang found (tried {}): {INSTALL_HINT}",
        candidates.join(", ")
    )
}

/// Keeps the `ew_*` records of clang's `-fdump-record-layouts` output, one
/// line per top-level field: `struct field offset`, then `struct =size N`.
fn parse_layouts(dump: &str) -> String {
    let mut out = String::new();
    let mut current: Option<String> = None;
    for line in dump.lines() {
        let Some((left, right)) = line.split_once('|') else {
            continue;
        };
        let offset = left.trim();
        if let Some(name) = right.strip_prefix(" struct ") {
            current = name.starts_with("ew_").then(|| name.trim().to_string());
            continue;
        }
        let Some(record) = &current else { continue };
        if let Some(rest) = right.trim().strip_prefix("[sizeof=") {
            let size = rest.split(',').next().unwrap_or("");
            out.push_str(&format!("{record} =size {size}\n"));
            current = None;
        } else if right.starts_with("   ") && !right.starts_with("     ") {
            // Top-level field: "   <type> <name>"; nested fields are indented further.
            if let Some(field) = right.split_whitespace().last() {
                out.push_str(&format!("{record} {field} {offset}\n"));
            }
        }
    }
    out
}
