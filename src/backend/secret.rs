//! Secrets of the backends (passwords, tokens, NKey seeds, credentials, TLS keys), read from
//! files at start: a file another user can read is refused, like the token secret, and a
//! secret never shows in a log line or a `Debug` print.

use std::fmt;
use std::path::Path;

/// A secret read from a file. `Debug` and `Display` show `***`; [`Secret::expose`] is the one
/// way to the value, at the call that hands it to a client library.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself: only for the client library that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why a secret file cannot be used; the message names the key that points at the file.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read {key} {path}: {source}; check the path and that the user chat-zinx runs as can read the file")]
    Read {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// Anyone who can read it can act as this node towards the backend.
    #[error("{key} {path} can be read by other users (mode {mode:04o}): run `chmod 600 {path}` (owned by the user chat-zinx runs as), then start again")]
    TooOpen {
        key: &'static str,
        path: String,
        mode: u32,
    },
    #[error("{key} {path} is empty: write the secret into it")]
    Empty { key: &'static str, path: String },
    #[error("{key} {path} is not UTF-8 text: a secret file holds the secret as text")]
    NotText { key: &'static str, path: String },
}

/// Refuses a file that its group or other users can read (the token secret's rule).
pub fn check_private(key: &'static str, path: &Path) -> Result<(), SecretFileError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| SecretFileError::Read {
        key,
        path: shown.clone(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(SecretFileError::TooOpen {
                key,
                path: shown,
                mode: mode & 0o7777,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    Ok(())
}

/// The secret in the file at `path` (set by the configuration key `key`), without the
/// whitespace around it (a trailing newline is common). Refused when group or others may read
/// the file, or when it is empty.
pub fn read_secret(key: &'static str, path: &Path) -> Result<Secret, SecretFileError> {
    check_private(key, path)?;
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| SecretFileError::Read {
        key,
        path: shown.clone(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| SecretFileError::NotText {
        key,
        path: shown.clone(),
    })?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(SecretFileError::Empty { key, path: shown });
    }
    Ok(Secret::new(trimmed))
}

/// Why a CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("cannot read {key} {path}: {source}; check the path and that the user chat-zinx runs as can read the file")]
    Read {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{key} {path} holds no usable PEM certificate ({detail}): it should hold the CA certificate(s) that signed the server's certificate, as PEM")]
    NoCertificate {
        key: &'static str,
        path: String,
        detail: String,
    },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

/// A rustls client configuration (ring) that trusts exactly the CA certificates in the PEM
/// file at `path` (set by the configuration key `key`).
pub fn tls_client_config(
    key: &'static str,
    path: &Path,
) -> Result<rustls::ClientConfig, CaFileError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| CaFileError::Read {
        key,
        path: shown.clone(),
        source,
    })?;
    let no_cert = |detail: String| CaFileError::NoCertificate {
        key,
        path: shown.clone(),
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| no_cert(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(no_cert("no certificate found".into()));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CaFileError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_private_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o400] {
            let p = write(dir.path(), "pw", "  s3cret \n", mode);
            assert_eq!(
                read_secret("nats.password_file", &p).unwrap().expose(),
                "s3cret"
            );
        }
    }

    #[test]
    fn an_open_empty_or_missing_file_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o640, 0o604, 0o644] {
            let p = write(dir.path(), "open", "s3cret", mode);
            let e = read_secret("redis.password_file", &p).unwrap_err();
            assert!(
                matches!(e, SecretFileError::TooOpen { .. }),
                "{mode:o}: {e}"
            );
            let text = e.to_string();
            assert!(
                text.contains("redis.password_file") && text.contains("chmod 600"),
                "{text}"
            );
            assert!(!text.contains("s3cret"), "{text}");
        }
        let p = write(dir.path(), "empty", "\n", 0o600);
        let e = read_secret("consul.token_file", &p).unwrap_err();
        assert!(matches!(e, SecretFileError::Empty { .. }), "{e}");
        let e = read_secret("nats.token_file", &dir.path().join("nope")).unwrap_err();
        assert!(matches!(e, SecretFileError::Read { .. }), "{e}");
        assert!(e.to_string().contains("nats.token_file"), "{e}");
    }

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
    }
}
