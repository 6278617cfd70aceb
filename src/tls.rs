//! TLS client configuration (the `tls` feature; rustls with the `ring` provider, which needs a
//! C compiler).

use std::sync::Arc;

/// A rustls client configuration trusting the Mozilla root certificates.
pub(crate) fn client_config() -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}
