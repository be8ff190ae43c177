//! The manual stays true to the code. What this file checks, each a test:
//! the error table in `docs/errors.md` against `ProxyError::presentation` for
//! every variant; every flag `gateway --help` and `agent --help` print against
//! the operators and volunteers chapters; every relative link and `#anchor`
//! between `README.md` and `docs/` against the files and their headings; every
//! dependency of every manifest against the README's "Dependencies and why"; and
//! the README's size and first screen.

use exitpool::gateway::error::ProxyError;
use exitpool_launcher::Launch;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest a `--help` run may take.
const HELP_BOUND: Duration = Duration::from_secs(30);
/// The README's size limit: a first screen and links, not a manual.
const README_MAX_BYTES: usize = 16_000;
/// Lines of the README within which both set-up commands must appear.
const FIRST_SCREEN_LINES: usize = 40;
/// Chapters other work writes; a link to one may point nowhere only while the
/// file does not exist yet.
const CHAPTERS_WRITTEN_ELSEWHERE: [&str; 2] = ["docs/sdk.md", "docs/install.md"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Fails with every problem found, one per line.
fn assert_none(problems: &[String], what: &str) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------
// The error table

/// One row of the errors chapter's table, as written.
struct DocRow {
    line: usize,
    status: Option<u16>,
    retry_after: bool,
    proxy_status: Option<String>,
    socks: String,
}

/// The cells of a Markdown table row (`| a | b |`), trimmed; `\|` stays in its cell.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                out.last_mut().expect("one cell").push('|');
                chars.next();
            }
            '|' => out.push(String::new()),
            _ => out.last_mut().expect("one cell").push(c),
        }
    }
    out.iter().map(|cell| cell.trim().to_owned()).collect()
}

/// The first code span of a cell (`` `no_exit` `` -> `no_exit`), or the cell.
fn code_span(cell: &str) -> &str {
    let mut parts = cell.split('`');
    match (parts.next(), parts.next()) {
        (Some(_), Some(inside)) => inside,
        _ => cell,
    }
}

/// The table in `docs/errors.md` whose header starts `| code | HTTP |`, by code.
fn error_table(problems: &mut Vec<String>) -> BTreeMap<String, DocRow> {
    let text = read("docs/errors.md");
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|line| line.starts_with("| code | HTTP |"))
        .expect("docs/errors.md has a table whose header starts `| code | HTTP |`");
    let header = cells(lines[start]);
    let column = |name: &str| {
        header
            .iter()
            .position(|cell| cell == name)
            .unwrap_or_else(|| panic!("the error table has no `{name}` column: {header:?}"))
    };
    let (code, http, proxy_status, socks) = (
        column("code"),
        column("HTTP"),
        column("Proxy-Status error"),
        column("SOCKS5 reply"),
    );
    let mut rows = BTreeMap::new();
    for (index, line) in lines.iter().enumerate().skip(start + 2) {
        if !line.starts_with('|') {
            break;
        }
        let row = cells(line);
        let line_no = index + 1;
        if row.len() != header.len() {
            problems.push(format!(
                "docs/errors.md:{line_no}: {} cells, the header has {}",
                row.len(),
                header.len()
            ));
            continue;
        }
        let name = code_span(&row[code]).to_owned();
        let digits: String = row[http].chars().take_while(char::is_ascii_digit).collect();
        let proxy = match row[proxy_status].as_str() {
            "—" | "-" | "" => None,
            cell => Some(code_span(cell).to_owned()),
        };
        let parsed = DocRow {
            line: line_no,
            status: digits.parse().ok(),
            retry_after: row[http].contains("Retry-After"),
            proxy_status: proxy,
            socks: row[socks].clone(),
        };
        if let Some(earlier) = rows.insert(name.clone(), parsed) {
            problems.push(format!(
                "docs/errors.md:{line_no}: `{name}` is listed twice (also line {})",
                earlier.line
            ));
        }
    }
    rows
}

/// What a SOCKS5 cell says: a reply code to the request, or an answer given
/// before the request (auth status, method), which the SOCKS5 handler picks.
enum SocksCell {
    Reply(u8),
    BeforeRequest,
    Unreadable,
}

fn socks_cell(cell: &str) -> SocksCell {
    let hex = |text: &str| {
        text.strip_prefix("`0x")
            .and_then(|rest| rest.get(..2))
            .and_then(|digits| u8::from_str_radix(digits, 16).ok())
    };
    if let Some(code) = hex(cell) {
        return SocksCell::Reply(code);
    }
    for phase in ["auth status ", "method "] {
        if cell.strip_prefix(phase).and_then(hex).is_some() {
            return SocksCell::BeforeRequest;
        }
    }
    SocksCell::Unreadable
}

#[test]
fn the_error_table_follows_the_codes_presentation() {
    let mut problems = Vec::new();
    let table = error_table(&mut problems);

    // The code's side: one presentation per product code. Two variants may
    // share a code (an invalid target found by the gateway or by the exit),
    // but then they must be presented alike, or one table row cannot say both.
    let mut presented: BTreeMap<&'static str, (ProxyError, bool)> = BTreeMap::new();
    for error in ProxyError::examples() {
        let presentation = error.presentation();
        let retry_after = error.retry_after().is_some();
        match presented.get(presentation.code) {
            Some((first, first_retry))
                if first.presentation() != presentation || *first_retry != retry_after =>
            {
                problems.push(format!(
                    "`{}` is presented two ways: {:?} for {first:?}, {:?} for {error:?}",
                    presentation.code,
                    first.presentation(),
                    presentation
                ));
            }
            Some(_) => {}
            None => {
                presented.insert(presentation.code, (error, retry_after));
            }
        }
    }

    for (code, (error, retry_after)) in &presented {
        let presentation = error.presentation();
        let Some(row) = table.get(*code) else {
            problems.push(format!(
                "`{code}` ({error:?}) is missing from docs/errors.md"
            ));
            continue;
        };
        let at = format!("docs/errors.md:{} `{code}`", row.line);
        if row.status != Some(presentation.status) {
            problems.push(format!(
                "{at}: HTTP {:?} in the table, {} in the code",
                row.status, presentation.status
            ));
        }
        if row.retry_after != *retry_after {
            problems.push(format!(
                "{at}: the table {} `Retry-After`, the code {}",
                if row.retry_after {
                    "shows"
                } else {
                    "does not show"
                },
                if *retry_after { "sends it" } else { "does not" }
            ));
        }
        if row.proxy_status.as_deref() != presentation.proxy_status {
            problems.push(format!(
                "{at}: Proxy-Status {:?} in the table, {:?} in the code",
                row.proxy_status, presentation.proxy_status
            ));
        }
        match socks_cell(&row.socks) {
            SocksCell::Reply(reply) if reply != presentation.socks_reply => {
                problems.push(format!(
                    "{at}: SOCKS5 reply {reply:#04x} in the table, {:#04x} in the code",
                    presentation.socks_reply
                ))
            }
            SocksCell::Reply(_) | SocksCell::BeforeRequest => {}
            SocksCell::Unreadable => problems.push(format!(
                "{at}: SOCKS5 cell `{}` is neither a reply code (`0x..`) nor `auth status`/`method` `0x..`",
                row.socks
            )),
        }
    }
    for (code, row) in &table {
        if !presented.contains_key(code.as_str()) {
            problems.push(format!(
                "docs/errors.md:{}: `{code}` is not a code `ProxyError::presentation` gives",
                row.line
            ));
        }
    }
    assert_none(&problems, "docs/errors.md against gateway/src/error.rs");
}

// ---------------------------------------------------------------------------
// Flags

/// The long flags a `--help` text lists (`--help` and `--version` left out),
/// and the subcommands under its `Commands:` heading (`help` left out).
fn help_entries(help: &str) -> (BTreeSet<String>, Vec<String>) {
    let mut flags = BTreeSet::new();
    let mut commands = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        if !line.starts_with(' ') {
            in_commands = line.trim_end() == "Commands:";
            continue;
        }
        let trimmed = line.trim_start();
        if in_commands {
            // `  name  description`: a subcommand starts at the usual indent.
            if let Some(name) = trimmed.split_whitespace().next() {
                if line.len() - trimmed.len() <= 2 && name != "help" {
                    commands.push(name.to_owned());
                }
            }
        } else if trimmed.starts_with('-') {
            let long = trimmed
                .split([' ', ',', '='])
                .find(|token| token.starts_with("--") && token.len() > 2);
            if let Some(flag) = long {
                if flag != "--help" && flag != "--version" {
                    flags.insert(flag.to_owned());
                }
            }
        }
    }
    (flags, commands)
}

/// Whether `text` documents `flag` in a code span: `` `--flag`` followed by
/// anything that cannot continue the name (so `--cooling` is not found in
/// `--cooling-x`).
fn documents(text: &str, flag: &str) -> bool {
    let needle = format!("`{flag}");
    text.match_indices(&needle).any(|(at, _)| {
        text[at + needle.len()..]
            .chars()
            .next()
            .is_none_or(|next| !(next.is_ascii_alphanumeric() || next == '-'))
    })
}

async fn help(binary: &str, args: &[&str]) -> String {
    let finished = Launch::new(binary)
        .args(args)
        .arg("--help")
        .run(HELP_BOUND)
        .await
        .unwrap_or_else(|error| panic!("{binary} {args:?} --help: {error}"));
    assert!(
        finished.status.success(),
        "{binary} {args:?} --help failed: {}",
        finished.stderr
    );
    finished.stdout
}

/// Checks every flag of `binary --help` (and of each subcommand's) against
/// `chapter`; subcommands must be named there as `` `NAME SUBCOMMAND``.
async fn flags_documented(binary: &str, name: &str, chapter: &str) {
    let text = read(chapter);
    let (flags, commands) = help_entries(&help(binary, &[]).await);
    assert!(
        flags.len() > 5,
        "{name} --help lists only {flags:?}: the parser no longer reads clap's output"
    );
    let mut problems: Vec<String> = flags
        .iter()
        .filter(|flag| !documents(&text, flag))
        .map(|flag| format!("`{name} {flag}` is not in {chapter}"))
        .collect();
    for command in &commands {
        if !text.contains(&format!("`{name} {command}")) {
            problems.push(format!("`{name} {command}` is not in {chapter}"));
        }
        let (sub_flags, _) = help_entries(&help(binary, &[command]).await);
        problems.extend(
            sub_flags
                .iter()
                .filter(|flag| !documents(&text, flag))
                .map(|flag| format!("`{name} {command} {flag}` is not in {chapter}")),
        );
    }
    assert_none(&problems, &format!("{name} --help against {chapter}"));
}

#[tokio::test]
async fn every_gateway_flag_is_in_the_operators_chapter() {
    flags_documented(
        env!("CARGO_BIN_EXE_gateway"),
        "gateway",
        "docs/operators.md",
    )
    .await;
}

#[tokio::test]
async fn every_agent_flag_is_in_the_volunteers_chapter() {
    flags_documented(env!("CARGO_BIN_EXE_agent"), "agent", "docs/volunteers.md").await;
}

#[test]
fn the_help_parser_reads_flags_and_subcommands() {
    let help = "\
The exitpool gateway

Usage: gateway [OPTIONS] [COMMAND]

Commands:
  hash-password  Read a customer password
  pin            Print the certificate pin
  help           Print this message

Options:
      --listen <LISTEN>
          Customer port, see also --tunnel [default: 127.0.0.1:8080]
      --cooling <COOLING>
  -h, --help
          Print help
  -V, --version
";
    let (flags, commands) = help_entries(help);
    assert_eq!(
        flags,
        BTreeSet::from(["--cooling".to_owned(), "--listen".to_owned()])
    );
    assert_eq!(commands, ["hash-password", "pin"]);
    assert!(documents("| `--cooling SECS` |", "--cooling"));
    assert!(!documents("| `--cooling-x` |", "--cooling"));
    assert!(!documents("--cooling without a code span", "--cooling"));
}

// ---------------------------------------------------------------------------
// Links

/// GitHub's anchor for a heading: lowercase, punctuation other than `-` and
/// `_` dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Text outside fenced code blocks, with inline code spans blanked: links
/// inside code are not links.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            out.push('\n');
            continue;
        }
        if !fenced {
            let mut in_code = false;
            for c in line.chars() {
                if c == '`' {
                    in_code = !in_code;
                }
                out.push(if in_code || c == '`' { ' ' } else { c });
            }
        }
        out.push('\n');
    }
    out
}

/// The anchors a Markdown file's headings give, as GitHub numbers repeats.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if fenced || !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let count = seen.entry(base.clone()).or_default();
        out.insert(if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    out
}

/// Every inline link target in `text`'s prose: `[label](target)`.
fn link_targets(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut out = Vec::new();
    let mut rest = prose.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].trim().to_owned());
            rest = &rest[end..];
        }
    }
    out
}

/// `README.md` and every `docs/*.md`, relative to the root.
fn manual_files() -> Vec<String> {
    let mut files = vec!["README.md".to_owned()];
    let docs = std::fs::read_dir(root().join("docs")).expect("docs/ exists");
    let mut chapters: Vec<String> = docs
        .map(|entry| entry.expect("a docs/ entry").file_name())
        .filter_map(|name| name.to_str().map(str::to_owned))
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    chapters.sort();
    files.extend(chapters);
    files
}

/// `path` relative to the root, with `.` and `..` resolved; `None` if it
/// leaves the repository.
fn resolve(from: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = Path::new(from)
        .parent()
        .map(|dir| dir.to_str().expect("UTF-8 path").split('/').collect())
        .unwrap_or_default();
    parts.retain(|part| !part.is_empty());
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            _ => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

#[test]
fn every_link_between_chapters_resolves() {
    let mut problems = Vec::new();
    let mut not_yet_written = BTreeSet::new();
    let mut checked = 0;
    for file in manual_files() {
        for target in link_targets(&read(&file)) {
            // Absolute URLs and mail are the web's business.
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                Some(file.clone())
            } else {
                resolve(&file, path)
            };
            let Some(resolved) = resolved else {
                problems.push(format!("{file}: `{target}` leaves the repository"));
                continue;
            };
            let on_disk = root().join(&resolved);
            if !on_disk.exists() {
                if CHAPTERS_WRITTEN_ELSEWHERE.contains(&resolved.as_str()) {
                    not_yet_written.insert(resolved);
                } else {
                    problems.push(format!("{file}: `{target}`: {resolved} does not exist"));
                }
                continue;
            }
            if let Some(anchor) = anchor {
                if !resolved.ends_with(".md") {
                    problems.push(format!(
                        "{file}: `{target}`: an anchor into a non-Markdown file"
                    ));
                } else if !anchors(&read(&resolved)).contains(anchor) {
                    problems.push(format!(
                        "{file}: `{target}`: {resolved} has no heading `#{anchor}`"
                    ));
                }
            }
        }
    }
    if !not_yet_written.is_empty() {
        eprintln!(
            "links to chapters not written yet (allowed until they exist): {not_yet_written:?}"
        );
    }
    assert!(
        checked > 50,
        "only {checked} relative links found: the link reader is broken"
    );
    assert_none(&problems, "links in README.md and docs/");
}

#[test]
fn the_table_of_contents_reaches_every_chapter() {
    let toc: BTreeSet<String> = link_targets(&read("docs/README.md"))
        .iter()
        .filter_map(|target| resolve("docs/README.md", target.split('#').next()?))
        .collect();
    let problems: Vec<String> = manual_files()
        .into_iter()
        .filter(|file| file.starts_with("docs/") && file != "docs/README.md")
        .filter(|file| !toc.contains(file))
        .map(|file| format!("{file} is not linked from docs/README.md"))
        .collect();
    assert_none(&problems, "the table of contents");
    for chapter in CHAPTERS_WRITTEN_ELSEWHERE {
        assert!(
            toc.contains(chapter),
            "docs/README.md does not link {chapter}"
        );
    }
}

#[test]
fn the_link_checker_knows_githubs_anchors() {
    assert_eq!(
        slug(" Entry ports (`--entry-ports FILE`)"),
        "entry-ports---entry-ports-file"
    );
    assert_eq!(slug(" Usage, metrics and logs"), "usage-metrics-and-logs");
    assert_eq!(
        slug(" Why HTTP/2 (h2) and not yamux"),
        "why-http2-h2-and-not-yamux"
    );
    let text = "# A\n```\n# not a heading\n```\n## A\n#2089 is not one either\n";
    assert_eq!(
        anchors(text),
        BTreeSet::from(["a".to_owned(), "a-1".to_owned()])
    );
    assert_eq!(
        link_targets("[x](a.md#b) `[y](code.md)` [z](../c.md)"),
        ["a.md#b", "../c.md"]
    );
    assert_eq!(
        resolve("docs/x.md", "../README.md").as_deref(),
        Some("README.md")
    );
    assert_eq!(resolve("README.md", "../outside.md"), None);
}

// ---------------------------------------------------------------------------
// Dependencies

/// The dependencies a `Cargo.toml` names in its `[*dependencies]` sections
/// (`name = ...` and `name.workspace = true`), the workspace's own crates left out.
fn dependencies(manifest: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_dependencies = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line.trim_end_matches(']').ends_with("dependencies");
            continue;
        }
        if !in_dependencies || line.starts_with('#') {
            continue;
        }
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            .collect();
        if !name.is_empty() && !name.starts_with("exitpool") {
            out.insert(name);
        }
    }
    out
}

/// Every manifest of the workspace: the root, each member, and `fuzz/` (a
/// workspace of its own).
fn manifests() -> Vec<String> {
    let root_manifest = read("Cargo.toml");
    let members = root_manifest
        .split_once("members")
        .and_then(|(_, rest)| rest.split_once('['))
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
        .expect("the workspace lists its members");
    let mut out = vec!["Cargo.toml".to_owned(), "fuzz/Cargo.toml".to_owned()];
    out.extend(
        members
            .split(',')
            .map(|member| member.trim().trim_matches('"'))
            .filter(|member| !member.is_empty())
            .map(|member| format!("{member}/Cargo.toml")),
    );
    out
}

#[test]
fn the_readme_says_why_each_dependency_is_there() {
    let readme = read("README.md");
    let section = readme
        .split_once("## Dependencies and why")
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or(rest))
        .expect("README.md has a `## Dependencies and why` section");
    let mut problems = Vec::new();
    let mut seen = 0;
    for manifest in manifests() {
        for dependency in dependencies(&read(&manifest)) {
            seen += 1;
            let named = section.match_indices(dependency.as_str()).any(|(at, _)| {
                let before = section[..at].chars().next_back();
                let after = section[at + dependency.len()..].chars().next();
                let part = |c: Option<char>| {
                    c.is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
                };
                !part(before) && !part(after)
            });
            if !named {
                problems.push(format!(
                    "{manifest}: `{dependency}` is not in the README's \"Dependencies and why\""
                ));
            }
        }
    }
    assert!(
        seen > 30,
        "only {seen} dependencies read: the manifest reader is broken"
    );
    assert_none(&problems, "README.md's dependency list");
}

#[test]
fn the_manifest_reader_reads_every_dependency_form() {
    let manifest = "[package]\nname = \"x\"\n[dependencies]\n# a comment\ntokio.workspace = true\nring = \"0.17\"\nexitpool-agent = { path = \"agent\" }\n[dev-dependencies]\nproptest = \"1\"\n[profile.dev]\nopt-level = 3\n";
    assert_eq!(
        dependencies(manifest),
        BTreeSet::from(["proptest".to_owned(), "ring".to_owned(), "tokio".to_owned()])
    );
}

// ---------------------------------------------------------------------------
// The README

#[test]
fn the_readme_is_a_first_screen_with_both_set_up_commands() {
    let readme = read("README.md");
    assert!(
        readme.len() < README_MAX_BYTES,
        "README.md is {} bytes; keep it under {README_MAX_BYTES} and move detail into docs/",
        readme.len()
    );
    let first: Vec<&str> = readme.lines().take(FIRST_SCREEN_LINES).collect();
    let has_line = |prefix: &str| {
        first
            .iter()
            .any(|line| line.trim_start().starts_with(prefix))
    };
    assert!(
        has_line("cargo run --bin gateway -- --demo"),
        "README.md's first {FIRST_SCREEN_LINES} lines lack `cargo run --bin gateway -- --demo`"
    );
    assert!(
        has_line("scripts/test"),
        "README.md's first {FIRST_SCREEN_LINES} lines lack `scripts/test`"
    );
    assert!(
        first.join("\n").contains("`cargo test --workspace`"),
        "README.md's first {FIRST_SCREEN_LINES} lines do not say scripts/test runs `cargo test --workspace`"
    );
}
