//! Loading: the figment layers (built-in defaults < TOML file < `CHAT_ZINX_*` environment), the
//! file layer and its key check, extraction, and which layer set a key.

use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};

use super::env::env_var_name;
use super::env::EnvLayer;
use super::error::{problems_to_result, ConfigError, Layer, Problem, ProblemKind};
use super::keys::{is_subtable, key_info, section_keys, sections};
use super::redact::{redact_urls, render_figment_value, render_value};
use super::suggest::{suggest_key, suggest_section};
use super::validate::validate;
use super::Config;

/// The file read when no `--config` is given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/chat-zinx/config.toml";

impl Config {
    /// Same as the module function [`load`].
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        load(path)
    }

    /// Same as the module function [`load_from`].
    pub fn load_from<I>(path: Option<&Path>, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        load_from(path, env)
    }

    /// Same as the module function [`check_file`].
    pub fn check_file(path: &Path) -> Result<Config, ConfigError> {
        check_file(path)
    }
}

/// The file [`load`] reads: `explicit` if given, else [`DEFAULT_CONFIG_PATH`] if it exists.
pub fn resolve_path(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => {
            let default = Path::new(DEFAULT_CONFIG_PATH);
            default.exists().then(|| default.to_path_buf())
        }
    }
}

/// Loads the configuration: defaults < file ([`resolve_path`]) < `CHAT_ZINX_*` process
/// environment. A missing explicit file is an error.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let env = std::env::vars_os().map(|(k, v)| {
        (
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        )
    });
    load_from(resolve_path(path).as_deref(), env)
}

/// Loads defaults < `path` (if `Some`; it must exist) < the `CHAT_ZINX_*` variables among
/// `env` (other variables are ignored). Unlike [`load`] this never looks at
/// [`DEFAULT_CONFIG_PATH`] nor the process environment.
pub fn load_from<I>(path: Option<&Path>, env: I) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut problems = Vec::new();
    let file = match path {
        Some(p) => Some(FileLayer::read(p, &mut problems)?),
        None => None,
    };
    let env = EnvLayer::new(env, &mut problems);
    problems_to_result(problems)?;

    let defaults = Config::default();
    let mut figment = Figment::from(defaults_layer(&defaults));
    if let Some(file) = file {
        figment = figment.merge(file.provider());
    }
    figment = figment.merge(env.provider());
    extract(&figment)
}

/// Validates one file alone (defaults < file, no environment), as `chat-zinx config --check`.
pub fn check_file(path: &Path) -> Result<Config, ConfigError> {
    load_from(Some(path), std::iter::empty())
}

fn extract(figment: &Figment) -> Result<Config, ConfigError> {
    let config: Config = figment.extract_lossy().map_err(|e| ConfigError::Invalid {
        problems: figment_problems(figment, e),
    })?;
    problems_to_result(validate(&config, figment))?;
    Ok(config)
}

const DEFAULTS_NAME: &str = "built-in defaults";
const FILE_NAME: &str = "config file";
pub(super) const ENV_NAME: &str = "environment";

/// A provider with precomputed data and our own metadata (name, source, interpolation).
pub(super) struct Layered {
    pub(super) metadata: Metadata,
    pub(super) data: Map<Profile, Dict>,
}

impl Provider for Layered {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(self.data.clone())
    }
}

pub(super) fn defaults_layer(config: &Config) -> Layered {
    Layered {
        metadata: Metadata::named(DEFAULTS_NAME),
        // Serializing plain structs into figment values cannot fail.
        data: Serialized::defaults(config).data().unwrap_or_default(),
    }
}

struct FileLayer {
    path: PathBuf,
    data: Map<Profile, Dict>,
}

impl FileLayer {
    fn read(path: &Path, problems: &mut Vec<Problem>) -> Result<FileLayer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let syntax = |message: String| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: message.trim_end().to_string(),
        };
        let table: toml::Table = toml::from_str(&text).map_err(|e| syntax(e.to_string()))?;
        check_file_keys(&table, path, problems);
        check_file_urls(&table, path, problems);
        let data = Toml::string(&text)
            .data()
            .map_err(|e| syntax(e.to_string()))?;
        Ok(FileLayer {
            path: path.to_path_buf(),
            data,
        })
    }

    fn provider(self) -> Layered {
        Layered {
            metadata: Metadata::from(FILE_NAME, self.path.as_path()),
            data: self.data,
        }
    }
}

/// Reports unknown sections and keys of a file all at once (serde would stop at the first).
fn check_file_keys(table: &toml::Table, path: &Path, problems: &mut Vec<Problem>) {
    let layer = Layer::File(path.to_path_buf());
    let known = sections();
    for (section, value) in table {
        if !known.contains(&section.as_str()) {
            let kind = if value.is_table() {
                ProblemKind::UnknownSection {
                    suggestion: suggest_section(section),
                }
            } else {
                ProblemKind::UnknownKey {
                    suggestion: suggest_key(section),
                }
            };
            problems.push(Problem {
                key: section.clone(),
                layer: layer.clone(),
                kind,
            });
            continue;
        }
        let Some(keys) = value.as_table() else {
            problems.push(Problem {
                key: section.clone(),
                layer: layer.clone(),
                kind: ProblemKind::InvalidValue {
                    value: render_value(value),
                    expected: format!(
                        "a [{section}] table with the keys {}",
                        section_keys(section).join(", ")
                    ),
                },
            });
            continue;
        };
        check_table_keys(section, keys, &layer, problems);
    }
}

/// URL keys that may carry a secret, and the key to put that secret in instead: (key, what
/// a `user:password@` holds, what a lone `secret@` holds).
const URL_SECRETS: &[(&str, &str, Option<&str>)] = &[
    (
        "nats.url",
        "nats.user and nats.password_file",
        Some("nats.token_file"),
    ),
    ("redis.url", "redis.username and redis.password_file", None),
    ("consul.addr", "consul.token_file", None),
];

/// A password (or a NATS token) written into a URL of the file is refused: the file is often
/// readable by anyone (the Nix store), and the key to use instead is named. From the
/// environment (an `EnvironmentFile` only root reads) such a URL stays allowed.
fn check_file_urls(table: &toml::Table, path: &Path, problems: &mut Vec<Problem>) {
    for &(key, password_keys, token_key) in URL_SECRETS {
        let (section, leaf) = key.split_once('.').unwrap_or((key, ""));
        let Some(value) = table
            .get(section)
            .and_then(|s| s.as_table())
            .and_then(|s| s.get(leaf))
            .and_then(|v| v.as_str())
        else {
            continue;
        };
        let instead = value.split(',').find_map(|url| {
            let userinfo = url_userinfo(url.trim())?;
            match (userinfo.split_once(':'), token_key) {
                (Some((_, password)), _) if !password.is_empty() => Some(password_keys),
                (None, Some(token_key)) if !userinfo.is_empty() => Some(token_key),
                _ => None,
            }
        });
        if let Some(instead) = instead {
            problems.push(Problem {
                key: key.to_string(),
                layer: Layer::File(path.to_path_buf()),
                kind: ProblemKind::InvalidValue {
                    value: render_value(&toml::Value::String(redact_urls(value))),
                    expected: format!(
                        "a URL without a password or token in the config file (a file others \
                         can often read): put the secret in a file only chat-zinx can read and \
                         set {instead}, or set {} from an EnvironmentFile",
                        env_var_name(key)
                    ),
                },
            });
        }
    }
}

/// The `userinfo` of `scheme://userinfo@host…`, if the URL has one.
fn url_userinfo(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority.rsplit_once('@').map(|(userinfo, _)| userinfo)
}

/// The keys of the table at `prefix` (a section, or a table inside one such as `nats.tls`).
fn check_table_keys(prefix: &str, keys: &toml::Table, layer: &Layer, problems: &mut Vec<Problem>) {
    for (key, value) in keys {
        let full = format!("{prefix}.{key}");
        match value.as_table() {
            Some(sub) if is_subtable(&full) => check_table_keys(&full, sub, layer, problems),
            _ if key_info(&full).is_some() => {}
            _ => problems.push(Problem {
                key: full.clone(),
                layer: layer.clone(),
                kind: ProblemKind::UnknownKey {
                    suggestion: suggest_key(&full),
                },
            }),
        }
    }
}

/// Which layer set `key`, per figment's record of value tags.
pub(super) fn layer_of(figment: &Figment, key: &str) -> Option<Layer> {
    let md = figment.find_metadata(key)?;
    Some(layer_from_metadata(md, key))
}

fn layer_from_metadata(md: &Metadata, key: &str) -> Layer {
    if md.name == ENV_NAME {
        let path: Vec<&str> = key.split('.').collect();
        Layer::Env(md.interpolate(&Profile::Default, &path))
    } else if let Some(path) = md.source.as_ref().and_then(|s| s.file_path()) {
        Layer::File(path.to_path_buf())
    } else {
        Layer::Defaults
    }
}

/// Converts figment's (chained) extraction errors into problems.
fn figment_problems(figment: &Figment, error: figment::Error) -> Vec<Problem> {
    let mut problems = Vec::new();
    for e in error {
        let key = e.path.join(".");
        let layer = layer_of(figment, &key)
            .or_else(|| e.metadata.as_ref().map(|md| layer_from_metadata(md, &key)))
            .unwrap_or(Layer::Defaults);
        let kind = match &e.kind {
            figment::error::Kind::UnknownField(..) => ProblemKind::UnknownKey {
                suggestion: suggest_key(&key),
            },
            other => ProblemKind::InvalidValue {
                value: figment
                    .find_value(&key)
                    .ok()
                    .map(|v| render_figment_value(&v))
                    .unwrap_or_else(|| "(none)".into()),
                expected: match key_info(&key) {
                    Some(info) => info.expected.to_string(),
                    None => format!("something else ({other})"),
                },
            },
        };
        problems.push(Problem { key, layer, kind });
    }
    problems
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::testutil::{env, file};

    #[test]
    fn defaults_without_file_or_env() {
        let c = load_from(None, env(&[("PATH", "/bin"), ("HOME", "/root")])).unwrap();
        assert_eq!(c, Config::default());
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn file_overrides_defaults() {
        let f = file("[server]\nlisten = \"127.0.0.1:7000\"\n[protocol]\nmax_body = 4096\n");
        let c = load_from(Some(f.path()), env(&[])).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:7000");
        assert_eq!(c.protocol.max_body, 4096);
        // Untouched keys keep their defaults.
        assert_eq!(c.server.http_listen, "127.0.0.1:9100");
        assert_eq!(c.protocol.write_queue, 256);
    }

    #[test]
    fn env_overrides_file() {
        let f = file("[server]\nlisten = \"127.0.0.1:7000\"\nhttp_listen = \"127.0.0.1:7001\"\n");
        let c = load_from(
            Some(f.path()),
            env(&[
                ("CHAT_ZINX_SERVER__LISTEN", "127.0.0.1:8000"),
                ("CHAT_ZINX_NATS__URL", "nats://a:4222,nats://b:4222"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8000");
        assert_eq!(c.server.http_listen, "127.0.0.1:7001");
        assert_eq!(c.nats.url.as_deref(), Some("nats://a:4222,nats://b:4222"));
    }

    #[test]
    fn durations_from_file_and_env() {
        let f = file("[protocol]\nidle_timeout = \"180s\"\nwrite_timeout = \"2m\"\n[auth]\ntoken_ttl = \"1h 30m\"\n");
        let c = load_from(Some(f.path()), env(&[])).unwrap();
        assert_eq!(c.protocol.idle_timeout, Duration::from_secs(180));
        assert_eq!(c.protocol.write_timeout, Duration::from_secs(120));
        assert_eq!(c.auth.token_ttl, Duration::from_secs(5400));

        let c = load_from(
            Some(f.path()),
            env(&[
                ("CHAT_ZINX_PROTOCOL__IDLE_TIMEOUT", "2m"),
                ("CHAT_ZINX_PROTOCOL__WRITE_TIMEOUT", "500ms"),
            ]),
        )
        .unwrap();
        assert_eq!(c.protocol.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.protocol.write_timeout, Duration::from_millis(500));
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let e = load_from(Some(&path), env(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("check the --config path"), "{text}");
    }

    #[test]
    fn toml_syntax_error_names_file() {
        let f = file("[server\nlisten = 1\n");
        let e = check_file(f.path()).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }));
        assert!(e.to_string().contains("is not valid TOML"), "{e}");
    }

    #[test]
    fn a_password_in_a_url_of_the_file_is_refused_naming_the_file_key() {
        let cases = [
            (
                "[nats]\nurl = \"nats://a:4222,nats://cz:pw1@b:4222\"\n",
                "nats.url",
                "nats.password_file",
            ),
            (
                "[nats]\nurl = \"tls://t0ken@b:4222\"\n",
                "nats.url",
                "nats.token_file",
            ),
            (
                "[redis]\nurl = \"rediss://:pw1@redis:6380/0\"\n",
                "redis.url",
                "redis.password_file",
            ),
            (
                "[redis]\nurl = \"redis://cz:pw1@redis:6379\"\n",
                "redis.url",
                "redis.password_file",
            ),
            (
                "[consul]\naddr = \"https://x:pw1@consul:8501\"\n",
                "consul.addr",
                "consul.token_file",
            ),
        ];
        for (text, key, instead) in cases {
            let f = file(text);
            let e = check_file(f.path()).unwrap_err();
            let problems = e.problems();
            assert_eq!(problems.len(), 1, "{e}");
            assert_eq!(problems[0].key, key);
            let msg = e.to_string();
            assert!(msg.contains(instead), "{msg}");
            assert!(msg.contains(&crate::config::env_var_name(key)), "{msg}");
            assert!(!msg.contains("pw1") && !msg.contains("t0ken"), "{msg}");
        }
        // Without a secret, or from the environment, the URL is fine.
        let f = file("[redis]\nurl = \"redis://cz@redis:6379\"\n[nats]\nurl = \"tls://n1:4222\"\n");
        assert!(check_file(f.path()).is_ok());
        let c = load_from(
            None,
            env(&[
                ("CHAT_ZINX_NATS__URL", "nats://cz:pw1@b:4222"),
                ("CHAT_ZINX_REDIS__URL", "rediss://:pw1@redis:6380"),
            ]),
        )
        .unwrap();
        assert_eq!(c.nats.url.as_deref(), Some("nats://cz:pw1@b:4222"));
        assert!(!c.to_redacted_toml().contains("pw1"));
    }

    #[test]
    fn keys_of_a_table_inside_a_section_from_file_and_env() {
        let f =
            file("[nats.tls]\nca_file = \"/etc/ca.pem\"\n[redis]\ntls.ca_file = \"/etc/r.pem\"\n");
        let c = load_from(
            Some(f.path()),
            env(&[("CHAT_ZINX_NATS__TLS__KEY_FILE", "/run/k.pem")]),
        )
        .unwrap();
        assert_eq!(c.nats.tls.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.nats.tls.key_file, Some(PathBuf::from("/run/k.pem")));
        assert_eq!(c.redis.tls.ca_file, Some(PathBuf::from("/etc/r.pem")));
        let f = file("[nats.tls]\nca_fil = \"/etc/ca.pem\"\n");
        let e = check_file(f.path()).unwrap_err();
        assert_eq!(e.problems()[0].key, "nats.tls.ca_fil", "{e}");
        assert!(e.to_string().contains("nats.tls.ca_file"), "{e}");
        let e = load_from(None, env(&[("CHAT_ZINX_NATS__TLS__CERT", "x")])).unwrap_err();
        assert_eq!(e.problems()[0].key, "nats.tls.cert", "{e}");
        let out = c.to_redacted_toml();
        assert!(out.contains("tls.ca_file = \"/etc/ca.pem\""), "{out}");
        let g = file(&out);
        assert_eq!(check_file(g.path()).unwrap(), c);
    }

    #[test]
    fn explicit_path_is_resolved_as_given() {
        assert_eq!(
            resolve_path(Some(Path::new("/x.toml"))),
            Some(PathBuf::from("/x.toml"))
        );
    }
}
