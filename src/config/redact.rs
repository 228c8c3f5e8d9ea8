//! Rendering values in messages, and the redacted TOML dump of a configuration (`chat-zinx
//! config`).

use figment::value::Value;

use super::keys::{lookup, section_keys, sections};
use super::Config;

impl Config {
    /// The config as TOML, every key in order, with secrets replaced by `***`: keys whose name
    /// says token/password/secret (not `*_file` paths), and passwords in URLs
    /// (`redis://:pw@host` → `redis://:***@host`, user-only userinfo `nats://tok@host` →
    /// `nats://***@host`, and `?password=`-style query values). Unset keys are shown as
    /// comments. Without secrets the output parses back to the same config.
    pub fn to_redacted_toml(&self) -> String {
        let table = match toml::Table::try_from(self) {
            Ok(t) => t,
            Err(e) => return format!("# cannot render the configuration: {e}\n"),
        };
        let mut out = String::from(
            "# chat-zinx effective configuration (defaults < file < CHAT_ZINX_* environment).\n\
             # Secrets are shown as \"***\"; unset keys are commented out.\n",
        );
        for section in sections() {
            out.push_str(&format!("\n[{section}]\n"));
            let values = table.get(section).and_then(|v| v.as_table());
            for leaf in section_keys(section) {
                match values.and_then(|t| lookup(t, leaf)) {
                    Some(v) => {
                        let v = redact_value(leaf, v);
                        out.push_str(&format!("{leaf} = {}\n", render_value(&v)));
                    }
                    None => out.push_str(&format!("# {leaf} = (unset)\n")),
                }
            }
        }
        out
    }
}

pub(super) fn render_value(v: &toml::Value) -> String {
    v.to_string()
}

pub(super) fn render_figment_value(v: &Value) -> String {
    match v {
        Value::Empty(..) => "(unset)".into(),
        other => toml::Value::try_from(other)
            .map(|t| render_value(&t))
            .unwrap_or_else(|_| format!("{:?}", other.to_actual().to_string())),
    }
}

const SECRET_WORDS: &[&str] = &["token", "password", "passwd", "secret", "credential"];
const NOT_SECRET_SUFFIXES: &[&str] = &["_file", "_path", "_dir", "_ttl", "_timeout"];

/// Whether a key's value is a secret by its name (`consul.token`, a future `*_password`),
/// excluding paths to secrets (`token_secret_file`) and durations (`token_ttl`).
pub(super) fn is_secret_name(leaf: &str) -> bool {
    let leaf = leaf.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| leaf.contains(w))
        && !NOT_SECRET_SUFFIXES.iter().any(|s| leaf.ends_with(s))
}

fn redact_value(leaf: &str, v: &toml::Value) -> toml::Value {
    match v {
        toml::Value::String(s) if is_secret_name(leaf) && !s.is_empty() => {
            toml::Value::String("***".into())
        }
        toml::Value::String(s) => toml::Value::String(redact_urls(s)),
        other => other.clone(),
    }
}

/// Hides passwords in each comma-separated URL of `s` (`nats://u:pw@h` → `nats://u:***@h`,
/// `nats://tok@h` → `nats://***@h`, `?password=…` → `?password=***`), for logs and messages.
pub fn redact_urls(s: &str) -> String {
    s.split(',').map(redact_url).collect::<Vec<_>>().join(",")
}

fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            // A lone userinfo may itself be a token (`nats://token@host`).
            None => format!("***@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let query = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, v))
                        if !v.is_empty()
                            && (is_secret_name(k) || k.eq_ignore_ascii_case("pass")) =>
                    {
                        format!("{k}=***")
                    }
                    _ => pair.to_string(),
                })
                .collect::<Vec<_>>()
                .join("&");
            match fragment {
                Some(f) => format!("{path}?{query}#{f}"),
                None => format!("{path}?{query}"),
            }
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keys::{split_key, KEYS};
    use crate::config::testutil::file;
    use crate::config::{check_file, EXAMPLE_TOML};

    #[test]
    fn redaction_hides_secrets_but_shows_paths() {
        let mut c = Config::default();
        c.consul.token = Some("s3cr3t-token".into());
        c.redis.url = Some("redis://:hunter2@redis:6379/0".into());
        c.nats.url =
            Some("nats://alice:pw1@n1:4222,nats://tok3n@n2:4222,nats://n3:4222?token=abc".into());
        c.auth.token_secret_file = Some("/run/secrets/token".into());
        let out = c.to_redacted_toml();
        for secret in ["s3cr3t-token", "hunter2", "pw1", "tok3n", "abc"] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
        assert!(out.contains("token = \"***\""), "{out}");
        assert!(out.contains("url = \"redis://:***@redis:6379/0\""), "{out}");
        assert!(
            out.contains("nats://alice:***@n1:4222,nats://***@n2:4222,nats://n3:4222?token=***"),
            "{out}"
        );
        assert!(
            out.contains("token_secret_file = \"/run/secrets/token\""),
            "{out}"
        );
        assert!(out.contains("token_ttl = \"7days\""), "{out}");
        assert!(out.contains("# node_id = (unset)"), "{out}");
    }

    #[test]
    fn redacted_toml_lists_every_key_and_round_trips() {
        let f = file(EXAMPLE_TOML);
        let mut c = check_file(f.path()).unwrap();
        c.consul.token = None;
        let out = c.to_redacted_toml();
        for info in KEYS {
            let (_, leaf) = split_key(info.key);
            assert!(
                out.contains(&format!("{leaf} = ")),
                "{} missing:\n{out}",
                info.key
            );
        }
        let g = file(&out);
        assert_eq!(check_file(g.path()).unwrap(), c);

        let out = Config::default().to_redacted_toml();
        let g = file(&out);
        assert_eq!(check_file(g.path()).unwrap(), Config::default());
    }
}
