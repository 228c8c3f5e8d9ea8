//! Errors: what went wrong with which key, set by which layer, and what was expected.

use std::fmt;
use std::path::PathBuf;

use super::env::{env_var_name, ENV_PREFIX, ENV_SEPARATOR};
use super::keys::{section_keys, sections, split_key};

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}{}", path.display(), read_hint(source))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not TOML.
    #[error("config file {} is not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    /// One or more keys are unknown or have unacceptable values.
    #[error("{}", render_problems(problems))]
    Invalid { problems: Vec<Problem> },
}

impl ConfigError {
    /// The individual key problems (empty for read and syntax errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

fn read_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => " (check the --config path)",
        std::io::ErrorKind::PermissionDenied => {
            " (make the file readable by the user chat-zinx runs as)"
        }
        _ => "",
    }
}

fn render_problems(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let mut s = format!("{} configuration problems:", many.len());
            for p in many {
                s.push_str("\n  - ");
                s.push_str(&p.to_string());
            }
            s
        }
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layer {
    /// The built-in defaults.
    Defaults,
    /// A TOML config file.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layer::Defaults => f.write_str("the built-in defaults"),
            Layer::File(p) => write!(f, "config file {}", p.display()),
            Layer::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

impl Layer {
    pub(super) fn preposition(&self) -> &'static str {
        match self {
            Layer::Env(_) => "from",
            _ => "in",
        }
    }
}

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key (`protocol.max_body`), or a section name for an unknown section.
    pub key: String,
    /// The layer that set it.
    pub layer: Layer,
    /// What is wrong.
    pub kind: ProblemKind,
}

/// What is wrong with a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// The key does not exist; `suggestion` is a close existing key.
    UnknownKey { suggestion: Option<String> },
    /// The `[section]` of a file does not exist; `suggestion` is a close existing section.
    UnknownSection { suggestion: Option<String> },
    /// The value is not acceptable for the key.
    InvalidValue { value: String, expected: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        let layer = &self.layer;
        let at = layer.preposition();
        match (&self.kind, layer) {
            (ProblemKind::InvalidValue { value, expected }, _) => write!(
                f,
                "invalid value for {key} {at} {layer}: {value} — expected {expected}"
            ),
            (ProblemKind::UnknownKey { suggestion }, Layer::Env(var)) => {
                write!(f, "unknown environment variable {var}: ")?;
                if key.split('.').any(str::is_empty) {
                    write!(
                        f,
                        "it names no configuration key (the form is \
                         {ENV_PREFIX}<SECTION>{ENV_SEPARATOR}<KEY>)"
                    )?;
                } else if sections().contains(&key.as_str()) {
                    write!(
                        f,
                        "it names the section {key}, not a key: set \
                         {ENV_PREFIX}{}{ENV_SEPARATOR}<KEY> instead",
                        key.to_ascii_uppercase()
                    )?;
                } else {
                    write!(f, "there is no configuration key {key}")?;
                }
                match suggestion {
                    Some(s) => write!(f, " — did you mean {}?", env_var_name(s))?,
                    None => write!(f, " — {}.", valid_keys_hint(key))?,
                }
                write!(f, " Rename or unset the variable.")
            }
            (ProblemKind::UnknownKey { suggestion }, _) => {
                write!(f, "unknown key {key} {at} {layer}")?;
                match suggestion {
                    // A key outside its section (`listen = ...` above `[server]`).
                    Some(s) if !key.contains('.') => write!(
                        f,
                        " — did you mean {s}? Put it in the [{}] section.",
                        split_key(s).0
                    ),
                    Some(s) => write!(f, " — did you mean {s}? Remove or rename it."),
                    None => write!(f, " — {}; remove or rename it.", valid_keys_hint(key)),
                }
            }
            (ProblemKind::UnknownSection { suggestion }, _) => {
                write!(f, "unknown section [{key}] {at} {layer}")?;
                match suggestion {
                    Some(s) => write!(f, " — did you mean [{s}]? Rename it."),
                    None => write!(f, " — {}; remove or rename it.", valid_keys_hint(key)),
                }
            }
        }
    }
}

fn valid_keys_hint(key: &str) -> String {
    match key.split_once('.') {
        Some((section, _)) if sections().contains(&section) => format!(
            "valid keys in [{section}] are {}",
            section_keys(section).join(", ")
        ),
        _ => format!("valid sections are {}", sections().join(", ")),
    }
}

pub(super) fn problems_to_result(problems: Vec<Problem>) -> Result<(), ConfigError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::{env, err_text, file};
    use crate::config::{check_file, load_from};

    #[test]
    fn unknown_key_in_file_names_key_and_file() {
        let f = file("[server]\nlistn = \"0.0.0.0:1\"\n");
        let text = err_text(check_file(f.path()));
        assert!(text.contains("unknown key server.listn"), "{text}");
        assert!(text.contains(&f.path().display().to_string()), "{text}");
        assert!(text.contains("did you mean server.listen?"), "{text}");
    }

    #[test]
    fn unknown_sections_and_misplaced_keys_in_file() {
        // `http_listen`, not `listen`: that leaf is in two sections (server, tls).
        let f =
            file("http_listen = \"0.0.0.0:1\"\n[servr]\nlisten = \"0.0.0.0:1\"\n[bogus]\nx = 1\n");
        let e = check_file(f.path()).unwrap_err();
        assert_eq!(e.problems().len(), 3, "{e}");
        let text = e.to_string();
        assert!(text.starts_with("3 configuration problems:"), "{text}");
        assert!(text.contains("unknown section [servr]"), "{text}");
        assert!(text.contains("did you mean [server]?"), "{text}");
        assert!(
            text.contains("unknown key http_listen in config file"),
            "{text}"
        );
        assert!(
            text.contains("did you mean server.http_listen? Put it in the [server] section."),
            "{text}"
        );
        assert!(text.contains("unknown section [bogus]"), "{text}");
        assert!(
            text.contains("valid sections are server, tls, protocol"),
            "{text}"
        );
    }

    #[test]
    fn bad_env_value_names_key_variable_value_and_expectation() {
        let text = err_text(load_from(
            None,
            env(&[("CHAT_ZINX_PROTOCOL__MAX_BODY", "abc")]),
        ));
        assert_eq!(
            text,
            "invalid value for protocol.max_body from environment variable \
             CHAT_ZINX_PROTOCOL__MAX_BODY: \"abc\" — expected an integer number of bytes \
             between 64 and 16777216"
        );
        // Out of range is reported the same way, by semantic validation.
        let text = err_text(load_from(
            None,
            env(&[("CHAT_ZINX_PROTOCOL__MAX_BODY", "10")]),
        ));
        assert!(
            text.starts_with(
                "invalid value for protocol.max_body from environment variable \
                 CHAT_ZINX_PROTOCOL__MAX_BODY: \"10\" — expected"
            ),
            "{text}"
        );
        let text = err_text(load_from(
            None,
            env(&[("CHAT_ZINX_PROTOCOL__RATE_PER_SEC", "-3")]),
        ));
        assert!(
            text.contains("protocol.rate_per_sec from environment variable"),
            "{text}"
        );
    }

    #[test]
    fn bad_file_values_name_key_and_file() {
        let f = file("[protocol]\nidle_timeout = \"soon\"\n");
        let text = err_text(check_file(f.path()));
        let path = f.path().display().to_string();
        assert_eq!(
            text,
            format!(
                "invalid value for protocol.idle_timeout in config file {path}: \"soon\" — \
                 expected a duration of at least 1s such as \"180s\", \"2m\" or \"1h 30m\""
            )
        );

        let f = file("[protocol]\nidle_timeout = 180\n");
        let text = err_text(check_file(f.path()));
        assert!(
            text.contains("protocol.idle_timeout in config file"),
            "{text}"
        );

        let f = file("[protocol]\nidle_timeout = \"500ms\"\nwrite_queue = 2\n[server]\nlisten = \"localhost\"\n");
        let e = check_file(f.path()).unwrap_err();
        let keys: Vec<&str> = e.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.listen",
                "protocol.idle_timeout",
                "protocol.write_queue"
            ]
        );
        assert!(e
            .problems()
            .iter()
            .all(|p| p.layer == Layer::File(f.path().to_path_buf())));

        let f = file("server = \"x\"\n");
        let text = err_text(check_file(f.path()));
        assert!(
            text.contains("invalid value for server in config file"),
            "{text}"
        );
        assert!(
            text.contains("expected a [server] table with the keys listen, http_listen"),
            "{text}"
        );
    }
}
