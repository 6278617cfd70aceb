//! Configuration from `KAFKA_*` environment variables, as services are deployed.
//!
//! | variable | key it sets | example |
//! |---|---|---|
//! | `KAFKA_BROKERS` (alias `KAFKA_BOOTSTRAP_SERVERS`) | `bootstrap.servers` | `kafka-0:9092,kafka-1:9092` |
//! | `KAFKA_CLIENT_ID` | `client.id` | `orders-service` |
//! | `KAFKA_ENABLED` | `enabled` | `false` in development without a broker |
//! | `KAFKA_GROUP_ID` | `group.id` | `orders-consumers` |
//! | `KAFKA_SASL_MECHANISM` | `sasl.mechanism` | `SCRAM-SHA-512` |
//! | `KAFKA_SASL_USERNAME` | `sasl.username` | `svc-orders` |
//! | `KAFKA_SASL_PASSWORD` | `sasl.password` | never printed |
//! | `KAFKA_SSL` | `security.protocol` = `ssl` / `sasl_ssl` when `true` | `true` |
//! | `KAFKA_SSL_CA_LOCATION` | `ssl.ca.location` | `/etc/kafka/ca.pem` |
//! | `KAFKA_SSL_CA_PEM` | `ssl.ca.pem` | `-----BEGIN CERTIFICATE-----...` |
//! | `KAFKA_SSL_CERTIFICATE_LOCATION` | `ssl.certificate.location` | `/etc/kafka/client.pem` |
//! | `KAFKA_SSL_CERTIFICATE_PEM` | `ssl.certificate.pem` | PEM text |
//! | `KAFKA_SSL_KEY_LOCATION` | `ssl.key.location` | `/etc/kafka/client.key` |
//! | `KAFKA_SSL_KEY_PEM` | `ssl.key.pem` | never printed |
//! | `KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM` | `ssl.endpoint.identification.algorithm` | `none` |
//!
//! Setting `KAFKA_SASL_USERNAME` selects SASL (`sasl_plaintext`, or `sasl_ssl` with
//! `KAFKA_SSL=true`). Unset and empty variables are ignored. Other `KAFKA_*` variables are left
//! alone: applications often have their own (`KAFKA_TOPIC`, ...).

use super::ConfigBuilder;

/// The variables read, in the order they are applied.
const VARIABLES: &[(&str, &str)] = &[
    ("KAFKA_BOOTSTRAP_SERVERS", "bootstrap.servers"),
    ("KAFKA_BROKERS", "bootstrap.servers"),
    ("KAFKA_CLIENT_ID", "client.id"),
    ("KAFKA_ENABLED", "enabled"),
    ("KAFKA_GROUP_ID", "group.id"),
    ("KAFKA_SASL_MECHANISM", "sasl.mechanism"),
    ("KAFKA_SASL_USERNAME", "sasl.username"),
    ("KAFKA_SASL_PASSWORD", "sasl.password"),
    ("KAFKA_SSL_CA_LOCATION", "ssl.ca.location"),
    ("KAFKA_SSL_CA_PEM", "ssl.ca.pem"),
    ("KAFKA_SSL_CERTIFICATE_LOCATION", "ssl.certificate.location"),
    ("KAFKA_SSL_CERTIFICATE_PEM", "ssl.certificate.pem"),
    ("KAFKA_SSL_KEY_LOCATION", "ssl.key.location"),
    ("KAFKA_SSL_KEY_PEM", "ssl.key.pem"),
    (
        "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
        "ssl.endpoint.identification.algorithm",
    ),
];

impl ConfigBuilder {
    /// A builder primed from the process environment (see the [module docs](self)).
    pub fn from_env() -> ConfigBuilder {
        ConfigBuilder::from_env_vars(std::env::vars())
    }

    /// A builder primed from the given `(name, value)` pairs, read as environment variables.
    /// Handy in tests, where changing the real environment races with other threads.
    ///
    /// ```
    /// use purekafka::ConfigBuilder;
    ///
    /// let config = ConfigBuilder::from_env_vars([
    ///     ("KAFKA_BROKERS", "10.0.0.1:9092,10.0.0.2:9092"),
    ///     ("KAFKA_CLIENT_ID", "billing"),
    /// ])
    /// .set("linger.ms", "1")
    /// .build()?;
    /// assert_eq!(config.brokers().len(), 2);
    /// # Ok::<(), purekafka::Error>(())
    /// ```
    pub fn from_env_vars<I, K, V>(vars: I) -> ConfigBuilder
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
            .filter(|(k, v)| k.starts_with("KAFKA_") && !v.trim().is_empty())
            .collect();
        let get = |name: &str| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let mut b = ConfigBuilder::default();
        for (var, key) in VARIABLES {
            if let Some(v) = get(var) {
                b = b.set_from_env(var, key, v);
            }
        }
        let ssl = match get("KAFKA_SSL") {
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    b.error.get_or_insert(crate::Error::config(
                        "KAFKA_SSL",
                        v,
                        "expected true or false",
                    ));
                    false
                }
            },
            None => false,
        };
        let sasl = get("KAFKA_SASL_USERNAME").is_some();
        let protocol = match (sasl, ssl) {
            (false, false) => None,
            (false, true) => Some("ssl"),
            (true, false) => Some("sasl_plaintext"),
            (true, true) => Some("sasl_ssl"),
        };
        if let Some(p) = protocol {
            b = b.set_from_env("KAFKA_SSL", "security.protocol", p);
        }
        b
    }

    /// `set`, but an error names the environment variable rather than the key.
    fn set_from_env(mut self, var: &str, key: &str, value: &str) -> ConfigBuilder {
        if self.error.is_some() {
            return self;
        }
        if let Err(crate::Error::Config { value, reason, .. }) =
            super::keys::apply(&mut self, key, value)
        {
            self.error = Some(crate::Error::Config {
                key: var.to_string(),
                value,
                reason,
            });
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigBuilder, SaslMechanism, SecurityProtocol};
    use crate::Error;

    #[test]
    fn reads_the_documented_variables() {
        let c = ConfigBuilder::from_env_vars([
            ("KAFKA_BOOTSTRAP_SERVERS", "a:1"),
            ("KAFKA_CLIENT_ID", "svc"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("KAFKA_SASL_USERNAME", "user"),
            ("KAFKA_SASL_PASSWORD", "s3cret"),
            ("KAFKA_TOPIC", "not ours"),
            ("PATH", "/bin"),
        ])
        .build()
        .unwrap();
        assert_eq!(c.brokers(), ["a:1"]);
        assert_eq!(c.client_id(), "svc");
        assert_eq!(c.security_protocol(), SecurityProtocol::SaslPlaintext);
        let sasl = c.sasl().unwrap();
        assert_eq!(sasl.mechanism, SaslMechanism::ScramSha512);
        assert_eq!(sasl.password.expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn ssl_variables_set_the_tls_keys_and_a_missing_ca_file_is_named() {
        let dir = std::env::temp_dir().join(format!("purekafka-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("no-such-ca.pem").display().to_string();
        let e = ConfigBuilder::from_env_vars([
            ("KAFKA_BROKERS", "a:1"),
            ("KAFKA_SSL", "true"),
            ("KAFKA_SSL_CA_LOCATION", missing.as_str()),
            ("KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "none"),
        ])
        .build()
        .unwrap_err();
        assert!(
            matches!(&e, Error::Config { key, value, .. } if key == "ssl.ca.location" && value == &missing),
            "{e}"
        );
        // With no CA given, the Mozilla roots are used and the configuration builds.
        let c = ConfigBuilder::from_env_vars([
            ("KAFKA_BROKERS", "a:1"),
            ("KAFKA_SSL", "true"),
            ("KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "none"),
            ("KAFKA_SSL_KEY_PEM", "-----BEGIN PRIVATE KEY-----secret"),
        ])
        .build();
        // A key without a certificate is refused, naming the key but not its contents.
        let e = c.unwrap_err();
        assert!(e.to_string().contains("ssl.key"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        let c = ConfigBuilder::from_env_vars([
            ("KAFKA_BROKERS", "a:1"),
            ("KAFKA_SSL", "true"),
            ("KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "none"),
        ])
        .build()
        .unwrap();
        assert_eq!(c.security_protocol(), SecurityProtocol::Ssl);
        assert!(!c.tls().verify_hostname);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kafka_brokers_wins_over_its_alias() {
        let c = ConfigBuilder::from_env_vars([
            ("KAFKA_BROKERS", "b:2"),
            ("KAFKA_BOOTSTRAP_SERVERS", "a:1"),
        ])
        .build()
        .unwrap();
        assert_eq!(c.brokers(), ["b:2"]);
    }

    #[test]
    fn disabled_without_brokers_is_fine() {
        let c = ConfigBuilder::from_env_vars([("KAFKA_ENABLED", "false")])
            .build()
            .unwrap();
        assert!(!c.enabled());
    }

    #[test]
    fn errors_name_the_variable() {
        let e = ConfigBuilder::from_env_vars([("KAFKA_BROKERS", "nohostport")])
            .build()
            .unwrap_err();
        assert!(
            matches!(&e, Error::Config { key, value, .. } if key == "bootstrap.servers" && value == "nohostport"),
            "{e}"
        );
        let e = ConfigBuilder::from_env_vars([
            ("KAFKA_BROKERS", "a:1"),
            ("KAFKA_ENABLED", "sometimes"),
        ])
        .build()
        .unwrap_err();
        assert!(
            matches!(&e, Error::Config { key, value, .. } if key == "KAFKA_ENABLED" && value == "sometimes"),
            "{e}"
        );
        let e = ConfigBuilder::from_env_vars([("KAFKA_BROKERS", "a:1"), ("KAFKA_SSL", "perhaps")])
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("KAFKA_SSL"), "{e}");
    }

    #[test]
    fn missing_brokers_says_which_variable_to_set() {
        let e = ConfigBuilder::from_env_vars(Vec::<(String, String)>::new())
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("KAFKA_BROKERS"), "{e}");
    }
}
