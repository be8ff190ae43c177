//! The crates' imports run one way: no module imports, directly or through
//! others, a module that imports it. Each library's `src/` is read as text; every
//! `crate::` and `super::` path (in `use` lines and inline, grouped or not) is an
//! edge to the longest module it names; comments and `#[cfg(test)] mod tests`
//! blocks are left out. A cycle fails the test with its path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module: its path segments below the crate root (`[]` is `lib.rs`).
type Module = Vec<String>;

fn modules(root: &Path) -> BTreeMap<Module, PathBuf> {
    let mut found = BTreeMap::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("source folder reads") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let relative = path.strip_prefix(root).unwrap().with_extension("");
            let mut module: Module = relative
                .components()
                .map(|part| part.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            found.insert(module, path);
        }
    }
    found
}

/// The source without comments and without its unit-test module.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("source reads");
    let text = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path that follows `prefix` (`crate::` or `super::`), as segments;
/// `prefix{a, b::c}` gives one path per item.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let segments = |text: &str| -> Vec<String> {
        text.split("::")
            .map(|segment| {
                segment
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|segment| !segment.is_empty())
            .collect()
    };
    let mut paths = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or_default();
            paths.extend(group.split(',').map(|item| segments(item.trim())));
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            paths.push(segments(&rest[..end]));
        }
    }
    paths
}

/// The module graph of the crate whose sources are under `root`.
fn graph(root: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let modules = modules(root);
    let resolve = |path: &[String]| -> Option<Module> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|candidate| modules.contains_key(candidate))
    };
    let mut edges = BTreeMap::new();
    for (module, path) in &modules {
        let code = code_of(path);
        let mut to = BTreeSet::new();
        for target in paths_after(&code, "crate::") {
            to.extend(resolve(&target));
        }
        // `super::` is relative to the parent module of this one.
        let parent = &module[..module.len().saturating_sub(1)];
        for target in paths_after(&code, "super::") {
            let absolute: Vec<String> = parent.iter().cloned().chain(target).collect();
            to.extend(resolve(&absolute));
        }
        to.remove(module);
        to.remove(&Vec::new());
        edges.insert(module.clone(), to);
    }
    edges
}

/// A cycle in `edges`, as the modules along it, if there is one.
fn find_cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        module: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        done: &mut BTreeSet<Module>,
        path: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(start) = path.iter().position(|on_path| on_path == module) {
            let mut cycle = path[start..].to_vec();
            cycle.push(module.clone());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.clone());
        for next in edges.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(module.clone());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|module| visit(module, edges, &mut done, &mut Vec::new()))
}

#[test]
fn no_crate_has_an_import_cycle() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    for crate_dir in [
        "gateway",
        "agent",
        "transport",
        "protocol",
        "geoip",
        "launcher",
        "bench",
    ] {
        let edges = graph(&workspace.join(crate_dir).join("src"));
        assert!(
            edges.len() > 1 || crate_dir == "protocol",
            "{crate_dir}: no modules read"
        );
        if let Some(cycle) = find_cycle(&edges) {
            let names: Vec<String> = cycle
                .iter()
                .map(|module| format!("{crate_dir}::{}", module.join("::")))
                .collect();
            panic!("import cycle: {}", names.join(" -> "));
        }
    }
}

#[test]
fn the_checker_finds_a_cycle_it_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::Thing;\n").unwrap();
    std::fs::write(
        src.join("b.rs"),
        "// crate::a in a comment is no import\npub struct Thing;\n",
    )
    .unwrap();
    assert_eq!(find_cycle(&graph(src)), None);
    std::fs::write(src.join("b.rs"), "pub struct Thing(crate::a::Other);\n").unwrap();
    let cycle = find_cycle(&graph(src)).expect("a <-> b");
    assert_eq!(cycle.len(), 3, "{cycle:?}");
}
