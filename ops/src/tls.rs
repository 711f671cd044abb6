//! TLS of the agent channel: the controller's server certificate, read again when its files
//! change (cert-manager and Kubernetes Secrets rotate them in place), and clients that trust
//! only the CA they are given.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tracing::{info, warn};

/// How often a handshake may look at the certificate files for a change.
const RECHECK: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {why}", path.display())]
    File { path: PathBuf, why: String },
    #[error("{}: {what}", cert.display())]
    Pair { cert: PathBuf, what: String },
    #[error("TLS settings: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key, from PEM files, checked to belong together.
fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let file_error = |path: &Path| {
        let path = path.to_path_buf();
        move |e: rustls::pki_types::pem::Error| TlsError::File {
            path,
            why: e.to_string(),
        }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(file_error(cert))?;
    if chain.is_empty() {
        return Err(TlsError::File {
            path: cert.into(),
            why: "expected PEM certificates (BEGIN CERTIFICATE), found none".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(file_error(key))?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| TlsError::Pair {
        cert: cert.into(),
        what: format!("does not go with the key {}: {e}", key.display()),
    })
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The server's certificate, reloaded when its files change. A changed pair that does not
/// load (half written, mismatched) leaves the current one in use, with a warning.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Current>,
}

#[derive(Debug)]
struct Current {
    pair: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl Reloading {
    fn stamps(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        (modified(&self.cert), modified(&self.key))
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if current.checked.elapsed() >= RECHECK {
            current.checked = Instant::now();
            let stamps = self.stamps();
            if stamps != current.stamps {
                match load_pair(&self.cert, &self.key) {
                    Ok(pair) => {
                        info!(cert = %self.cert.display(), "serving the renewed certificate");
                        current.pair = Arc::new(pair);
                        current.stamps = stamps;
                    }
                    Err(e) => warn!("keeping the current certificate: {e}"),
                }
            }
        }
        Some(current.pair.clone())
    }
}

/// A TLS server's settings from a PEM certificate chain and key (HTTP/1.1).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let pair = load_pair(cert, key)?;
    let resolver = Reloading {
        cert: cert.into(),
        key: key.into(),
        state: Mutex::new(Current {
            pair: Arc::new(pair),
            stamps: (modified(cert), modified(key)),
            checked: Instant::now(),
        }),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An HTTP client builder that trusts the CA certificates in PEM file `ca` and nothing else:
/// the controller's own CA, not the public ones.
pub fn trusting(
    builder: reqwest::ClientBuilder,
    ca: &Path,
) -> Result<reqwest::ClientBuilder, TlsError> {
    let pem = std::fs::read(ca).map_err(|e| TlsError::File {
        path: ca.into(),
        why: e.to_string(),
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| TlsError::File {
        path: ca.into(),
        why: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: ca.into(),
            why: "expected PEM CA certificates (BEGIN CERTIFICATE), found none".into(),
        });
    }
    Ok(certs.into_iter().fold(
        builder.tls_built_in_root_certs(false).https_only(true),
        reqwest::ClientBuilder::add_root_certificate,
    ))
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    use super::*;
    use crate::http::{Bounds, serve};

    /// A CA, and a server certificate for 127.0.0.1 it signed (PEM cert, PEM key).
    fn pki(name: &str) -> (String, (String, String)) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, name);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = leaf.signed_by(&key, &issuer).unwrap().pem();
        (ca_pem, (cert, key.serialize_pem()))
    }

    /// GET /healthz over TLS, trusting the CA in `ca`: the body, or why it failed.
    async fn healthz(addr: std::net::SocketAddr, ca: &Path) -> Result<String, String> {
        let client = trusting(reqwest::Client::builder(), ca)
            .map_err(|e| e.to_string())?
            .build()
            .map_err(|e| e.to_string())?;
        let r = client
            .get(format!("https://{addr}/healthz"))
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        r.text().await.map_err(|e| e.to_string())
    }

    /// Clients trusting the server's CA are served; those trusting another CA refuse it; a
    /// renewed certificate (from another CA) is served once its files change, and a broken one
    /// is not taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn served_over_tls_to_clients_of_its_ca_and_renewed_in_place() {
        let dir = std::env::temp_dir().join(format!("md-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca1, (cert1, key1)) = pki("first");
        let (ca2, (cert2, key2)) = pki("second");
        let [ca1_file, ca2_file, cert_file, key_file] =
            ["ca1.pem", "ca2.pem", "cert.pem", "key.pem"].map(|f| dir.join(f));
        for (file, text) in [(&ca1_file, &ca1), (&ca2_file, &ca2), (&cert_file, &cert1)] {
            std::fs::write(file, text).unwrap();
        }
        std::fs::write(&key_file, &key1).unwrap();
        // A certificate that is not the key's is refused at start, naming both files.
        let e = server_config(&cert_file, &ca1_file)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca1.pem"), "{e}");
        std::fs::write(dir.join("bad-key.pem"), &key2).unwrap();
        let e = server_config(&cert_file, &dir.join("bad-key.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not go with the key") && e.contains("bad-key.pem"),
            "{e}"
        );

        let config = server_config(&cert_file, &key_file).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        let bounds = Bounds::within_fd_limit(16, Duration::from_secs(2));
        tokio::spawn(serve(
            listener,
            router,
            bounds,
            Some(config),
            std::future::pending(),
        ));

        assert_eq!(healthz(addr, &ca1_file).await.as_deref(), Ok("ok"));
        let refused = healthz(addr, &ca2_file).await.unwrap_err();
        assert!(refused.contains("UnknownIssuer"), "{refused}");
        // Plain HTTP to the TLS port is no way around it.
        let plain = reqwest::get(format!("http://{addr}/healthz")).await;
        assert!(plain.is_err() || !plain.unwrap().status().is_success());

        // Renewed in place: first a half-written pair (kept out), then a whole one.
        std::fs::write(&cert_file, &cert2).unwrap();
        tokio::time::sleep(RECHECK + Duration::from_millis(200)).await;
        assert_eq!(healthz(addr, &ca1_file).await.as_deref(), Ok("ok"));
        std::fs::write(&key_file, &key2).unwrap();
        tokio::time::sleep(RECHECK + Duration::from_millis(200)).await;
        // The first handshake after the check interval loads the renewed pair.
        assert_eq!(healthz(addr, &ca2_file).await.as_deref(), Ok("ok"));
        assert!(healthz(addr, &ca1_file).await.is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
