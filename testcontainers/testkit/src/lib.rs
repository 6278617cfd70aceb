//! Real Kafka-compatible brokers for purekafka's tests and examples.
//!
//! Three backends are available (see `testcontainers/README.md` in the repository):
//!
//! - [`Backend::MockCluster`]: librdkafka's mock cluster, run as the `mock-cluster` helper
//!   binary from `testcontainers/mock-cluster/`. Multi-broker, starts in milliseconds, and
//!   supports fault injection through [`TestCluster::command`] and the helpers around it. It
//!   does not serve CreateTopics over the wire; [`TestCluster::create_topic`] goes through the
//!   helper's own API instead.
//! - [`Backend::Tansu`]: a tansu 0.6.0 broker with in-memory storage on a free loopback port.
//! - [`Backend::External`]: any running cluster, named by `PUREKAFKA_TEST_BROKERS`.
//!
//! Every process a [`TestCluster`] starts is killed and reaped when it is dropped, including
//! while a test panics. Processes also die on their own when the test process dies without
//! running destructors: the mock cluster exits at stdin EOF, and tansu runs under a small
//! `sh` watchdog that kills it at stdin EOF.
//!
//! ```no_run
//! # async fn demo() -> Result<(), String> {
//! use purekafka_testkit::{unique_name, Backend, TestCluster};
//!
//! let cluster = TestCluster::start(Backend::MockCluster)?;
//! let topic = unique_name("orders");
//! cluster.create_topic(&topic, 3).await?;
//! cluster.broker_down(2)?;
//! // ... point the client under test at cluster.bootstrap() ...
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rskafka::client::{Client, ClientBuilder};
use rskafka::BackoffConfig;

/// Environment variable naming an external cluster: `host:port,host:port,...`.
pub const ENV_TEST_BROKERS: &str = "PUREKAFKA_TEST_BROKERS";
/// Environment variable overriding the path of the `mock-cluster` binary (no build is then
/// attempted).
pub const ENV_MOCK_CLUSTER_BIN: &str = "PUREKAFKA_MOCK_CLUSTER_BIN";
/// Environment variable overriding the path of the `tansu` binary.
pub const ENV_TANSU_BIN: &str = "PUREKAFKA_TANSU_BIN";
/// Environment variable that, when set to anything, keeps the broker log files of clusters
/// that shut down cleanly (logs are always kept when the dropping thread is panicking).
pub const ENV_KEEP_LOGS: &str = "PUREKAFKA_KEEP_LOGS";

/// How long tansu may take to accept connections and answer a Metadata request.
const TANSU_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`TestCluster::create_topic`] waits for the topic to show in metadata.
const TOPIC_TIMEOUT: Duration = Duration::from_secs(30);

/// Which kind of broker a [`TestCluster`] runs against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Backend {
    /// librdkafka's mock cluster (3 brokers unless started with [`TestCluster::start_mock`]).
    MockCluster,
    /// A tansu 0.6.0 broker with in-memory storage.
    Tansu,
    /// An already running cluster; the string is its bootstrap list `host:port,...`.
    External(String),
}

impl Backend {
    /// The backends that run on this machine without outside help: mock cluster and tansu.
    pub fn all_local() -> Vec<Backend> {
        vec![Backend::MockCluster, Backend::Tansu]
    }

    /// [`Backend::External`] built from `PUREKAFKA_TEST_BROKERS` when it is set and non-empty,
    /// otherwise `None`.
    pub fn from_env() -> Option<Backend> {
        std::env::var(ENV_TEST_BROKERS)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .map(Backend::External)
    }

    /// A short lowercase name (`mock`, `tansu`, `external`) for logs and test names.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::MockCluster => "mock",
            Backend::Tansu => "tansu",
            Backend::External(_) => "external",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::External(b) => write!(f, "external({b})"),
            other => f.write_str(other.name()),
        }
    }
}

/// A name that no other test, thread or process on this machine will generate: `prefix`,
/// then the process id, the current time in nanoseconds and a process-wide counter, joined by
/// `-`. Only characters legal in Kafka topic and group names are added.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// The pipes to a running `mock-cluster`.
struct MockIo {
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// A broker process that this crate started.
struct Proc {
    child: Child,
    log: PathBuf,
}

/// A running (or, for [`Backend::External`], reachable) Kafka cluster for one test.
///
/// Dropping it stops the processes it started. It is `Send + Sync`, so it can be shared by
/// several tasks, or by several tests through a `static`.
pub struct TestCluster {
    backend: Backend,
    bootstrap: String,
    proc: Option<Proc>,
    mock: Option<Mutex<MockIo>>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("backend", &self.backend)
            .field("bootstrap", &self.bootstrap)
            .field("log", &self.log_path())
            .finish()
    }
}

impl TestCluster {
    /// Starts a cluster of the given backend and waits until it is usable.
    ///
    /// [`Backend::MockCluster`] starts 3 brokers; [`Backend::Tansu`] starts one broker on a
    /// free loopback port and waits (up to 30 s) until it answers a Metadata request;
    /// [`Backend::External`] starts nothing. Blocking; safe to call from inside an async
    /// runtime too (the readiness check runs on a thread of its own).
    pub fn start(backend: Backend) -> Result<TestCluster, String> {
        match backend {
            Backend::MockCluster => TestCluster::start_mock(3),
            Backend::Tansu => start_tansu(),
            Backend::External(bootstrap) => Ok(TestCluster {
                backend: Backend::External(bootstrap.clone()),
                bootstrap,
                proc: None,
                mock: None,
            }),
        }
    }

    /// Starts tansu on the given 127.0.0.1 `port` (for tests that point a client at a port
    /// before any broker listens there) and waits until it answers a Metadata request.
    pub fn start_tansu_on(port: u16) -> Result<TestCluster, String> {
        let bin = tansu_bin()?;
        start_tansu_at(&bin, port, port).map_err(|(e, _)| e)
    }

    /// Starts tansu listening on 127.0.0.1 `port` but advertising `advertised` (e.g. a proxy
    /// in front of it, which must already relay to `port`: readiness is checked through the
    /// advertised address).
    pub fn start_tansu_advertising(port: u16, advertised: u16) -> Result<TestCluster, String> {
        let bin = tansu_bin()?;
        start_tansu_at(&bin, port, advertised).map_err(|(e, _)| e)
    }

    /// Starts librdkafka's mock cluster with `brokers` brokers (ids `1..=brokers`).
    ///
    /// The `mock-cluster` binary is taken from `PUREKAFKA_MOCK_CLUSTER_BIN`, else run from
    /// `<repo>/testcontainers/mock-cluster/target/release/mock-cluster`, which is first
    /// (re)built with `cargo build --release` when it is missing or older than its sources
    /// (checked once per process; cargo's own target-directory lock serialises parallel test
    /// processes building it).
    pub fn start_mock(brokers: usize) -> Result<TestCluster, String> {
        if brokers == 0 {
            return Err("a mock cluster needs at least one broker".into());
        }
        let bin = mock_cluster_bin()?;
        let log = new_log_path("mock");
        let log_file = File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let mut child = Command::new(&bin)
            .arg("--brokers")
            .arg(brokers.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut proc = Proc { child, log };
        let mut first = String::new();
        let read = stdout.read_line(&mut first);
        let bootstrap = match (read, first.trim().strip_prefix("BOOTSTRAP ")) {
            (Ok(_), Some(b)) if !b.is_empty() => b.to_string(),
            (read, _) => {
                let msg = format!(
                    "mock-cluster ({}) did not print its BOOTSTRAP line (got {first:?}, {read:?}); \
                     its log: {}",
                    bin.display(),
                    proc.log.display()
                );
                drop(stdin);
                stop(&mut proc, true);
                return Err(msg);
            }
        };
        Ok(TestCluster {
            backend: Backend::MockCluster,
            bootstrap,
            proc: Some(proc),
            mock: Some(Mutex::new(MockIo { stdin, stdout })),
        })
    }

    /// The bootstrap list, `host:port,host:port,...`.
    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    /// The bootstrap list split into `host:port` entries.
    pub fn bootstrap_list(&self) -> Vec<String> {
        split_bootstrap(&self.bootstrap)
    }

    /// The backend this cluster runs on.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Path of the file receiving the broker's stdout/stderr (none for external clusters).
    pub fn log_path(&self) -> Option<&Path> {
        self.proc.as_ref().map(|p| p.log.as_path())
    }

    /// Creates `name` with `partitions` partitions (replication factor 1 on tansu and external
    /// clusters, `min(3, brokers)` on the mock cluster) and waits until a Metadata request
    /// shows the topic with all its partitions.
    ///
    /// The mock cluster does not serve CreateTopics, so there the topic is created through the
    /// `create-topic` command; other backends get a CreateTopics request (via rskafka).
    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<(), String> {
        if self.mock.is_some() {
            self.command(&format!("create-topic {name} {partitions}"))?;
        } else {
            let client = self.client().await?;
            let controller = client
                .controller_client()
                .map_err(|e| format!("controller client: {e}"))?;
            match tokio::time::timeout(
                Duration::from_secs(15),
                controller.create_topic(name, partitions, 1, 10_000),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("create topic {name}: {e}{}", self.log_hint())),
                Err(_) => return Err(format!("create topic {name}: timed out{}", self.log_hint())),
            }
        }
        self.wait_for_topic(name, partitions).await
    }

    /// Waits until a Metadata request shows `name` with `partitions` partitions.
    pub async fn wait_for_topic(&self, name: &str, partitions: i32) -> Result<(), String> {
        let deadline = Instant::now() + TOPIC_TIMEOUT;
        let mut last;
        loop {
            match self.client().await {
                Ok(client) => {
                    match tokio::time::timeout(Duration::from_secs(5), client.list_topics()).await {
                        Ok(Ok(topics)) => match topics.iter().find(|t| t.name == name) {
                            Some(t) if t.partitions.len() == partitions as usize => return Ok(()),
                            Some(t) => last = format!("{} partitions listed", t.partitions.len()),
                            None => last = "not listed".into(),
                        },
                        Ok(Err(e)) => last = format!("metadata: {e}"),
                        Err(_) => last = "metadata request timed out".into(),
                    }
                }
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "topic {name} did not show {partitions} partitions in metadata within \
                     {TOPIC_TIMEOUT:?}: {last}{}",
                    self.log_hint()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id of the broker process this cluster started (for tansu, the watchdog
    /// `sh` whose child is the broker), e.g. to read its CPU time from `/proc`; `None` for
    /// [`Backend::External`].
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    /// A fresh rskafka client on this cluster (bootstrap retries give up after 10 s).
    pub async fn client(&self) -> Result<Client, String> {
        rskafka_client(self.bootstrap_list())
            .await
            .map_err(|e| format!("{e}{}", self.log_hint()))
    }

    /// Sends one raw line of the mock cluster's line protocol (see `testcontainers/README.md`)
    /// and returns the answer's data: `ok` gives `Ok("")`, `ok DATA` gives `Ok("DATA")`,
    /// `err MSG` gives `Err("MSG")`. Blocks the calling thread for the round trip (well under
    /// a millisecond). Fails on backends other than the mock cluster.
    pub fn command(&self, line: &str) -> Result<String, String> {
        let mock = self.mock.as_ref().ok_or_else(|| {
            format!(
                "fault-injection command {line:?} needs the mock cluster backend, not {}",
                self.backend
            )
        })?;
        let mut io = mock.lock().unwrap_or_else(|p| p.into_inner());
        let log = self.log_hint();
        let stdin = io
            .stdin
            .as_mut()
            .ok_or_else(|| "mock-cluster stdin already closed".to_string())?;
        writeln!(stdin, "{}", line.trim_end())
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("write to mock-cluster: {e}{log}"))?;
        let mut answer = String::new();
        match io.stdout.read_line(&mut answer) {
            Ok(0) => return Err(format!("mock-cluster exited{log}")),
            Ok(_) => {}
            Err(e) => return Err(format!("read from mock-cluster: {e}{log}")),
        }
        let answer = answer.trim_end();
        if answer == "ok" {
            Ok(String::new())
        } else if let Some(data) = answer.strip_prefix("ok ") {
            Ok(data.to_string())
        } else if let Some(msg) = answer.strip_prefix("err ") {
            Err(msg.to_string())
        } else {
            Err(format!(
                "unexpected answer {answer:?} from mock-cluster{log}"
            ))
        }
    }

    /// Mock cluster: disconnects broker `id` and refuses new connections to it (`-1` = all).
    /// Leadership does not move.
    pub fn broker_down(&self, id: i32) -> Result<(), String> {
        self.command(&format!("broker-down {id}")).map(drop)
    }

    /// Mock cluster: lets broker `id` accept connections again (`-1` = all).
    pub fn broker_up(&self, id: i32) -> Result<(), String> {
        self.command(&format!("broker-up {id}")).map(drop)
    }

    /// Mock cluster: makes `broker` the leader of `topic`/`partition` (`-1` = no leader).
    pub fn set_leader(&self, topic: &str, partition: i32, broker: i32) -> Result<(), String> {
        self.command(&format!("leader {topic} {partition} {broker}"))
            .map(drop)
    }

    /// Mock cluster: the next requests with `api_key`, on any broker, fail with `errors` in
    /// order (numeric Kafka error codes; `-195` closes the connection instead of answering).
    pub fn push_request_errors(&self, api_key: i16, errors: &[i16]) -> Result<(), String> {
        let codes: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        self.command(&format!("request-errors {api_key} {}", codes.join(" ")))
            .map(drop)
    }

    /// Mock cluster: like [`TestCluster::push_request_errors`] but only for requests that
    /// reach `broker`.
    pub fn push_broker_request_errors(
        &self,
        broker: i32,
        api_key: i16,
        errors: &[i16],
    ) -> Result<(), String> {
        let codes: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        self.command(&format!(
            "broker-request-errors {broker} {api_key} {}",
            codes.join(",")
        ))
        .map(drop)
    }

    /// Mock cluster: adds `rtt` to every response of `broker` (`-1` = all brokers).
    pub fn set_rtt(&self, broker: i32, rtt: Duration) -> Result<(), String> {
        self.command(&format!("rtt {broker} {}", rtt.as_millis()))
            .map(drop)
    }

    /// Mock cluster: makes `broker` the coordinator of consumer group `group`.
    pub fn set_coordinator(&self, group: &str, broker: i32) -> Result<(), String> {
        self.command(&format!("coordinator group {group} {broker}"))
            .map(drop)
    }

    /// Mock cluster: sets the delay before the first rebalance of a new group (librdkafka's
    /// default, like Kafka's, is 3 s).
    pub fn set_group_initial_rebalance_delay(&self, delay: Duration) -> Result<(), String> {
        self.command(&format!(
            "group-initial-rebalance-delay {}",
            delay.as_millis()
        ))
        .map(drop)
    }

    /// Mock cluster: the partition librdkafka's default partitioner (`murmur2_random`, the
    /// Java client's murmur2 for non-null keys) picks for `key` among `partitions`.
    pub fn partition_for_key(&self, partitions: i32, key: &[u8]) -> Result<i32, String> {
        Ok(self.partitions_for_keys(partitions, &[key])?[0])
    }

    /// Mock cluster: [`TestCluster::partition_for_key`] for many keys in one round trip.
    pub fn partitions_for_keys(&self, partitions: i32, keys: &[&[u8]]) -> Result<Vec<i32>, String> {
        let mut block = format!("partition-keys {partitions}\n");
        for key in keys {
            for b in key.iter() {
                block.push_str(&format!("{b:02x}"));
            }
            block.push('\n');
        }
        block.push_str("end");
        let answer = self.command(&block)?;
        let parts = answer
            .split_whitespace()
            .map(|p| {
                p.parse::<i32>()
                    .map_err(|e| format!("bad answer {answer:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if parts.len() != keys.len() {
            return Err(format!("asked {} keys, got {answer:?}", keys.len()));
        }
        Ok(parts)
    }

    fn log_hint(&self) -> String {
        match self.log_path() {
            Some(p) => format!(" (broker log: {})", p.display()),
            None => String::new(),
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Some(mock) = self.mock.as_mut() {
            // Closing stdin makes mock-cluster destroy the cluster and exit.
            let io = mock.get_mut().unwrap_or_else(|p| p.into_inner());
            io.stdin.take();
        }
        if let Some(proc) = self.proc.as_mut() {
            let keep = std::thread::panicking() || std::env::var_os(ENV_KEEP_LOGS).is_some();
            stop(proc, keep);
        }
    }
}

/// Closes the child's stdin (done by the caller for the mock cluster), gives it a moment to
/// exit on its own, then kills it; always reaps it. Removes the log unless `keep_log`.
fn stop(proc: &mut Proc, keep_log: bool) {
    drop(proc.child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match proc.child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = proc.child.kill();
                let _ = proc.child.wait();
                break;
            }
        }
    }
    if !keep_log {
        let _ = std::fs::remove_file(&proc.log);
    }
}

fn split_bootstrap(s: &str) -> Vec<String> {
    s.split(',')
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .collect()
}

async fn rskafka_client(bootstrap: Vec<String>) -> Result<Client, String> {
    let backoff = BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        base: 2.0,
        deadline: Some(Duration::from_secs(10)),
    };
    let builder = ClientBuilder::new(bootstrap.clone()).backoff_config(backoff);
    match tokio::time::timeout(Duration::from_secs(15), builder.build()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("connect to {}: {e}", bootstrap.join(","))),
        Err(_) => Err(format!("connect to {}: timed out", bootstrap.join(","))),
    }
}

/// A fresh path for a broker log under `<tmp>/purekafka-testkit/`.
fn new_log_path(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("purekafka-testkit");
    let _ = std::fs::create_dir_all(&dir);
    dir.join(format!("{}.log", unique_name(kind)))
}

/// The repository root: the closest ancestor holding `testcontainers/mock-cluster/`, searched
/// from the caller's `CARGO_MANIFEST_DIR`, the current directory, and this crate's own source
/// location, in that order.
fn repo_root() -> Result<PathBuf, String> {
    let mut starts: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("CARGO_MANIFEST_DIR") {
        starts.push(PathBuf::from(d));
    }
    if let Ok(d) = std::env::current_dir() {
        starts.push(d);
    }
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for start in &starts {
        for dir in start.ancestors() {
            if dir.join("testcontainers/mock-cluster/Cargo.toml").is_file() {
                return Ok(dir.to_path_buf());
            }
        }
    }
    Err(format!(
        "cannot find the purekafka repository (a directory holding testcontainers/mock-cluster/) \
         above any of {starts:?}; set {ENV_MOCK_CLUSTER_BIN}"
    ))
}

/// The `mock-cluster` binary: `PUREKAFKA_MOCK_CLUSTER_BIN`, else the release build under the
/// repository, brought up to date by `cargo build --release` when older than its sources
/// (checked once per process).
fn mock_cluster_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(ENV_MOCK_CLUSTER_BIN) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{ENV_MOCK_CLUSTER_BIN}={} is not a file",
                p.display()
            ))
        };
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(build_mock_cluster).clone()
}

fn build_mock_cluster() -> Result<PathBuf, String> {
    let crate_dir = repo_root()?.join("testcontainers/mock-cluster");
    let target = crate_dir.join("target");
    let bin = target.join("release/mock-cluster");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    if is_fresh(&bin, &crate_dir) {
        return Ok(bin);
    }
    let log = target.join(format!("testkit-build-{}.log", std::process::id()));
    let _ = std::fs::create_dir_all(&target);
    let log_file = File::create(&log).map_err(|e| format!("create {}: {e}", log.display()));
    // Cargo locks the target directory itself, so parallel test processes building here wait
    // for each other and then find the binary fresh.
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .current_dir(&crate_dir)
        .stdin(Stdio::null());
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_MANIFEST_DIR",
    ] {
        cmd.env_remove(var);
    }
    match log_file {
        Ok(f) => {
            let f2 = f.try_clone().map_err(|e| e.to_string())?;
            cmd.stdout(f).stderr(f2);
        }
        Err(_) => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let status = cmd.status();
    match status {
        Ok(s) if s.success() && bin.is_file() => {
            let _ = std::fs::remove_file(&log);
            Ok(bin)
        }
        // No cargo here (e.g. a copied test binary): use a binary built earlier.
        Err(_) if bin.is_file() => Ok(bin),
        Ok(s) => Err(format!(
            "building mock-cluster failed ({s}); see {} (it compiles librdkafka: needs a C \
             compiler, make, perl and zlib headers)",
            log.display()
        )),
        Err(e) => Err(format!(
            "cannot run {cargo:?} to build {}: {e}; build it by hand or set {ENV_MOCK_CLUSTER_BIN}",
            bin.display()
        )),
    }
}

/// Whether `bin` exists and is newer than the crate's manifest, lock file and sources (a
/// cheap check that spares each test process a `cargo build` run).
fn is_fresh(bin: &Path, crate_dir: &Path) -> bool {
    fn newest(path: &Path, acc: &mut Option<SystemTime>) -> std::io::Result<()> {
        let meta = std::fs::metadata(path)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(path)? {
                newest(&entry?.path(), acc)?;
            }
        } else {
            let m = meta.modified()?;
            if acc.is_none_or(|a| m > a) {
                *acc = Some(m);
            }
        }
        Ok(())
    }
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return false;
    };
    let mut latest = None;
    for p in ["Cargo.toml", "Cargo.lock", "src"] {
        if newest(&crate_dir.join(p), &mut latest).is_err() {
            return false;
        }
    }
    latest.is_some_and(|l| l <= built)
}

/// The `tansu` binary: `PUREKAFKA_TANSU_BIN`, else `$CARGO_HOME/bin/tansu` (default
/// `~/.cargo/bin/tansu`), else the first `tansu` on `PATH`.
fn tansu_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(ENV_TANSU_BIN) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{ENV_TANSU_BIN}={} is not a file", p.display()))
        };
    }
    let mut candidates = Vec::new();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(h).join("bin/tansu"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(h).join(".cargo/bin/tansu"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("tansu")));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        format!(
            "tansu is not installed: run testcontainers/tansu/install.sh (cargo install tansu \
             0.6.0, ~13 min), or set {ENV_TANSU_BIN}"
        )
    })
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

fn start_tansu() -> Result<TestCluster, String> {
    let bin = tansu_bin()?;
    let mut last_err = String::new();
    // A port picked by binding port 0 can be taken by someone else before tansu binds it;
    // try again with a new port when tansu dies early.
    for _ in 0..3 {
        match start_tansu_once(&bin) {
            Ok(c) => return Ok(c),
            Err((e, retry)) => {
                last_err = e;
                if !retry {
                    break;
                }
            }
        }
    }
    Err(last_err)
}

/// Error, and whether another port is worth a try.
fn start_tansu_once(bin: &Path) -> Result<TestCluster, (String, bool)> {
    let port = free_port().map_err(|e| (e, false))?;
    start_tansu_at(bin, port, port)
}

/// Starts tansu on `port`; error, and whether another port is worth a try.
fn start_tansu_at(bin: &Path, port: u16, advertised: u16) -> Result<TestCluster, (String, bool)> {
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised_url = format!("tcp://127.0.0.1:{advertised}");
    let log = new_log_path("tansu");
    let log_file =
        File::create(&log).map_err(|e| (format!("create {}: {e}", log.display()), false))?;
    let log_err = log_file.try_clone().map_err(|e| (e.to_string(), false))?;
    // Watchdog: `sh` runs tansu in the background and kills it when its own stdin (a pipe
    // from this process) reaches EOF, i.e. when the TestCluster is dropped or this process
    // dies in any way.
    const WATCHDOG: &str = r#"bin=$1; shift
"$bin" "$@" </dev/null &
child=$!
cat >/dev/null
kill -KILL "$child" 2>/dev/null
wait "$child" 2>/dev/null
exit 0"#;
    let child = Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("tansu-watchdog")
        .arg(bin)
        .arg("broker")
        .arg("--storage-engine=memory://tansu/")
        .arg("--listener-url")
        .arg(&url)
        .arg("--advertised-listener-url")
        .arg(&advertised_url)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::piped())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .map_err(|e| (format!("spawn sh for {}: {e}", bin.display()), false))?;
    let mut proc = Proc { child, log };
    let bootstrap = format!("127.0.0.1:{port}");
    let addr: SocketAddr = bootstrap
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .expect("loopback address");
    let deadline = Instant::now() + TANSU_START_TIMEOUT;

    // 1. The port accepts TCP.
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            let msg = format!(
                "tansu exited early ({status}) on port {port}; log: {}",
                proc.log.display()
            );
            stop(&mut proc, true);
            return Err((msg, true));
        }
        if Instant::now() >= deadline {
            let msg = format!(
                "tansu did not listen on {bootstrap} within {TANSU_START_TIMEOUT:?}; log: {}",
                proc.log.display()
            );
            stop(&mut proc, true);
            return Err((msg, false));
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // 2. A Metadata request succeeds. Runs on its own thread and runtime so that `start` also
    //    works when called from inside a tokio runtime.
    let list = vec![bootstrap.clone()];
    let remaining = deadline.saturating_duration_since(Instant::now());
    let ready = std::thread::spawn(move || -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        rt.block_on(async move {
            let until = Instant::now() + remaining;
            loop {
                let attempt = async {
                    let client = rskafka_client(list.clone()).await?;
                    client
                        .list_topics()
                        .await
                        .map_err(|e| format!("metadata: {e}"))
                };
                let err = match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) => e,
                    Err(_) => "metadata request timed out".to_string(),
                };
                if Instant::now() >= until {
                    return Err(err);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    })
    .join()
    .unwrap_or_else(|_| Err("readiness thread panicked".into()));
    if let Err(e) = ready {
        let msg = format!(
            "tansu on {bootstrap} never answered Metadata: {e}; log: {}",
            proc.log.display()
        );
        stop(&mut proc, true);
        return Err((msg, false));
    }
    Ok(TestCluster {
        backend: Backend::Tansu,
        bootstrap,
        proc: Some(proc),
        mock: None,
    })
}
