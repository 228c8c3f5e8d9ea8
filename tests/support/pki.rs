//! Certificates for TLS tests, made by a CA of the test's own (rcgen): the CA's PEM file is what
//! a client trusts (`--ca`), and it issues server certificates for `localhost` and 127.0.0.1.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate (PEM), as a client is given it.
    pub pem_file: PathBuf,
}

impl Ca {
    /// A new CA; its certificate is written to `dir/NAME-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("chat-zinx test CA {name}"));
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem_file, cert.pem()).unwrap();
        Ca {
            issuer: Issuer::new(params, key),
            pem_file,
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1: (certificate PEM, key PEM, DER).
    pub fn issue(&self) -> (String, String, Vec<u8>) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "chat-zinx test node");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// Issues a certificate and writes it and its key to `cert_file` and `key_file`.
    pub fn issue_to(&self, cert_file: &Path, key_file: &Path) -> Vec<u8> {
        let (cert, key, der) = self.issue();
        std::fs::write(cert_file, cert).unwrap();
        std::fs::write(key_file, key).unwrap();
        der
    }

    /// The client's TLS settings trusting this CA only.
    pub fn client(&self) -> chat_zinx::client::connection::TlsClient {
        chat_zinx::client::connection::TlsClient::new(Some(&self.pem_file), None).unwrap()
    }
}
