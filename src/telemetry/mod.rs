//! Logging set-up, in one place: journald or plain text, and a level that SIGHUP can change.
//!
//! * **journald** (`log.format = "journald"`, or `"auto"` when stderr *is* the journal): events
//!   go to journald natively, with their structured fields under their own names (`NODE_ID`,
//!   `CONN_ID`, `USER_ID`, `MSG_ID`, ... — no `F_` prefix), and `NODE_ID` on every entry once the
//!   node id is known ([`set_node_id`]). systemd tells a service that its stderr is the journal
//!   by setting `JOURNAL_STREAM=<device>:<inode>` of that stream; `tracing-journald` does not
//!   check it, so [`stderr_is_journal`] does, comparing it with stderr's own device and inode
//!   (a child whose stderr was redirected inherits the variable but not the stream).
//! * **text** otherwise: the `tracing` fmt output on stderr (colours only on a terminal).
//!
//! The level is the `RUST_LOG` filter when that is set, else `log.level`; [`set_level`] swaps
//! it at run time (SIGHUP).

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::LogConfig;

pub mod instrument;
pub mod metrics;

type Base = Layered<reload::Layer<EnvFilter, Registry>, Registry>;

struct State {
    filter: reload::Handle<EnvFilter, Registry>,
    journald: reload::Handle<Option<tracing_journald::Layer>, Base>,
    /// `RUST_LOG` was set at start: it wins over `log.level`, also on reload.
    rust_log: Option<String>,
}

static STATE: OnceLock<State> = OnceLock::new();

/// Where log events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Journald,
    Text,
}

/// Why the log level could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    #[error("invalid log filter {filter:?}: {source}")]
    Invalid {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("logging is not initialised in this process")]
    NotInitialised,
}

/// What [`set_level`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelChange {
    /// The new filter is in force.
    Applied,
    /// `RUST_LOG` (this value) overrides `log.level`: nothing changed.
    OverriddenByRustLog(String),
}

/// Installs the global subscriber (once; later calls do nothing) and says where logs go.
pub fn init(log: &LogConfig) -> Output {
    // An unparsable RUST_LOG is ignored (and said so below), like an unset one.
    let rust_log_raw = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let rust_log = rust_log_raw
        .clone()
        .filter(|v| EnvFilter::try_new(v).is_ok());
    let filter = rust_log
        .as_deref()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));

    let want_journald = match log.format.as_str() {
        "journald" => true,
        "text" => false,
        _ => stderr_is_journal(),
    };
    let mut journald_error = None;
    let journald = if want_journald {
        match tracing_journald::layer() {
            Ok(l) => Some(
                l.with_field_prefix(None)
                    .with_syslog_identifier("chat-zinx".into()),
            ),
            Err(e) => {
                journald_error = Some(e);
                None
            }
        }
    } else {
        None
    };
    let output = if journald.is_some() {
        Output::Journald
    } else {
        Output::Text
    };
    let text = (output == Output::Text).then(|| {
        use std::io::IsTerminal;
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
    });

    let (filter, filter_handle) = reload::Layer::new(filter);
    let (journald, journald_handle) = reload::Layer::new(journald);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(text)
        .try_init()
        .is_ok();
    let rust_log_valid = rust_log.is_some();
    if installed {
        let _ = STATE.set(State {
            filter: filter_handle,
            journald: journald_handle,
            rust_log,
        });
    }
    if !rust_log_valid {
        if let Some(v) = rust_log_raw {
            tracing::warn!(
                rust_log = %v,
                "RUST_LOG is not a valid tracing filter; using log.level instead (fix or unset RUST_LOG)"
            );
        }
    }
    if let Some(e) = journald_error {
        tracing::warn!(
            error = %e,
            "cannot reach journald (/run/systemd/journal/socket); logging to stderr instead (set log.format = \"text\" to stop trying)"
        );
    }
    output
}

/// Replaces the log filter with `filter` (a `log.level` value), unless `RUST_LOG` overrides it.
pub fn set_level(filter: &str) -> Result<LevelChange, LevelError> {
    let state = STATE.get().ok_or(LevelError::NotInitialised)?;
    if let Some(v) = &state.rust_log {
        return Ok(LevelChange::OverriddenByRustLog(v.clone()));
    }
    let new = EnvFilter::try_new(filter).map_err(|source| LevelError::Invalid {
        filter: filter.to_string(),
        source,
    })?;
    state
        .filter
        .reload(new)
        .map_err(|_| LevelError::NotInitialised)?;
    Ok(LevelChange::Applied)
}

/// Adds `NODE_ID=<id>` to every journald entry from now on (no effect on text output, whose
/// start-up lines name the node).
pub fn set_node_id(id: &str) {
    if let Some(state) = STATE.get() {
        let _ = state.journald.modify(|slot| {
            if let Some(layer) = slot.take() {
                *slot = Some(layer.with_custom_fields([("NODE_ID", id)]));
            }
        });
    }
}

/// Whether this process's stderr is the journal stream systemd connected it to.
pub fn stderr_is_journal() -> bool {
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(meta) => journal_stream_is(&var.to_string_lossy(), meta.dev(), meta.ino()),
        Err(_) => false,
    }
}

/// `JOURNAL_STREAM` is `<device>:<inode>` (decimal) of the stream; does it name this one?
pub fn journal_stream_is(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    matches!((d.parse::<u64>(), i.parse::<u64>()), (Ok(d), Ok(i)) if d == dev && i == ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_the_same_device_and_inode() {
        assert!(journal_stream_is("8:12345", 8, 12345));
        assert!(journal_stream_is("8:12345\n", 8, 12345));
        assert!(!journal_stream_is("8:12345", 8, 12346));
        assert!(!journal_stream_is("9:12345", 8, 12345));
        assert!(!journal_stream_is("", 8, 12345));
        assert!(!journal_stream_is("8", 8, 12345));
        assert!(!journal_stream_is("x:y", 8, 12345));
    }

    #[test]
    fn a_redirected_stream_is_not_the_journal() {
        // A file's device and inode are what JOURNAL_STREAM would have to name.
        let f = tempfile::tempfile().unwrap();
        let meta = f.metadata().unwrap();
        let var = format!("{}:{}", meta.dev(), meta.ino());
        assert!(journal_stream_is(&var, meta.dev(), meta.ino()));
        let other = tempfile::tempfile().unwrap().metadata().unwrap();
        assert!(!journal_stream_is(&var, other.dev(), other.ino()));
    }
}
