//! Configuration: built-in defaults < TOML file < `CHAT_ZINX_*` environment (figment).
//!
//! The keys are an external contract: the NixOS module, Terraform and operators set them.
//! `docs/configuration.md` documents every key; [`EXAMPLE_TOML`] is a file setting all of them.
//!
//! * The file is `--config PATH` when given (a missing file is an error), else
//!   [`DEFAULT_CONFIG_PATH`] when it exists, else none.
//! * An environment variable `CHAT_ZINX_<SECTION>__<KEY>` sets `<section>.<key>`, e.g.
//!   `CHAT_ZINX_SERVER__LISTEN=0.0.0.0:9000` or `CHAT_ZINX_PROTOCOL__IDLE_TIMEOUT=2m`.
//!   Values are taken as written (a token `123456` stays the string `"123456"`); numbers and
//!   durations are parsed from them. A variable under the prefix that names no key is an error,
//!   except those in [`ENV_IGNORED`]. An empty value unsets an optional key.
//! * Every problem is reported with the key, the layer that set it (file path or variable
//!   name), the offending value and what is expected.
//!
//! One file per concept: the sections and their defaults (`sections`), the key table, the one
//! declaration of every key ([`KEYS`]: what it accepts, whether a SIGHUP applies it, its live
//! setting), environment variables (`env`), the figment layers (`load`), validation
//! (`validate`), errors, suggestions, redaction, the example file, [`changed_keys`] and the
//! lenient deserializers (`de`); [`live`] has the live settings (Consul KV).

mod de;
mod diff;
mod env;
mod error;
mod example;
mod keys;
pub mod live;
mod load;
mod redact;
mod sections;
mod suggest;
mod validate;

#[cfg(test)]
mod testutil;

pub use diff::changed_keys;
pub use env::{env_var_name, ENV_IGNORED, ENV_PREFIX, ENV_SEPARATOR};
pub use error::{ConfigError, Layer, Problem, ProblemKind};
pub use example::EXAMPLE_TOML;
pub use keys::{KeyInfo, KEYS, RELOADABLE_KEYS};
pub use load::{check_file, load, load_from, resolve_path, DEFAULT_CONFIG_PATH};
pub use redact::redact_urls;
pub use sections::{
    AuthConfig, CaTlsConfig, ClientTlsConfig, Config, ConsulConfig, LogConfig, NatsConfig,
    OfflineConfig, ProtocolConfig, RedisConfig, ServerConfig, SessionConfig,
};
pub use validate::{parse_network, MAX_MAX_BODY, MIN_MAX_BODY};
