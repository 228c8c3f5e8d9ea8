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

/// The cells of the rows of the Markdown table whose header line is `header`.
fn table_rows(doc: &str, file: &str, header: &str) -> Vec<Vec<String>> {
    let start = doc
        .find(&format!("\n{header}\n"))
        .unwrap_or_else(|| panic!("{file} has no table with the header {header}"));
    doc[start + 1..]
        .lines()
        .skip(2) // the header and the |---| line
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// The code spans (`…`) of a cell.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// What the "applies" column says of a key of the table.
fn applies(k: &chat_zinx::config::KeyInfo) -> &'static str {
    match (k.reloadable, k.live.is_some()) {
        (_, true) => "reload, live",
        (true, false) => "reload",
        (false, false) => "restart",
    }
}

/// docs/configuration.md has one row per key of `config::KEYS`, in its order, with the key's
/// environment variable, its default (read back through the daemon's own parsing) and when a
/// changed value applies (`restart`, `reload`, `reload, live`) as the table declares it; its
/// live-settings table lists the table's live keys.
#[test]
fn every_config_key_is_documented_with_its_variable_default_and_when_it_applies() {
    use chat_zinx::config::{env_var_name, live::live_keys, load_from, Config, KEYS};
    const FILE: &str = "docs/configuration.md";
    let doc = std::fs::read_to_string(FILE).unwrap();
    for k in KEYS {
        assert!(
            doc.contains(&format!("`{}`", k.key)),
            "{FILE} lacks {}",
            k.key
        );
        let var = env_var_name(k.key);
        assert!(doc.contains(&var), "{FILE} lacks {var}");
    }

    let rows = table_rows(
        &doc,
        FILE,
        "| key | environment | default | applies | meaning |",
    );
    let documented: Vec<String> = rows.iter().map(|r| r[0].replace('`', "")).collect();
    let keys: Vec<&str> = KEYS.iter().map(|k| k.key).collect();
    assert_eq!(
        documented, keys,
        "the key table of {FILE} has one row per key of config::KEYS (src/config/keys.rs), in \
         its order"
    );
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    for (row, k) in rows.iter().zip(KEYS) {
        assert_eq!(row.len(), 5, "{FILE}: the row of {} has not 5 cells", k.key);
        let var = env_var_name(k.key);
        assert_eq!(
            row[1],
            format!("`{var}`"),
            "{FILE}: the variable of {}",
            k.key
        );
        assert_eq!(
            row[3],
            applies(k),
            "{FILE}: the row of {} says it applies on {:?}; config::KEYS says {:?}",
            k.key,
            row[3],
            applies(k)
        );
        let (section, leaf) = k.key.split_once('.').unwrap();
        match defaults[section].get(leaf) {
            // The documented default, given to the daemon, is its built-in default.
            Some(default) => {
                let written = *code_spans(&row[2]).first().unwrap_or_else(|| {
                    panic!("{FILE}: the default of {} is not written as `value`", k.key)
                });
                let set = load_from(None, [(var.clone(), written.to_string())])
                    .unwrap_or_else(|e| panic!("{FILE}: the default of {}: {e}", k.key));
                let set = toml::Table::try_from(set).unwrap();
                assert_eq!(
                    set[section].get(leaf),
                    Some(default),
                    "{FILE}: the default of {} is {written}, the daemon's is {default}",
                    k.key
                );
            }
            // Optional: the cell says what unset means.
            None => assert!(!row[2].is_empty(), "{FILE}: {} has no default", k.key),
        }
    }

    let live = table_rows(&doc, FILE, "| KV key | overrides | applies to |");
    let documented: Vec<(String, String)> = live
        .iter()
        .map(|r| (r[0].replace('`', ""), r[1].replace('`', "")))
        .collect();
    let declared: Vec<(String, String)> = live_keys()
        .map(|(info, k)| (k.key.to_string(), info.key.to_string()))
        .collect();
    assert_eq!(
        documented, declared,
        "the live settings of {FILE} are the `live` entries of config::KEYS, in its order"
    );
}

/// The reload table of docs/operations.md says which keys a SIGHUP applies as the key table
/// does (`section.*` stands for every key of the section).
#[test]
fn the_reload_table_of_operations_is_the_reloadable_keys() {
    use chat_zinx::config::{KEYS, RELOADABLE_KEYS};
    const FILE: &str = "docs/operations.md";
    let doc = std::fs::read_to_string(FILE).unwrap();
    let rows = table_rows(&doc, FILE, "| applied live | need a restart |");
    assert_eq!(rows.len(), 1, "{FILE}: the reload table has one row");
    let expand = |cell: &str| -> Vec<&'static str> {
        let mut out = Vec::new();
        for span in code_spans(cell) {
            let matching: Vec<&'static str> = match span.strip_suffix(".*") {
                Some(section) => KEYS
                    .iter()
                    .map(|k| k.key)
                    .filter(|k| k.split_once('.').is_some_and(|(s, _)| s == section))
                    .collect(),
                None => KEYS.iter().map(|k| k.key).filter(|k| *k == span).collect(),
            };
            assert!(!matching.is_empty(), "{FILE}: `{span}` names no key");
            out.extend(matching);
        }
        out
    };
    let mut applied = expand(&rows[0][0]);
    applied.sort_unstable();
    let mut reloadable = RELOADABLE_KEYS.to_vec();
    reloadable.sort_unstable();
    assert_eq!(
        applied, reloadable,
        "{FILE}: the keys a reload applies are the `reloadable` entries of config::KEYS"
    );
    for key in expand(&rows[0][1]) {
        assert!(
            !RELOADABLE_KEYS.contains(&key),
            "{FILE} says {key} needs a restart; config::KEYS marks it reloadable"
        );
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
                // The one path outside the repository: CI's optional copy of the RustSec
                // advisory database, used by `cargo audit` when it exists.
                let advisory_db = concat!("..", "/shared/advisory-db");
                if file == std::path::Path::new(".ci/run")
                    && line.replace(advisory_db, "").find(needle).is_none()
                {
                    continue;
                }
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
