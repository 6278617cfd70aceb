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
            tracing::debug!(
                broker = %conn.addr(),
                mechanism = name,
                user = %user,
                session_lifetime = ?lifetime,
                "SASL login succeeded"
            );
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

    /// The SCRAM exchange, end to end over a real socket, against a minimal broker written
    /// here from the protocol definitions (ApiVersions, SaslHandshake v1, SaslAuthenticate v2;
    /// SCRAM per RFC 5802 / RFC 7677, SHA-256 and SHA-512): the right password logs in and
    /// the session lifetime comes back; a wrong one is an `Error::Authentication` naming
    /// broker, mechanism and user, without the password. No broker installed here completes a
    /// SCRAM login (see README), so this is the only successful exchange the tests see.
    mod scram_exchange {
        use std::time::Duration;

        use base64::engine::general_purpose::STANDARD as B64;
        use base64::Engine;
        use bytes::{Buf, BufMut, Bytes, BytesMut};
        use hmac::{Hmac, Mac};
        use kafka_protocol::messages::api_versions_response::ApiVersion;
        use kafka_protocol::messages::*;
        use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
        use sha2::Digest;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        use crate::config::{Config, SaslMechanism};
        use crate::error::Error;
        use crate::wire::BrokerConnection;

        const SALT: &[u8] = b"purekafka-test-salt";
        const ITERATIONS: u32 = 4096;

        fn hmac256(key: &[u8], data: &[u8]) -> Vec<u8> {
            let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }

        fn hmac512(key: &[u8], data: &[u8]) -> Vec<u8> {
            let mut m = <Hmac<sha2::Sha512> as Mac>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }

        /// The server side of one SCRAM exchange: answers client-first and client-final.
        struct ScramServer {
            sha512: bool,
            password: String,
            client_first_bare: String,
            server_first: String,
        }

        impl ScramServer {
            fn salted(&self) -> Vec<u8> {
                let mut out = vec![0u8; if self.sha512 { 64 } else { 32 }];
                if self.sha512 {
                    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(
                        self.password.as_bytes(),
                        SALT,
                        ITERATIONS,
                        &mut out,
                    );
                } else {
                    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
                        self.password.as_bytes(),
                        SALT,
                        ITERATIONS,
                        &mut out,
                    );
                }
                out
            }
            fn mac(&self, key: &[u8], data: &[u8]) -> Vec<u8> {
                if self.sha512 {
                    hmac512(key, data)
                } else {
                    hmac256(key, data)
                }
            }
            fn hash(&self, data: &[u8]) -> Vec<u8> {
                if self.sha512 {
                    sha2::Sha512::digest(data).to_vec()
                } else {
                    sha2::Sha256::digest(data).to_vec()
                }
            }

            /// Returns (error code, answer bytes).
            fn step(&mut self, input: &[u8]) -> (i16, Vec<u8>) {
                let text = String::from_utf8(input.to_vec()).unwrap();
                if let Some(bare) = text.strip_prefix("n,,") {
                    // The client's nonce is everything after `r=`: it is random printable
                    // text and may itself contain "r=", so it is not split on that.
                    let nonce = bare
                        .strip_prefix("n=alice,r=")
                        .unwrap_or_else(|| panic!("client-first: {text}"));
                    self.client_first_bare = bare.to_string();
                    self.server_first = format!(
                        "r={nonce}server-nonce,s={},i={ITERATIONS}",
                        B64.encode(SALT)
                    );
                    return (0, self.server_first.clone().into_bytes());
                }
                // client-final: c=biws,r=...,p=proof
                let (without_proof, proof) = text.rsplit_once(",p=").expect("client-final");
                assert!(without_proof.starts_with("c=biws,r="), "{text}");
                let auth_message = format!(
                    "{},{},{without_proof}",
                    self.client_first_bare, self.server_first
                );
                let salted = self.salted();
                let client_key = self.mac(&salted, b"Client Key");
                let stored_key = self.hash(&client_key);
                let signature = self.mac(&stored_key, auth_message.as_bytes());
                let proof = B64.decode(proof).unwrap();
                let recovered: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
                if self.hash(&recovered) != stored_key {
                    // Kafka answers a failed proof with SASL_AUTHENTICATION_FAILED (58).
                    return (58, Vec::new());
                }
                let server_key = self.mac(&salted, b"Server Key");
                let v = self.mac(&server_key, auth_message.as_bytes());
                (0, format!("v={}", B64.encode(v)).into_bytes())
            }
        }

        async fn read_request(s: &mut tokio::net::TcpStream) -> Option<(RequestHeader, Bytes)> {
            let len = s.read_i32().await.ok()? as usize;
            let mut buf = vec![0u8; len];
            s.read_exact(&mut buf).await.ok()?;
            let mut buf = Bytes::from(buf);
            let key = i16::from_be_bytes([buf[0], buf[1]]);
            let version = i16::from_be_bytes([buf[2], buf[3]]);
            let header_version = match ApiKey::try_from(key).unwrap() {
                ApiKey::ApiVersions => ApiVersionsRequest::header_version(version),
                ApiKey::SaslHandshake => SaslHandshakeRequest::header_version(version),
                ApiKey::SaslAuthenticate => SaslAuthenticateRequest::header_version(version),
                other => panic!("unexpected request {other:?}"),
            };
            let header = RequestHeader::decode(&mut buf, header_version).unwrap();
            Some((header, buf))
        }

        async fn respond<R: Encodable + HeaderVersion>(
            s: &mut tokio::net::TcpStream,
            correlation_id: i32,
            version: i16,
            body: &R,
        ) {
            let mut out = BytesMut::new();
            ResponseHeader::default()
                .with_correlation_id(correlation_id)
                .encode(&mut out, R::header_version(version))
                .unwrap();
            body.encode(&mut out, version).unwrap();
            let mut frame = BytesMut::new();
            frame.put_i32(out.len() as i32);
            frame.put_slice(&out);
            s.write_all(&frame).await.unwrap();
        }

        /// A SCRAM broker on 127.0.0.1 that knows user `alice` with `password`.
        async fn broker(sha512: bool, password: &str) -> String {
            let ours = if sha512 {
                "SCRAM-SHA-512"
            } else {
                "SCRAM-SHA-256"
            };
            broker_for(ours, password).await
        }

        /// PLAIN (RFC 4616): the one message is `authzid NUL authcid NUL passwd`; Kafka
        /// answers a wrong one with SASL_AUTHENTICATION_FAILED (58) and no bytes.
        fn plain_step(auth_bytes: &[u8], password: &str) -> (i16, Vec<u8>) {
            let parts: Vec<&[u8]> = auth_bytes.split(|b| *b == 0).collect();
            match parts.as_slice() {
                [_authzid, user, pw] if *user == b"alice" && *pw == password.as_bytes() => {
                    (0, Vec::new())
                }
                _ => (58, Vec::new()),
            }
        }

        /// A broker on 127.0.0.1 offering only the mechanism `ours` (`PLAIN`,
        /// `SCRAM-SHA-256` or `SCRAM-SHA-512`), that knows user `alice` with `password`.
        async fn broker_for(ours: &'static str, password: &str) -> String {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let password = password.to_string();
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut scram = ScramServer {
                    sha512: ours == "SCRAM-SHA-512",
                    password: password.clone(),
                    client_first_bare: String::new(),
                    server_first: String::new(),
                };
                while let Some((header, mut body)) = read_request(&mut s).await {
                    let (id, v) = (header.correlation_id, header.request_api_version);
                    match ApiKey::try_from(header.request_api_key).unwrap() {
                        ApiKey::ApiVersions => {
                            let keys = [
                                (ApiKey::ApiVersions, 0, 3),
                                (ApiKey::SaslHandshake, 0, 1),
                                (ApiKey::SaslAuthenticate, 0, 2),
                            ]
                            .map(|(k, min, max)| {
                                ApiVersion::default()
                                    .with_api_key(k as i16)
                                    .with_min_version(min)
                                    .with_max_version(max)
                            });
                            let r = ApiVersionsResponse::default().with_api_keys(keys.to_vec());
                            respond(&mut s, id, v, &r).await;
                        }
                        ApiKey::SaslHandshake => {
                            let req = SaslHandshakeRequest::decode(&mut body, v).unwrap();
                            let code = if req.mechanism.as_str() == ours {
                                0
                            } else {
                                33
                            };
                            let r = SaslHandshakeResponse::default()
                                .with_error_code(code)
                                .with_mechanisms(vec![StrBytes::from_static_str(ours)]);
                            respond(&mut s, id, v, &r).await;
                        }
                        ApiKey::SaslAuthenticate => {
                            let req = SaslAuthenticateRequest::decode(&mut body, v).unwrap();
                            let (code, answer) = if ours == "PLAIN" {
                                plain_step(&req.auth_bytes, &password)
                            } else {
                                scram.step(&req.auth_bytes)
                            };
                            let r = SaslAuthenticateResponse::default()
                                .with_error_code(code)
                                .with_error_message((code != 0).then(|| {
                                    StrBytes::from_static_str(
                                        "Authentication failed during authentication due to \
                                         invalid credentials with SASL mechanism",
                                    )
                                }))
                                .with_auth_bytes(Bytes::from(answer))
                                .with_session_lifetime_ms(if code == 0 { 60_000 } else { 0 });
                            respond(&mut s, id, v, &r).await;
                        }
                        _ => unreachable!(),
                    }
                    let _ = body.remaining();
                }
            });
            addr
        }

        /// A broker that takes OAUTHBEARER and accepts the token `good-token` only, answering
        /// a bad token the RFC 7628 way (a JSON error challenge, then failure on `^A`).
        async fn oauth_broker() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let log = std::sync::Arc::clone(&seen);
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                while let Some((header, mut body)) = read_request(&mut s).await {
                    let (id, v) = (header.correlation_id, header.request_api_version);
                    match ApiKey::try_from(header.request_api_key).unwrap() {
                        ApiKey::ApiVersions => {
                            let keys = [
                                (ApiKey::ApiVersions, 0, 3),
                                (ApiKey::SaslHandshake, 0, 1),
                                (ApiKey::SaslAuthenticate, 0, 2),
                            ]
                            .map(|(k, min, max)| {
                                ApiVersion::default()
                                    .with_api_key(k as i16)
                                    .with_min_version(min)
                                    .with_max_version(max)
                            });
                            let r = ApiVersionsResponse::default().with_api_keys(keys.to_vec());
                            respond(&mut s, id, v, &r).await;
                        }
                        ApiKey::SaslHandshake => {
                            let req = SaslHandshakeRequest::decode(&mut body, v).unwrap();
                            assert_eq!(req.mechanism.as_str(), "OAUTHBEARER");
                            let r = SaslHandshakeResponse::default()
                                .with_mechanisms(vec![StrBytes::from_static_str("OAUTHBEARER")]);
                            respond(&mut s, id, v, &r).await;
                        }
                        ApiKey::SaslAuthenticate => {
                            let req = SaslAuthenticateRequest::decode(&mut body, v).unwrap();
                            log.lock().unwrap().push(req.auth_bytes.to_vec());
                            let msg = req.auth_bytes.to_vec();
                            let r = if msg == b"\x01" {
                                SaslAuthenticateResponse::default()
                                    .with_error_code(58)
                                    .with_error_message(Some(StrBytes::from_static_str(
                                        "invalid token",
                                    )))
                            } else if msg.windows(23).any(|w| w == b"auth=Bearer good-token\x01") {
                                SaslAuthenticateResponse::default().with_session_lifetime_ms(30_000)
                            } else {
                                SaslAuthenticateResponse::default().with_auth_bytes(
                                    Bytes::from_static(br#"{"status":"invalid_token"}"#),
                                )
                            };
                            respond(&mut s, id, v, &r).await;
                        }
                        _ => unreachable!(),
                    }
                }
            });
            (addr, seen)
        }

        fn oauth_config(addr: &str, token: &'static str) -> Config {
            Config::builder()
                .brokers([addr])
                .oauthbearer_token_provider(move || async move {
                    Ok(crate::config::OAuthBearerToken {
                        value: crate::config::Secret::new(token),
                        principal: "svc-orders".into(),
                        extensions: vec![("logicalCluster".into(), "lkc-1".into())],
                    })
                })
                .build()
                .unwrap()
        }

        #[tokio::test]
        async fn oauthbearer_with_a_token_provider_logs_in_and_a_bad_token_fails_cleanly() {
            let (addr, seen) = oauth_broker().await;
            let mut plain = oauth_config(&addr, "good-token");
            let config = plain.clone();
            plain.sasl = None;
            let conn = BrokerConnection::connect(&addr, &plain).await.unwrap();
            let lifetime = super::super::authenticate(&conn, &config).await.unwrap();
            assert_eq!(lifetime, Some(Duration::from_secs(30)));
            assert_eq!(
                seen.lock().unwrap()[0],
                b"n,,\x01auth=Bearer good-token\x01logicalCluster=lkc-1\x01\x01"
            );

            let (addr, seen) = oauth_broker().await;
            let config = oauth_config(&addr, "bad-token");
            let e = BrokerConnection::connect(&addr, &config).await.unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, Error::Authentication { .. }), "{text}");
            for part in ["OAUTHBEARER", "svc-orders", "invalid_token", addr.as_str()] {
                assert!(text.contains(part), "{part}: {text}");
            }
            assert!(!text.contains("bad-token"), "no token in errors: {text}");
            // RFC 7628 §3.2.2: the client answered the error challenge with a single ^A.
            assert_eq!(seen.lock().unwrap().last().unwrap(), b"\x01");
        }

        fn config(addr: &str, mechanism: SaslMechanism, password: &str) -> Config {
            Config::builder()
                .brokers([addr])
                .sasl(mechanism, "alice", password)
                .build()
                .unwrap()
        }

        #[tokio::test]
        async fn scram_sha_256_and_512_log_in_with_the_right_password() {
            for (sha512, mechanism) in [
                (false, SaslMechanism::ScramSha256),
                (true, SaslMechanism::ScramSha512),
            ] {
                let addr = broker(sha512, "s3cret").await;
                let config = config(&addr, mechanism, "s3cret");
                let conn = BrokerConnection::connect(&addr, &config).await.unwrap();
                assert!(!conn.is_closed(), "{mechanism:?}");
            }
        }

        #[tokio::test]
        async fn a_wrong_password_is_an_authentication_error_without_the_password() {
            for (sha512, mechanism) in [
                (false, SaslMechanism::ScramSha256),
                (true, SaslMechanism::ScramSha512),
            ] {
                let addr = broker(sha512, "s3cret").await;
                let config = config(&addr, mechanism, "not-the-password");
                let e = BrokerConnection::connect(&addr, &config).await.unwrap_err();
                let text = e.to_string();
                assert!(matches!(e, Error::Authentication { .. }), "{text}");
                assert!(!e.is_retriable(), "{text}");
                for part in [
                    mechanism.name(),
                    "alice",
                    addr.as_str(),
                    "authentication failed",
                ] {
                    assert!(text.contains(part), "{part}: {text}");
                }
                assert!(!text.contains("not-the-password"), "{text}");
            }
        }

        #[tokio::test]
        async fn plain_logs_in_with_the_right_password_and_names_a_wrong_one_without_it() {
            let addr = broker_for("PLAIN", "s3cret").await;
            let conn =
                BrokerConnection::connect(&addr, &config(&addr, SaslMechanism::Plain, "s3cret"))
                    .await
                    .unwrap();
            assert!(!conn.is_closed());

            let addr = broker_for("PLAIN", "s3cret").await;
            let e = BrokerConnection::connect(
                &addr,
                &config(&addr, SaslMechanism::Plain, "not-the-password"),
            )
            .await
            .unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, Error::Authentication { .. }), "{text}");
            assert!(!e.is_retriable(), "{text}");
            for part in ["PLAIN", "alice", addr.as_str(), "authentication failed"] {
                assert!(text.contains(part), "{part}: {text}");
            }
            assert!(!text.contains("not-the-password"), "{text}");
        }

        #[tokio::test]
        async fn the_session_lifetime_is_returned() {
            let addr = broker(false, "pw").await;
            let config = config(&addr, SaslMechanism::ScramSha256, "pw");
            // Connect without SASL first (the fake broker serves one exchange per
            // connection), then run the exchange by hand to see its result.
            let mut plain = config.clone();
            plain.sasl = None;
            let conn = BrokerConnection::connect(&addr, &plain).await.unwrap();
            let lifetime = super::super::authenticate(&conn, &config).await.unwrap();
            assert_eq!(lifetime, Some(Duration::from_secs(60)));
        }
    }
}
