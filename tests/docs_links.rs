//! The repository's documents and sources point only inside the repository, and their
//! relative links lead somewhere.
//!
//! Walks the repository from its root (skipping `target/`, `runs/` and hidden
//! directories other than `.ci/`: build outputs, training runs, git and virtual
//! environments) and reads every Markdown, Rust, Python, shell, CUDA and TOML file, and
//! every script that starts with `#!`. It fails, naming `file:line` for each problem,
//! when
//!
//! - any of them names a path outside the repository: the sibling directory of shared
//!   notes reached with `..`, or the absolute path of the machine the project was
//!   written on (users of the repository have neither);
//! - a Markdown link or image, inline `[text](target)` or a `[label]: target`
//!   definition, is relative (not `http:`, `https:` or `mailto:`) and its target leaves
//!   the repository, does not exist, or names a `#section` of a Markdown file that has
//!   no such heading (anchors are made from headings the way GitHub makes them).
//!
//! Code blocks and inline code in Markdown are not read for links, so examples may show
//! any syntax.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

/// Fragments that only a path outside the repository contains. Written as two literals
/// each so that this file does not match itself.
const OUTSIDE: [&str; 2] = [concat!("..", "/shared"), concat!("/wo", "rk/")];

/// Extensions of the files read.
const EXTENSIONS: [&str; 8] = ["md", "rs", "py", "sh", "cu", "cuh", "toml", "txt"];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file to read under `dir`, sorted.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() {
            let skipped =
                name == "target" || name == "runs" || (name.starts_with('.') && name != ".ci");
            if !skipped {
                files_under(&path, out);
            }
        } else if path.is_file() && is_read(&path) {
            out.push(path);
        }
    }
}

fn is_read(path: &Path) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) => EXTENSIONS.contains(&ext),
        None => std::fs::read(path).is_ok_and(|bytes| bytes.starts_with(b"#!")),
    }
}

/// `path` relative to the repository root, for messages.
fn shown(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// `path` with `.` and `..` resolved without touching the file system; `None` when it
/// climbs above its first component.
fn normalised(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            other => out.push(other),
        }
    }
    Some(out)
}

/// The Markdown text of `line` outside inline code spans.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The link targets of one line of Markdown prose: inline links and images
/// `[text](target "title")` and reference definitions `[label]: target`.
fn link_targets(line: &str) -> Vec<String> {
    let text = without_code_spans(line);
    let mut targets = Vec::new();
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        if let Some(end) = trimmed.find("]:") {
            if let Some(target) = trimmed[end + 2..].split_whitespace().next() {
                targets.push(target.to_string());
            }
        }
    }
    let mut rest = text.as_str();
    while let Some(start) = rest.find("](") {
        let after = &rest[start + 2..];
        // The target runs to the parenthesis that closes this one.
        let mut depth = 0usize;
        let end = after
            .char_indices()
            .find(|&(_, c)| match c {
                '(' => {
                    depth += 1;
                    false
                }
                ')' if depth == 0 => true,
                ')' => {
                    depth -= 1;
                    false
                }
                _ => false,
            })
            .map_or(after.len(), |(i, _)| i);
        let inner = after[..end].trim();
        let target = inner.split_whitespace().next().unwrap_or("");
        targets.push(target.trim_matches(|c| c == '<' || c == '>').to_string());
        rest = &after[end..];
    }
    targets
}

/// The anchors GitHub gives the headings of a Markdown text: the heading's text without
/// inline code marks and link targets, lower-cased, stripped of every character but
/// letters, digits, spaces, `-` and `_`, spaces turned into `-`; a repeated anchor gets
/// `-1`, `-2`, ….
fn heading_anchors(text: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if in_fence || hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let mut heading = line[hashes..].trim().to_string();
        // [text](target) reads as its text.
        while let (Some(open), Some(mid)) = (heading.find('['), heading.find("](")) {
            let Some(close) = heading[mid..].find(')').map(|i| mid + i) else {
                break;
            };
            if open > mid {
                break;
            }
            heading = format!(
                "{}{}{}",
                &heading[..open],
                &heading[open + 1..mid],
                &heading[close + 1..]
            );
        }
        let base: String = heading
            .to_lowercase()
            .chars()
            .filter(|&c| c.is_alphanumeric() || c == ' ' || c == '-' || c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let seen = counts.entry(base.clone()).or_insert(0);
        anchors.insert(match *seen {
            0 => base,
            n => format!("{base}-{n}"),
        });
        *seen += 1;
    }
    anchors
}

/// The problems of one relative link `target` in the Markdown file `file`.
fn check_link(file: &Path, target: &str, root: &Path) -> Option<String> {
    let (path_part, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let resolved = if path_part.is_empty() {
        file.to_path_buf()
    } else if let Some(from_root) = path_part.strip_prefix('/') {
        root.join(from_root)
    } else {
        file.parent().unwrap().join(path_part)
    };
    let inside = resolved
        .strip_prefix(root)
        .ok()
        .and_then(normalised)
        .map(|relative| root.join(relative));
    let Some(resolved) = inside else {
        return Some(format!("link `{target}` leaves the repository"));
    };
    if !resolved.exists() {
        return Some(format!("link `{target}`: no such file or directory"));
    }
    let anchor = anchor.filter(|a| !a.is_empty())?;
    if resolved.extension().and_then(|e| e.to_str()) != Some("md") {
        return None;
    }
    let text = std::fs::read_to_string(&resolved).ok()?;
    (!heading_anchors(&text).contains(anchor)).then(|| {
        format!(
            "link `{target}`: {} has no heading with the anchor `#{anchor}`",
            shown(&resolved)
        )
    })
}

/// Every problem of one file, as `file:line: what`.
fn problems_of(file: &Path, root: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let is_markdown = file.extension().and_then(|e| e.to_str()) == Some("md");
    let mut problems = Vec::new();
    let mut in_fence = false;
    for (i, line) in text.lines().enumerate() {
        let at = format!("{}:{}", shown(file), i + 1);
        for fragment in OUTSIDE {
            if line.contains(fragment) {
                problems.push(format!(
                    "{at}: `{fragment}` names a path outside the repository"
                ));
            }
        }
        if !is_markdown {
            continue;
        }
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        for target in link_targets(line) {
            let external = ["http://", "https://", "mailto:"]
                .iter()
                .any(|scheme| target.starts_with(scheme));
            if target.is_empty() || external {
                continue;
            }
            if let Some(problem) = check_link(file, &target, root) {
                problems.push(format!("{at}: {problem}"));
            }
        }
    }
    problems
}

#[test]
fn documents_and_sources_point_only_inside_the_repository() {
    let root = repo_root();
    let mut files = Vec::new();
    files_under(&root, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("README.md")),
        "the walk found no README.md under {}",
        root.display()
    );
    let problems: Vec<String> = files.iter().flat_map(|f| problems_of(f, &root)).collect();
    assert!(
        problems.is_empty(),
        "{} broken or outside reference(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

#[test]
fn the_link_reader_finds_what_the_check_needs() {
    let targets = link_targets(
        "see [a](docs/a.md#x) and ![img](img/p.png \"title\"), not `[code](here)`, \
         [f(x)](b.md)",
    );
    assert_eq!(targets, ["docs/a.md#x", "img/p.png", "b.md"]);
    assert_eq!(link_targets("[label]: ../up.md"), ["../up.md"]);
    let anchors = heading_anchors(
        "# Top\n## `Dit` (`dit.rs`)\n```\n# not a heading\n```\n## Top\n### The [GPU](gpu.md) — notes\n",
    );
    let expected = ["dit-ditrs", "the-gpu--notes", "top", "top-1"];
    assert_eq!(anchors.into_iter().collect::<Vec<_>>(), expected);
}
