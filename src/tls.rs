//! TLS for every broker connection: rustls with a crypto provider chosen by features.
//!
//! | feature | provider | C compiler | CPUs |
//! |---|---|---|---|
//! | `tls` (default) | `rustls-graviola` | no | x86_64 with AES-NI, PCLMULQDQ, BMI1, BMI2, ADX, AVX, AVX2 (Intel Haswell / AMD Excavator, 2013+); aarch64 with NEON, AES, PMULL, SHA2 |
//! | `tls-ring` | *ring* | yes | any |
//! | `tls-aws-lc-rs` | aws-lc-rs | yes (and cmake) | any; FIPS builds |
//!
//! When several are enabled, aws-lc-rs wins over *ring*, which wins over graviola: an opt-in
//! provider is there because the default cannot be used.
//!
//! graviola panics on a CPU without the features it needs; purekafka checks them first
//! ([`check_cpu`]) and reports an [`Error::Config`] on `security.protocol` instead.
//!
//! Certificates: the CA from `ssl.ca.location` / `ssl.ca.pem`, or the Mozilla root store
//! (`webpki-roots`) when neither is given; client certificate and key from
//! `ssl.certificate.*` / `ssl.key.*` for mutual TLS; the broker's host name is sent as SNI and
//! verified against the certificate (an IP address against its IP SANs) unless
//! `ssl.endpoint.identification.algorithm=none`.

use crate::error::{Error, Result};

/// The CPU features the default provider (graviola) needs on this architecture, by the names
/// `is_x86_feature_detected!` / `is_aarch64_feature_detected!` use. Empty when the provider
/// in use has no such requirement.
pub fn required_cpu_features() -> &'static [&'static str] {
    if !uses_graviola() {
        return &[];
    }
    if cfg!(target_arch = "x86_64") {
        &["aes", "pclmulqdq", "bmi1", "bmi2", "adx", "avx", "avx2"]
    } else if cfg!(target_arch = "aarch64") {
        &["neon", "aes", "pmull", "sha2"]
    } else {
        &[]
    }
}

/// Whether graviola is the provider this build uses.
fn uses_graviola() -> bool {
    cfg!(all(
        feature = "tls",
        not(feature = "tls-ring"),
        not(feature = "tls-aws-lc-rs"),
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))
}

/// Checks that this CPU can run the TLS provider, with `is_detected` telling whether a named
/// feature is present (the real check passes the CPU's own detection; tests pass a
/// simulated CPU). Returns an [`Error::Config`] naming the missing features and the way out
/// (the `tls-ring` feature).
pub fn check_cpu_with(is_detected: impl Fn(&str) -> bool) -> Result<()> {
    let missing: Vec<&str> = required_cpu_features()
        .iter()
        .copied()
        .filter(|f| !is_detected(f))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::config(
        "security.protocol",
        "ssl",
        format!(
            "this CPU lacks {} which the default TLS provider (rustls-graviola) needs; \
             build purekafka with the `tls-ring` feature to use TLS on it",
            missing.join(", ")
        ),
    ))
}

/// Checks that this CPU can run the TLS provider; see [`check_cpu_with`].
pub fn check_cpu() -> Result<()> {
    check_cpu_with(cpu_has)
}

#[allow(unused_variables)]
fn cpu_has(feature: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match feature {
            "aes" => std::arch::is_x86_feature_detected!("aes"),
            "pclmulqdq" => std::arch::is_x86_feature_detected!("pclmulqdq"),
            "bmi1" => std::arch::is_x86_feature_detected!("bmi1"),
            "bmi2" => std::arch::is_x86_feature_detected!("bmi2"),
            "adx" => std::arch::is_x86_feature_detected!("adx"),
            "avx" => std::arch::is_x86_feature_detected!("avx"),
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            _ => false,
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        match feature {
            "neon" => std::arch::is_aarch64_feature_detected!("neon"),
            "aes" => std::arch::is_aarch64_feature_detected!("aes"),
            "pmull" => std::arch::is_aarch64_feature_detected!("pmull"),
            "sha2" => std::arch::is_aarch64_feature_detected!("sha2"),
            _ => false,
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The name of the crypto provider this build uses.
pub fn provider_name() -> &'static str {
    if cfg!(feature = "tls-aws-lc-rs") {
        "aws-lc-rs"
    } else if cfg!(feature = "tls-ring") {
        "ring"
    } else if uses_graviola() {
        "rustls-graviola"
    } else {
        "none"
    }
}

#[cfg(feature = "tls-core")]
pub(crate) use imp::client_config;

#[cfg(feature = "tls-core")]
mod imp {
    use std::sync::Arc;

    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    use crate::config::TlsSettings;
    use crate::error::{Error, Result};

    fn provider() -> Result<CryptoProvider> {
        #[cfg(feature = "tls-aws-lc-rs")]
        return Ok(rustls::crypto::aws_lc_rs::default_provider());
        #[cfg(all(feature = "tls-ring", not(feature = "tls-aws-lc-rs")))]
        return Ok(rustls::crypto::ring::default_provider());
        #[cfg(all(
            feature = "tls",
            not(feature = "tls-ring"),
            not(feature = "tls-aws-lc-rs"),
            any(target_arch = "x86_64", target_arch = "aarch64")
        ))]
        {
            super::check_cpu()?;
            return Ok(rustls_graviola::default_provider());
        }
        #[allow(unreachable_code)]
        Err(Error::config(
            "security.protocol",
            "ssl",
            "this build has no TLS crypto provider for this architecture: \
             enable purekafka's `tls-ring` feature",
        ))
    }

    fn certs(
        key: &str,
        location: Option<&str>,
        pem: Option<&str>,
    ) -> Result<Vec<CertificateDer<'static>>> {
        let (key, found): (&str, Vec<_>) = match (location, pem) {
            (Some(path), _) => (
                key,
                CertificateDer::pem_file_iter(path)
                    .map_err(|e| Error::config(key, path, format!("cannot read: {e}")))?
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| Error::config(key, path, format!("not PEM certificates: {e}")))?,
            ),
            (None, Some(text)) => (
                key,
                CertificateDer::pem_slice_iter(text.as_bytes())
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| {
                        Error::config(key, "<pem>", format!("not PEM certificates: {e}"))
                    })?,
            ),
            (None, None) => return Ok(Vec::new()),
        };
        if found.is_empty() {
            return Err(Error::config(
                key,
                location.unwrap_or("<pem>"),
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            ));
        }
        Ok(found)
    }

    /// Builds the rustls client configuration for `settings`: provider (after the CPU
    /// check), trust anchors, client certificate, host name verification.
    pub(crate) fn client_config(settings: &TlsSettings) -> Result<Arc<rustls::ClientConfig>> {
        let provider = Arc::new(provider()?);
        let mut roots = rustls::RootCertStore::empty();
        let ca = certs(
            if settings.ca_location.is_some() {
                "ssl.ca.location"
            } else {
                "ssl.ca.pem"
            },
            settings.ca_location.as_deref(),
            settings.ca_pem.as_deref(),
        )?;
        if ca.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        } else {
            for cert in ca {
                roots.add(cert).map_err(|e| {
                    Error::config(
                        "ssl.ca.location",
                        "<ca>",
                        format!("unusable CA certificate: {e}"),
                    )
                })?;
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config("security.protocol", "ssl", e.to_string()))?;
        let builder = if settings.verify_hostname {
            builder.with_root_certificates(roots)
        } else {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::clone(&provider),
            )
            .build()
            .map_err(|e| Error::config("ssl.ca.location", "<ca>", e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoHostnameVerifier { inner }))
        };
        let cert_key = if settings.certificate_location.is_some() {
            "ssl.certificate.location"
        } else {
            "ssl.certificate.pem"
        };
        let chain = certs(
            cert_key,
            settings.certificate_location.as_deref(),
            settings.certificate_pem.as_deref(),
        )?;
        let key = match (&settings.key_location, &settings.key_pem) {
            (Some(path), _) => Some(PrivateKeyDer::from_pem_file(path).map_err(|e| {
                Error::config(
                    "ssl.key.location",
                    path,
                    format!("no unencrypted PEM private key could be read: {e}"),
                )
            })?),
            (None, Some(pem)) => Some(
                PrivateKeyDer::from_pem_slice(pem.expose().as_bytes()).map_err(|e| {
                    Error::config(
                        "ssl.key.pem",
                        "***",
                        format!("not an unencrypted PEM private key: {e}"),
                    )
                })?,
            ),
            (None, None) => None,
        };
        let config = match (chain.is_empty(), key) {
            (true, None) => builder.with_no_client_auth(),
            (false, Some(key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::config("ssl.key.location", "***", format!("client certificate and key do not fit: {e}")))?,
            (false, None) => {
                return Err(Error::config(
                    cert_key,
                    "<certificate>",
                    "a client certificate needs its key (ssl.key.location or ssl.key.pem)",
                ))
            }
            (true, Some(_)) => {
                return Err(Error::config(
                    "ssl.key.location",
                    "***",
                    "a client key needs its certificate (ssl.certificate.location or ssl.certificate.pem)",
                ))
            }
        };
        Ok(Arc::new(config))
    }

    /// `ssl.endpoint.identification.algorithm=none`: the chain is verified against the trust
    /// anchors as usual, only a name mismatch is accepted.
    #[derive(Debug)]
    struct NoHostnameVerifier {
        inner: Arc<rustls::client::WebPkiServerVerifier>,
    }

    impl rustls::client::danger::ServerCertVerifier for NoHostnameVerifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &rustls::pki_types::ServerName<'_>,
            ocsp_response: &[u8],
            now: rustls::pki_types::UnixTime,
        ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error>
        {
            match self.inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. },
                )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>
        {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>
        {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_without_the_features_is_a_config_error_not_a_panic() {
        let needed = required_cpu_features();
        if needed.is_empty() {
            assert!(check_cpu_with(|_| false).is_ok());
            return;
        }
        let e = check_cpu_with(|f| f != "adx" && f != "avx2" && f != "pmull").unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::Config { .. }), "{text}");
        assert!(text.contains("tls-ring"), "{text}");
        assert!(
            text.contains("adx") || text.contains("pmull"),
            "names what is missing: {text}"
        );
        assert!(check_cpu_with(|_| true).is_ok());
    }
}
