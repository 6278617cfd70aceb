//! SASL authentication on a [`BrokerConnection`]: SaslHandshake, then SaslAuthenticate round
//! trips. PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 are driven by rsasl (pure Rust); OAUTHBEARER
//! (KIP-255, RFC 7628) is built here: a token from the configured provider, or librdkafka's
//! unsecured JWT from `sasl.oauthbearer.config`.
//!
//! Every refusal is an [`Error::Authentication`] naming broker, mechanism and user (never the
//! password or token), which is not retriable. The session lifetime the broker returns
//! (SaslAuthenticate v1+, KIP-368) is handed back so that the connection can be replaced
//! before it runs out.

use std::io::Cursor;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use rsasl::prelude::{Mechname, SASLClient, SASLConfig};

use super::connection::BrokerConnection;
use crate::config::{Config, OAuthBearerToken, SaslMechanism, Secret};
use crate::error::{Error, Result};

/// Authenticates `conn` as `config` says. Returns the session lifetime the broker gave
/// (KIP-368), if any.
pub(crate) async fn authenticate(
    conn: &BrokerConnection,
    config: &Config,
) -> Result<Option<Duration>> {
    let Some(creds) = &config.sasl else {
        return Ok(None);
    };
    let mechanism = creds.mechanism;
    let name = mechanism.name();
    let token = if mechanism == SaslMechanism::OAuthBearer {
        Some(oauthbearer_token(conn, config).await?)
    } else {
        None
    };
    let user = match &token {
        Some(t) => t.principal.clone(),
        None => creds.username.clone(),
    };
    let refused = |reason: String| Error::Authentication {
        broker: conn.addr().to_string(),
        mechanism: name.to_string(),
        user: user.clone(),
        reason,
    };

    // A broker that lacks the mechanism should answer UNSUPPORTED_SASL_MECHANISM; some (tansu)
    // close the connection instead. Right after a successful ApiVersions on the same
    // connection that is a refusal, not a network fault: reported as such, not retried.
    let handshake = conn
        .send(&SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(name)))
        .await
        .map_err(|e| match e {
            Error::Io { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                refused(format!(
                    "the broker closed the connection when asked for {name} ({source}): it \
                     does not enable this mechanism"
                ))
            }
            other => other,
        })?;
    if handshake.error_code != 0 {
        let offered: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
        return Err(refused(if handshake.error_code == 33 {
            format!("the broker does not enable {name}; it offers {offered:?}")
        } else {
            format!(
                "SaslHandshake refused with error code {} (the broker offers {offered:?})",
                handshake.error_code
            )
        }));
    }

    if let Some(token) = token {
        return oauthbearer_exchange(conn, &token, &refused).await;
    }

    let sasl_config = SASLConfig::with_credentials(
        None,
        creds.username.clone(),
        creds.password.expose().to_string(),
    )
    .map_err(|e| refused(e.to_string()))?;
    let mechname = Mechname::parse(name.as_bytes()).map_err(|e| refused(e.to_string()))?;
    let mut session = SASLClient::new(sasl_config)
        .start_suggested(&[mechname])
        .map_err(|e| refused(e.to_string()))?;
    let mut received: Option<Bytes> = None;
    let mut lifetime = None;
    loop {
        let mut out = Cursor::new(Vec::new());
        let state = session
            .step(received.as_deref(), &mut out)
            .map_err(|e| refused(format!("the broker's answer ends the exchange: {e}")))?;
        if state.has_sent_message() {
            let response = conn
                .send(
                    &SaslAuthenticateRequest::default()
                        .with_auth_bytes(Bytes::from(out.into_inner())),
                )
                .await?;
            if response.error_code != 0 {
                return Err(refused(broker_refusal(
                    response.error_code,
                    response.error_message.as_ref().map(|m| m.as_str()),
                )));
            }
            lifetime = session_lifetime(response.session_lifetime_ms);
            received = Some(response.auth_bytes);
        }
        if state.is_finished() {
            return Ok(lifetime);
        }
    }
}

fn broker_refusal(code: i16, message: Option<&str>) -> String {
    let what = if code == 58 {
        "authentication failed (wrong password, unknown user or a mechanism the user has no \
         credentials for)"
            .to_string()
    } else {
        format!("refused with error code {code}")
    };
    match message {
        Some(m) if !m.is_empty() => format!("{what}: {m}"),
        _ => what,
    }
}

fn session_lifetime(ms: i64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms as u64))
}

async fn oauthbearer_token(conn: &BrokerConnection, config: &Config) -> Result<OAuthBearerToken> {
    if let Some(provider) = &config.oauthbearer_provider {
        return provider().await.map_err(|reason| Error::Authentication {
            broker: conn.addr().to_string(),
            mechanism: "OAUTHBEARER".into(),
            user: String::new(),
            reason: format!("the token provider failed: {reason}"),
        });
    }
    unsecured_jwt(config.oauthbearer_config.as_deref().unwrap_or(""))
}

/// The OAUTHBEARER client message (RFC 7628 §3.1, with Kafka's extensions, KIP-342):
/// `n,,` `^A` `auth=Bearer <token>` (`^A` `key=value`)* `^A^A`.
pub(crate) fn oauthbearer_initial_response(token: &OAuthBearerToken) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.value.expose().len() + 32);
    out.extend_from_slice(b"n,,\x01auth=Bearer ");
    out.extend_from_slice(token.value.expose().as_bytes());
    for (k, v) in &token.extensions {
        out.push(1);
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(b"\x01\x01");
    out
}

async fn oauthbearer_exchange(
    conn: &BrokerConnection,
    token: &OAuthBearerToken,
    refused: &impl Fn(String) -> Error,
) -> Result<Option<Duration>> {
    let response = conn
        .send(
            &SaslAuthenticateRequest::default()
                .with_auth_bytes(Bytes::from(oauthbearer_initial_response(token))),
        )
        .await?;
    if response.error_code != 0 {
        return Err(refused(broker_refusal(
            response.error_code,
            response.error_message.as_ref().map(|m| m.as_str()),
        )));
    }
    if response.auth_bytes.is_empty() {
        return Ok(session_lifetime(response.session_lifetime_ms));
    }
    // RFC 7628 §3.2.2: a server error arrives as a JSON challenge; the client answers with a
    // single ^A and the server then fails the exchange.
    let status = String::from_utf8_lossy(&response.auth_bytes).into_owned();
    let last = conn
        .send(&SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\x01")))
        .await;
    let message = match last {
        Ok(r) => r.error_message.map(|m| m.to_string()),
        Err(_) => None,
    };
    Err(refused(format!(
        "the broker rejected the token: {status}{}",
        message.map(|m| format!(" ({m})")).unwrap_or_default()
    )))
}

/// librdkafka's unsecured JWT for development (`enable.sasl.oauthbearer.unsecure.jwt=true`):
/// `sasl.oauthbearer.config` is `principal=NAME [principalClaimName=sub] [scope=a,b]
/// [scopeClaimName=scope] [lifeSeconds=3600] [extension_KEY=VALUE ...]`, and the token is
/// `base64url({"alg":"none"}) . base64url(claims) .` with an empty signature.
pub(crate) fn unsecured_jwt(settings: &str) -> Result<OAuthBearerToken> {
    let bad = |why: String| Error::config("sasl.oauthbearer.config", settings, why);
    let mut principal = None;
    let mut principal_claim = "sub".to_string();
    let mut scope: Vec<String> = Vec::new();
    let mut scope_claim = "scope".to_string();
    let mut life = 3600u64;
    let mut extensions = Vec::new();
    for pair in settings.split_whitespace() {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("`{pair}` is not key=value")))?;
        match k {
            "principal" => principal = Some(v.to_string()),
            "principalClaimName" => principal_claim = v.to_string(),
            "scope" => {
                scope = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            }
            "scopeClaimName" => scope_claim = v.to_string(),
            "lifeSeconds" => {
                life = v
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| bad(format!("lifeSeconds `{v}` is not a positive number")))?
            }
            k if k.starts_with("extension_") => {
                extensions.push((k["extension_".len()..].to_string(), v.to_string()))
            }
            other => return Err(bad(format!("unknown setting `{other}`"))),
        }
    }
    let principal = principal
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("principal=NAME is required".into()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut claims = serde_json::Map::new();
    claims.insert(principal_claim, principal.clone().into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + life).into());
    if !scope.is_empty() {
        claims.insert(scope_claim, scope.into());
    }
    let claims = serde_json::Value::Object(claims).to_string();
    let value = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none"}"#),
        base64url(claims.as_bytes())
    );
    Ok(OAuthBearerToken {
        value: Secret::new(value),
        principal,
        extensions,
    })
}

/// Base64url without padding (RFC 4648 §5), as JWTs use it.
fn base64url(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        // RFC 4648 §10 vectors, without padding.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(plain.as_bytes()), encoded);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn initial_response_follows_rfc7628_and_kip342() {
        let token = OAuthBearerToken {
            value: Secret::new("abc.def."),
            principal: "alice".into(),
            extensions: vec![("logicalCluster".into(), "lkc-1".into())],
        };
        assert_eq!(
            oauthbearer_initial_response(&token),
            b"n,,\x01auth=Bearer abc.def.\x01logicalCluster=lkc-1\x01\x01"
        );
    }

    #[test]
    fn unsecured_jwt_carries_the_configured_claims() {
        let t =
            unsecured_jwt("principal=alice scope=read,write lifeSeconds=60 extension_x=1").unwrap();
        assert_eq!(t.principal, "alice");
        assert_eq!(t.extensions, vec![("x".to_string(), "1".to_string())]);
        let parts: Vec<&str> = t.value.expose().split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], base64url(br#"{"alg":"none"}"#));
        assert_eq!(parts[2], "", "unsecured: empty signature");
        // Decode the claims back with a tiny base64url decoder.
        let decoded = decode_base64url(parts[1]);
        let claims: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["scope"], serde_json::json!(["read", "write"]));
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            60
        );
        assert!(unsecured_jwt("scope=x").is_err(), "principal is required");
        assert!(unsecured_jwt("principal=a lifeSeconds=-1").is_err());
        assert!(unsecured_jwt("principal=a bogus=1").is_err());
    }

    fn decode_base64url(s: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {c}"),
        };
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in s.bytes() {
            bits = (bits << 6) | u32::from(value(c));
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
            }
        }
        out
    }
}
