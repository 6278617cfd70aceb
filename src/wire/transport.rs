//! The byte stream under a [`BrokerConnection`](super::BrokerConnection): plain TCP, or TLS
//! over TCP, chosen by `security.protocol` for every connection the client opens. There is
//! no fallback: a TLS configuration that cannot be used fails the connection, it never
//! downgrades to plaintext.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::error::{Error, Result};

/// Idle time before TCP keepalive probes start.
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// A connected stream to one broker.
pub(crate) enum Transport {
    /// `plaintext` / `sasl_plaintext`.
    Plain(TcpStream),
    /// `ssl` / `sasl_ssl`.
    #[cfg(feature = "tls-core")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Opens TCP to `addr` and, when `security.protocol` asks for it, runs the TLS handshake with
/// the broker's host name as SNI and for verification. Both together must finish within
/// `request.timeout.ms`. One attempt.
pub(crate) async fn connect(addr: &str, config: &Config) -> Result<Transport> {
    let timeout = config.request_timeout;
    let transport = tokio::time::timeout(timeout, open(addr, config))
        .await
        .map_err(|_| Error::Timeout {
            operation: if config.security_protocol.uses_tls() {
                format!("connect to {addr} (TCP and TLS handshake)")
            } else {
                format!("connect to {addr}")
            },
            after: timeout,
        })??;
    Ok(transport)
}

async fn open(addr: &str, config: &Config) -> Result<Transport> {
    let io = |source| Error::io(addr, source);
    let stream = TcpStream::connect(addr).await.map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    // Keepalive finds a peer that vanished without a FIN on a connection with nothing to send.
    socket2::SockRef::from(&stream)
        .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE))
        .map_err(io)?;
    if !config.security_protocol.uses_tls() {
        return Ok(Transport::Plain(stream));
    }
    #[cfg(feature = "tls-core")]
    {
        let Some(tls) = config.tls_client.clone() else {
            // `ConfigBuilder::build` sets it whenever the protocol uses TLS.
            return Err(Error::config(
                "security.protocol",
                "ssl",
                "TLS is configured but no TLS client configuration was built",
            ));
        };
        let name = server_name(addr)?;
        // A handshake takes a few round trips; one that is not done in half the request
        // timeout is talking to something that does not answer TLS (a plaintext Kafka
        // listener waits for the rest of a "frame" that is really a ClientHello).
        let limit = config.request_timeout / 2;
        let stream = tokio::time::timeout(
            limit,
            tokio_rustls::TlsConnector::from(tls).connect(name, stream),
        )
        .await
        .map_err(|_| Error::Timeout {
            operation: format!(
                "TLS handshake with {addr} (no TLS answer: is this a plaintext listener?)"
            ),
            after: limit,
        })?
        .map_err(|e| tls_error(addr, e))?;
        Ok(Transport::Tls(Box::new(stream)))
    }
    #[cfg(not(feature = "tls-core"))]
    Err(Error::config(
        "security.protocol",
        "ssl",
        "this build has no TLS: enable purekafka's `tls` feature (on by default)",
    ))
}

/// The error text for a response frame length that cannot be right. A TLS record read as a
/// Kafka length starts with its content type (alert 0x15, handshake 0x16) and version 0x03:
/// the broker speaks TLS and the client does not, which is said plainly.
pub(crate) fn bad_frame_length(len: i32) -> String {
    let [kind, major, ..] = len.to_be_bytes();
    if matches!(kind, 0x15 | 0x16) && major == 0x03 {
        format!(
            "the broker answered with TLS (a response frame \"length\" of {len} is a TLS record); \
             set security.protocol to ssl or sasl_ssl for this listener"
        )
    } else {
        // The length is a signed i32 on the wire: show it as the peer sent it.
        format!("response frame of {len} bytes")
    }
}

/// The first request on a new plaintext connection (ApiVersions) failed because the peer reset
/// or closed it: the usual cause is a TLS listener, so the error says so. The error stays an
/// [`Error::Io`] (retried within the reconnect budget): a restarting broker does the same.
///
/// Over TLS 1.3 a broker that requires a client certificate rejects a client without one only
/// after the client's handshake is done, with an alert that a reset may swallow: the same
/// failure then points at the client certificate.
pub(crate) fn first_request_failed(e: Error, config: &Config) -> Error {
    let hint = if !config.security_protocol.uses_tls() {
        "if this listener expects TLS, set security.protocol to ssl or sasl_ssl"
    } else if config.tls.certificate_location.is_none() && config.tls.certificate_pem.is_none() {
        "the broker ended the TLS connection after the handshake: does it require a client \
         certificate (ssl.certificate.location and ssl.key.location)?"
    } else {
        "the broker ended the TLS connection after the handshake: does it accept this client \
         certificate?"
    };
    match e {
        Error::Io { broker, source }
            if matches!(
                source.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionAborted
            ) =>
        {
            Error::io(
                broker,
                io::Error::new(
                    source.kind(),
                    format!("{source} on the first request (ApiVersions): {hint}"),
                ),
            )
        }
        other => other,
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed) as a rustls server
/// name: an IP address is verified against the certificate's IP SANs, a name against its DNS
/// SANs (and sent as SNI).
#[cfg(feature = "tls-core")]
fn server_name(addr: &str) -> Result<rustls::pki_types::ServerName<'static>> {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
        Error::config(
            "bootstrap.servers",
            addr,
            format!("not a host name TLS can verify: {e}"),
        )
    })
}

/// A failed handshake: a TLS-level failure (certificate, alert, not TLS at all) becomes
/// [`Error::Tls`], which is not retried; a broken connection stays [`Error::Io`].
#[cfg(feature = "tls-core")]
fn tls_error(addr: &str, e: io::Error) -> Error {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidMessage(_)) => Error::Tls {
            broker: addr.to_string(),
            reason: format!(
                "the broker did not answer with TLS ({e}); is this a plaintext port? \
                 (security.protocol ssl / sasl_ssl needs a TLS listener)"
            ),
        },
        Some(rustls::Error::AlertReceived(alert)) => Error::Tls {
            broker: addr.to_string(),
            reason: format!(
                "the broker refused the handshake with alert {alert:?}{}",
                if matches!(
                    alert,
                    rustls::AlertDescription::HandshakeFailure
                        | rustls::AlertDescription::CertificateRequired
                        | rustls::AlertDescription::BadCertificate
                        | rustls::AlertDescription::UnknownCA
                ) {
                    " (does it require a client certificate? set ssl.certificate.location and \
                     ssl.key.location)"
                } else {
                    ""
                }
            ),
        },
        Some(other) => Error::Tls {
            broker: addr.to_string(),
            reason: match other {
                rustls::Error::InvalidCertificate(cert) => format!(
                    "the broker's certificate was rejected: {}",
                    describe_certificate_error(cert)
                ),
                other => other.to_string(),
            },
        },
        None => Error::io(
            addr,
            io::Error::new(e.kind(), format!("during the TLS handshake: {e}")),
        ),
    }
}

#[cfg(feature = "tls-core")]
fn describe_certificate_error(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match e {
        C::UnknownIssuer => {
            "it is not signed by a trusted CA (unknown issuer; set ssl.ca.location \
                             to the CA that signed the broker's certificate)"
                .to_string()
        }
        C::Expired | C::ExpiredContext { .. } => format!("it has expired ({e:?})"),
        C::NotValidYet | C::NotValidYetContext { .. } => format!("it is not valid yet ({e:?})"),
        C::NotValidForName | C::NotValidForNameContext { .. } => format!(
            "it is not valid for the host name or IP address in bootstrap.servers / the \
             advertised listener ({e:?}); ssl.endpoint.identification.algorithm=none skips \
             this check"
        ),
        other => format!("{other:?}"),
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls-core")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls-core")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "tls-core")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls-core")]
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls-core")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls-core")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
