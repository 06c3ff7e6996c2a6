//! Who a federation client is: the configured peer whose CA its client
//! certificate chains to. The TLS handshake accepts a certificate only
//! when it chains to some peer's CA (a client without one gets through to
//! be refused, and logged, by the service); the service then names the
//! peer by the same check. Peers are read from the database again every
//! few seconds, so one added or removed takes effect without a restart.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ring::digest;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use tokio::sync::mpsc;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::{
    WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureScheme,
};

use crate::domain::Violations;
use crate::store::Store;

/// How often the peers are read again.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Refused handshakes waiting to be logged; more are dropped (a flood of
/// bad handshakes must not become a flood of rows).
const REFUSAL_BACKLOG: usize = 64;

/// Why a peer's CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BadCa {
    /// No certificate in it.
    #[error("holds no PEM certificate")]
    Empty,
    /// A certificate that cannot be read or serve as a trust anchor.
    #[error("holds a certificate that cannot be a trust anchor: {0}")]
    Unusable(String),
}

/// Whether `name` may name a peer: letters, digits, `.`, `_` and `-`, at
/// most 63, from a letter or digit (the database checks it too).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Whether `address` is `https://HOST:PORT`.
pub fn valid_address(address: &str) -> bool {
    address
        .parse::<http::Uri>()
        .is_ok_and(|u| u.scheme_str() == Some("https") && u.host().is_some() && u.port().is_some())
}

/// Every reason a peer (name, address, CA) cannot be added, each under
/// its field's name with `prefix` (`peer.` for the RPC's message).
pub fn check_peer(prefix: &str, name: &str, address: &str, ca_pem: &str) -> Violations {
    let mut v = Violations::default();
    if !valid_name(name) {
        v.add(
            format!("{prefix}name"),
            "must hold letters, digits, '.', '_' and '-' (at most 63), from a letter or digit",
        );
    }
    if !valid_address(address) {
        v.add(format!("{prefix}address"), "must be https://HOST:PORT");
    }
    if let Err(e) = anchors(ca_pem) {
        v.add(format!("{prefix}ca_pem"), e.to_string());
    }
    v
}

/// The trust anchors of a CA file.
pub fn anchors(ca_pem: &str) -> Result<Vec<TrustAnchor<'static>>, BadCa> {
    let certs = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BadCa::Unusable(e.to_string()))?;
    if certs.is_empty() {
        return Err(BadCa::Empty);
    }
    certs
        .iter()
        .map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .map(|a| a.to_owned())
                .map_err(|e| BadCa::Unusable(e.to_string()))
        })
        .collect()
}

/// The configured peers' names and trust anchors, shared by the TLS
/// handshake and the service.
#[derive(Debug)]
pub struct PeerCas {
    peers: RwLock<Vec<(String, Vec<TrustAnchor<'static>>)>>,
    algorithms: WebPkiSupportedAlgorithms,
    refused: mpsc::Sender<String>,
}

impl PeerCas {
    /// No peers yet, and where refused handshakes are told.
    fn new(refused: mpsc::Sender<String>) -> Self {
        Self {
            peers: RwLock::new(Vec::new()),
            algorithms: tokio_rustls::rustls::crypto::ring::default_provider()
                .signature_verification_algorithms,
            refused,
        }
    }

    /// Reads the peers from `store` now, then every second until the
    /// returned task is aborted; refused handshakes are logged there.
    pub async fn load(
        store: Store,
    ) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>), crate::store::StoreError> {
        let (refused, mut refusals) = mpsc::channel(REFUSAL_BACKLOG);
        let cas = Arc::new(Self::new(refused));
        cas.reload(&store).await?;
        let this = cas.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = this.reload(&store).await {
                            tracing::warn!(error = %e, "reading the federation peers failed");
                        }
                    }
                    Some(detail) = refusals.recv() => {
                        let logged = store.log_exchange(&crate::store::federation::ExchangeLog {
                            peer: "",
                            side: crate::store::federation::Side::Served,
                            call: "Handshake",
                            exchange_id: "",
                            elements_in: 0,
                            elements_out: 0,
                            outcome: "REFUSED_NOT_A_PEER",
                            detail: &detail,
                        }).await;
                        if let Err(e) = logged {
                            tracing::warn!(error = %e, "logging a refused federation handshake failed");
                        }
                    }
                }
            }
        });
        Ok((cas, task))
    }

    async fn reload(&self, store: &Store) -> Result<(), crate::store::StoreError> {
        let mut loaded = Vec::new();
        for peer in store.peers().await? {
            match anchors(&peer.ca_pem) {
                Ok(a) => loaded.push((peer.name, a)),
                Err(e) => tracing::warn!(peer = %peer.name, error = %e, "a peer's CA is unusable"),
            }
        }
        match self.peers.write() {
            Ok(mut peers) => *peers = loaded,
            Err(poisoned) => *poisoned.into_inner() = loaded,
        }
        Ok(())
    }

    /// The peer whose CA `chain` (leaf first) chains to, if any.
    pub fn peer_of(&self, chain: &[CertificateDer<'_>]) -> Option<String> {
        let (leaf, intermediates) = chain.split_first()?;
        let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
        let now = UnixTime::now();
        let peers = match self.peers.read() {
            Ok(peers) => peers,
            Err(poisoned) => poisoned.into_inner(),
        };
        peers
            .iter()
            .find(|(_, anchors)| {
                cert.verify_for_usage(
                    self.algorithms.all,
                    anchors,
                    intermediates,
                    now,
                    webpki::KeyUsage::client_auth(),
                    None,
                    None,
                )
                .is_ok()
            })
            .map(|(name, _)| name.clone())
    }
}

/// What a refused certificate is called in the log: its SHA-256.
pub fn certificate_id(cert: &CertificateDer<'_>) -> String {
    format!(
        "client certificate sha256:{}",
        hex::encode(digest::digest(&digest::SHA256, cert.as_ref()))
    )
}

/// The handshake's check of client certificates: one that chains to a
/// configured peer's CA, or none at all (refused by the service, which
/// logs it with the call).
#[derive(Debug)]
pub struct PeerVerifier(pub Arc<PeerCas>);

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Peers change at runtime; clients send their one certificate anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        if self.0.peer_of(&chain).is_some() {
            return Ok(ClientCertVerified::assertion());
        }
        let id = certificate_id(end_entity);
        tracing::warn!(certificate = %id, "federation handshake refused: no peer's CA signed the client certificate");
        // A full backlog drops the entry; the warning above still tells.
        let _ = self.0.refused.try_send(id);
        Err(TlsError::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.0.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.0.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms.supported_schemes()
    }
}
