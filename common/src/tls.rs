//! TLS for a server (the router's public API, as an option): a certificate chain and its private
//! key from PEM files, rustls with the `ring` provider, TLS 1.2 and 1.3, HTTP/1.1 by ALPN.
//! Keep-alive and every timeout of `http.rs` work the same over it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// A server's TLS settings: both files, or neither (plain HTTP).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's own certificate first.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: Option<PathBuf>,
}

/// The TLS flags of a server.
#[derive(Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain: serve HTTPS (with --tls-key-file).
    #[arg(long, env = "MEMRING_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, env = "MEMRING_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
}

impl TlsArgs {
    /// Lays the given flags over `config` (flags win).
    pub fn overlay(self, config: &mut TlsConfig) {
        crate::config::overlay(&mut config.tls_cert_file, self.tls_cert_file.map(Some));
        crate::config::overlay(&mut config.tls_key_file, self.tls_key_file.map(Some));
    }
}

impl TlsConfig {
    /// The acceptor these settings make, `None` for plain HTTP; an error names the bad file.
    pub fn acceptor(&self) -> anyhow::Result<Option<TlsAcceptor>> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => acceptor(cert, key).map(Some),
            _ => anyhow::bail!(
                "set both tls_cert_file and tls_key_file (--tls-cert-file, --tls-key-file), or neither"
            ),
        }
    }
}

/// The one way memring builds an HTTP client: reqwest is built with `rustls-no-provider`, and a
/// client built before a crypto provider is installed panics, even for plain http:// use. This
/// installs the provider first.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// Makes rustls' `ring` provider the process default (once; later calls do nothing), for the
/// TLS clients that take the default (reqwest's).
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may install it first; either way a provider is in place.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A TLS acceptor for the certificate chain in `cert` and the key in `key` (PEM files).
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| anyhow::anyhow!("cannot read the certificate file {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("the certificate file {} is not PEM: {e}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "the certificate file {} holds no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("cannot read a private key from {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| anyhow::anyhow!("the certificate and key do not make a TLS server: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
