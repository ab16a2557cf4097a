//! The module layout (README "Layout"), checked from the source text: no import
//! cycles between modules, a domain core without I/O, and `store` and
//! `warehouse` independent of each other.
//!
//! A node is a top-level module of `src/` (`service`, `warehouse`, ...), except
//! in `domain/`, where each child is its own node (`domain::summary`), so the
//! core's own files cannot form a cycle either. An edge is every `crate::` path a
//! file names, tests included. `super::` may only stay inside a node, so it never
//! hides an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Crates and standard modules that do I/O; the domain core names none of them.
const IO: &[&str] = &[
    "tokio_postgres",
    "deadpool_postgres",
    "clickhouse",
    "hyper",
    "hyper_util",
    "hyper_rustls",
    "lambda_runtime",
    "tokio",
    "rustls",
    "std::fs",
    "std::net",
    "std::io",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `src/`: `warehouse/client.rs` is `["warehouse", "client"]`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The graph node a module path belongs to.
fn node(path: &[&str]) -> Option<String> {
    match path {
        [] | ["lib"] | ["main"] => None,
        ["domain", child, ..] => Some(format!("domain::{child}")),
        [top, ..] => Some((*top).to_owned()),
    }
}

/// The code of a file without its comments (a doc comment may name a path it does not use).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b` a text names, as `["a", "b"]` (one segment when the second is an item).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue; // `some_crate::`, not `crate::`
        }
        let rest = &code[i + "crate::".len()..];
        let path: Vec<String> = rest
            .split("::")
            .map(|s| {
                s.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|s| !s.is_empty())
            .take(2)
            .collect();
        assert!(
            !path.is_empty(),
            "`crate::{{...}}` groups hide edges: name each path"
        );
        out.push(path);
    }
    out
}

/// The module graph of `src/`, and the files' code by node.
fn graph() -> (Graph, BTreeMap<String, Vec<(PathBuf, String)>>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph = Graph::new();
    let mut code_by_node: BTreeMap<String, Vec<(PathBuf, String)>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap().to_path_buf();
        let module = module_path(&relative);
        let module: Vec<&str> = module.iter().map(String::as_str).collect();
        let Some(from) = node(&module) else { continue };
        let text = code(&std::fs::read_to_string(&file).unwrap());
        let edges = graph.entry(from.clone()).or_default();
        for path in crate_paths(&text) {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            if let Some(to) = node(&path) {
                if to != from {
                    edges.insert(to);
                }
            }
        }
        code_by_node.entry(from).or_default().push((relative, text));
    }
    (graph, code_by_node)
}

/// A cycle of `graph` as a path `[a, b, ..., a]`, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &Graph,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_owned());
        for next in graph.get(n).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn modules_import_each_other_without_cycles() {
    let (graph, _) = graph();
    assert!(graph.len() > 10, "the graph was read: {graph:?}");
    assert!(graph["service"].contains("store"), "{graph:?}");
    assert_eq!(find_cycle(&graph), None, "import cycle in {graph:#?}");
}

#[test]
fn a_deliberate_cycle_is_found() {
    // The module graph with one edge against the layering, as a careless `use` would add it.
    for (from, to) in [
        ("store", "service"),
        ("domain::summary", "domain::transition"),
        ("config", "store"),
    ] {
        let (mut graph, _) = graph();
        graph.get_mut(from).unwrap().insert(to.to_owned());
        let cycle = find_cycle(&graph).unwrap_or_else(|| panic!("{from} -> {to} not found"));
        assert_eq!(cycle.first(), cycle.last());
        assert!(cycle.contains(&from.to_owned()), "{cycle:?}");
    }
}

#[test]
fn the_domain_core_does_no_io_and_names_only_itself() {
    let (graph, code) = graph();
    for (n, edges) in graph.iter().filter(|(n, _)| n.starts_with("domain::")) {
        for to in edges {
            assert!(to.starts_with("domain::"), "{n} depends on {to}");
        }
        for (file, text) in &code[n] {
            for krate in IO {
                let named = text.match_indices(&format!("{krate}::")).any(|(i, _)| {
                    !text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')
                });
                assert!(!named, "src/{} names {krate}", file.display());
            }
            // In `domain/x.rs` or `domain/x/mod.rs`, `super::` is `domain`, another node.
            let top = module_path(file).len() == 2;
            for line in text.lines().filter(|l| top && l.contains("super::")) {
                assert_eq!(
                    line.trim(),
                    "use super::*;",
                    "src/{}: `super::` leaves the module",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn store_and_warehouse_are_independent_edges() {
    let (graph, _) = graph();
    assert!(
        !graph["store"].contains("warehouse"),
        "{:?}",
        graph["store"]
    );
    assert!(
        !graph["warehouse"].contains("store"),
        "{:?}",
        graph["warehouse"]
    );
    for edge in ["store", "warehouse"] {
        for to in &graph[edge] {
            assert!(
                to.starts_with("domain::")
                    || ["config", "conninfo", "tls", "retry", "causes"].contains(&to.as_str()),
                "{edge} depends on {to}"
            );
        }
    }
}

#[test]
fn paths_are_read_as_the_compiler_reads_them() {
    assert_eq!(
        module_path(Path::new("domain/health/mod.rs")),
        ["domain", "health"]
    );
    assert_eq!(
        node(&["domain", "health", "weights"]).unwrap(),
        "domain::health"
    );
    assert_eq!(node(&["warehouse", "client"]).unwrap(), "warehouse");
    assert_eq!(node(&["lib"]), None);
    let paths = crate_paths(
        "use crate::domain::summary::Payload;\nlet x = my_crate::y; crate::retry::run(",
    );
    assert_eq!(paths, [vec!["domain", "summary"], vec!["retry", "run"]]);
    assert_eq!(code("a // crate::x\nb"), "a \nb");
}
