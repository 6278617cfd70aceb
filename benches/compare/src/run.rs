//! `compare run`: the orchestrator. Starts the broker, runs every case through every client
//! (each in its own child process, clients alternating run by run), and writes the table, the
//! JSON file and the SVG plot.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::broker::{Broker, BrokerChoice};
use crate::child::{byte_sum, key, rdkafka_performance, rdkafka_performance_consumer, value};
use crate::model::{
    ChildSpec, ClientKind, WorkloadKind, ACKS, BATCH_BYTES, BUFFER_KBYTES, BUFFER_MESSAGES,
    CONSUME_PARTITIONS, FILL_LINGER_MS, PARTITIONS, PREFETCH_KBYTES, WARMUP_RECORDS,
};
use crate::proc::{run_child, run_process, run_process_timed, ChildRun};
use crate::report::{table, Report};
use crate::stats::{rows, Sample};

/// Options of `compare run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub quick: bool,
    pub broker: BrokerChoice,
    pub clients: Vec<ClientKind>,
    pub workloads: Vec<WorkloadKind>,
    pub reps: usize,
    pub records: u64,
    /// Value sizes, keyed or not, linger.ms values and codecs of the produce runs (every
    /// combination is a case).
    pub sizes: Vec<usize>,
    pub keys: Vec<bool>,
    pub lingers: Vec<u64>,
    pub compressions: Vec<String>,
    /// `enable.idempotence` of the produce rows (every combination is a case; the latency row
    /// takes the first).
    pub idempotence: Vec<bool>,
    /// Records of the consume topic (before the warm-up record).
    pub consume_records: u64,
    /// Partitions of the consume topic.
    pub consume_partitions: i32,
    pub consume_value_size: usize,
    pub rate: u64,
    pub latency_secs: f64,
    pub latency_value_size: usize,
    pub out_dir: PathBuf,
    pub child_timeout: Duration,
}

impl RunOptions {
    pub fn defaults(quick: bool) -> RunOptions {
        RunOptions {
            quick,
            broker: BrokerChoice::Mock,
            clients: ClientKind::ALL
                .into_iter()
                .filter(|c| c.available())
                .collect(),
            workloads: WorkloadKind::ALL.to_vec(),
            reps: if quick { 1 } else { 5 },
            records: if quick { 50_000 } else { 1_000_000 },
            sizes: if quick { vec![100] } else { vec![100, 1024] },
            keys: if quick {
                vec![false]
            } else {
                vec![false, true]
            },
            lingers: if quick { vec![5] } else { vec![5, 50] },
            compressions: if quick {
                vec!["none".into()]
            } else {
                ["none", "snappy", "lz4", "zstd"].map(String::from).to_vec()
            },
            // On: every client's idempotent producer (purekafka's default); off: the same rows
            // without it, where raw rskafka (no idempotent producer) runs too.
            idempotence: vec![true, false],
            // The independent set-up's shape (issue 14): 1,000,000 × 100 B over 48 partitions.
            consume_records: if quick { 50_000 } else { 1_000_000 },
            consume_partitions: CONSUME_PARTITIONS,
            consume_value_size: 100,
            rate: 20_000,
            latency_secs: if quick { 2.0 } else { 10.0 },
            latency_value_size: 100,
            out_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"),
            child_timeout: Duration::from_secs(if quick { 60 } else { 300 }),
        }
    }
}

/// One row of work: a case (a workload with its value size) run by one client.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    workload: WorkloadKind,
    value_size: usize,
    keyed: bool,
    linger_ms: u64,
    compression: String,
    dedup: bool,
    idempotence: bool,
}

impl Case {
    fn new(name: String, workload: WorkloadKind, value_size: usize) -> Case {
        Case {
            name,
            workload,
            value_size,
            keyed: true,
            linger_ms: 5,
            compression: "none".into(),
            dedup: false,
            idempotence: true,
        }
    }
}

fn size_name(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{}KiB", size / 1024)
    } else {
        format!("{size}B")
    }
}

fn cases(o: &RunOptions) -> Vec<Case> {
    let mut v = Vec::new();
    for &w in &o.workloads {
        match w {
            WorkloadKind::Produce => {
                for &compression in &o
                    .compressions
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                {
                    for &idempotence in &o.idempotence {
                        for &linger in &o.lingers {
                            for &keyed in &o.keys {
                                for &size in &o.sizes {
                                    let mut name = format!("produce-{}", size_name(size));
                                    if keyed {
                                        name.push_str("-keyed");
                                    }
                                    if linger != 5 {
                                        name.push_str(&format!("-linger{linger}"));
                                    }
                                    if compression != "none" {
                                        name.push_str(&format!("-{compression}"));
                                    }
                                    if !idempotence {
                                        name.push_str("-idem-off");
                                    }
                                    let mut c = Case::new(name, w, size);
                                    c.keyed = keyed;
                                    c.linger_ms = linger;
                                    c.compression = compression.to_string();
                                    c.idempotence = idempotence;
                                    v.push(c);
                                }
                            }
                        }
                    }
                }
            }
            WorkloadKind::ProduceLatency => {
                let idempotence = o.idempotence.first().copied().unwrap_or(true);
                let mut c = Case::new(
                    format!(
                        "produce-latency-{}k/s{}",
                        o.rate / 1000,
                        if idempotence { "" } else { "-idem-off" }
                    ),
                    w,
                    o.latency_value_size,
                );
                c.idempotence = idempotence;
                v.push(c)
            }
            WorkloadKind::Consume => v.push(Case::new("consume".into(), w, o.consume_value_size)),
            WorkloadKind::FirstRecord => {
                v.push(Case::new("first-record".into(), w, o.consume_value_size))
            }
            WorkloadKind::Runtime => {
                for dedup in [false, true] {
                    let mut c = Case::new(
                        format!("runtime-dedup-{}", if dedup { "on" } else { "off" }),
                        w,
                        o.consume_value_size,
                    );
                    c.dedup = dedup;
                    v.push(c);
                }
            }
        }
    }
    v
}

/// The checksum a consumer must report after reading the fill: the key and value bytes of
/// `records` keyed records plus the warm-up record (key `records`).
fn expected_checksum(records: u64, value_size: usize) -> u64 {
    let v = byte_sum(&value(value_size));
    (0..=records).fold(0u64, |acc, i| {
        acc.wrapping_add(v).wrapping_add(byte_sum(&key(i)))
    })
}

/// `COMPARE_PERF=DIR` (and `COMPARE_PERF_CLIENT`, default `purekafka`): that client's children
/// run under `perf record -g`, one file per run in DIR — for profiles only, since perf's own
/// CPU and memory are then counted in the run's figures.
fn perf_dir(client: ClientKind) -> Option<String> {
    let dir = std::env::var("COMPARE_PERF").ok()?;
    let wanted = std::env::var("COMPARE_PERF_CLIENT").unwrap_or_else(|_| "purekafka".into());
    (client.name() == wanted).then_some(dir)
}

/// `linger.ms` of the consume topic's fill: [`FILL_LINGER_MS`], or `COMPARE_FILL_LINGER_MS` to
/// see what smaller batches do to the mock cluster (such runs are not the published shape: say
/// so when quoting them).
fn fill_linger_ms() -> u64 {
    std::env::var("COMPARE_FILL_LINGER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FILL_LINGER_MS)
}

/// The 1, 5 and 15 minute load averages: other work on the machine shows here.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {}", kernel.trim())
}

struct Runner {
    opts: RunOptions,
    exe: String,
    pb: ProgressBar,
    tty: bool,
    samples: Vec<Sample>,
    failures: Vec<String>,
    /// Records per consume run (the broker may hold fewer than `opts.consume_records`).
    consume_records: u64,
    /// The checksum of the consume topic's key and value bytes.
    consume_checksum: u64,
}

impl Runner {
    fn say(&self, msg: &str) {
        if self.tty {
            self.pb.println(msg);
        } else {
            eprintln!("{msg}");
        }
    }

    fn step(&self, msg: String) {
        if !self.tty {
            eprintln!(
                "[{}/{}] {msg}",
                self.pb.position() + 1,
                self.pb.length().unwrap_or(0)
            );
        }
        self.pb.set_message(msg);
    }

    fn child(&self, spec: &ChildSpec) -> Result<ChildRun, String> {
        if spec.client == ClientKind::RdkafkaPerformance && spec.workload == WorkloadKind::Consume {
            // Its own clock starts at its first record: its stderr lines are timed to add its
            // join (subscribe → assignment).
            let (bin, args) = rdkafka_performance_consumer::command(spec)?;
            return run_process_timed(&bin, &args, self.opts.child_timeout, |out, err| {
                rdkafka_performance_consumer::parse(spec, out, err)
            });
        }
        if spec.client.is_rdkafka_performance() {
            // The tool itself is the measured process (its rusage is its own).
            let (bin, args) = rdkafka_performance::command(spec)?;
            return run_process(&bin, &args, self.opts.child_timeout, |out| {
                rdkafka_performance::parse(spec, out)
            });
        }
        let mut args = vec!["child".to_string()];
        args.extend(spec.to_args());
        if let Some(dir) = perf_dir(spec.client) {
            // Profiling only: perf's own CPU and memory land in this run's figures.
            let out = format!(
                "{dir}/{}-{}-{}.perf",
                spec.client.name(),
                spec.workload.name(),
                std::process::id() as u64 * 1000 + self.pb.position()
            );
            let mut perf = vec![
                "record".to_string(),
                "-g".into(),
                "-o".into(),
                out,
                "--".into(),
                self.exe.clone(),
            ];
            perf.extend(args);
            return run_child("perf", &perf, self.opts.child_timeout);
        }
        run_child(&self.exe, &args, self.opts.child_timeout)
    }

    fn reject(&mut self, case: &Case, client: ClientKind, rep: usize, why: String) {
        let msg = format!(
            "{} · {} · rep {}: REJECTED: {why}",
            case.name,
            client.name(),
            rep + 1
        );
        self.say(&msg);
        self.failures.push(msg);
    }

    /// Runs one measured child with the broker's CPU read around it, and records the sample.
    async fn measure(
        &mut self,
        case: &Case,
        client: ClientKind,
        rep: usize,
        broker: &Broker,
        spec: ChildSpec,
    ) {
        let load1 = loadavg()
            .split_whitespace()
            .next()
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        self.step(format!(
            "{} · {} · rep {}",
            case.name,
            client.name(),
            rep + 1
        ));
        let broker_before = broker.cpu_seconds();
        let run = self.child(&spec);
        let broker_after = broker.cpu_seconds();
        self.pb.inc(1);
        let run = match run {
            Ok(r) => r,
            Err(e) => {
                let msg = format!(
                    "{} · {} · rep {}: FAILED: {e}",
                    case.name,
                    client.name(),
                    rep + 1
                );
                self.say(&msg);
                self.failures.push(msg);
                return;
            }
        };
        let r = &run.result;
        // A run with any error does not count.
        if r.errors > 0 {
            self.reject(case, client, rep, format!("{} records failed", r.errors));
            return;
        }
        match case.workload {
            WorkloadKind::Produce | WorkloadKind::ProduceLatency => {
                let expected = crate::child::produce_count(&spec) + r.warmup;
                if r.records + r.warmup != expected {
                    self.reject(
                        case,
                        client,
                        rep,
                        format!(
                            "{} of {expected} records acknowledged",
                            r.records + r.warmup
                        ),
                    );
                    return;
                }
                match broker.high_watermark_sum().await {
                    Ok(hw) if hw == expected as i64 => {}
                    Ok(hw) => {
                        self.reject(
                            case,
                            client,
                            rep,
                            format!("the topic holds {hw} records, {expected} were acknowledged"),
                        );
                        return;
                    }
                    Err(e) => {
                        self.reject(case, client, rep, format!("high watermarks: {e}"));
                        return;
                    }
                }
            }
            WorkloadKind::Consume => {
                if r.records != spec.records {
                    self.reject(
                        case,
                        client,
                        rep,
                        format!("read {} of {} records", r.records, spec.records),
                    );
                    return;
                }
                if client == ClientKind::RdkafkaPerformance {
                    // It reads no key or value byte and keeps no offsets: the group's final
                    // commit must be every partition's end instead (see
                    // child/rdkafka_performance_consumer.rs for what this cannot show).
                    if let Err(e) = broker.check_committed_at_end(&spec.group).await {
                        self.reject(case, client, rep, format!("committed offsets: {e}"));
                        return;
                    }
                } else if r.checksum != Some(self.consume_checksum) {
                    self.reject(
                        case,
                        client,
                        rep,
                        format!(
                            "checksum {:?}, expected {}",
                            r.checksum, self.consume_checksum
                        ),
                    );
                    return;
                }
            }
            WorkloadKind::Runtime => {
                if r.records < spec.records {
                    self.reject(
                        case,
                        client,
                        rep,
                        format!("processed {} of {} records", r.records, spec.records),
                    );
                    return;
                }
            }
            WorkloadKind::FirstRecord => {}
        }
        // A first-record run is about one record, whatever the last fetch brought along.
        let records = if case.workload == WorkloadKind::FirstRecord {
            1.0
        } else {
            r.records.max(1) as f64
        };
        let sample = Sample {
            case: case.name.clone(),
            client,
            rep,
            records: r.records,
            records_per_s: if r.elapsed_s > 0.0 {
                r.records as f64 / r.elapsed_s
            } else {
                0.0
            },
            mb_per_s: if r.elapsed_s > 0.0 {
                r.bytes as f64 / r.elapsed_s / 1e6
            } else {
                0.0
            },
            cpu_us_per_record: (run.user_s + run.sys_s) * 1e6 / records,
            cpu_user_s: run.user_s,
            cpu_sys_s: run.sys_s,
            peak_rss_mib: run.max_rss as f64 / (1024.0 * 1024.0),
            latency: r.latency,
            first_record_ms: r.first_record_ms,
            broker_cpu_us_per_record: match (broker_before, broker_after) {
                (Some(a), Some(b)) => Some((b - a) * 1e6 / records),
                _ => None,
            },
            elapsed_s: r.elapsed_s,
            wall_s: run.wall_s,
            errors: r.errors,
            load1,
        };
        self.samples.push(sample);
    }

    fn spec(&self, case: &Case, client: ClientKind, broker: &Broker, group: String) -> ChildSpec {
        ChildSpec {
            client,
            workload: case.workload,
            brokers: broker.bootstrap(),
            topic: broker.topic.clone(),
            records: match case.workload {
                WorkloadKind::Consume | WorkloadKind::FirstRecord | WorkloadKind::Runtime => {
                    self.consume_records
                }
                _ => self.opts.records,
            },
            value_size: case.value_size,
            rate: self.opts.rate,
            duration_s: self.opts.latency_secs,
            group,
            keyed: case.keyed,
            linger_ms: case.linger_ms,
            compression: case.compression.clone(),
            partitions: broker.partitions,
            dedup: case.dedup,
            idempotence: case.idempotence,
        }
    }

    /// Client order for repetition `rep`: rotated, so no client always runs first; only the
    /// clients that can run the case.
    fn order(&self, case: &Case, rep: usize) -> Vec<ClientKind> {
        let mut c: Vec<ClientKind> = self
            .opts
            .clients
            .iter()
            .copied()
            .filter(|c| {
                c.supports(
                    case.workload,
                    case.keyed,
                    &case.compression,
                    case.idempotence,
                )
            })
            .filter(|c| !c.is_rdkafka_performance() || rdkafka_performance::available())
            .filter(|c| self.opts.broker.runs(*c))
            .collect();
        let n = c.len().max(1);
        c.rotate_left(rep % n);
        c
    }

    async fn produce_case(&mut self, case: &Case) -> Result<(), String> {
        let choice = self.opts.broker.clone();
        for rep in 0..self.opts.reps {
            for client in self.order(case, rep) {
                // A fresh broker (local) or topic (external) for every run: each client
                // starts from the same empty state, and memory stays bounded.
                let broker = Broker::start(&choice, "compare-produce", PARTITIONS).await?;
                let spec = self.spec(case, client, &broker, String::new());
                self.measure(case, client, rep, &broker, spec).await;
                broker.cleanup().await;
            }
        }
        Ok(())
    }

    /// Runs the consume-side cases against one broker, filled once by librdkafka.
    async fn consume_cases(&mut self, cases: &[&Case]) -> Result<(), String> {
        let Some(first) = cases.first() else {
            return Ok(());
        };
        let partitions = self.opts.consume_partitions;
        let records = match self.opts.broker.consume_cap(partitions, first.value_size) {
            Some(cap) if cap < self.opts.consume_records => {
                self.say(&format!(
                    "consume runs read {cap} records, not {}: the mock cluster keeps only the \
                     last 5 MiB of each partition",
                    self.opts.consume_records
                ));
                cap
            }
            _ => self.opts.consume_records,
        };
        // The fill's warm-up record is in the topic too.
        self.consume_records = records + WARMUP_RECORDS;
        self.consume_checksum = expected_checksum(records, first.value_size);
        let broker = Broker::start(&self.opts.broker, "compare-consume", partitions).await?;
        self.step(format!(
            "filling {} with {records} records of {} B",
            broker.topic, first.value_size
        ));
        let fill = ChildSpec {
            client: ClientKind::Librdkafka,
            workload: WorkloadKind::Produce,
            brokers: broker.bootstrap(),
            topic: broker.topic.clone(),
            records,
            value_size: first.value_size,
            rate: 0,
            duration_s: 0.0,
            group: String::new(),
            keyed: true,
            linger_ms: fill_linger_ms(),
            compression: "none".into(),
            partitions,
            dedup: true,
            idempotence: false,
        };
        let filled = self
            .child(&fill)
            .map_err(|e| format!("filling the consume topic: {e}"))?;
        self.pb.inc(1);
        if filled.result.records != records || filled.result.errors > 0 {
            return Err(format!(
                "filling the consume topic: {} of {records} records acknowledged",
                filled.result.records
            ));
        }
        let hw = broker.high_watermark_sum().await?;
        if hw != self.consume_records as i64 {
            return Err(format!(
                "the consume topic holds {hw} records, not {}",
                self.consume_records
            ));
        }
        broker.check_nothing_dropped().await?;
        if let Some(batches) = broker.mock_batches_in_partition(0).await? {
            self.say(&format!(
                "the fill wrote {batches} batches to partition 0 ({} records over {partitions} \
                 partitions, linger.ms={}, batch.size={BATCH_BYTES})",
                self.consume_records,
                fill_linger_ms()
            ));
        }
        for case in cases {
            for rep in 0..self.opts.reps {
                for client in self.order(case, rep) {
                    let group = purekafka_testkit::unique_name("compare-group");
                    let spec = self.spec(case, client, &broker, group);
                    self.measure(case, client, rep, &broker, spec).await;
                }
            }
        }
        broker.cleanup().await;
        Ok(())
    }
}

pub fn run(opts: RunOptions, command: String) -> Result<(), String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("own path: {e}"))?
        .to_string_lossy()
        .into_owned();
    let cases = cases(&opts);
    let produce: Vec<&Case> = cases
        .iter()
        .filter(|c| {
            matches!(
                c.workload,
                WorkloadKind::Produce | WorkloadKind::ProduceLatency
            )
        })
        .collect();
    let consume: Vec<&Case> = cases
        .iter()
        .filter(|c| {
            matches!(
                c.workload,
                WorkloadKind::Consume | WorkloadKind::FirstRecord | WorkloadKind::Runtime
            )
        })
        .collect();
    let runnable = |c: &Case| {
        opts.clients
            .iter()
            .filter(|k| k.supports(c.workload, c.keyed, &c.compression, c.idempotence))
            .filter(|k| !k.is_rdkafka_performance() || rdkafka_performance::available())
            .filter(|k| opts.broker.runs(**k))
            .count()
    };
    let total_runs = (cases.iter().map(runnable).sum::<usize>() * opts.reps) as u64
        + u64::from(!consume.is_empty());
    let tty = std::io::stderr().is_terminal();
    let pb = ProgressBar::new(total_runs);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("progress template")
            .progress_chars("=> "),
    );
    if !tty {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    eprintln!(
        "compare: {} · clients: {} · {} repetition(s) · {} records · broker: {}",
        if opts.quick { "quick" } else { "full" },
        opts.clients
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", "),
        opts.reps,
        opts.records,
        opts.broker.describe()
    );
    let started = Instant::now();
    let load_before = loadavg();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let mut runner = Runner {
        opts: opts.clone(),
        exe,
        pb,
        tty,
        samples: Vec::new(),
        failures: Vec::new(),
        consume_records: opts.consume_records,
        consume_checksum: 0,
    };
    rt.block_on(async {
        for case in &produce {
            runner.produce_case(case).await?;
        }
        runner.consume_cases(&consume).await
    })?;
    runner.pb.finish_and_clear();

    let rows = rows(&runner.samples, &opts.clients);
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let broker = opts.broker.describe();
    let client_settings = settings_by_client(&opts);
    let report = Report {
        date: date.clone(),
        command: command.clone(),
        broker: broker.clone(),
        machine: format!(
            "{}; load average {load_before} before, {} after",
            machine(),
            loadavg()
        ),
        settings: serde_json::json!({
            "acks": ACKS,
            "linger_ms": opts.lingers,
            "batch_bytes": BATCH_BYTES,
            "buffer_kbytes": BUFFER_KBYTES,
            "compression": opts.compressions,
            "idempotence": opts.idempotence,
            "value_sizes": opts.sizes,
            "keyed": opts.keys,
            "partitions": PARTITIONS,
            "consume_partitions": opts.consume_partitions,
            "fill_linger_ms": fill_linger_ms(),
            "records": opts.records,
            "consume_records": runner.consume_records,
            "warmup_records": WARMUP_RECORDS,
            "repetitions": opts.reps,
            "latency_rate_per_s": opts.rate,
            "latency_seconds": opts.latency_secs,
            "latency_value_bytes": opts.latency_value_size,
            "consume_value_bytes": opts.consume_value_size,
            "clients": client_settings,
        }),
        rows,
        samples: runner.samples,
        failures: runner.failures,
    };
    let md = table(&report.rows);
    let mut settings_md = String::new();
    for (client, lines) in &client_settings {
        settings_md.push_str(&format!("- `{client}`: {}\n", lines.join("; ")));
    }
    println!();
    println!("{date} · {command}");
    println!("broker: {broker}");
    println!("machine: {}", report.machine);
    println!(
        "settings: acks=all, batch ≤ 1 MiB, buffer 64 MiB, Nagle off, enable.idempotence \
         the same for every client of a row (true, except in the -idem-off rows); \
         produce {} records on {PARTITIONS} partitions after 1 acknowledged warm-up record; \
         consume {} records on {} partitions (filled in large batches), a new group per run, \
         timed from subscribe (rdkafka_performance: subscribe → assignment + its own first → \
         last record); \
         {} repetition(s) (median; ± = half the range); ratios to rdkafka_performance where \
         it runs the case, else to librdkafka (rust-rdkafka BaseProducer/BaseConsumer)",
        opts.records, runner.consume_records, opts.consume_partitions, opts.reps
    );
    print!("{settings_md}");
    println!();
    print!("{md}");
    for f in &report.failures {
        println!("\nFAILED: {f}");
    }

    std::fs::create_dir_all(&opts.out_dir)
        .map_err(|e| format!("create {}: {e}", opts.out_dir.display()))?;
    let stem = if opts.quick { "quick" } else { "latest" };
    let json_path = opts.out_dir.join(format!("{stem}.json"));
    let svg_path = opts.out_dir.join(format!("{stem}.svg"));
    let md_path = opts.out_dir.join(format!("{stem}.md"));
    let json = serde_json::to_string(&report).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, json).map_err(|e| format!("write {}: {e}", json_path.display()))?;
    let svg = crate::svg::render(
        &report.rows,
        &[
            format!("{date} · {command}"),
            format!("broker: {broker}"),
            format!("machine: {}", report.machine),
        ],
    );
    std::fs::write(&svg_path, svg).map_err(|e| format!("write {}: {e}", svg_path.display()))?;
    std::fs::write(
        &md_path,
        format!(
            "{date} · `{command}`\n\nbroker: {broker}\n\nmachine: {}\n\nsettings per client:\n\n{settings_md}\n{md}",
            report.machine
        ),
    )
    .map_err(|e| format!("write {}: {e}", md_path.display()))?;
    println!(
        "\nwrote {}, {} and {} in {:.0} s",
        json_path.display(),
        svg_path.display(),
        md_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every client's settings, as the runs give them (for the report: equal where the clients
/// have the setting, said where they do not).
fn settings_by_client(o: &RunOptions) -> Vec<(String, Vec<String>)> {
    let linger = o
        .lingers
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join("/");
    // Per row: the default rows are idempotent, the -idem-off rows are not.
    let idem = o
        .idempotence
        .iter()
        .map(|on| {
            if *on {
                "true (default rows)"
            } else {
                "false (-idem-off rows)"
            }
        })
        .collect::<Vec<_>>()
        .join(" / ");
    let mut out = Vec::new();
    for &c in &o.clients {
        let lines: Vec<String> = match c {
            ClientKind::RdkafkaPerformance | ClientKind::RdkafkaPerformanceCopy => vec![
                format!(
                    "rdkafka_performance -P{} -a -1 -s SIZE -c N -m PAYLOAD, keyless only, \
                     -idem-off rows only (its idempotent producer acquires its producer id \
                     inside its timed window: ~0.5 s)",
                    if c == ClientKind::RdkafkaPerformanceCopy {
                        " -D"
                    } else {
                        ""
                    }
                ),
                format!(
                    "-X linger.ms={linger} batch.size={BATCH_BYTES} batch.num.messages=1000000 \
                     queue.buffering.max.kbytes={BUFFER_KBYTES} \
                     queue.buffering.max.messages={BUFFER_MESSAGES} socket.nagle.disable=true \
                     enable.idempotence={idem} compression.type=CODEC (compression.level=1 with \
                     zstd)"
                ),
                format!(
                    "{}, reports served every 1,000 sends, clock from before the first send \
                     (bootstrap inside), no warm-up",
                    if c == ClientKind::RdkafkaPerformanceCopy {
                        "-D: each payload copied into a malloc'd buffer of its own before \
                         produce (RD_KAFKA_MSG_F_FREE), as records that are not one static \
                         buffer are"
                    } else {
                        "no copy of the payload (its default: one static buffer for every \
                         record)"
                    }
                ),
                "consumer: rdkafka_performance -G GROUP -c N with the librdkafka consumer's -X \
                 settings (below; queued.min.messages=100000 over its own 1000000) and its own \
                 session.timeout.ms=6000 enable.partition.eof=true; timed subscribe → \
                 assignment (its stderr lines, timed here) + its own first → last record \
                 (assignment → first record not counted); checked: N records, N × SIZE value \
                 bytes, no consume error, committed offsets = high watermarks (it reads no key \
                 or value byte and keeps no offsets: no per-offset or checksum check)"
                    .into(),
            ],
            ClientKind::Librdkafka | ClientKind::LibrdkafkaFuture => vec![
                format!(
                    "producer: acks=all linger.ms={linger} batch.size={BATCH_BYTES} \
                     batch.num.messages=1000000 queue.buffering.max.kbytes={BUFFER_KBYTES} \
                     queue.buffering.max.messages={BUFFER_MESSAGES} socket.nagle.disable=true \
                     enable.idempotence={idem} compression.type=CODEC (zstd with \
                     compression.level=1, lz4 at its default level 0: librdkafka's C codecs)"
                ),
                if c == ClientKind::Librdkafka {
                    "BaseProducer, all waiting reports served every 1,000 sends and on \
                     QueueFull (100 µs sleeps between empty polls, no spin), clock stops at the \
                     last report; ThreadedProducer for the fixed rate (latency from the send \
                     call)"
                        .into()
                } else {
                    "FutureProducer, futures reaped in send order (fixed rate: latency from the \
                     send call)"
                        .into()
                },
                format!(
                    "consumer: queued.max.messages.kbytes={PREFETCH_KBYTES} \
                     queued.min.messages=100000 (default) fetch.queue.backoff.ms=10 \
                     isolation.level=read_uncommitted max.partition.fetch.bytes=1048576 \
                     fetch.max.bytes=52428800 fetch.wait.max.ms=500 auto-commit 5 s"
                ),
            ],
            ClientKind::Krafka => vec![
                format!(
                    "krafka 0.28.1 producer: acks=all linger {linger} ms batch_size={BATCH_BYTES} \
                     buffer_memory={} idempotent={idem} compression=CODEC (zstd at its default \
                     level 3) tcp_nodelay=true; \
                     enqueue + DeliveryHandle per record, reaped in send order",
                    BUFFER_KBYTES * 1024
                ),
                "produce rows only; not on the librdkafka mock cluster (its ApiVersions answer to \
                 a request above v3 breaks KIP-511), so it runs with --broker tansu or \
                 KAFKA_BROKERS"
                    .into(),
            ],
            ClientKind::ConfluentKafka => vec![
                format!(
                    "confluent-kafka 1.0.0 producer (Java client's names): acks=all \
                     linger.ms={linger} batch.size={BATCH_BYTES} buffer.memory={} \
                     max.request.size={} enable.idempotence={idem} compression.type=CODEC, \
                     max.in.flight.requests.per.connection=5 (default), TCP_NODELAY always \
                     (as Java); send(byte slices, callback) per record, futures dropped, clock \
                     stops when flush() returns",
                    BUFFER_KBYTES * 1024,
                    BATCH_BYTES + 64 * 1024
                ),
                "produce rows only (its consumer speaks only KIP-848, which neither test broker \
                 serves it); runs with KAFKA_BROKERS only: the librdkafka mock cluster's \
                 ApiVersions answer to a request above v3 breaks KIP-511, and tansu 0.6.0 \
                 closes the connection on its ApiVersions v5 request"
                    .into(),
            ],
            ClientKind::Rskafka => vec![
                format!(
                    "own per-partition batcher (round robin, keyed or not): linger {linger} ms, \
                     batch ≤ {BATCH_BYTES} B, at most 30 requests in flight, no buffer bound \
                     beyond that; acks=all (rskafka's only mode); none/snappy only; no \
                     idempotent producer: runs the -idem-off rows only"
                ),
                "consume: one fetch loop per partition from offset 0 (no group, no commits)".into(),
            ],
            ClientKind::Purekafka => vec![
                format!(
                    "producer: acks=all linger.ms={linger} batch.size={BATCH_BYTES} \
                     queue.buffering.max.kbytes={BUFFER_KBYTES} enable.idempotence={idem}, \
                     TCP_NODELAY always; lz4: lz4_flex (64 KiB independent blocks), zstd: purekafka's \
                     own match finder (zstd's \"fast\" strategy, ≈ level 1) with ruzstd's \
                     entropy coder; latency from the enqueue call"
                ),
                "DetachedProducer (one report per batch) for throughput, enqueue + \
                 DeliveryFuture per record for the fixed rate"
                    .into(),
                format!(
                    "consumer: queued.max.messages.kbytes={PREFETCH_KBYTES} \
                     max.partition.fetch.bytes=1048576 fetch.max.bytes=52428800 \
                     fetch.wait.max.ms=500, read_uncommitted, auto-commit 5 s; runtime: no-op \
                     handler, concurrency 16, commits every 1 s, dedup: 1M keys, 1 h TTL, \
                     event_id header"
                ),
            ],
        };
        out.push((c.name().to_string(), lines));
    }
    out
}
