//! The librdkafka / Java style keys accepted by [`ConfigBuilder::set`].
//!
//! Durations are whole milliseconds; sizes are bytes unless the key says `kbytes`; booleans are
//! `true`/`false` (also `1`/`0`, `yes`/`no`). Keys are case-sensitive, as in librdkafka.
//!
//! | key (aliases) | default | meaning |
//! |---|---|---|
//! | `bootstrap.servers` (`metadata.broker.list`) | — | comma-separated `host:port` list |
//! | `client.id` | `purekafka` | id sent to brokers, `service` header |
//! | `enabled` | `true` | `false`: no broker, sends are logged and dropped |
//! | `security.protocol` | `plaintext` | `plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl` |
//! | `sasl.mechanism` (`sasl.mechanisms`) | `PLAIN` | `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `OAUTHBEARER` |
//! | `sasl.username`, `sasl.password` | — | credentials (the password is never printed) |
//! | `enable.sasl.oauthbearer.unsecure.jwt` | `false` | OAUTHBEARER without a token provider: send an unsecured JWT (development only) |
//! | `sasl.oauthbearer.config` | — | that JWT, as librdkafka: `principal=alice scope=a,b lifeSeconds=3600 extension_K=V` |
//! | `ssl.ca.location` / `ssl.ca.pem` | Mozilla roots | CA certificate(s) to trust: PEM file / PEM text |
//! | `ssl.certificate.location` / `ssl.certificate.pem` | — | client certificate (mutual TLS) |
//! | `ssl.key.location` / `ssl.key.pem` | — | client private key, unencrypted PEM (never printed) |
//! | `ssl.endpoint.identification.algorithm` | `https` | `https`: verify the broker's name / IP; `none`: don't |
//! | `reconnect.backoff.ms` | 100 | first delay after a failed attempt |
//! | `reconnect.backoff.max.ms` | 10000 | largest delay |
//! | `reconnect.backoff.multiplier` | 2.0 | growth per attempt |
//! | `reconnect.backoff.jitter` | 0.2 | random spread, fraction of the delay |
//! | `reconnect.max.elapsed.ms` | 60000 | give up after this long; 0 = never |
//! | `request.timeout.ms` (`socket.timeout.ms`) | 30000 | time limit of one request |
//! | `metadata.max.age.ms` (`topic.metadata.refresh.interval.ms`) | 300000 | metadata refresh: the producer's topics and the group leader's subscribed topics are looked up again this often, so partitions added to a topic are used (see [`Config::metadata_max_age`](crate::Config::metadata_max_age)) |
//! | `health.check.interval.ms` | 10000 | background connectivity probe; 0 = off |
//! | `message.max.bytes` (`max.request.size`) | 1048576 | largest record accepted |
//! | `receive.message.max.bytes` | 100000000 | largest response frame read from a broker |
//! | `linger.ms` (`queue.buffering.max.ms`) | 5 | batch wait |
//! | `batch.size` | 1048576 | largest batch per partition |
//! | `queue.buffering.max.kbytes` | 65536 | producer buffer bound (KiB) |
//! | `buffer.memory` | 67108864 | the same bound in bytes (Java's name) |
//! | `delivery.timeout.ms` (`message.timeout.ms`) | 120000 | send-to-ack limit, retries included |
//! | `acks` (`request.required.acks`) | `all` | `0`, `1`, `all` / `-1` |
//! | `compression.type` (`compression.codec`) | `none` | `none`, `gzip`, `snappy`, `lz4`\*, `zstd`\* |
//! | `enable.idempotence` | `true` | producer id + sequences: retries neither duplicate nor reorder |
//! | `max.in.flight.requests.per.connection` (`max.in.flight`) | 5 | batches in flight per partition (≤ 5 with idempotence) |
//! | `transactional.id` | — | the transactional producer's id (implies idempotence) |
//! | `transaction.timeout.ms` | 60000 | the coordinator aborts a transaction open longer than this |
//! | `default.headers` | `false` | stamp `event_id`, `timestamp`, `service`, `version` |
//! | `service.version` | empty | the `version` header |
//! | `group.id` | — | consumer group |
//! | `group.instance.id` | — | static membership |
//! | `session.timeout.ms` | 45000 | member session |
//! | `heartbeat.interval.ms` | 3000 | heartbeat period |
//! | `max.poll.interval.ms` | 300000 | longest gap between polls |
//! | `auto.offset.reset` | `latest` | `earliest` (`smallest`, `beginning`), `latest` (`largest`, `end`), `error` (`none`) |
//! | `enable.auto.commit` | `false` | background commits of polled offsets |
//! | `enable.auto.offset.store` | `true` | polled records count as processed at the next poll; `false`: only `store_offset(s)` |
//! | `auto.commit.interval.ms` | 5000 | auto-commit period |
//! | `partition.assignment.strategy` | `range,roundrobin` | assignors by preference |
//! | `fetch.min.bytes` | 1 | smallest fetch response |
//! | `fetch.max.bytes` | 52428800 | largest fetch response |
//! | `max.partition.fetch.bytes` | 1048576 | per-partition fetch size |
//! | `fetch.wait.max.ms` (`fetch.max.wait.ms`) | 500 | broker-side fetch wait |
//! | `queued.max.messages.kbytes` | 65536 | prefetch bound (KiB) |
//! | `check.crcs` | `true` | verify fetched batches' CRC32C |
//! | `isolation.level` | `read_committed` | `read_committed` (no records of aborted transactions, fetch up to the last stable offset), `read_uncommitted` |
//!
//! \* with the `lz4` / `zstd` features (on by default, pure Rust).
//!
//! [`ConfigBuilder::set`]: super::ConfigBuilder::set

use std::time::Duration;

use super::{
    Acks, Compression, ConfigBuilder, IsolationLevel, OffsetReset, SaslCredentials, SaslMechanism,
    Secret, SecurityProtocol,
};
use crate::error::{Error, Result};

/// Applies one `key = value` to the builder.
pub(super) fn apply(b: &mut ConfigBuilder, key: &str, value: &str) -> Result<()> {
    let v = value.trim();
    let c = &mut b.config;
    match key {
        "bootstrap.servers" | "metadata.broker.list" => {
            c.brokers = split_list(v);
            if c.brokers.is_empty() {
                return Err(Error::config(key, value, "no broker given"));
            }
        }
        "client.id" => c.client_id = v.to_string(),
        "enabled" => c.enabled = parse_bool(key, v)?,
        "security.protocol" => {
            c.security_protocol = match v.to_ascii_lowercase().as_str() {
                "plaintext" => SecurityProtocol::Plaintext,
                "ssl" => SecurityProtocol::Ssl,
                "sasl_plaintext" => SecurityProtocol::SaslPlaintext,
                "sasl_ssl" => SecurityProtocol::SaslSsl,
                _ => {
                    return Err(Error::config(
                        key,
                        value,
                        "expected plaintext, ssl, sasl_plaintext or sasl_ssl",
                    ))
                }
            }
        }
        "sasl.mechanism" | "sasl.mechanisms" => {
            let mechanism = match v.to_ascii_uppercase().as_str() {
                "PLAIN" => SaslMechanism::Plain,
                "SCRAM-SHA-256" => SaslMechanism::ScramSha256,
                "SCRAM-SHA-512" => SaslMechanism::ScramSha512,
                "OAUTHBEARER" => SaslMechanism::OAuthBearer,
                _ => {
                    return Err(Error::config(
                        key,
                        value,
                        "expected PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER",
                    ))
                }
            };
            sasl_entry(c).mechanism = mechanism;
        }
        "sasl.username" => sasl_entry(c).username = v.to_string(),
        "sasl.password" => sasl_entry(c).password = Secret::new(value),
        "sasl.oauthbearer.config" => c.oauthbearer_config = Some(v.to_string()),
        "enable.sasl.oauthbearer.unsecure.jwt" => c.oauthbearer_unsecure_jwt = parse_bool(key, v)?,
        "ssl.ca.location" => c.tls.ca_location = Some(non_empty(key, v)?),
        "ssl.ca.pem" => c.tls.ca_pem = Some(non_empty(key, v)?),
        "ssl.certificate.location" => c.tls.certificate_location = Some(non_empty(key, v)?),
        "ssl.certificate.pem" => c.tls.certificate_pem = Some(non_empty(key, v)?),
        "ssl.key.location" => c.tls.key_location = Some(non_empty(key, v)?),
        "ssl.key.pem" => {
            if v.is_empty() {
                return Err(Error::config(key, "", "must not be empty"));
            }
            c.tls.key_pem = Some(Secret::new(v))
        }
        "ssl.endpoint.identification.algorithm" => {
            c.tls.verify_hostname = match v.to_ascii_lowercase().as_str() {
                "https" => true,
                "none" | "" => false,
                _ => return Err(Error::config(key, value, "expected https or none")),
            }
        }
        "reconnect.backoff.ms" => c.reconnect.initial_delay = parse_ms(key, v)?,
        "reconnect.backoff.max.ms" => c.reconnect.max_delay = parse_ms(key, v)?,
        "reconnect.backoff.multiplier" => c.reconnect.multiplier = parse_f64(key, v)?,
        "reconnect.backoff.jitter" => c.reconnect.jitter = parse_f64(key, v)?,
        "reconnect.max.elapsed.ms" => {
            let d = parse_ms(key, v)?;
            c.reconnect.max_elapsed = (!d.is_zero()).then_some(d);
        }
        "request.timeout.ms" | "socket.timeout.ms" => {
            c.request_timeout = parse_positive_ms(key, v)?
        }
        "metadata.max.age.ms" | "topic.metadata.refresh.interval.ms" => {
            c.metadata_max_age = parse_positive_ms(key, v)?
        }
        "health.check.interval.ms" => {
            let d = parse_ms(key, v)?;
            c.health_check_interval = (!d.is_zero()).then_some(d);
        }
        "message.max.bytes" | "max.request.size" => c.message_max_bytes = parse_size(key, v)?,
        "receive.message.max.bytes" => c.receive_message_max_bytes = parse_size(key, v)?,
        "linger.ms" | "queue.buffering.max.ms" => c.producer.linger = parse_ms(key, v)?,
        "batch.size" => c.producer.batch_max_bytes = parse_size(key, v)?,
        "queue.buffering.max.kbytes" => {
            c.producer.buffer_max_bytes = parse_size(key, v)?
                .checked_mul(1024)
                .ok_or_else(|| Error::config(key, value, "too large"))?
        }
        "buffer.memory" => c.producer.buffer_max_bytes = parse_size(key, v)?,
        "delivery.timeout.ms" | "message.timeout.ms" => {
            c.producer.delivery_timeout = parse_positive_ms(key, v)?
        }
        "acks" | "request.required.acks" => {
            c.producer.acks = match v.to_ascii_lowercase().as_str() {
                "0" => Acks::None,
                "1" => Acks::Leader,
                "all" | "-1" => Acks::All,
                _ => return Err(Error::config(key, value, "expected 0, 1, all or -1")),
            }
        }
        "compression.type" | "compression.codec" => {
            c.producer.compression = parse_compression(key, v)?
        }
        "enable.idempotence" => {
            c.producer.enable_idempotence = parse_bool(key, v)?;
            b.idempotence_set = true;
        }
        "max.in.flight.requests.per.connection" | "max.in.flight" => {
            c.producer.max_in_flight = parse_size(key, v)?
        }
        "transactional.id" => c.producer.transactional_id = Some(non_empty(key, v)?),
        "transaction.timeout.ms" => c.producer.transaction_timeout = parse_positive_ms(key, v)?,
        "default.headers" => c.producer.default_headers = parse_bool(key, v)?,
        "service.version" => c.producer.service_version = v.to_string(),
        "group.id" => c.consumer.group_id = Some(non_empty(key, v)?),
        "group.instance.id" => c.consumer.group_instance_id = Some(non_empty(key, v)?),
        "session.timeout.ms" => c.consumer.session_timeout = parse_positive_ms(key, v)?,
        "heartbeat.interval.ms" => c.consumer.heartbeat_interval = parse_positive_ms(key, v)?,
        "max.poll.interval.ms" => c.consumer.max_poll_interval = parse_positive_ms(key, v)?,
        "auto.offset.reset" => {
            c.consumer.auto_offset_reset = match v.to_ascii_lowercase().as_str() {
                "earliest" | "smallest" | "beginning" => OffsetReset::Earliest,
                "latest" | "largest" | "end" => OffsetReset::Latest,
                "error" | "none" => OffsetReset::Error,
                _ => {
                    return Err(Error::config(
                        key,
                        value,
                        "expected earliest, latest or error",
                    ))
                }
            }
        }
        "enable.auto.commit" => c.consumer.enable_auto_commit = parse_bool(key, v)?,
        "enable.auto.offset.store" => c.consumer.enable_auto_offset_store = parse_bool(key, v)?,
        "auto.commit.interval.ms" => c.consumer.auto_commit_interval = parse_positive_ms(key, v)?,
        "partition.assignment.strategy" => {
            let names = split_list(v);
            for n in &names {
                if !matches!(n.as_str(), "range" | "roundrobin") {
                    return Err(Error::config(
                        key,
                        value,
                        format!("unknown assignor {n:?}: expected range or roundrobin"),
                    ));
                }
            }
            c.consumer.assignment_strategies = names;
        }
        "fetch.min.bytes" => c.consumer.fetch_min_bytes = parse_size(key, v)?,
        "fetch.max.bytes" => c.consumer.fetch_max_bytes = parse_size(key, v)?,
        "max.partition.fetch.bytes" => c.consumer.max_partition_fetch_bytes = parse_size(key, v)?,
        "fetch.wait.max.ms" | "fetch.max.wait.ms" => c.consumer.fetch_max_wait = parse_ms(key, v)?,
        "check.crcs" => c.consumer.check_crcs = parse_bool(key, v)?,
        "isolation.level" => {
            c.consumer.isolation_level = match v.to_ascii_lowercase().as_str() {
                "read_committed" => IsolationLevel::ReadCommitted,
                "read_uncommitted" => IsolationLevel::ReadUncommitted,
                _ => {
                    return Err(Error::config(
                        key,
                        value,
                        "expected read_committed or read_uncommitted",
                    ))
                }
            }
        }
        "queued.max.messages.kbytes" => {
            c.consumer.prefetch_max_bytes = parse_size(key, v)?
                .checked_mul(1024)
                .ok_or_else(|| Error::config(key, value, "too large"))?
        }
        _ => {
            return Err(Error::config(
                key,
                if key.contains("pass") || key.contains("secret") {
                    "***"
                } else {
                    value
                },
                "unknown configuration key (see purekafka::config::keys for the accepted keys)",
            ))
        }
    }
    Ok(())
}

/// Checks one `host:port` broker address.
pub(crate) fn validate_broker(broker: &str) -> Result<()> {
    let bad = |reason: &str| Error::config("bootstrap.servers", broker, reason);
    let (host, port) = broker
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    if host.is_empty() {
        return Err(bad("missing host before ':'"));
    }
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        host.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_'))
    };
    if !host_ok {
        return Err(bad("host is not a valid host name or IP address"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad("port must be a number from 1 to 65535")),
    }
}

fn sasl_entry(c: &mut super::Config) -> &mut SaslCredentials {
    c.sasl.get_or_insert_with(|| SaslCredentials {
        mechanism: SaslMechanism::Plain,
        username: String::new(),
        password: Secret::new(""),
    })
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn non_empty(key: &str, v: &str) -> Result<String> {
    if v.is_empty() {
        Err(Error::config(key, v, "must not be empty"))
    } else {
        Ok(v.to_string())
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(Error::config(key, v, "expected true or false")),
    }
}

fn parse_ms(key: &str, v: &str) -> Result<Duration> {
    match v.parse::<i64>() {
        Ok(ms) if ms < 0 => Err(Error::config(key, v, "a duration must not be negative")),
        Ok(ms) => Ok(Duration::from_millis(ms as u64)),
        Err(_) => Err(Error::config(key, v, "expected whole milliseconds")),
    }
}

fn parse_positive_ms(key: &str, v: &str) -> Result<Duration> {
    let d = parse_ms(key, v)?;
    if d.is_zero() {
        return Err(Error::config(key, v, "must be greater than 0"));
    }
    Ok(d)
}

fn parse_size(key: &str, v: &str) -> Result<usize> {
    match v.parse::<i64>() {
        Ok(n) if n < 0 => Err(Error::config(key, v, "a size must not be negative")),
        Ok(n) => usize::try_from(n).map_err(|_| Error::config(key, v, "too large")),
        Err(_) => Err(Error::config(key, v, "expected a whole number")),
    }
}

fn parse_f64(key: &str, v: &str) -> Result<f64> {
    v.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .ok_or_else(|| Error::config(key, v, "expected a number"))
}

fn parse_compression(key: &str, v: &str) -> Result<Compression> {
    match v.to_ascii_lowercase().as_str() {
        "none" => Ok(Compression::None),
        "gzip" => Ok(Compression::Gzip),
        "snappy" => Ok(Compression::Snappy),
        #[cfg(feature = "lz4")]
        "lz4" => Ok(Compression::Lz4),
        #[cfg(feature = "zstd")]
        "zstd" => Ok(Compression::Zstd),
        #[allow(unreachable_patterns)] // reachable when a codec feature is off
        "lz4" | "zstd" => Err(Error::config(
            key,
            v,
            format!("{v} needs purekafka's `{v}` feature (on by default, pure Rust)"),
        )),
        _ => Err(Error::config(
            key,
            v,
            "expected none, gzip, snappy, lz4 or zstd",
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::Error;
    use std::time::Duration;

    fn err(key: &str, value: &str) -> Error {
        Config::builder()
            .brokers(["127.0.0.1:9092"])
            .set(key, value)
            .build()
            .expect_err(&format!("{key}={value} should be rejected"))
    }

    fn assert_names(e: &Error, key: &str, value: &str) {
        match e {
            Error::Config {
                key: k, value: v, ..
            } => {
                assert_eq!(k, key);
                assert_eq!(v, value);
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn unknown_key_is_named() {
        assert_names(&err("lingr.ms", "5"), "lingr.ms", "5");
    }

    #[test]
    fn negative_duration_is_rejected() {
        assert_names(&err("linger.ms", "-1"), "linger.ms", "-1");
        assert_names(
            &err("reconnect.backoff.ms", "-100"),
            "reconnect.backoff.ms",
            "-100",
        );
    }

    #[test]
    fn non_numbers_are_rejected() {
        assert_names(&err("batch.size", "lots"), "batch.size", "lots");
        assert_names(&err("acks", "2"), "acks", "2");
        assert_names(
            &err("auto.offset.reset", "middle"),
            "auto.offset.reset",
            "middle",
        );
        assert_names(&err("enabled", "maybe"), "enabled", "maybe");
        assert_names(
            &err("isolation.level", "read_mostly"),
            "isolation.level",
            "read_mostly",
        );
        assert_names(
            &err("partition.assignment.strategy", "sticky"),
            "partition.assignment.strategy",
            "sticky",
        );
    }

    #[test]
    fn empty_bootstrap_servers_is_rejected() {
        assert_names(&err("bootstrap.servers", " , "), "bootstrap.servers", " , ");
    }

    #[test]
    fn librdkafka_aliases_work() {
        let c = Config::builder()
            .set_all([
                ("metadata.broker.list", "a:1,b:2"),
                ("queue.buffering.max.ms", "20"),
                ("request.required.acks", "1"),
                ("compression.codec", "snappy"),
                ("message.timeout.ms", "30000"),
                ("auto.offset.reset", "smallest"),
                ("sasl.mechanisms", "SCRAM-SHA-256"),
                ("security.protocol", "SASL_PLAINTEXT"),
                ("sasl.username", "u"),
                ("sasl.password", "p"),
                ("enable.idempotence", "false"),
            ])
            .build()
            .unwrap();
        assert_eq!(c.brokers(), ["a:1", "b:2"]);
        assert_eq!(c.producer().linger, Duration::from_millis(20));
        assert_eq!(c.producer().acks, super::Acks::Leader);
        assert_eq!(c.producer().compression, super::Compression::Snappy);
        assert_eq!(c.producer().delivery_timeout, Duration::from_secs(30));
        assert_eq!(c.consumer().auto_offset_reset, super::OffsetReset::Earliest);
        assert_eq!(
            c.sasl().unwrap().mechanism,
            super::SaslMechanism::ScramSha256
        );
    }

    #[test]
    fn isolation_level_defaults_to_read_committed() {
        let c = Config::builder().brokers(["a:1"]).build().unwrap();
        assert_eq!(
            c.consumer().isolation_level,
            super::IsolationLevel::ReadCommitted
        );
        for (value, level) in [
            ("read_uncommitted", super::IsolationLevel::ReadUncommitted),
            ("READ_COMMITTED", super::IsolationLevel::ReadCommitted),
        ] {
            let c = Config::builder()
                .brokers(["a:1"])
                .set("isolation.level", value)
                .build()
                .unwrap();
            assert_eq!(c.consumer().isolation_level, level, "{value}");
        }
    }

    #[test]
    fn lz4_without_feature_is_explained() {
        if cfg!(feature = "lz4") {
            return;
        }
        let e = err("compression.type", "lz4");
        assert!(e.to_string().contains("feature"), "{e}");
    }

    #[test]
    fn unknown_password_like_key_hides_value() {
        for key in ["sasl.passwd", "ssl.key.password", "oauth.client.secret"] {
            let e = err(key, "hunter2");
            assert!(!e.to_string().contains("hunter2"), "{e}");
            assert!(e.to_string().contains(key), "{e}");
        }
    }
}
