//! SASL authentication on a [`BrokerConnection`]: SaslHandshake, then SaslAuthenticate
//! round trips driven by rsasl (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; pure Rust).

use std::io::Cursor;

use bytes::Bytes;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use rsasl::prelude::{Mechname, SASLClient, SASLConfig};

use super::connection::BrokerConnection;
use crate::config::{SaslCredentials, SaslMechanism};
use crate::error::{Error, Result};

fn mechanism_name(m: SaslMechanism) -> &'static str {
    match m {
        SaslMechanism::Plain => "PLAIN",
        SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
        SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
    }
}

/// Authenticates `conn` with `creds`. Errors name the mechanism and the broker, never the
/// password.
pub(crate) async fn authenticate(conn: &BrokerConnection, creds: &SaslCredentials) -> Result<()> {
    let name = mechanism_name(creds.mechanism);
    let failed = |why: String| Error::Protocol(format!("SASL {name} with {}: {why}", conn.addr()));
    let handshake = conn
        .send(&SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(name)))
        .await?;
    if handshake.error_code != 0 {
        let offered: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
        return Err(Error::broker(
            handshake.error_code,
            format!(
                "SASL handshake with {} (broker offers {offered:?})",
                conn.addr()
            ),
            None,
        ));
    }
    let config = SASLConfig::with_credentials(
        None,
        creds.username.clone(),
        creds.password.expose().to_string(),
    )
    .map_err(|e| failed(e.to_string()))?;
    let mechname = Mechname::parse(name.as_bytes()).map_err(|e| failed(e.to_string()))?;
    let mut session = SASLClient::new(config)
        .start_suggested(&[mechname])
        .map_err(|e| failed(e.to_string()))?;
    let mut received: Option<Bytes> = None;
    loop {
        let mut out = Cursor::new(Vec::new());
        let state = session
            .step(received.as_deref(), &mut out)
            .map_err(|e| failed(e.to_string()))?;
        if state.has_sent_message() {
            let response = conn
                .send(
                    &SaslAuthenticateRequest::default()
                        .with_auth_bytes(Bytes::from(out.into_inner())),
                )
                .await?;
            if response.error_code != 0 {
                return Err(Error::broker(
                    response.error_code,
                    format!("SASL {name} authentication with {}", conn.addr()),
                    response.error_message.map(|m| m.to_string()),
                ));
            }
            received = Some(response.auth_bytes);
        }
        if state.is_finished() {
            return Ok(());
        }
    }
}
