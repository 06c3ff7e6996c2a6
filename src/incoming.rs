//! Accepting connections. At most `MAX_CONNECTIONS` are open at once (one
//! more is closed as soon as it is accepted), and each has
//! `HANDSHAKE_TIMEOUT_SECS` to finish its TLS handshake and send the HTTP/2
//! preface before it is closed: a socket that says nothing holds a small
//! task for a few seconds, never a slot for good, and no HTTP/2 state is
//! built for it. What reaches tonic is a connection that has begun HTTP/2.
//!
//! TLS is done here rather than by tonic so that one deadline covers the
//! TLS handshake and the preface after it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::config::TlsPem;
use crate::throttled_warn;

/// What every HTTP/2 client sends first.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long accepting pauses after an error such as running out of file
/// descriptors, which would otherwise repeat at once.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Connections ready for tonic, waiting for it to take them.
const READY_BUFFER: usize = 64;

/// How many connections a listener holds and how long one may take to begin.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once, beginning or serving.
    pub max_connections: usize,
    /// Time from accepting a connection to its HTTP/2 preface, TLS
    /// handshake included.
    pub handshake_timeout: Duration,
}

/// Why TLS could not be set up from the configured files.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file holds no certificate or key that can be read.
    #[error("{0}: cannot read it as PEM")]
    Pem(&'static str),
    /// rustls refused the certificate, key or CA.
    #[error("TLS: {0}")]
    Rustls(#[from] tokio_rustls::rustls::Error),
    /// The client CA cannot verify client certificates.
    #[error("TLS client CA: {0}")]
    ClientCa(#[from] tokio_rustls::rustls::server::VerifierBuilderError),
}

/// The listener's TLS settings: its certificate and key, HTTP/2 by ALPN,
/// and with a client CA, client certificates from it required.
pub fn tls_config(pem: &TlsPem) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(&pem.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsSetupError::Pem("TLS_CERT_FILE"))?;
    let key =
        PrivateKeyDer::from_pem_slice(&pem.key).map_err(|_| TlsSetupError::Pem("TLS_KEY_FILE"))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &pem.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                let cert = cert.map_err(|_| TlsSetupError::Pem("TLS_CLIENT_CA_FILE"))?;
                roots.add(cert)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The connections `listener` accepts, each once it has begun HTTP/2 (over
/// TLS with `tls`), until `stop` says true. Accepting goes on in a task of
/// its own, so a slow handshake holds up no other connection.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    limits: ConnectionLimits,
    stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<Connection>> {
    let (ready, connections) = mpsc::channel(READY_BUFFER);
    tokio::spawn(accept(
        listener,
        tls.map(TlsAcceptor::from),
        limits,
        ready,
        stop,
    ));
    ReceiverStream::new(connections)
}

async fn accept(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    ready: mpsc::Sender<io::Result<Connection>>,
    stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            () = stopped(stop.clone()) => return,
            () = ready.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) {
                    throttled_warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            throttled_warn!(
                max_connections = limits.max_connections,
                "connection closed: as many connections are open as MAX_CONNECTIONS allows"
            );
            drop(tcp);
            continue;
        };
        // Without TCP_NODELAY a response's header and data frames wait on the
        // peer's delayed ACK (40 ms on Linux) whenever they leave as separate writes.
        let _ = tcp.set_nodelay(true);
        let begun = begin(tcp, remote, tls.clone(), slot);
        let (ready, stop) = (ready.clone(), stop.clone());
        let timeout = limits.handshake_timeout;
        tokio::spawn(async move {
            tokio::select! {
                () = stopped(stop) => {}
                begun = tokio::time::timeout(timeout, begun) => match begun {
                    Ok(Ok(connection)) => {
                        let _ = ready.send(Ok(connection)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "connection closed before HTTP/2 began");
                    }
                    Err(_) => {
                        throttled_warn!(
                            %remote,
                            "connection closed: no TLS handshake or HTTP/2 preface within HANDSHAKE_TIMEOUT_SECS"
                        );
                    }
                },
            }
        });
    }
}

/// Resolves once `stop` says true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The TLS handshake, if any, and the HTTP/2 preface.
async fn begin(
    tcp: TcpStream,
    remote: SocketAddr,
    tls: Option<TlsAcceptor>,
    slot: OwnedSemaphorePermit,
) -> io::Result<Connection> {
    let (io, peer_certificates) = match tls {
        Some(acceptor) => {
            let mut stream = acceptor.accept(tcp).await?;
            let certs = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|certs| Arc::new(certs.to_vec()));
            read_preface(&mut stream).await?;
            (Io::Tls(Box::new(stream)), certs)
        }
        None => {
            let mut tcp = tcp;
            read_preface(&mut tcp).await?;
            (Io::Plain(tcp), None)
        }
    };
    Ok(Connection {
        io,
        replayed: 0,
        info: ConnectionInfo {
            remote_addr: remote,
            peer_certificates,
        },
        _slot: slot,
    })
}

async fn read_preface<IO: AsyncRead + Unpin>(io: &mut IO) -> io::Result<()> {
    let mut preface = [0u8; PREFACE.len()];
    io.read_exact(&mut preface).await?;
    if &preface == PREFACE {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidData, "not HTTP/2"))
    }
}

/// Who is at the other end of a connection; every request carries it in
/// its extensions.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The peer's address.
    pub remote_addr: SocketAddr,
    /// The client's certificate chain, leaf first, with mutual TLS.
    pub peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection that has begun HTTP/2, holding its slot until it closes.
/// The preface it sent was read to check it; reading gives it again first.
pub struct Connection {
    io: Io,
    /// How much of the preface has been given back.
    replayed: usize,
    info: ConnectionInfo,
    _slot: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("remote_addr", &self.info.remote_addr)
            .finish_non_exhaustive()
    }
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.replayed < PREFACE.len() {
            let rest = &PREFACE[this.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            return Poll::Ready(Ok(()));
        }
        match &mut this.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, data),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(tcp) => tcp.is_write_vectored(),
            Io::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn listening(
        limits: ConnectionLimits,
    ) -> (
        SocketAddr,
        ReceiverStream<io::Result<Connection>>,
        watch::Sender<bool>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        (addr, incoming(listener, None, limits, stopped), stop)
    }

    /// Reads until the peer closes; true when it did.
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn a_connection_that_sends_its_preface_is_handed_over_preface_first() {
        use futures::StreamExt;
        let limits = ConnectionLimits {
            max_connections: 1,
            handshake_timeout: Duration::from_secs(10),
        };
        let (addr, mut connections, _stop) = listening(limits).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(PREFACE).await.unwrap();
        client.write_all(b"settings").await.unwrap();
        let mut connection = connections.next().await.unwrap().unwrap();
        let mut read = vec![0u8; PREFACE.len() + 8];
        connection.read_exact(&mut read).await.unwrap();
        assert_eq!(&read[..PREFACE.len()], PREFACE);
        assert_eq!(&read[PREFACE.len()..], b"settings");
        assert_eq!(
            connection.connect_info().remote_addr,
            client.local_addr().unwrap()
        );

        // Its slot is taken: the next connection is closed at once.
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut second).await);
        drop(connection);
        let mut third = TcpStream::connect(addr).await.unwrap();
        third.write_all(PREFACE).await.unwrap();
        assert!(
            connections.next().await.unwrap().is_ok(),
            "the slot came back"
        );
    }

    #[tokio::test]
    async fn silence_and_other_protocols_are_closed() {
        let limits = ConnectionLimits {
            max_connections: 8,
            handshake_timeout: Duration::from_millis(200),
        };
        let (addr, _connections, _stop) = listening(limits).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(&PREFACE[..10]).await.unwrap();
        let mut http1 = TcpStream::connect(addr).await.unwrap();
        http1
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        for stream in [&mut silent, &mut half, &mut http1] {
            assert!(closed(stream).await);
        }
    }

    #[test]
    fn pem_that_is_not_a_certificate_is_named() {
        let pem = TlsPem {
            cert: b"not pem".to_vec(),
            key: b"not pem".to_vec(),
            client_ca: None,
        };
        let refused = tls_config(&pem).unwrap_err();
        assert!(refused.to_string().contains("TLS_KEY_FILE"), "{refused}");
    }
}
