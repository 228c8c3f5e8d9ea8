//! The NixOS module (nix/module.nix) writes the daemon's configuration file; these tests check,
//! without Nix, that the daemon accepts what it writes, and that its unit keeps the hardening of
//! systemd/chat-zinx.service.
//!
//! * The module's typed settings come from nix/settings.toml. Their defaults, and then their
//!   examples, are rendered into a TOML file as the module renders them (unset options left
//!   out) and checked with `chat-zinx config --check`, the command the module also runs at
//!   build time. Defaults must be the daemon's own.
//! * Every key written with a dotted path, `settings.<section>.<key> = …`, in the Nix files
//!   (the module, the VM test, the images, the flake) must be a key of the daemon, and in the
//!   module a typed option (so that its value is checked above). Other services' settings in
//!   these files (NATS, Redis) are written as nested sets, which this scan leaves alone.
//! * Every key of the daemon (`config::KEYS`) is either a typed option in nix/settings.toml or
//!   listed in [`UNTYPED`] with the reason it has none, so that a new key is a decision.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use chat_zinx::config::{Config, KEYS};

const SETTINGS: &str = "nix/settings.toml";
const MODULE: &str = "nix/module.nix";
const UNIT: &str = "systemd/chat-zinx.service";

/// What nix/module.nix's `settingType` knows.
const TYPES: &[&str] = &[
    "address", "hostport", "string", "duration", "positive", "unsigned", "enum", "abspath",
];

struct Spec {
    key: String,
    ty: String,
    default: Option<toml::Value>,
    example: toml::Value,
    table: toml::Table,
}

fn specs() -> Vec<Spec> {
    let text = std::fs::read_to_string(SETTINGS).expect("nix/settings.toml");
    let doc: toml::Table = toml::from_str(&text).expect("nix/settings.toml is TOML");
    let mut out = Vec::new();
    for (section, keys) in &doc {
        let keys = keys
            .as_table()
            .unwrap_or_else(|| panic!("{SETTINGS}: [{section}] is not a table"));
        for (key, spec) in keys {
            let name = format!("{section}.{key}");
            let table = spec
                .as_table()
                .unwrap_or_else(|| panic!("{SETTINGS}: [{name}] is not a table"))
                .clone();
            let ty = table
                .get("type")
                .and_then(|t| t.as_str())
                .unwrap_or_else(|| panic!("{SETTINGS}: [{name}] has no type"))
                .to_string();
            let example = table
                .get("example")
                .cloned()
                .unwrap_or_else(|| panic!("{SETTINGS}: [{name}] has no example"));
            out.push(Spec {
                key: name,
                ty,
                default: table.get("default").cloned(),
                example,
                table,
            });
        }
    }
    assert!(!out.is_empty(), "{SETTINGS} declares no option");
    out
}

fn split(key: &str) -> (&str, &str) {
    key.split_once('.').expect("section.key")
}

/// The file the module writes when exactly these keys are set.
fn render(values: &[(&str, toml::Value)]) -> String {
    let mut doc: BTreeMap<String, toml::Table> = BTreeMap::new();
    for (key, value) in values {
        let (section, leaf) = split(key);
        doc.entry(section.to_string())
            .or_default()
            .insert(leaf.to_string(), value.clone());
    }
    toml::to_string(&doc).expect("renders")
}

/// `chat-zinx config --check` on `text`: Ok, or the daemon's complaint.
fn daemon_check(text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat-zinx.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chat-zinx"))
        .arg("config")
        .arg("--check")
        .arg(&path)
        .output()
        .expect("run chat-zinx config --check");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "exit {:?}: {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The daemon's keys without a typed option in nix/settings.toml, and why. They can still be set
/// in `settings` (untyped; the build-time `config --check` checks them) or in `environmentFile`.
const UNTYPED: &[(&str, &str)] = &[
    (
        "server.state_dir",
        "the module gives each instance its StateDirectory=, which the daemon uses when unset; \
         the sandbox lets it write nowhere else",
    ),
    (
        "consul.token",
        "a secret: environmentFile (CHAT_ZINX_CONSUL__TOKEN), never the Nix store",
    ),
    (
        "server.proxy_protocol_from",
        "a list (nix/settings.toml types scalars only): set it untyped, \
         settings.server.proxy_protocol_from = [ \"10.0.0.9\" ] (the lb machines' addresses)",
    ),
    ("protocol.write_queue", TUNING),
    ("protocol.write_queue_bytes", TUNING),
    ("protocol.max_reply_bytes", TUNING),
    ("server.write_queue_budget", TUNING),
    ("protocol.write_timeout", TUNING),
    ("protocol.rate_per_sec", TUNING),
    ("protocol.rate_burst", TUNING),
    ("auth.hash_concurrency", TUNING),
    ("offline.direct_backlog", TUNING),
    ("nats.stream", TUNING),
    ("nats.max_age", TUNING),
    ("nats.duplicate_window", TUNING),
    ("nats.request_timeout", TUNING),
    ("nats.reconnect_wait", TUNING),
    ("redis.presence_ttl", TUNING),
    ("redis.refresh_interval", TUNING),
    ("redis.command_timeout", TUNING),
    ("consul.check_ttl", TUNING),
    ("consul.deregister_after", TUNING),
    ("consul.kv_prefix", TUNING),
    ("consul.request_timeout", TUNING),
    ("nats.tls.ca_file", BACKEND_ACCESS),
    ("nats.tls.cert_file", BACKEND_ACCESS),
    ("nats.tls.key_file", BACKEND_SECRET),
    ("redis.tls.ca_file", BACKEND_ACCESS),
    ("consul.tls.ca_file", BACKEND_ACCESS),
];

/// A backend secret file inside a `[section.table]`: nix/settings.toml has no nested tables, so
/// the module has no credential option for it yet.
const BACKEND_SECRET: &str = "a backend secret file in a nested table: no module option yet (to \
     be handed over as a systemd credential like tokenSecretFile); meanwhile set it untyped to \
     a path outside the Nix store";

/// Backend TLS settings in a `[section.table]`, which the module does
/// not type yet.
const BACKEND_ACCESS: &str = "backend TLS in a nested table (nix/settings.toml has none): set it \
     untyped";

/// The reason of most untyped keys.
const TUNING: &str = "a tuning knob whose default suits a NixOS host; set it untyped if needed";

fn known_keys() -> Vec<&'static str> {
    KEYS.iter().map(|k| k.key).collect()
}

#[test]
fn typed_options_are_well_formed() {
    let known = known_keys();
    for spec in specs() {
        let k = &spec.key;
        assert!(
            known.contains(&k.as_str()),
            "{SETTINGS}: {k} is not a key of the daemon (docs/configuration.md)"
        );
        assert!(
            TYPES.contains(&spec.ty.as_str()),
            "{SETTINGS}: {k} has type {:?}; nix/module.nix knows {TYPES:?}",
            spec.ty
        );
        let description = spec.table.get("description").and_then(|d| d.as_str());
        assert!(
            description.is_some_and(|d| !d.trim().is_empty()),
            "{SETTINGS}: {k} needs a description"
        );
        if spec.default.is_none() {
            assert!(
                spec.table.get("unset").and_then(|u| u.as_str()).is_some(),
                "{SETTINGS}: {k} has no default, so it needs `unset` (what the daemon does then)"
            );
        }
        let values: Vec<&str> = spec
            .table
            .get("values")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if spec.ty == "enum" {
            assert!(!values.is_empty(), "{SETTINGS}: enum {k} needs `values`");
        }
        for (what, value) in [
            ("default", spec.default.as_ref()),
            ("example", Some(&spec.example)),
        ] {
            let Some(value) = value else { continue };
            let ok = match spec.ty.as_str() {
                "positive" => value.as_integer().is_some_and(|n| n >= 1),
                "unsigned" => value.as_integer().is_some_and(|n| n >= 0),
                "enum" => value.as_str().is_some_and(|s| values.contains(&s)),
                "abspath" => value.as_str().is_some_and(|s| s.starts_with('/')),
                "address" | "hostport" => value
                    .as_str()
                    .and_then(|s| s.rsplit_once(':'))
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
                _ => value.as_str().is_some_and(|s| !s.is_empty()),
            };
            assert!(
                ok,
                "{SETTINGS}: the {what} of {k} ({value}) is not a {}",
                spec.ty
            );
        }
    }
}

#[test]
fn every_key_of_the_daemon_is_typed_or_untyped_for_a_reason() {
    let typed: Vec<String> = specs().into_iter().map(|s| s.key).collect();
    for (key, reason) in UNTYPED {
        assert!(
            known_keys().contains(key),
            "UNTYPED lists {key}, which is not a key of the daemon: remove it"
        );
        assert!(
            !typed.iter().any(|t| t == key),
            "{key} is both a typed option in {SETTINGS} and listed in UNTYPED: remove one"
        );
        assert!(!reason.trim().is_empty(), "UNTYPED: {key} needs a reason");
    }
    for key in known_keys() {
        assert!(
            typed.iter().any(|t| t == key) || UNTYPED.iter().any(|(k, _)| *k == key),
            "{key} (config::KEYS) has no typed option in {SETTINGS}: add `[{key}]` there, or \
             add it to UNTYPED in tests/nix_module_keys.rs with the reason"
        );
    }
}

#[test]
fn the_daemon_accepts_the_defaults_the_module_writes() {
    let specs = specs();
    let values: Vec<(&str, toml::Value)> = specs
        .iter()
        .filter_map(|s| s.default.clone().map(|d| (s.key.as_str(), d)))
        .collect();
    let text = render(&values);
    if let Err(e) = daemon_check(&text) {
        panic!("the daemon rejects the module's default file:\n{text}\n{e}");
    }
    // They are the daemon's own defaults.
    let daemon = toml::Table::try_from(Config::default()).unwrap();
    for (key, value) in &values {
        let (section, leaf) = split(key);
        assert_eq!(
            daemon.get(section).and_then(|s| s.get(leaf)),
            Some(value),
            "{SETTINGS}: the default of {key} differs from the daemon's"
        );
    }
}

#[test]
fn the_daemon_accepts_every_typed_option_set() {
    let specs = specs();
    let values: Vec<(&str, toml::Value)> = specs
        .iter()
        .map(|s| (s.key.as_str(), s.example.clone()))
        .collect();
    let text = render(&values);
    if let Err(e) = daemon_check(&text) {
        panic!("the daemon rejects the examples of {SETTINGS}:\n{text}\n{e}");
    }
    // And a key the daemon does not know is refused: the check above can fail.
    let bad = render(&[("server.no_such_key", toml::Value::from("x"))]);
    assert!(
        daemon_check(&bad).is_err(),
        "config --check accepted an unknown key"
    );
}

/// `settings.<section>.<key>` written as a dotted attribute path (followed by `=`) in `text`.
fn dotted_settings_writes(text: &str) -> Vec<(usize, String)> {
    let code: String = text
        .lines()
        .map(|line| {
            match line
                .find(" #")
                .or_else(|| line.trim_start().starts_with('#').then_some(0))
            {
                Some(i) => format!("{}\n", &line[..i]),
                None => format!("{line}\n"),
            }
        })
        .collect();
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'\'';
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(pos) = code[from..].find("settings.") {
        let start = from + pos;
        from = start + 1;
        if start > 0 && ident(bytes[start - 1]) {
            continue;
        }
        // The path segments after `settings`.
        let mut i = start + "settings".len();
        let mut path = Vec::new();
        while i < bytes.len() && bytes[i] == b'.' {
            let seg_start = i + 1;
            let mut j = seg_start;
            while j < bytes.len() && ident(bytes[j]) {
                j += 1;
            }
            if j == seg_start {
                break;
            }
            path.push(&code[seg_start..j]);
            i = j;
        }
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let assigns = bytes.get(i) == Some(&b'=') && bytes.get(i + 1) != Some(&b'=');
        if assigns && !path.is_empty() {
            let line = code[..start].matches('\n').count() + 1;
            found.push((line, path.join(".")));
        }
    }
    found
}

fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            nix_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "nix") {
            out.push(path);
        }
    }
}

#[test]
fn every_key_the_nix_files_write_is_a_key_of_the_daemon() {
    let known = known_keys();
    let typed: Vec<String> = specs().into_iter().map(|s| s.key).collect();
    let mut files = vec![PathBuf::from("flake.nix")];
    nix_files(Path::new("nix"), &mut files);
    let mut writes = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let is_module = file == Path::new(MODULE);
        for (line, key) in dotted_settings_writes(&text) {
            let at = format!("{}:{line}", file.display());
            assert!(
                key.matches('.').count() == 1,
                "{at}: settings.{key} = … is not settings.<section>.<key>"
            );
            assert!(
                known.contains(&key.as_str()),
                "{at}: settings.{key} is not a key of the daemon (docs/configuration.md)"
            );
            writes += 1;
            if is_module {
                assert!(
                    typed.contains(&key),
                    "{at}: the module writes {key}, which has no typed option in {SETTINGS}"
                );
            }
        }
    }
    // The images and the VM test write settings (nats.url, consul.addr, ...).
    assert!(
        writes >= 3,
        "fewer than 3 settings writes found in flake.nix and nix/: is the scan broken?"
    );
}

#[test]
fn the_scan_finds_dotted_writes_only() {
    let text = r#"
      settings.server.listen = "x"; # settings.protocol.max_body = 1
      x = node.settings.server.listen == "y";
      config.settings.auth.token_secret_file =
        lib.mkIf c "/run/credentials/x";
      settings = mkOption { };
      mysettings.a.b = 1;
    "#;
    let found: Vec<String> = dotted_settings_writes(text)
        .into_iter()
        .map(|(_, k)| k)
        .collect();
    assert_eq!(found, ["server.listen", "auth.token_secret_file"]);
}

/// `Key=value` lines of the [Service] section of a unit file, values of repeated keys joined.
fn unit_service_settings(text: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut in_service = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let entry = out.entry(k.to_string()).or_default();
            if !entry.is_empty() && !v.is_empty() {
                entry.push(' ');
            }
            entry.push_str(v);
        }
    }
    out
}

/// The literal value of `Key = …;` in the module, in unit-file form; None when it is computed.
fn module_literal(module: &str, key: &str) -> Option<Option<String>> {
    let needle = format!("\n        {key} = ");
    let start = module.find(&needle)? + needle.len();
    let end = start + module[start..].find(";\n")?;
    let mut value = module[start..end].trim();
    if let Some(v) = value.strip_prefix("lib.mkDefault ") {
        value = v.trim();
    }
    let literal = if value == "true" {
        Some("yes".to_string())
    } else if value == "false" {
        Some("no".to_string())
    } else if let Some(list) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
        let items: Vec<&str> = list
            .split('"')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, s)| s)
            .collect();
        Some(items.join(" "))
    } else if let Some(s) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        (!s.contains("${")).then(|| s.to_string())
    } else if value.chars().all(|c| c.is_ascii_digit()) {
        Some(value.to_string())
    } else {
        None
    };
    Some(literal)
}

#[test]
fn the_module_unit_keeps_the_hardening_of_the_systemd_unit() {
    let unit = std::fs::read_to_string(UNIT).expect("systemd/chat-zinx.service");
    let module = std::fs::read_to_string(MODULE).unwrap();
    // Replaced in the module: the binary and its config come from the Nix store.
    let replaced = ["ExecStart", "ConfigurationDirectory"];
    for (key, value) in unit_service_settings(&unit) {
        if replaced.contains(&key.as_str()) {
            continue;
        }
        match module_literal(&module, &key) {
            None => panic!("{MODULE} does not set {key}= of {UNIT} (the module's unit mirrors it)"),
            Some(Some(literal)) => {
                assert_eq!(literal, value, "{key}= differs between {UNIT} and {MODULE}")
            }
            // Computed per instance (unit names, store paths).
            Some(None) => {}
        }
    }
}
