//! The HTTP/1.1 server every govbus API is served through: the gateway, the
//! schema registry and the sink's live-stream (SSE) endpoint.
//!
//! Key items: [`serve`] (the accept loop), [`Options`] (its bounds and TLS),
//! [`Tls::load`] (a rustls server configuration from PEM files),
//! [`PeerCertificate`] (the verified client certificate, as a request
//! extension) and [`Credentials`] (which department a bearer token or a
//! client certificate belongs to: the one table the gateway, the live
//! streams and the live interfaces authenticate against).
//!
//! `axum::serve` has no bound on connections and no header-read timeout, so
//! an unauthenticated client could hold memory and sockets without limit.
//! Here:
//!
//! - at most `max_connections` connections at once; one more is closed at
//!   accept (and reported to `on_refused`);
//! - the TLS handshake and the request headers must each complete within
//!   `header_timeout`, and the headers fit in [`MAX_HEADER_BYTES`], or the
//!   connection is closed.
//!
//! With TLS, a client certificate is optional unless the application says
//! otherwise: a client CA bundle makes the server *ask* for a certificate and
//! verify any it is given against that bundle (a certificate from another CA
//! fails the handshake), while clients without one still connect and
//! authenticate with a bearer token. Mapping a certificate to a department is
//! the application's job, not this crate's: it only hands the verified leaf
//! certificate to every request of the connection, and [`Credentials`]
//! looks it up.
//!
//! What this crate does not do: HTTP/2, authorization decisions (what a
//! department may do is each API's), or reading bodies.

mod credentials;

pub use credentials::{certificate_fingerprint, hash_token, Credentials, CredentialsError};

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Semaphore};

/// Largest request head (request line and headers) a connection may buffer.
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// The verified client certificate (DER) of the connection a request came
/// on; present only on TLS connections whose client sent a certificate that
/// the configured client CA bundle verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate(pub Vec<u8>);

/// What can stop a TLS configuration from loading.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file that cannot be read or parsed.
    #[error("{path}: {error}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        error: rustls::pki_types::pem::Error,
    },
    /// A PEM file with no certificate in it.
    #[error("{path}: no CERTIFICATE in the file")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The client CA bundle has a certificate rustls cannot use as a root.
    #[error("{path}: {error}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        error: rustls::Error,
    },
    /// The client certificate verifier cannot be built.
    #[error("client CA bundle: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The certificate chain and key do not make a server configuration.
    #[error("server certificate and key: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS server configuration.
#[derive(Clone)]
pub struct Tls {
    config: Arc<rustls::ServerConfig>,
    client_ca: bool,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("client_ca", &self.client_ca)
            .finish_non_exhaustive()
    }
}

/// Every certificate in a PEM file, in order (a chain or a CA bundle).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |error| TlsError::Pem {
        path: path.to_owned(),
        error,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

impl Tls {
    /// Loads the server's certificate chain and private key (PEM) and,
    /// optionally, a bundle of CAs whose client certificates are accepted.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Tls, TlsError> {
        let chain = read_certificates(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|error| TlsError::Pem {
            path: key.to_owned(),
            error,
        })?;
        let roots = match client_ca {
            None => None,
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in read_certificates(path)? {
                    roots.add(c).map_err(|error| TlsError::ClientCa {
                        path: path.to_owned(),
                        error,
                    })?;
                }
                Some(roots)
            }
        };
        Tls::from_parts(chain, key, roots)
    }

    /// A configuration from parsed parts (tests build them in memory).
    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        client_roots: Option<rustls::RootCertStore>,
    ) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let client_ca = client_roots.is_some();
        let builder = match client_roots {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                // Asked for, verified if given, not required: token clients
                // keep working on the same port.
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .allow_unauthenticated()
                .build()?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            config: Arc::new(config),
            client_ca,
        })
    }

    /// Whether clients may present certificates (a client CA bundle is set).
    pub fn verifies_clients(&self) -> bool {
        self.client_ca
    }
}

/// The server's bounds and transport.
#[derive(Clone)]
pub struct Options {
    /// Open connections at once; one more is closed at accept. Default 1,024.
    pub max_connections: usize,
    /// Time for the TLS handshake, and for a request's headers, to arrive. Default 10 s.
    pub header_timeout: Duration,
    /// How long open connections may take to finish at shutdown. Default 5 s.
    pub drain: Duration,
    /// Serve TLS instead of plain HTTP. Default none.
    pub tls: Option<Tls>,
    /// Called for each connection closed at accept because the cap is reached.
    pub on_refused: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(5),
            tls: None,
            on_refused: None,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("max_connections", &self.max_connections)
            .field("header_timeout", &self.header_timeout)
            .field("drain", &self.drain)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets open connections
/// finish their request (at most `options.drain`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = options.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    let acceptor = options
        .tls
        .as_ref()
        .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
    let header_timeout = options.header_timeout;
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(message = "Accept failed.", %error);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if let Some(f) = &options.on_refused {
                f();
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let stop = stop_rx.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Some(acceptor) = acceptor else {
                connection(stream, app, header_timeout, stop).await;
                return;
            };
            let tls = match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(message = "TLS handshake failed.", %error);
                    return;
                }
                Err(_) => return,
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| PeerCertificate(c.as_ref().to_vec()));
            let app = match peer {
                Some(peer) => app.layer(axum::Extension(peer)),
                None => app,
            };
            connection(tls, app, header_timeout, stop).await;
        });
    }
    let _ = stop_tx.send(true);
    // Wait for open connections to finish their request.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(options.drain, permits.acquire_many(all)).await;
    Ok(())
}

/// One connection, until the client closes it or the server stops.
async fn connection<I>(
    io: I,
    app: axum::Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stopped => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
