//! TLS for both sides of the data plane (rustls with the ring provider):
//! server and client configurations from PEM files, both offering only
//! HTTP/2 (ALPN `h2`), and [`Io`], a connection that is plain TCP or TLS.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// TLS configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The name to verify backends against is not a valid DNS name or IP.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Pem {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// A server configuration from a PEM certificate chain and a PEM private key,
/// offering HTTP/2 only.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// How to reach backends over TLS: whom to trust and which name to verify.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// The rustls configuration (ALPN `h2`).
    pub config: Arc<rustls::ClientConfig>,
    /// The name every backend's certificate must carry (backends are dialled
    /// by address, so the name cannot come from the address).
    pub server_name: ServerName<'static>,
}

impl ClientTls {
    /// Trusts the PEM certificates in `ca` and verifies backends as `server_name`.
    pub fn new(ca: &Path, server_name: &str) -> Result<ClientTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(ca)? {
            roots.add(c)?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TlsError::ServerName(server_name.to_string()))?;
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
        })
    }

    /// Runs the TLS handshake on `tcp`.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<Io> {
        let c = tokio_rustls::TlsConnector::from(self.config.clone());
        let s = c.connect(self.server_name.clone(), tcp).await?;
        Ok(Io::ClientTls(Box::new(s)))
    }
}

/// Dials `addr` (TCP_NODELAY: small gRPC frames must not wait for Nagle),
/// then runs the TLS handshake when `tls` is given; each step within `limit`.
pub async fn dial(
    addr: std::net::SocketAddr,
    tls: Option<ClientTls>,
    limit: std::time::Duration,
) -> io::Result<Io> {
    let tcp = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => Ok(Io::Plain(tcp)),
        Some(t) => tokio::time::timeout(limit, t.connect(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?,
    }
}

/// A connection: plain TCP, or TLS over TCP (either side).
#[derive(Debug)]
pub enum Io {
    /// Plain TCP (h2c).
    Plain(TcpStream),
    /// TLS, we dialled.
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// TLS, we accepted.
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Io::ClientTls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            Io::ServerTls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::ClientTls(s) => s.is_write_vectored(),
            Io::ServerTls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_pem_files_and_says_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["backend.test".into()]).unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        server_config(&cert, &key).expect("server config");
        ClientTls::new(&cert, "backend.test").expect("client config");

        let e = server_config(&dir.path().join("nope.pem"), &key)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let e = server_config(&key, &key).unwrap_err().to_string();
        assert!(
            e.contains("key.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        assert!(ClientTls::new(&cert, "not a name!").is_err());
    }
}
