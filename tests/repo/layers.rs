//! The library's layers point one way. The table in exporter/src/lib.rs's
//! doc comment is the source: each top-level module has a layer, and a
//! module may import only modules of a lower layer (which also rules out
//! import circles). This test reads every `crate::` path in exporter/src
//! and fails on any import that points sideways or up, and keeps the
//! README's module graph equal to what the code imports.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use crate::common::repo;

/// Top-level module -> layer, from lib.rs's table rows
/// `//! | N | `a`, `b` | ... |`.
fn layers() -> BTreeMap<String, u32> {
    let lib = std::fs::read_to_string(repo("exporter/src/lib.rs")).unwrap();
    let mut out = BTreeMap::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! | ") else {
            continue;
        };
        let cells: Vec<&str> = row.split(" | ").collect();
        let Ok(layer) = cells[0].trim().parse::<u32>() else {
            continue;
        };
        for m in cells[1].split(',') {
            out.insert(m.trim().trim_matches('`').to_string(), layer);
        }
    }
    out
}

/// The top-level module a source file belongs to (`lib` and `main` for
/// the crate roots).
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Code without its comments (line comments, including doc comments).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segment of every path after `crate::`, looking inside brace
/// groups (`crate::{a::x, b::{y, z}}` gives a and b).
fn crate_imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue; // `$crate::`, `edgewatch_crate::`, ...
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.insert(first_segment(&item));
        } else {
            out.insert(first_segment(rest));
        }
    }
    out.remove("");
    out.remove("self");
    out
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// (importer, imported) for every import between top-level modules.
fn module_graph() -> BTreeSet<(String, String)> {
    let src = repo("exporter/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges = BTreeSet::new();
    for f in files {
        let from = top_module(&src, &f);
        let code = strip_comments(&std::fs::read_to_string(&f).unwrap());
        for to in crate_imports(&code) {
            if to != from {
                edges.insert((from.clone(), to));
            }
        }
    }
    edges
}

#[test]
fn the_import_scanner_sees_groups_and_skips_comments() {
    let code = strip_comments(
        "use crate::{a::x, b::{y, z}};\nuse crate::c;\n// use crate::d;\nlet v = crate::e::f();\n$crate::g::h",
    );
    let got: Vec<String> = crate_imports(&code).into_iter().collect();
    assert_eq!(got, vec!["a", "b", "c", "e"]);
}

#[test]
fn every_module_has_a_layer_and_imports_only_lower_layers() {
    let layers = layers();
    assert!(layers.len() >= 10, "lib.rs's layer table: {layers:?}");
    let src = repo("exporter/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| top_module(&src, f))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let missing: Vec<_> = modules
        .iter()
        .filter(|m| !layers.contains_key(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a layer in lib.rs: {missing:?}"
    );

    let mut wrong = Vec::new();
    for (from, to) in module_graph() {
        if from == "lib" {
            continue;
        }
        if from == "main" {
            wrong.push(format!(
                "main imports crate::{to}: main.rs only calls the library"
            ));
            continue;
        }
        let (Some(a), Some(b)) = (layers.get(&from), layers.get(&to)) else {
            wrong.push(format!("{from} -> {to}: unknown module"));
            continue;
        };
        if b >= a {
            wrong.push(format!("{from} (layer {a}) imports {to} (layer {b})"));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that do not point down:\n{}",
        wrong.join("\n")
    );
}

/// The README's module graph, between the markers, as `from -> a, b` lines.
#[test]
fn the_readme_shows_the_module_graph() {
    let layers = layers();
    let mut by_module: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (from, to) in module_graph() {
        if from != "lib" && from != "main" {
            by_module.entry(from).or_default().push(to);
        }
    }
    let mut modules: Vec<&String> = layers.keys().collect();
    modules.sort_by_key(|m| (std::cmp::Reverse(layers[*m]), m.to_string()));
    let mut want = String::new();
    for m in modules {
        let deps = by_module
            .get(m)
            .map(|d| d.join(", "))
            .unwrap_or_else(|| "(nothing)".into());
        want.push_str(&format!("{m:<9} ({}) -> {deps}\n", layers[m]));
    }
    let mut readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let start = "<!-- module-graph -->\n```\n";
    if std::env::var_os("UPDATE_README").is_some()
        && let Some((head, rest)) = readme.split_once(start)
        && let Some((_, tail)) = rest.split_once("```")
    {
        readme = format!("{head}{start}{want}```{tail}");
        std::fs::write(repo("README.md"), &readme).unwrap();
    }
    let got = readme
        .split_once(start)
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(graph, _)| graph.to_string())
        .unwrap_or_default();
    assert_eq!(
        got, want,
        "README.md's module graph is out of date (UPDATE_README=1 rewrites it); it should read:\n{want}"
    );
}
