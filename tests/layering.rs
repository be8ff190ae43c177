//! The crates' imports run one way: no module imports, directly or through
//! others, a module that imports it. Each library's `src/` is read as text:
//! every file is a module, and so is every inline `mod name { ... }` block in
//! it. Every path (in `use` lines and inline, grouped or nested) that starts at
//! `crate::`, `super::`, `self::` or the name of a child module (`replica::X`
//! inside `fleet/mod.rs` is `fleet::replica`) is an edge to the longest module
//! it names. A re-export (`pub use child::X`) is a table-of-contents entry, not
//! an edge of its own: a path naming `X` through the re-exporting module is
//! followed to the module that defines `X`. Comments and string literals are
//! left out; edges into the crate root (`lib.rs`, the table of contents) are
//! not counted. A cycle fails the test with its path.
//!
//! Two more rules of the house's shape live here, read the same way: quinn is
//! named only where QUIC is the point (`QUINN_ALLOWED`), and product files
//! and functions stay of a readable size (`MAX_FILE_LINES`, `MAX_FN_LINES`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module: its path segments below the crate root (`[]` is `lib.rs`).
type Module = Vec<String>;

/// One token of Rust source, as far as paths need: an identifier (keywords
/// included), `::`, or one punctuation character.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    PathSep,
    Punct(char),
}

/// The tokens of `text`, without comments, string and character literals.
fn tokens(text: &str) -> Vec<Token> {
    lined_tokens(text)
        .into_iter()
        .map(|(token, _)| token)
        .collect()
}

/// [`tokens`], each with the line (from 1) it starts on.
fn lined_tokens(text: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut counted = 0;
    let mut line_at = |at: usize| {
        line += chars[counted..at].iter().filter(|c| **c == '\n').count();
        counted = at;
        line
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            i = skip_string(&chars, i + 1);
        } else if c == 'r' && matches!(next, Some('"' | '#')) && raw_string_start(&chars, i) {
            // r"..." or r#"..."#: ends at a quote followed by as many hashes.
            let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
            i += 2 + hashes;
            while i < chars.len() {
                if chars[i] == '"' && chars[i + 1..].iter().take(hashes).all(|c| *c == '#') {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
        } else if c == 'b' && next == Some('"') {
            i = skip_string(&chars, i + 2);
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((
                Token::Ident(chars[start..i].iter().collect()),
                line_at(start),
            ));
        } else if c == ':' && next == Some(':') {
            out.push((Token::PathSep, line_at(i)));
            i += 2;
        } else {
            out.push((Token::Punct(c), line_at(i)));
            i += 1;
        }
    }
    out
}

/// Whether the `r` at `at` opens a raw string rather than ending a name.
fn raw_string_start(chars: &[char], at: usize) -> bool {
    let after_name = at > 0 && (chars[at - 1].is_alphanumeric() || chars[at - 1] == '_');
    let hashes = chars[at + 1..].iter().take_while(|c| **c == '#').count();
    !after_name && chars.get(at + 1 + hashes) == Some(&'"')
}

/// The index just past the string whose body starts at `at`.
fn skip_string(chars: &[char], mut at: usize) -> usize {
    while at < chars.len() {
        match chars[at] {
            '\\' => at += 2,
            '"' => return at + 1,
            _ => at += 1,
        }
    }
    at
}

/// One module's code: its own tokens, inline child modules cut out.
struct Source {
    tokens: Vec<Token>,
}

/// Every module of the crate under `root`: one per file, one per inline
/// `mod name { ... }` block (nested ones too).
fn modules(root: &Path) -> BTreeMap<Module, Source> {
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
            let text = std::fs::read_to_string(&path).expect("source reads");
            split_inline(module, tokens(&text), &mut found);
        }
    }
    found
}

/// Files `tokens` under `module`, each inline `mod name { ... }` as a module
/// of its own.
fn split_inline(module: Module, tokens: Vec<Token>, found: &mut BTreeMap<Module, Source>) {
    let mut own = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let opens_module = tokens[i] == Token::Ident("mod".into())
            && matches!(tokens.get(i + 1), Some(Token::Ident(_)))
            && tokens.get(i + 2) == Some(&Token::Punct('{'));
        if !opens_module {
            own.push(tokens[i].clone());
            i += 1;
            continue;
        }
        let Token::Ident(name) = &tokens[i + 1] else {
            unreachable!()
        };
        let body_start = i + 3;
        let mut depth = 1;
        let mut end = body_start;
        while end < tokens.len() && depth > 0 {
            match tokens[end] {
                Token::Punct('{') => depth += 1,
                Token::Punct('}') => depth -= 1,
                _ => {}
            }
            end += 1;
        }
        let body = tokens[body_start..end.saturating_sub(1)].to_vec();
        let child: Module = module.iter().cloned().chain([name.clone()]).collect();
        split_inline(child, body, found);
        i = end;
    }
    found.insert(module, Source { tokens: own });
}

/// One path read from the source: its segments as written, whether it sits in
/// a `pub use` (a re-export), and the name it is imported as.
#[derive(Debug)]
struct PathRef {
    segments: Vec<String>,
    reexport: bool,
    alias: Option<String>,
}

/// Every path in `tokens` that starts with a name followed by `::`; `use`
/// trees (`a::{b, c::{d, e as f}}`) give one path per leaf.
fn paths(tokens: &[Token]) -> Vec<PathRef> {
    let ident = |at: usize| match tokens.get(at) {
        Some(Token::Ident(name)) => Some(name.as_str()),
        _ => None,
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let starts = ident(i).is_some()
            && tokens.get(i + 1) == Some(&Token::PathSep)
            && (i == 0 || tokens[i - 1] != Token::PathSep);
        if !starts {
            i += 1;
            continue;
        }
        let in_use = i > 0 && ident(i - 1) == Some("use");
        let reexport =
            in_use && (ident(i.wrapping_sub(2)) == Some("pub") || pub_restricted(tokens, i - 1));
        let mut leaves = Vec::new();
        i = use_tree(tokens, i, Vec::new(), &mut leaves);
        out.extend(leaves.into_iter().map(|(segments, alias)| PathRef {
            segments,
            reexport,
            alias,
        }));
    }
    out
}

/// Whether the `use` at `at` follows `pub(...)`.
fn pub_restricted(tokens: &[Token], at: usize) -> bool {
    if at == 0 || tokens[at - 1] != Token::Punct(')') {
        return false;
    }
    let open = tokens[..at - 1]
        .iter()
        .rposition(|token| *token == Token::Punct('('));
    open.is_some_and(|open| open > 0 && tokens[open - 1] == Token::Ident("pub".into()))
}

/// Reads one path or `use` tree from `at` below `prefix`, pushing its leaves
/// (segments, `as` name); returns the index just past it.
fn use_tree(
    tokens: &[Token],
    mut at: usize,
    mut prefix: Vec<String>,
    leaves: &mut Vec<(Vec<String>, Option<String>)>,
) -> usize {
    loop {
        match tokens.get(at) {
            Some(Token::Ident(name)) => {
                prefix.push(name.clone());
                at += 1;
                if tokens.get(at) == Some(&Token::PathSep) {
                    at += 1;
                    continue;
                }
                let mut alias = None;
                if tokens.get(at) == Some(&Token::Ident("as".into())) {
                    if let Some(Token::Ident(name)) = tokens.get(at + 1) {
                        alias = Some(name.clone());
                    }
                    at += 2;
                }
                if prefix.last().is_some_and(|last| last == "self") {
                    prefix.pop();
                }
                leaves.push((prefix, alias));
                return at;
            }
            Some(Token::Punct('{')) => {
                at += 1;
                while at < tokens.len() && tokens[at] != Token::Punct('}') {
                    if tokens[at] == Token::Punct(',') {
                        at += 1;
                        continue;
                    }
                    let before = at;
                    at = use_tree(tokens, at, prefix.clone(), leaves);
                    if at == before {
                        at += 1;
                    }
                }
                return at + 1;
            }
            // `a::*`, `a::<T>` and the like: the path so far.
            _ => {
                if !prefix.is_empty() {
                    leaves.push((prefix, None));
                }
                return at;
            }
        }
    }
}

/// Where a path written in `module` points, as absolute segments, if it starts
/// at the crate, a parent, this module or a child module.
fn absolute(
    module: &Module,
    segments: &[String],
    modules: &BTreeMap<Module, Source>,
) -> Option<Vec<String>> {
    let first = segments.first()?.as_str();
    let mut base = module.clone();
    let mut rest = segments;
    match first {
        "crate" => {
            base.clear();
            rest = &segments[1..];
        }
        "self" => rest = &segments[1..],
        "super" => {
            while rest.first().is_some_and(|segment| segment == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        child => {
            let mut candidate = module.clone();
            candidate.push(child.to_owned());
            if !modules.contains_key(&candidate) {
                return None;
            }
        }
    }
    Some(base.into_iter().chain(rest.iter().cloned()).collect())
}

/// The module graph of the crate whose sources are under `root`.
fn graph(root: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let modules = modules(root);
    // (module, name) -> the absolute path `pub use` gives that name.
    let mut reexports: BTreeMap<(Module, String), Vec<String>> = BTreeMap::new();
    let mut uses: BTreeMap<Module, Vec<Vec<String>>> = BTreeMap::new();
    for (module, source) in &modules {
        for path in paths(&source.tokens) {
            let Some(target) = absolute(module, &path.segments, &modules) else {
                continue;
            };
            if path.reexport {
                let name = path.alias.or_else(|| target.last().cloned());
                if let Some(name) = name {
                    reexports.insert((module.clone(), name), target);
                }
            } else {
                uses.entry(module.clone()).or_default().push(target);
            }
        }
    }
    let resolve = |path: &[String]| -> Option<Module> {
        let mut path = path.to_vec();
        // Follow re-exports to the defining module; the bound stops a loop.
        for _ in 0..16 {
            let module = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|candidate| modules.contains_key(candidate))?;
            let Some(name) = path.get(module.len()) else {
                return Some(module);
            };
            match reexports.get(&(module.clone(), name.clone())) {
                Some(target) if target.as_slice() != path.as_slice() => {
                    path = target
                        .iter()
                        .chain(&path[module.len() + 1..])
                        .cloned()
                        .collect();
                }
                _ => return Some(module),
            }
        }
        None
    };
    let mut edges = BTreeMap::new();
    for module in modules.keys() {
        let mut to = BTreeSet::new();
        for target in uses.get(module).into_iter().flatten() {
            to.extend(resolve(target));
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

/// Every module that `start` reaches and that reaches `start` back.
fn circle_of(start: &Module, edges: &BTreeMap<Module, BTreeSet<Module>>) -> BTreeSet<Module> {
    let reach = |from: &Module, forward: bool| {
        let mut seen = BTreeSet::from([from.clone()]);
        let mut todo = vec![from.clone()];
        while let Some(module) = todo.pop() {
            let next: Vec<&Module> = if forward {
                edges.get(&module).into_iter().flatten().collect()
            } else {
                edges
                    .iter()
                    .filter(|(_, to)| to.contains(&module))
                    .map(|(from, _)| from)
                    .collect()
            };
            for next in next {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let forward = reach(start, true);
    reach(start, false)
        .intersection(&forward)
        .cloned()
        .collect()
}

#[test]
fn no_crate_has_an_import_cycle() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cycles = Vec::new();
    for crate_dir in [
        "gateway",
        "agent",
        "transport",
        "protocol",
        "geoip",
        "launcher",
        "bench",
        "config",
    ] {
        let edges = graph(&workspace.join(crate_dir).join("src"));
        assert!(
            edges.len() > 1 || crate_dir == "protocol",
            "{crate_dir}: no modules read"
        );
        if let Some(cycle) = find_cycle(&edges) {
            let name = |module: &Module| format!("{crate_dir}::{}", module.join("::"));
            let names: Vec<String> = cycle.iter().map(name).collect();
            let circle: Vec<String> = circle_of(&cycle[0], &edges).iter().map(name).collect();
            cycles.push(format!(
                "{} (every module on a circle with the first: {})",
                names.join(" -> "),
                circle.join(", ")
            ));
        }
    }
    assert!(cycles.is_empty(), "import cycle: {}", cycles.join("; "));
}

/// Writes `files` (path below `src/`, text) into a fresh folder and returns
/// its module graph's cycle.
fn cycle_in(files: &[(&str, &str)]) -> Option<Vec<Module>> {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    find_cycle(&graph(dir.path()))
}

#[test]
fn the_checker_finds_a_cycle_it_is_shown() {
    let lib = ("lib.rs", "mod a;\nmod b;\n");
    let a = ("a.rs", "use crate::b::Thing;\n");
    assert_eq!(
        cycle_in(&[
            lib,
            a,
            ("b.rs", "// crate::a in a comment is no import\npub struct Thing;\nconst S: &str = \"crate::a::X\";\n"),
        ]),
        None
    );
    let cycle =
        cycle_in(&[lib, a, ("b.rs", "pub struct Thing(crate::a::Other);\n")]).expect("a <-> b");
    assert_eq!(cycle.len(), 3, "{cycle:?}");
}

#[test]
fn child_paths_are_edges() {
    // Today's fleet circle in miniature: mod.rs names a child's constant, the
    // child uses `shared`, and `shared` uses the parent.
    let files = [
        ("lib.rs", "mod fleet;\nmod shared;\n"),
        (
            "fleet/mod.rs",
            "mod replica;\npub struct Fleet;\nconst T: u32 = replica::BLOCK;\n",
        ),
        (
            "fleet/replica.rs",
            "use crate::shared::Shared;\npub const BLOCK: u32 = 1;\n",
        ),
        (
            "shared.rs",
            "use crate::fleet::Fleet;\npub struct Shared(Fleet);\n",
        ),
    ];
    let cycle = cycle_in(&files).expect("fleet -> replica -> shared -> fleet");
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    // `self::replica::BLOCK` and a grouped nested `use` are the same edge.
    let mut with_self = files;
    with_self[1].1 = "mod replica;\npub struct Fleet;\nuse self::{replica::{BLOCK}};\n";
    assert!(cycle_in(&with_self).is_some());
    // Moving the constant to the parent breaks the circle.
    let mut moved = files;
    moved[1].1 = "mod replica;\npub struct Fleet;\npub const BLOCK: u32 = 1;\n";
    moved[2].1 = "use crate::shared::Shared;\nconst T: u32 = super::BLOCK;\n";
    assert_eq!(cycle_in(&moved), None);
}

#[test]
fn inline_modules_are_modules_of_their_own() {
    // `a::inner` uses `b`, which uses `a`'s inline module (not `a` itself).
    let files = [
        ("lib.rs", "mod a;\nmod b;\n"),
        (
            "a.rs",
            "pub mod inner {\n    pub fn f() { crate::b::g() }\n}\n",
        ),
        (
            "b.rs",
            "pub fn g() {}\npub fn h() { crate::a::inner::f() }\n",
        ),
    ];
    let cycle = cycle_in(&files).expect("a::inner <-> b");
    assert_eq!(cycle.len(), 3, "{cycle:?}");
    assert!(
        cycle.contains(&vec!["a".to_owned(), "inner".to_owned()]),
        "{cycle:?}"
    );
    // A nested inline module reaching its grandparent with `super::super`.
    let nested = [
        ("lib.rs", "mod a;\n"),
        ("a.rs", "pub fn x() { outer::inner::y() }\nmod outer {\n    pub mod inner {\n        pub fn y() { super::super::x() }\n    }\n}\n"),
    ];
    assert!(cycle_in(&nested).is_some());
}

#[test]
fn a_reexport_is_followed_to_the_defining_module() {
    // `t/mod.rs` re-exports `links::Links`; `other` names it through `t`, and
    // `links` uses `other`: a circle through `t::links`, not through `t`.
    let files = [
        ("lib.rs", "mod t;\nmod other;\n"),
        (
            "t/mod.rs",
            "mod links;\npub use links::Links;\npub struct Pending;\n",
        ),
        (
            "t/links.rs",
            "use super::Pending;\nuse crate::other::O;\npub struct Links;\n",
        ),
        ("other.rs", "pub struct O;\nfn f(_: crate::t::Links) {}\n"),
    ];
    let cycle = cycle_in(&files).expect("t::links <-> other");
    assert!(
        cycle.contains(&vec!["t".to_owned(), "links".to_owned()]),
        "{cycle:?}"
    );
    // The re-export alone, with the child using its parent, is no circle.
    let mut table_only = files;
    table_only[3].1 = "pub struct O;\n";
    assert_eq!(cycle_in(&table_only), None);
}

/// Where quinn may be named above the transport crate: the gateway's QUIC
/// listener and the agent's QUIC dialer (with the client settings it dials
/// with). Everything else holds `exitpool_transport::Tunnel` and
/// `exitpool_transport::endpoint::QuicEndpoint` (the fleet's peer links dial
/// and answer through it; MASQUE's HTTP/3 port holds
/// `exitpool_transport::h3_endpoint`).
const QUINN_ALLOWED: &[&str] = &[
    "gateway/src/tunnel/quic.rs",
    "agent/src/tunnel/reach_gateway.rs",
    "agent/src/tls.rs",
];

/// The files under `folder` (relative to the workspace) whose code, comments
/// and strings left out, names the crate `name` in a path.
fn files_naming(folder: &str, name: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    let mut folders = vec![root.join(folder)];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("source folder reads") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = std::fs::read_to_string(&path).expect("source reads");
                let tokens = tokens(&text);
                let names = tokens
                    .windows(2)
                    .any(|pair| pair[0] == Token::Ident(name.into()) && pair[1] == Token::PathSep);
                if names {
                    let relative = path.strip_prefix(root).unwrap();
                    found.push(relative.to_string_lossy().into_owned());
                }
            }
        }
    }
    found.sort();
    found
}

#[test]
fn quinn_is_named_only_in_the_quic_listener_and_dialer() {
    let mut strays = Vec::new();
    for folder in ["gateway/src", "agent/src", "agent-ffi/src", "src"] {
        for name in ["quinn", "quinn_proto"] {
            for file in files_naming(folder, name) {
                if !QUINN_ALLOWED.contains(&file.as_str()) && !strays.contains(&file) {
                    strays.push(file);
                }
            }
        }
    }
    assert!(
        strays.is_empty(),
        "these files name quinn above the transport interface; use \
         exitpool_transport's Tunnel, endpoint::QuicEndpoint and its settings: {strays:?}"
    );
    // The list only shrinks: a file that no longer names quinn leaves it.
    let stale: Vec<&str> = QUINN_ALLOWED
        .iter()
        .copied()
        .filter(|file| {
            let folder = file.split("/src/").next().unwrap().to_owned() + "/src";
            !files_naming(&folder, "quinn")
                .iter()
                .any(|named| named == file)
        })
        .collect();
    assert!(
        stale.is_empty(),
        "these files may name quinn but no longer do; take them off QUINN_ALLOWED: {stale:?}"
    );
}

#[test]
fn the_quinn_check_sees_a_path_and_not_a_comment() {
    let named = tokens("let e: quinn::Endpoint = x; // quinn::VarInt");
    let paths = named
        .windows(2)
        .filter(|pair| pair[0] == Token::Ident("quinn".into()) && pair[1] == Token::PathSep)
        .count();
    assert_eq!(paths, 1);
}

/// The product crates' sources: every crate but the test and bench ones,
/// test modules (`tests.rs`, `tests/`) left out.
const PRODUCT_SOURCES: &[&str] = &[
    "src",
    "protocol/src",
    "transport/src",
    "geoip/src",
    "gateway/src",
    "agent/src",
    "agent-ffi/src",
    "control/src",
    "config/src",
    "launcher/src",
];

/// Longest product file, in lines.
const MAX_FILE_LINES: usize = 800;

/// Longest product function, in lines from `fn` to its closing brace.
const MAX_FN_LINES: usize = 100;

/// Files and functions (`path` or `path::fn`) still over the sizes, to be
/// split; the list only shrinks (an entry of a readable size fails the test).
const OVERSIZED_ALLOWED: &[&str] = &[];

/// Every product `.rs` file under [`PRODUCT_SOURCES`], relative to the
/// workspace, with its text.
fn product_files() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    let mut folders: Vec<_> = PRODUCT_SOURCES.iter().map(|dir| root.join(dir)).collect();
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("source folder reads") {
            let path = entry.expect("entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() && name != "tests" {
                folders.push(path);
            } else if name.ends_with(".rs") && name != "tests.rs" {
                let text = std::fs::read_to_string(&path).expect("source reads");
                let relative = path.strip_prefix(root).unwrap();
                found.push((relative.to_string_lossy().into_owned(), text));
            }
        }
    }
    found.sort();
    found
}

/// Each function of `text` with a body: its name and its length in lines,
/// from the `fn` line to the line of its closing brace.
fn function_lengths(text: &str) -> Vec<(String, usize)> {
    let tokens = lined_tokens(text);
    let mut found = Vec::new();
    for (at, pair) in tokens.windows(2).enumerate() {
        let (Token::Ident(keyword), first) = &pair[0] else {
            continue;
        };
        let (Token::Ident(name), _) = &pair[1] else {
            continue;
        };
        if keyword != "fn" {
            continue;
        }
        // The body opens at the first `{` outside the signature's brackets
        // (`[u8; 32]` holds a `;`); a `;` there first means no body.
        let mut nesting = 0i32;
        let mut open = None;
        for (index, (token, _)) in tokens.iter().enumerate().skip(at + 2) {
            match token {
                Token::Punct('(' | '[') => nesting += 1,
                Token::Punct(')' | ']') => nesting -= 1,
                Token::Punct('{') if nesting == 0 => {
                    open = Some(index);
                    break;
                }
                Token::Punct(';') if nesting == 0 => break,
                _ => {}
            }
        }
        let Some(open) = open else { continue };
        let mut depth = 0;
        for (token, line) in &tokens[open..] {
            match token {
                Token::Punct('{') => depth += 1,
                Token::Punct('}') => {
                    depth -= 1;
                    if depth == 0 {
                        found.push((name.clone(), line - first + 1));
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    found
}

#[test]
fn product_files_and_functions_are_of_a_readable_size() {
    // Everything over a size: its key (as OVERSIZED_ALLOWED names it) and why.
    let mut oversized: Vec<(String, String)> = Vec::new();
    for (path, text) in product_files() {
        let lines = text.lines().count();
        if lines > MAX_FILE_LINES {
            let why = format!("{path}: {lines} lines (most {MAX_FILE_LINES})");
            oversized.push((path.clone(), why));
        }
        for (name, lines) in function_lengths(&text) {
            if lines > MAX_FN_LINES {
                let named = format!("{path}::{name}");
                let why = format!("{named}: {lines} lines (most {MAX_FN_LINES})");
                oversized.push((named, why));
            }
        }
    }
    let over: Vec<&str> = oversized
        .iter()
        .filter(|(key, _)| !OVERSIZED_ALLOWED.contains(&key.as_str()))
        .map(|(_, why)| why.as_str())
        .collect();
    assert!(
        over.is_empty(),
        "split these into files of one concern or named steps:\n{}",
        over.join("\n")
    );
    let stale: Vec<&&str> = OVERSIZED_ALLOWED
        .iter()
        .filter(|allowed| !oversized.iter().any(|(key, _)| key == *allowed))
        .collect();
    assert!(
        stale.is_empty(),
        "these are of a readable size now; take them off OVERSIZED_ALLOWED: {stale:?}"
    );
}

#[test]
fn the_size_scan_measures_functions_and_skips_strings_and_comments() {
    let text = "fn short(a: [u8; 2]) -> u8 {\n    a[0]\n}\n\
                trait T { fn declared(&self); }\n\
                fn long() {\n    let s = \"}\";\n    // }\n    let c = '{';\n}\n";
    assert_eq!(
        function_lengths(text),
        vec![("short".to_owned(), 3), ("long".to_owned(), 5)]
    );
}
