//! The architecture, enforced: each top-level module of `src/` may import only the modules
//! the table below allows (ports and adapters, dependencies pointing inwards). A `use` (or
//! any `crate::x` path in code) against these directions fails this test, naming the file,
//! the line and the rule.
//!
//! Why a test over the source instead of a Cargo workspace: one crate keeps one build and
//! one set of test binaries on a 2-core machine, and the rules read as one table here.
//! `docs/architecture.md` draws the same table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level module → the other top-level modules it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    // The inside: depends on nothing else of the crate.
    ("core", &[]),
    ("protocol", &[]),
    ("config", &[]),
    // Adapters of the core's ports.
    ("backend", &["core"]),
    // Logs and metrics (also around the ports).
    ("telemetry", &["core", "config"]),
    // The wire adapter.
    ("server", &["core", "protocol", "telemetry"]),
    // The composition root and the operations side.
    (
        "node",
        &[
            "core",
            "protocol",
            "config",
            "backend",
            "telemetry",
            "server",
        ],
    ),
    // Tools beside the daemon.
    ("client", &["protocol"]),
    ("harness", &[]),
    (
        "bench",
        &["core", "protocol", "backend", "server", "harness"],
    ),
];

/// The crate's top-level modules a source text refers to through `crate::NAME` (comments
/// left out: a doc link is not a dependency).
fn crate_refs(source: &str) -> Vec<(usize, String)> {
    let mut refs = Vec::new();
    for (n, line) in source.lines().enumerate() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            // `chat_zinx::crate::` cannot occur; `$crate::` is a macro's own crate.
            let before = &rest[..i];
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let is_path_start =
                !before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$');
            if is_path_start && !name.is_empty() {
                refs.push((n + 1, name));
            }
            rest = after;
        }
        // `use crate::{a, b}` names several modules at once.
        if let Some(i) = code.find("crate::{") {
            let group = &code[i + "crate::{".len()..];
            let group = group.split('}').next().unwrap_or("");
            for part in group.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    refs.push((n + 1, name));
                }
            }
        }
    }
    refs
}

/// Every violation in the files of `src` (path relative to `src`, source text).
fn violations(files: &[(PathBuf, String)]) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut out = Vec::new();
    for (path, source) in files {
        let Some(top) = top_module(path) else {
            continue; // lib.rs, main.rs: the roots may use everything
        };
        let Some(may) = allowed.get(top.as_str()) else {
            out.push(format!(
                "src/{}: the module `{top}` has no row in ALLOWED (tests/architecture.rs); add one",
                path.display()
            ));
            continue;
        };
        for (line, name) in crate_refs(source) {
            if name == top || !allowed.contains_key(name.as_str()) && !is_module(files, &name) {
                continue; // itself, or a crate-root item that is not a module
            }
            if !may.contains(&name.as_str()) {
                out.push(format!(
                    "src/{}:{line}: `{top}` must not depend on `{name}` (allowed: {})",
                    path.display(),
                    if may.is_empty() {
                        "nothing else of the crate".to_string()
                    } else {
                        may.join(", ")
                    }
                ));
            }
        }
        if source.contains("super::super::") && path.components().count() <= 2 {
            out.push(format!(
                "src/{}: `super::super::` leaves the module `{top}`; name the module with `crate::`",
                path.display()
            ));
        }
    }
    out
}

/// `core/service.rs` → `core`, `config/mod.rs` → `config`, `lib.rs` → none.
fn top_module(path: &Path) -> Option<String> {
    let mut parts = path.components();
    let first = parts.next()?.as_os_str().to_str()?.to_string();
    if parts.next().is_some() {
        Some(first)
    } else {
        match first.strip_suffix(".rs")? {
            "lib" | "main" => None,
            name => Some(name.to_string()),
        }
    }
}

fn is_module(files: &[(PathBuf, String)], name: &str) -> bool {
    files
        .iter()
        .any(|(p, _)| top_module(p).as_deref() == Some(name))
}

fn sources(dir: &Path, base: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, base, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("a source file");
            out.push((path.strip_prefix(base).unwrap().to_path_buf(), text));
        }
    }
}

#[test]
fn every_module_depends_only_in_the_allowed_directions() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&base, &base, &mut files);
    assert!(files.len() > 40, "the whole source tree was read");
    let bad = violations(&files);
    assert!(
        bad.is_empty(),
        "imports against the architecture (docs/architecture.md):\n{}",
        bad.join("\n")
    );
}

/// Modules whose errors are typed (`thiserror`): `anyhow` is for the edges only (the
/// composition root, the tools, `main`), where an error becomes a message for a person.
const TYPED_ERRORS: &[&str] = &[
    "core",
    "protocol",
    "config",
    "backend",
    "server",
    "telemetry",
];

#[test]
fn the_inside_has_typed_errors_only() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&base, &base, &mut files);
    let bad: Vec<String> = files
        .iter()
        .filter(|(p, _)| top_module(p).is_some_and(|m| TYPED_ERRORS.contains(&m.as_str())))
        .filter(|(_, text)| {
            text.lines()
                .any(|l| !l.trim_start().starts_with("//") && l.contains("anyhow"))
        })
        .map(|(p, _)| format!("src/{}", p.display()))
        .collect();
    assert!(
        bad.is_empty(),
        "anyhow in a module with typed errors (use a thiserror enum): {bad:?}"
    );
}

#[test]
fn the_check_catches_a_wrong_way_import() {
    let file = |path: &str, text: &str| (PathBuf::from(path), text.to_string());
    let files = vec![
        file("core/service.rs", "use crate::backend::nats::NatsStore;\n"),
        file(
            "core/model.rs",
            "// see crate::server, a comment\nuse crate::core::x;\n",
        ),
        file(
            "protocol/messages.rs",
            "use crate::{core::model::User, protocol::ids};\n",
        ),
        file(
            "server/hub.rs",
            "fn f() { crate::core::ports::Store::x(); }\n",
        ),
        file("backend/nats.rs", "use crate::config::NatsConfig;\n"),
        file("config/mod.rs", "fn f() -> usize { 1 }\n"),
        file("lib.rs", "pub mod core; use crate::server::x;\n"),
    ];
    let bad = violations(&files);
    assert_eq!(bad.len(), 3, "{bad:#?}");
    assert!(bad[0].starts_with("src/core/service.rs:1: `core` must not depend on `backend`"));
    assert!(bad[1].starts_with("src/protocol/messages.rs:1: `protocol` must not depend on `core`"));
    assert!(bad[2].starts_with("src/backend/nats.rs:1: `backend` must not depend on `config`"));
}
