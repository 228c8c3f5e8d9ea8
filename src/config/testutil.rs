//! Helpers of the unit tests of the configuration.

use std::io::Write;

use super::{Config, ConfigError};

/// A temporary `.toml` file holding `text`.
pub(super) fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    f.write_all(text.as_bytes()).expect("write temp file");
    f
}

/// Environment variables from pairs.
pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The message of a config error.
pub(super) fn err_text(r: Result<Config, ConfigError>) -> String {
    r.expect_err("expected a config error").to_string()
}
