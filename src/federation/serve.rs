//! The federation listener: `FederationService` alone, under mutual TLS
//! with this registry's certificate, clients checked against the peers'
//! CAs. No API key is read here, and no other service is reachable.

use std::future::Future;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::rustls::ServerConfig;

use crate::api::federation::FederationApi;
use crate::incoming::{ConnectionLimits, TlsSetupError, incoming};
use crate::wire::pb::federation_service_server::FederationServiceServer;

use super::MAX_BATCH;
use super::peers::{PeerCas, PeerVerifier};

/// The largest message a federation call carries: a full batch of
/// elements with their framing, and room to spare.
pub const MAX_MESSAGE_BYTES: usize = MAX_BATCH * 48 + 64 * 1024;

/// Connections the federation listener holds at once: a few peers.
const MAX_CONNECTIONS: usize = 64;

/// The listener's TLS: this registry's certificate and key (PEM), HTTP/2
/// by ALPN, client certificates checked by `peers`.
pub fn tls_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    peers: Arc<PeerCas>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsSetupError::Pem("FEDERATION_CERT_FILE"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| TlsSetupError::Pem("FEDERATION_KEY_FILE"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(PeerVerifier(peers)))
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `api` on `listener` with `tls` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    api: FederationApi,
    handshake_timeout: std::time::Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (stop, stopped) = watch::channel(false);
    let connections = incoming(
        listener,
        Some(tls),
        ConnectionLimits {
            max_connections: MAX_CONNECTIONS,
            handshake_timeout,
        },
        stopped,
    );
    let service = FederationServiceServer::new(api)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(connections, async {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await
}
