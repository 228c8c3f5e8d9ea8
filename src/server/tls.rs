//! TLS for chat clients: the certificate the TLS listener presents, loaded from PEM files and
//! swapped on SIGHUP without touching open connections, and the acceptor that wraps an
//! accepted socket (rustls with the `ring` provider, through `tokio-rustls`).
//!
//! The server configuration is built once; its certificate comes from [`CertResolver`], which
//! hands out the pair in force (an `Arc` behind a lock held only to clone it, never across an
//! `.await`). A reload builds the new pair first and swaps it in only when it loads, so a bad
//! file leaves the running pair in place; a handshake in progress keeps the pair it started
//! with, and established connections never look at it again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Why a certificate and key pair did not load. Each names the file to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the certificate file {} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\"): give the chain, the node's certificate first", path.display())]
    NoCertificate { path: PathBuf },
    #[error("the certificate file {} is not valid PEM: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("the key file {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}", path.display())]
    NoKey { path: PathBuf, reason: String },
    #[error("the key in {} cannot be used: {reason}", key.display())]
    BadKey { key: PathBuf, reason: String },
    #[error("the key in {} does not belong to the certificate in {}: give the key of that certificate", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS set-up failed: {0}")]
    Setup(String),
}

/// The crypto provider of every TLS connection of chat-zinx (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads and checks a certificate chain and its private key (PEM files).
pub fn load_pair(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read("the certificate file", cert_file)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: cert_file.to_path_buf(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_path_buf(),
        });
    }
    let key_pem = read("the key file", key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        path: key_file.to_path_buf(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: cert_file.to_path_buf(),
            key: key_file.to_path_buf(),
        },
        other => TlsError::BadKey {
            key: key_file.to_path_buf(),
            reason: other.to_string(),
        },
    })
}

/// Hands every handshake the certificate pair in force; [`CertResolver::set`] swaps it.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    pub fn new(pair: CertifiedKey) -> Self {
        CertResolver {
            current: RwLock::new(Arc::new(pair)),
        }
    }

    /// The pair new handshakes get from now on.
    pub fn set(&self, pair: CertifiedKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The TLS side of the chat listener: the acceptor and the certificate it presents.
pub struct TlsServer {
    acceptor: TlsAcceptor,
    resolver: Arc<CertResolver>,
    /// The files the pair in force came from.
    files: RwLock<(PathBuf, PathBuf)>,
}

impl TlsServer {
    /// Loads the pair from `cert_file` and `key_file` and builds the acceptor (TLS 1.2 and 1.3,
    /// no client certificates).
    pub fn new(cert_file: &Path, key_file: &Path) -> Result<TlsServer, TlsError> {
        let resolver = Arc::new(CertResolver::new(load_pair(cert_file, key_file)?));
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        Ok(TlsServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
            files: RwLock::new((cert_file.to_path_buf(), key_file.to_path_buf())),
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the pair again (SIGHUP), from the given files (the configured ones, which may
    /// have changed). On success new handshakes present it; on failure the pair in force stays
    /// and the error says which file is wrong and why. Open connections are not touched.
    pub fn reload(&self, cert_file: &Path, key_file: &Path) -> Result<(), TlsError> {
        let pair = load_pair(cert_file, key_file)?;
        self.resolver.set(pair);
        *self.files.write().unwrap_or_else(|e| e.into_inner()) =
            (cert_file.to_path_buf(), key_file.to_path_buf());
        Ok(())
    }

    /// The end-entity certificate presented to new handshakes (DER).
    pub fn certificate(&self) -> Option<CertificateDer<'static>> {
        self.resolver.current().cert.first().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let e = load_pair(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("cert.pem"), "{e}");
        std::fs::write(&cert, "not pem").unwrap();
        let e = load_pair(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
    }
}
