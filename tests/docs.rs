//! The documentation stays true to the code.

#[test]
fn example_config_in_docs_is_the_one_the_code_validates() {
    let doc = std::fs::read_to_string("docs/config.example.toml").unwrap();
    assert_eq!(
        doc,
        chat_zinx::config::EXAMPLE_TOML,
        "regenerate docs/config.example.toml from config::EXAMPLE_TOML"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &doc).unwrap();
    chat_zinx::config::check_file(&path).expect("the example is valid");
}

#[test]
fn every_config_key_is_documented_with_its_variable() {
    let doc = std::fs::read_to_string("docs/configuration.md").unwrap();
    for k in chat_zinx::config::KEYS {
        assert!(
            doc.contains(&format!("`{}`", k.key)),
            "docs/configuration.md lacks {}",
            k.key
        );
        let var = chat_zinx::config::env_var_name(k.key);
        assert!(doc.contains(&var), "docs/configuration.md lacks {var}");
    }
}

#[test]
fn readme_test_command_is_what_ci_runs() {
    let ci = std::fs::read_to_string(".ci/run").unwrap();
    let readme = std::fs::read_to_string("README.md").unwrap();
    assert!(ci.contains("exec scripts/test"));
    assert!(
        readme.contains("\nscripts/test\n"),
        "the README shows scripts/test as a command"
    );
    assert!(readme.contains("\ncargo run --release\n"));
}

/// The files of the repository: `git ls-files` in a git checkout; elsewhere (the Nix build
/// sandbox has no `.git`) every file under the crate root but build output and local state.
fn repository_files() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if root.join(".git").exists() {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["ls-files", "-z"])
            .output();
        if let Ok(out) = out {
            if out.status.success() {
                return out
                    .stdout
                    .split(|b| *b == 0)
                    .filter(|p| !p.is_empty())
                    .map(|p| std::path::PathBuf::from(String::from_utf8_lossy(p).into_owned()))
                    .collect();
            }
        }
    }
    fn walk(root: &std::path::Path, rel: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        const SKIP: [&str; 6] = [".git", "target", "state", ".terraform", ".direnv", "result"];
        let Ok(entries) = std::fs::read_dir(root.join(rel)) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let path = rel.join(&name);
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if !SKIP.iter().any(|s| name == *s) {
                    walk(root, &path, out);
                }
            } else if kind.is_file() {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(root, std::path::Path::new(""), &mut files);
    files
}

/// The protocol reference is `docs/protocol.md`: nothing may send a reader to protocol
/// documents that are not in the repository.
#[test]
fn no_file_points_at_protocol_documents_outside_the_repository() {
    // Built from pieces, so that this file does not match itself.
    let needles = [
        concat!("PROTOCOL", ".md"),
        concat!("original", "-wire"),
        concat!("..", "/shared"),
    ];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let this_file = std::path::Path::new(file!());
    let files = repository_files();
    assert!(
        files
            .iter()
            .any(|f| f == std::path::Path::new("docs/protocol.md")),
        "the file list is wrong: {} files, no docs/protocol.md",
        files.len()
    );
    let mut found = Vec::new();
    for file in &files {
        if file == this_file {
            continue;
        }
        let Ok(bytes) = std::fs::read(root.join(file)) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for (n, line) in text.lines().enumerate() {
            for needle in needles {
                if line.contains(needle) {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "these lines point at protocol documents outside the repository; point them at the \
         sections of docs/protocol.md instead:\n{}",
        found.join("\n")
    );
}

/// Every `pub const NAME: u32 = N;` of `src/protocol/ids.rs` has a row `| N | `NAME` | …` in
/// the id table of `docs/protocol.md` (§3.1), and every row names a real constant.
#[test]
fn every_message_id_is_in_the_protocol_id_table() {
    let ids_rs = std::fs::read_to_string("src/protocol/ids.rs").unwrap();
    let consts: Vec<(String, u32)> = ids_rs
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("pub const ")?;
            let (name, value) = rest.split_once(": u32 = ")?;
            let value = value.strip_suffix(';')?.trim().parse().ok()?;
            Some((name.to_string(), value))
        })
        .collect();
    assert!(
        consts.len() >= 40,
        "read only {} constants from src/protocol/ids.rs",
        consts.len()
    );
    for (name, value) in &consts {
        assert_ne!(
            chat_zinx::protocol::ids::name(*value),
            "unknown",
            "{name} = {value} is not an id the code knows"
        );
    }

    let doc = std::fs::read_to_string("docs/protocol.md").unwrap();
    let start = doc
        .find("<a id=\"s3.1\"></a>")
        .expect("docs/protocol.md has §3.1");
    let end = doc[start..]
        .find("<a id=\"s3.2\"></a>")
        .map_or(doc.len(), |e| start + e);
    let rows: Vec<Vec<&str>> = doc[start..end]
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    for (name, value) in &consts {
        let value = value.to_string();
        let constant = format!("`{name}`");
        assert!(
            rows.iter()
                .any(|cells| cells.len() > 2 && cells[0] == value && cells[1] == constant),
            "docs/protocol.md §3.1 has no row `| {value} | {constant} | …`"
        );
    }
    for cells in &rows {
        let Some(constant) = cells
            .get(1)
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
        else {
            continue;
        };
        assert!(
            consts
                .iter()
                .any(|(name, value)| name == constant && cells[0].parse() == Ok(*value)),
            "docs/protocol.md §3.1 lists {constant} = {}, which src/protocol/ids.rs does not define",
            cells[0]
        );
    }
}
