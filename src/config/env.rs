//! The environment layer: `CHAT_ZINX_<SECTION>__<KEY>` variables and the keys they set.

use std::collections::BTreeMap;

use figment::value::{Dict, Value};
use figment::{Metadata, Profile};

use super::error::{Layer, Problem, ProblemKind};
use super::keys::key_info;
use super::load::{Layered, ENV_NAME};
use super::suggest::suggest_key;

/// Prefix of the environment variables that set keys.
pub const ENV_PREFIX: &str = "CHAT_ZINX_";
/// Separator between section and key in an environment variable name.
pub const ENV_SEPARATOR: &str = "__";
/// Variables under [`ENV_PREFIX`] that are not config keys (e.g. the `--config` path taken by
/// the command line) and are therefore not reported as unknown.
pub const ENV_IGNORED: &[&str] = &["CHAT_ZINX_CONFIG"];

/// The environment variable that sets `key` (`server.listen` → `CHAT_ZINX_SERVER__LISTEN`).
pub fn env_var_name(key: &str) -> String {
    let parts: Vec<String> = key.split('.').map(|p| p.to_ascii_uppercase()).collect();
    format!("{ENV_PREFIX}{}", parts.join(ENV_SEPARATOR))
}

/// The environment layer, built from explicit variables so that values stay strings:
/// figment's own `Env` provider would turn `123456` into an integer and `[x]` into an array.
pub(super) struct EnvLayer {
    /// (dotted key, value, variable name as given)
    vars: Vec<(String, String, String)>,
}

impl EnvLayer {
    pub(super) fn new<I>(env: I, problems: &mut Vec<Problem>) -> EnvLayer
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut vars = Vec::new();
        for (name, value) in env {
            let trimmed = name.trim();
            let Some(rest) = strip_prefix_ignore_case(trimmed, ENV_PREFIX) else {
                continue;
            };
            if ENV_IGNORED.iter().any(|i| i.eq_ignore_ascii_case(trimmed)) {
                continue;
            }
            let key = rest
                .split(ENV_SEPARATOR)
                .map(|s| s.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(".");
            if key_info(&key).is_none() {
                problems.push(Problem {
                    key: key.clone(),
                    layer: Layer::Env(trimmed.to_string()),
                    kind: ProblemKind::UnknownKey {
                        suggestion: suggest_key(&key),
                    },
                });
                continue;
            }
            vars.push((key, value, trimmed.to_string()));
        }
        EnvLayer { vars }
    }

    pub(super) fn provider(self) -> Layered {
        let names: BTreeMap<String, String> = self
            .vars
            .iter()
            .map(|(key, _, name)| (key.clone(), name.clone()))
            .collect();
        let metadata = Metadata::named(ENV_NAME).interpolater(move |_: &Profile, keys: &[&str]| {
            let key = keys.join(".");
            names
                .get(&key)
                .cloned()
                .unwrap_or_else(|| env_var_name(&key))
        });
        let mut dict = Dict::new();
        for (key, value, _) in self.vars {
            // `section.leaf` or `section.sub.leaf`: a table per part but the last.
            let parts: Vec<&str> = key.split('.').collect();
            insert_at(&mut dict, &parts, value);
        }
        Layered {
            metadata,
            data: Profile::Default.collect(dict),
        }
    }
}

/// Sets `parts` (a path of table names, then the key) in `dict` to `value`.
fn insert_at(dict: &mut Dict, parts: &[&str], value: String) {
    match parts {
        [] => {}
        [leaf] => {
            dict.insert(leaf.to_string(), Value::from(value));
        }
        [table, rest @ ..] => {
            let entry = dict
                .entry(table.to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_at(inner, rest, value);
            }
        }
    }
}

pub(super) fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::testutil::{env, err_text, file};
    use crate::config::{load_from, Config};

    #[test]
    fn scalar_looking_env_values_stay_strings() {
        let c = load_from(
            None,
            env(&[
                ("CHAT_ZINX_SERVER__NODE_ID", "7"),
                ("CHAT_ZINX_CONSUL__TOKEN", "123456"),
                ("CHAT_ZINX_CONSUL__ADDR", "http://consul:8500"),
                ("CHAT_ZINX_SERVER__STATE_DIR", "1.50"),
                ("CHAT_ZINX_AUTH__TOKEN_SECRET_FILE", "true"),
                ("CHAT_ZINX_REDIS__URL", "redis://[::1]:6379"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.node_id.as_deref(), Some("7"));
        assert_eq!(c.consul.token.as_deref(), Some("123456"));
        assert_eq!(c.server.state_dir, Some(PathBuf::from("1.50")));
        assert_eq!(c.auth.token_secret_file, Some(PathBuf::from("true")));
        assert_eq!(c.redis.url.as_deref(), Some("redis://[::1]:6379"));
    }

    #[test]
    fn numbers_from_env_strings() {
        let c = load_from(
            None,
            env(&[
                ("CHAT_ZINX_PROTOCOL__MAX_BODY", "4096"),
                ("CHAT_ZINX_PROTOCOL__RATE_PER_SEC", "50"),
                ("CHAT_ZINX_SERVER__MAX_CONNECTIONS", "12"),
                ("CHAT_ZINX_OFFLINE__DIRECT_BACKLOG", "0"),
            ]),
        )
        .unwrap();
        assert_eq!(c.protocol.max_body, 4096);
        assert_eq!(c.protocol.rate_per_sec, 50);
        assert_eq!(c.server.max_connections, 12);
        assert_eq!(c.offline.direct_backlog, 0);
    }

    #[test]
    fn unknown_env_var_is_an_error_naming_it() {
        let text = err_text(load_from(
            None,
            env(&[("CHAT_ZINX_SERVER__LISTN", "0.0.0.0:1")]),
        ));
        assert!(
            text.starts_with("unknown environment variable CHAT_ZINX_SERVER__LISTN"),
            "{text}"
        );
        assert!(
            text.contains("did you mean CHAT_ZINX_SERVER__LISTEN?"),
            "{text}"
        );

        // `HTTP_LISTEN`, not `LISTEN`: that key name is in two sections (server, tls).
        let text = err_text(load_from(
            None,
            env(&[("CHAT_ZINX_HTTP_LISTEN", "0.0.0.0:1")]),
        ));
        assert!(
            text.contains("did you mean CHAT_ZINX_SERVER__HTTP_LISTEN?"),
            "{text}"
        );

        let text = err_text(load_from(None, env(&[("CHAT_ZINX_SERVER____LISTEN", "x")])));
        assert!(text.contains("names no configuration key"), "{text}");

        let text = err_text(load_from(None, env(&[("CHAT_ZINX_SERVER", "x")])));
        assert!(
            text.contains("names the section server, not a key"),
            "{text}"
        );
        assert!(!text.contains("did you mean"), "{text}");

        let text = err_text(load_from(None, env(&[("CHAT_ZINX_ZZZ__QQQ", "x")])));
        assert!(text.contains("valid sections are"), "{text}");
    }

    #[test]
    fn ignored_and_foreign_env_vars() {
        let c = load_from(
            None,
            env(&[
                ("CHAT_ZINX_CONFIG", "/somewhere.toml"),
                ("CHATZINX_SERVER__LISTEN", "garbage"),
                ("RUST_LOG", "debug"),
            ]),
        )
        .unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn env_var_names_are_case_insensitive_and_reported_as_given() {
        let c = load_from(None, env(&[("chat_zinx_log__level", "debug")])).unwrap();
        assert_eq!(c.log.level, "debug");
        let text = err_text(load_from(None, env(&[("chat_zinx_log__level", "inof")])));
        assert!(
            text.contains("from environment variable chat_zinx_log__level: \"inof\""),
            "{text}"
        );
    }

    #[test]
    fn empty_env_value_unsets_optional_key() {
        let f = file("[nats]\nurl = \"nats://127.0.0.1:4222\"\n");
        let c = load_from(Some(f.path()), env(&[("CHAT_ZINX_NATS__URL", "")])).unwrap();
        assert_eq!(c.nats.url, None);
    }

    #[test]
    fn env_var_name_mapping() {
        assert_eq!(
            env_var_name("protocol.max_body"),
            "CHAT_ZINX_PROTOCOL__MAX_BODY"
        );
    }
}
