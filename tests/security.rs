//! TLS and SASL against real, independent implementations:
//!
//! - stunnel4 (OpenSSL) terminating TLS in front of tansu 0.6.0, with tansu advertising only
//!   stunnel's port: the client learns no other address, so a single plaintext connection
//!   (bootstrap, metadata, produce, fetch, group coordinator) would fail the test;
//! - `verify = 2` in stunnel for mutual TLS;
//! - `tansu broker --authentication` for SASL refusals, and (tansu with SQLite storage,
//!   whose users survive a restart) for SCRAM-SHA-256/512 logins that succeed, over
//!   `sasl_plaintext` and through stunnel over `sasl_ssl`.
//!
//! Certificates are made at run time with the openssl CLI in a temporary directory: a CA, a
//! second unrelated CA, a server certificate for `localhost` and `127.0.0.1`, one for another
//! name, an expired one, and a client certificate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use purekafka::{Client, Config, ConfigBuilder, Error, Record};
use purekafka_testkit::unique_name;

#[macro_use]
mod support;
use support::process::{free_port, wait_listening, Proc};
use support::tansu_sql::tansu_sql_bin;

// ---------------------------------------------------------------------------------------
// Certificates

struct Certs {
    dir: PathBuf,
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    fn generate() -> Certs {
        let dir = std::env::temp_dir().join(unique_name("purekafka-certs"));
        std::fs::create_dir_all(&dir).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            let (key, pem, subj) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN=purekafka {ca}"),
            );
            args.extend([
                "-keyout",
                &key,
                "-out",
                &pem,
                "-days",
                "30",
                "-subj",
                &subj,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            openssl(&dir, &args);
        }
        let leaf = |name: &str, san: &str, usage: &str, days: &str| {
            let (key, csr, pem, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            std::fs::write(
                dir.join(&ext),
                format!(
                    "subjectAltName={san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"
                ),
            )
            .unwrap();
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=purekafka test"]);
            openssl(&dir, &args);
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    days,
                    "-extfile",
                    &ext,
                ],
            );
        };
        leaf("server", "DNS:localhost,IP:127.0.0.1", "serverAuth", "30");
        leaf(
            "wrong-name",
            "DNS:wrong.example,IP:10.9.9.9",
            "serverAuth",
            "30",
        );
        leaf("expired", "DNS:localhost,IP:127.0.0.1", "serverAuth", "-1");
        leaf("client", "DNS:purekafka-client", "clientAuth", "30");
        Certs { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

fn tansu_bin() -> String {
    std::env::var("PUREKAFKA_TANSU_BIN").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cargo/bin/tansu")
    })
}

/// tansu on a free port of its own, advertising `advertised` (`host:port`).
fn tansu(port: u16, advertised: &str, extra: &[&str], dir: &Path) -> Proc {
    tansu_with(
        &tansu_bin(),
        "memory://tansu/",
        port,
        advertised,
        extra,
        dir,
    )
}

/// `bin` (a tansu) with `storage`, on `port`, advertising `advertised` (`host:port`).
fn tansu_with(
    bin: &str,
    storage: &str,
    port: u16,
    advertised: &str,
    extra: &[&str],
    dir: &Path,
) -> Proc {
    let listen = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://{advertised}");
    let storage = format!("--storage-engine={storage}");
    let mut args = vec![
        "broker",
        &storage,
        "--listener-url",
        &listen,
        "--advertised-listener-url",
        &advertised,
    ];
    args.extend(extra);
    let p = Proc::spawn(bin, &args, dir.join(unique_name("tansu.log")));
    wait_listening(port, &p);
    p
}

/// stunnel accepting TLS on `port` with `cert`/`key`, forwarding to `target`; with
/// `client_ca`, clients must present a certificate signed by it (`verify = 2`).
fn stunnel(port: u16, target: u16, certs: &Certs, cert: &str, client_ca: Option<&str>) -> Proc {
    let conf = certs.dir.join(unique_name("stunnel.conf"));
    let mut text = format!(
        "foreground = yes\npid =\ndebug = 5\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{target}\ncert = {}\nkey = {}\n",
        certs.path(&format!("{cert}.pem")),
        certs.path(&format!("{cert}.key")),
    );
    if let Some(ca) = client_ca {
        text.push_str(&format!("verify = 2\nCAfile = {}\n", certs.path(ca)));
    }
    std::fs::write(&conf, text).unwrap();
    let p = Proc::spawn(
        "stunnel4",
        &[conf.to_str().unwrap()],
        certs.dir.join(unique_name("stunnel.log")),
    );
    wait_listening(port, &p);
    p
}

/// tansu behind stunnel: tansu advertises only stunnel's port, under `host` (`localhost` or
/// `127.0.0.1`). Returns (bootstrap, processes).
fn tls_cluster(
    certs: &Certs,
    host: &str,
    cert: &str,
    client_ca: Option<&str>,
) -> (String, Vec<Proc>) {
    let (tls_port, tansu_port) = (free_port(), free_port());
    let advertised = format!("{host}:{tls_port}");
    let broker = tansu(tansu_port, &advertised, &[], &certs.dir);
    let tunnel = stunnel(tls_port, tansu_port, certs, cert, client_ca);
    (advertised, vec![tunnel, broker])
}

// ---------------------------------------------------------------------------------------
// Client helpers

/// A configuration with short budgets so that failures come back quickly, and a retry hook
/// counting retries.
fn config(bootstrap: &str, retries: &Arc<AtomicUsize>) -> ConfigBuilder {
    support::init_tracing();
    let retries = Arc::clone(retries);
    Config::builder()
        .brokers([bootstrap])
        .client_id(unique_name("security-test"))
        .set("request.timeout.ms", "10000")
        .set("reconnect.max.elapsed.ms", "8000")
        .set("reconnect.backoff.max.ms", "1000")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("auto.offset.reset", "earliest")
        .on_retry(move |_| {
            retries.fetch_add(1, Ordering::SeqCst);
        })
}

/// Creates a topic, produces 20 records, consumes them in a group, commits, and checks the
/// committed offset: every kind of connection the client opens.
async fn round_trip(client: &Client, label: &str) {
    let topic = unique_name(&format!("sec-{label}"));
    client
        .create_topic(&topic, 2, 1)
        .await
        .expect("create topic");
    let producer = client.producer();
    let results =
        producer
            .send_all((0..20).map(|i| {
                Record::new(topic.clone(), format!("{label}-{i}")).with_key(format!("k{i}"))
            }))
            .await;
    for r in results {
        r.expect("produce");
    }
    producer.close().await;
    let consumer = client.consumer(&[&topic]).expect("consumer");
    let mut values = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while values.len() < 20 {
        assert!(Instant::now() < deadline, "{label}: consumed {values:?}");
        let records = consumer
            .poll(Duration::from_millis(500))
            .await
            .expect("poll");
        if !records.is_empty() {
            consumer.commit_batch(&records).await.expect("commit");
        }
        values.extend(records.iter().map(|r| r.value_str().unwrap().to_string()));
    }
    values.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("{label}-{i}")).collect();
    expected.sort();
    assert_eq!(values, expected, "{label}");
    let committed: i64 = consumer
        .committed(&[(topic.as_str(), 0), (topic.as_str(), 1)])
        .await
        .expect("committed offsets")
        .values()
        .sum();
    assert_eq!(
        committed, 20,
        "{label}: committed offsets add up to the records read"
    );
    consumer.close().await.expect("close");
}

/// The whole error chain as one string.
fn chain(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(" <- ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn connect_error(config: ConfigBuilder) -> Error {
    let config = config.build().expect("config");
    match tokio::time::timeout(Duration::from_secs(60), Client::connect(config)).await {
        Ok(Ok(_)) => panic!("connected although it must fail"),
        Ok(Err(e)) => e,
        Err(_) => panic!("no error within 60 s"),
    }
}

// ---------------------------------------------------------------------------------------
// TLS through stunnel

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_through_stunnel_by_host_name_and_by_ip_with_no_plaintext_connection() {
    let certs = Certs::generate();
    for host in ["localhost", "127.0.0.1"] {
        let (bootstrap, _procs) = tls_cluster(&certs, host, "server", None);
        let retries = Arc::new(AtomicUsize::new(0));
        let client = Client::connect(
            config(&bootstrap, &retries)
                .set("security.protocol", "ssl")
                .set("ssl.ca.location", certs.path("ca.pem"))
                .group_id(unique_name("sec-group"))
                .build()
                .unwrap(),
        )
        .await
        .expect("connect over TLS");
        round_trip(&client, &format!("tls-{}", host.replace('.', "-"))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_client_certificate_and_without_one() {
    let certs = Certs::generate();
    let (bootstrap, procs) = tls_cluster(&certs, "localhost", "server", Some("ca.pem"));
    let retries = Arc::new(AtomicUsize::new(0));
    let base = || {
        config(&bootstrap, &retries)
            .set("security.protocol", "ssl")
            .set("ssl.ca.location", certs.path("ca.pem"))
    };
    let client = Client::connect(
        base()
            .set("ssl.certificate.location", certs.path("client.pem"))
            .set("ssl.key.location", certs.path("client.key"))
            .group_id(unique_name("sec-mtls"))
            .build()
            .unwrap(),
    )
    .await
    .expect("connect with a client certificate");
    round_trip(&client, "mtls").await;

    let e = connect_error(base()).await;
    let text = chain(&e);
    assert!(
        text.contains("CertificateRequired")
            || text.contains("HandshakeFailure")
            || text.contains("does it require a client certificate"),
        "without a client certificate: {text}\nstunnel: {}",
        procs[0].log()
    );
    assert!(!text.contains("BEGIN"), "no key material in errors: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_failures_are_clear_errors_and_not_retried() {
    let certs = Certs::generate();
    let (good, _a) = tls_cluster(&certs, "localhost", "server", None);
    let (wrong_name, _b) = tls_cluster(&certs, "localhost", "wrong-name", None);
    let (expired, _c) = tls_cluster(&certs, "localhost", "expired", None);
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "unknown CA",
            &good,
            vec![("ssl.ca.location", certs.path("other-ca.pem"))],
            "not signed by a trusted CA",
        ),
        (
            "Mozilla roots only",
            &good,
            vec![],
            "not signed by a trusted CA",
        ),
        (
            "host name mismatch",
            &wrong_name,
            vec![("ssl.ca.location", certs.path("ca.pem"))],
            "not valid for the host name",
        ),
        (
            "expired",
            &expired,
            vec![("ssl.ca.location", certs.path("ca.pem"))],
            "expired",
        ),
    ];
    for (what, bootstrap, keys, expected) in cases {
        let retries = Arc::new(AtomicUsize::new(0));
        let mut b = config(bootstrap, &retries).set("security.protocol", "ssl");
        for (k, v) in &keys {
            b = b.set(k, v);
        }
        let e = connect_error(b).await;
        let text = chain(&e);
        assert!(text.contains(expected), "{what}: {text}");
        assert!(
            text.contains("TLS with"),
            "{what}: names TLS and the broker: {text}"
        );
        assert_eq!(
            retries.load(Ordering::SeqCst),
            0,
            "{what}: not retried: {text}"
        );
    }

    // ssl.endpoint.identification.algorithm=none accepts the name mismatch (the chain is
    // still verified).
    let retries = Arc::new(AtomicUsize::new(0));
    let client = Client::connect(
        config(&wrong_name, &retries)
            .set("security.protocol", "ssl")
            .set("ssl.ca.location", certs.path("ca.pem"))
            .set("ssl.endpoint.identification.algorithm", "none")
            .group_id(unique_name("sec-noverify"))
            .build()
            .unwrap(),
    )
    .await
    .expect("no host name verification");
    round_trip(&client, "no-hostname-check").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plaintext_mixed_up_fail_clearly() {
    let certs = Certs::generate();
    let (tls_bootstrap, _procs) = tls_cluster(&certs, "127.0.0.1", "server", None);
    let plain_port = free_port();
    let _plain = tansu(
        plain_port,
        &format!("127.0.0.1:{plain_port}"),
        &[],
        &certs.dir,
    );

    let retries = Arc::new(AtomicUsize::new(0));
    let e = connect_error(
        config(&format!("127.0.0.1:{plain_port}"), &retries)
            .set("security.protocol", "ssl")
            .set("ssl.ca.location", certs.path("ca.pem")),
    )
    .await;
    let text = chain(&e);
    assert!(text.contains("TLS"), "TLS to a plaintext port: {text}");

    let retries = Arc::new(AtomicUsize::new(0));
    let e = connect_error(config(&tls_bootstrap, &retries)).await;
    let text = chain(&e);
    assert!(
        text.contains("answered with TLS") || text.contains("if this listener expects TLS"),
        "plaintext to a TLS port: {text}"
    );
}

#[test]
fn a_cpu_without_the_providers_features_is_a_config_error() {
    let needed = purekafka::tls::required_cpu_features();
    assert_eq!(purekafka::tls::provider_name(), "rustls-graviola");
    assert!(!needed.is_empty());
    for missing in needed {
        let e = purekafka::tls::check_cpu_with(|f| f != *missing).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::Config { .. }), "{text}");
        assert!(
            text.contains(missing) && text.contains("tls-ring"),
            "{text}"
        );
    }
    // This machine runs the tests, so it has what graviola needs.
    purekafka::tls::check_cpu().expect("this CPU runs graviola");
}

// ---------------------------------------------------------------------------------------
// SASL against `tansu broker --authentication`

/// A TCP proxy on a free port forwarding to `target`, counting connections.
async fn counting_proxy(target: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) =
                    tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (port, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_refusals_name_broker_mechanism_and_user_and_are_not_retried() {
    let dir = std::env::temp_dir().join(unique_name("purekafka-sasl"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let _broker = tansu(
        port,
        &format!("127.0.0.1:{port}"),
        &["--authentication"],
        &dir,
    );
    let (proxy, connections) = counting_proxy(port).await;
    let bootstrap = format!("127.0.0.1:{proxy}");
    let cases = [
        (
            "SCRAM-SHA-256",
            "nobody",
            "pw-not-shown-256",
            "unknown user",
        ),
        (
            "SCRAM-SHA-512",
            "nobody",
            "pw-not-shown-512",
            "unknown user",
        ),
        (
            // tansu closes the connection instead of answering UNSUPPORTED_SASL_MECHANISM.
            "PLAIN",
            "alice",
            "pw-not-shown-plain",
            "does not enable this mechanism",
        ),
    ];
    for (mechanism, user, password, expected) in cases {
        let before = connections.load(Ordering::SeqCst);
        let retries = Arc::new(AtomicUsize::new(0));
        let e = connect_error(
            config(&bootstrap, &retries)
                .set("security.protocol", "sasl_plaintext")
                .set("sasl.mechanism", mechanism)
                .set("sasl.username", user)
                .set("sasl.password", password),
        )
        .await;
        let text = chain(&e);
        assert!(
            matches!(&e, Error::Authentication { .. })
                || matches!(&e, Error::Connect { last_error, .. } if matches!(**last_error, Error::Authentication { .. })),
            "{mechanism}: {text}"
        );
        for part in [mechanism, user, expected, &bootstrap] {
            assert!(text.contains(part), "{mechanism}: names {part:?}: {text}");
        }
        assert!(!text.contains(password), "{mechanism}: no password: {text}");
        assert!(
            !format!("{e:?}").contains(password),
            "{mechanism}: no password in Debug"
        );
        assert_eq!(
            retries.load(Ordering::SeqCst),
            0,
            "{mechanism}: not retried: {text}"
        );
        assert_eq!(
            connections.load(Ordering::SeqCst) - before,
            1,
            "{mechanism}: one connection attempt: {text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsecured_oauthbearer_token_is_refused_with_a_clear_error() {
    let dir = std::env::temp_dir().join(unique_name("purekafka-oauth"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let _broker = tansu(
        port,
        &format!("127.0.0.1:{port}"),
        &["--authentication"],
        &dir,
    );
    let retries = Arc::new(AtomicUsize::new(0));
    let e = connect_error(
        config(&format!("127.0.0.1:{port}"), &retries)
            .set("security.protocol", "sasl_plaintext")
            .set("sasl.mechanism", "OAUTHBEARER")
            .set("enable.sasl.oauthbearer.unsecure.jwt", "true")
            .set("sasl.oauthbearer.config", "principal=alice lifeSeconds=60"),
    )
    .await;
    let text = chain(&e);
    // tansu 0.6.0 takes the OAUTHBEARER handshake and refuses the unsigned token.
    assert!(
        text.contains("OAUTHBEARER")
            && text.contains("alice")
            && text.contains("authentication failed"),
        "{text}"
    );
    assert!(!text.contains("eyJ"), "no token in the error: {text}");
    assert_eq!(retries.load(Ordering::SeqCst), 0, "not retried: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// Successful SCRAM logins (tansu with SQLite storage)

/// [`config`] logging in with SCRAM as `(mechanism, user, password)`, over TLS trusting the
/// test CA when `tls` is given.
fn scram_config(
    bootstrap: &str,
    retries: &Arc<AtomicUsize>,
    tls: Option<&Certs>,
    (mechanism, user, password): (&str, &str, &str),
) -> ConfigBuilder {
    let builder = config(bootstrap, retries)
        .set("sasl.mechanism", mechanism)
        .set("sasl.username", user)
        .set("sasl.password", password);
    match tls {
        Some(certs) => builder
            .set("security.protocol", "sasl_ssl")
            .set("ssl.ca.location", certs.path("ca.pem")),
        None => builder.set("security.protocol", "sasl_plaintext"),
    }
}

/// Runs `tansu-sql user create` against the unauthenticated broker at `port`.
fn create_scram_user(port: u16, user: &str, password: &str, mechanism: &str) {
    let out = Command::new(tansu_sql_bin())
        .args(["user", "create", user, password, "--mechanism", mechanism])
        .arg("--broker")
        .arg(format!("tcp://127.0.0.1:{port}"))
        .output()
        .expect("run tansu-sql user create");
    assert!(
        out.status.success(),
        "tansu-sql user create {user}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The SCRAM users of these tests, created in `storage` by a broker started without
/// authentication (tansu refuses to create users while authentication is on), which is then
/// stopped: a broker started later on the same database reads them back.
fn scram_users(
    bin: &str,
    storage: &str,
    dir: &Path,
) -> [(&'static str, &'static str, &'static str); 2] {
    let port = free_port();
    let _open = tansu_with(bin, storage, port, &format!("127.0.0.1:{port}"), &[], dir);
    create_scram_user(port, "alice", "alice-secret-256", "scram256");
    create_scram_user(port, "bob", "bob-secret-512", "scram512");
    [
        ("SCRAM-SHA-256", "alice", "alice-secret-256"),
        ("SCRAM-SHA-512", "bob", "bob-secret-512"),
    ]
}

/// The tansu-sql binary, which must be installed (CI installs it).
fn require_tansu_sql() -> String {
    let bin = tansu_sql_bin();
    assert!(
        Path::new(&bin).exists(),
        "{bin} is missing: `bash testcontainers/tansu/install.sh --sql` builds it \
         (scripts/setup-test-env.sh runs it)"
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_logins_succeed_over_sasl_plaintext_and_sasl_ssl() {
    let bin = require_tansu_sql();
    let certs = Certs::generate();
    // tansu takes the URL path without its first `/`: four slashes name an absolute path.
    let storage = format!("sqlite:///{}", certs.path("tansu.db"));
    // 1. Users, created while authentication is off (tansu refuses it otherwise); the broker
    //    is then stopped, so the logins below read them back from the database.
    let users = scram_users(&bin, &storage, &certs.dir);

    // 2. sasl_plaintext: produce, group consume, commit, admin; the raw rskafka client built
    //    from the same Config logs in too; a wrong password is refused and not retried.
    {
        let port = free_port();
        let bootstrap = format!("127.0.0.1:{port}");
        let broker = tansu_with(
            &bin,
            &storage,
            port,
            &bootstrap,
            &["--authentication"],
            &certs.dir,
        );
        for (mechanism, user, password) in users {
            let retries = Arc::new(AtomicUsize::new(0));
            let client = Client::connect(
                scram_config(&bootstrap, &retries, None, (mechanism, user, password))
                    .group_id(unique_name("sasl-group"))
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{mechanism} login as {user}: {}\n{}",
                    chain(&e),
                    broker.log()
                )
            });
            let label = format!("sasl-{}", mechanism.to_lowercase());
            round_trip(&client, &label).await;
            let raw = client.rskafka().await.expect("rskafka client with SASL");
            let topics = raw
                .list_topics()
                .await
                .expect("rskafka lists topics over SASL");
            assert!(
                topics
                    .iter()
                    .any(|t| t.name.starts_with(&format!("sec-{label}"))),
                "rskafka sees the round trip's topic: {:?}",
                topics.iter().map(|t| &t.name).collect::<Vec<_>>()
            );
            let retries = Arc::new(AtomicUsize::new(0));
            let e = connect_error(scram_config(
                &bootstrap,
                &retries,
                None,
                (mechanism, user, "not-the-password"),
            ))
            .await;
            let text = chain(&e);
            assert!(
                text.contains(mechanism)
                    && text.contains(user)
                    && !text.contains("not-the-password"),
                "{mechanism}: {text}"
            );
            assert_eq!(
                retries.load(Ordering::SeqCst),
                0,
                "{mechanism}: not retried: {text}"
            );
        }
    }

    // 3. sasl_ssl through stunnel: tansu advertises only the TLS port, so every connection
    //    (bootstrap, metadata, produce, fetch, coordinator) is TLS and then SASL.
    {
        let (tls_port, port) = (free_port(), free_port());
        let advertised = format!("localhost:{tls_port}");
        let _broker = tansu_with(
            &bin,
            &storage,
            port,
            &advertised,
            &["--authentication"],
            &certs.dir,
        );
        let _tunnel = stunnel(tls_port, port, &certs, "server", None);
        for (mechanism, user, password) in users {
            let retries = Arc::new(AtomicUsize::new(0));
            let client = Client::connect(
                scram_config(
                    &advertised,
                    &retries,
                    Some(&certs),
                    (mechanism, user, password),
                )
                .group_id(unique_name("sasl-ssl-group"))
                .build()
                .unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("{mechanism} over TLS as {user}: {}", chain(&e)));
            round_trip(&client, &format!("sasl-ssl-{}", mechanism.to_lowercase())).await;
        }
    }
}

/// KIP-368: tansu 0.6.0 answers a SCRAM login with a 60 s session lifetime. A client that
/// produces and consumes for longer than that must open freshly authenticated connections
/// before 85 % of it has passed (counted by a TCP proxy that tansu advertises, so every
/// connection goes through it), and lose nothing on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sessions_are_renewed_before_the_brokers_lifetime_runs_out() {
    let bin = require_tansu_sql();
    let certs = Certs::generate();
    let storage = format!("sqlite:///{}", certs.path("tansu.db"));
    let [_, (mechanism, user, password)] = scram_users(&bin, &storage, &certs.dir);
    let port = free_port();
    let (proxy, connections) = counting_proxy(port).await;
    let bootstrap = format!("127.0.0.1:{proxy}");
    let _broker = tansu_with(
        &bin,
        &storage,
        port,
        &bootstrap,
        &["--authentication"],
        &certs.dir,
    );
    let retries = Arc::new(AtomicUsize::new(0));
    let client = Client::connect(
        scram_config(&bootstrap, &retries, None, (mechanism, user, password))
            .group_id(unique_name("sasl-renew-group"))
            .build()
            .unwrap(),
    )
    .await
    .expect("login");
    let topic = unique_name("sasl-renew");
    client
        .create_topic(&topic, 1, 1)
        .await
        .expect("create topic");
    let producer = client.producer();
    let consumer = client.consumer(&[&topic]).expect("consumer");
    let started = Instant::now();
    let (mut sent, mut read) = (0usize, Vec::new());
    let mut early = None;
    // 75 s: past the first renewal (51 s) with room for a slow machine.
    while started.elapsed() < Duration::from_secs(75) {
        producer
            .send(Record::new(topic.clone(), format!("r-{sent}")))
            .await
            .unwrap_or_else(|e| panic!("send {sent} at {:?}: {e:?}", started.elapsed()));
        sent += 1;
        let records = consumer
            .poll(Duration::from_millis(500))
            .await
            .unwrap_or_else(|e| panic!("poll at {:?}: {e:?}", started.elapsed()));
        read.extend(records.iter().map(|r| r.value_str().unwrap().to_string()));
        if early.is_none() && started.elapsed() > Duration::from_secs(20) {
            early = Some(connections.load(Ordering::SeqCst));
        }
    }
    let early = early.expect("the loop ran past 20 s");
    let deadline = Instant::now() + Duration::from_secs(60);
    while read.len() < sent {
        assert!(Instant::now() < deadline, "read {} of {sent}", read.len());
        let records = consumer
            .poll(Duration::from_millis(500))
            .await
            .expect("poll");
        read.extend(records.iter().map(|r| r.value_str().unwrap().to_string()));
    }
    let expected: Vec<String> = (0..sent).map(|i| format!("r-{i}")).collect();
    assert_eq!(
        read, expected,
        "every record once, in order, across the renewal"
    );
    let after = connections.load(Ordering::SeqCst);
    assert!(
        after > early,
        "no new connection after the session lifetime's 85 % ({early} before, {after} after)"
    );
    assert_eq!(
        retries.load(Ordering::SeqCst),
        0,
        "renewal is not a failure to retry"
    );
    consumer.close().await.expect("close");
    producer.close().await;
}
