//! `compare run`: the orchestrator. Starts the broker, runs every case through every client
//! (each in its own child process, clients alternating run by run), and writes the table, the
//! JSON file and the SVG plot.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::broker::{Broker, BrokerChoice};
use crate::model::{ChildSpec, ClientKind, WorkloadKind, ACKS, BATCH_BYTES, LINGER_MS, PARTITIONS};
use crate::proc::{run_child, ChildRun};
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
}

fn cases(o: &RunOptions) -> Vec<Case> {
    let mut v = Vec::new();
    for &w in &o.workloads {
        match w {
            WorkloadKind::Produce => {
                for (name, size) in [("produce-100B", 100), ("produce-1KiB", 1024)] {
                    v.push(Case {
                        name: name.into(),
                        workload: w,
                        value_size: size,
                    });
                }
            }
            WorkloadKind::ProduceLatency => v.push(Case {
                name: format!("produce-latency-{}k/s", o.rate / 1000),
                workload: w,
                value_size: o.latency_value_size,
            }),
            WorkloadKind::Consume => v.push(Case {
                name: "consume".into(),
                workload: w,
                value_size: o.consume_value_size,
            }),
            WorkloadKind::FirstRecord => v.push(Case {
                name: "first-record".into(),
                workload: w,
                value_size: o.consume_value_size,
            }),
        }
    }
    v
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
    /// Records per consume run (the broker may hold fewer than `opts.records`).
    consume_records: u64,
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
        let mut args = vec!["child".to_string()];
        args.extend(spec.to_args());
        run_child(&self.exe, &args, self.opts.child_timeout)
    }

    /// Runs one measured child with the broker's CPU read around it, and records the sample.
    fn measure(
        &mut self,
        case: &Case,
        client: ClientKind,
        rep: usize,
        broker: &Broker,
        spec: ChildSpec,
    ) {
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
        };
        if r.errors > 0 {
            self.say(&format!(
                "{} · {} · rep {}: {} records failed delivery",
                case.name,
                client.name(),
                rep + 1,
                r.errors
            ));
        }
        self.samples.push(sample);
    }

    fn spec(&self, case: &Case, client: ClientKind, broker: &Broker, group: String) -> ChildSpec {
        ChildSpec {
            client,
            workload: case.workload,
            brokers: broker.bootstrap(),
            topic: broker.topic.clone(),
            records: match case.workload {
                WorkloadKind::Consume | WorkloadKind::FirstRecord => self.consume_records,
                _ => self.opts.records,
            },
            value_size: case.value_size,
            rate: self.opts.rate,
            duration_s: self.opts.latency_secs,
            group,
        }
    }

    /// Client order for repetition `rep`: rotated, so no client always runs first.
    fn order(&self, rep: usize) -> Vec<ClientKind> {
        let mut c = self.opts.clients.clone();
        let n = c.len().max(1);
        c.rotate_left(rep % n);
        c
    }

    async fn produce_case(&mut self, case: &Case) -> Result<(), String> {
        let choice = self.opts.broker.clone();
        for rep in 0..self.opts.reps {
            for client in self.order(rep) {
                // A fresh broker (local) or topic (external) for every run: each client
                // starts from the same empty state, and memory stays bounded.
                let broker = Broker::start(&choice, "compare-produce").await?;
                let spec = self.spec(case, client, &broker, String::new());
                self.measure(case, client, rep, &broker, spec);
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
        let records = match self.opts.broker.consume_cap() {
            Some(cap) if cap < self.opts.records => {
                self.say(&format!(
                    "consume runs read {cap} records, not {}: the mock cluster keeps only the \
                     last 5 MiB of each partition",
                    self.opts.records
                ));
                cap
            }
            _ => self.opts.records,
        };
        self.consume_records = records;
        let broker = Broker::start(&self.opts.broker, "compare-consume").await?;
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
        };
        let filled = self
            .child(&fill)
            .map_err(|e| format!("filling the consume topic: {e}"))?;
        self.pb.inc(1);
        if filled.result.records != records {
            return Err(format!(
                "filling the consume topic: {} of {records} records acknowledged",
                filled.result.records
            ));
        }
        broker.check_nothing_dropped().await?;
        for case in cases {
            for rep in 0..self.opts.reps {
                for client in self.order(rep) {
                    let group = purekafka_testkit::unique_name("compare-group");
                    let spec = self.spec(case, client, &broker, group);
                    self.measure(case, client, rep, &broker, spec);
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
                WorkloadKind::Consume | WorkloadKind::FirstRecord
            )
        })
        .collect();
    let total_runs =
        (cases.len() * opts.reps * opts.clients.len()) as u64 + u64::from(!consume.is_empty());
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
        consume_records: opts.records,
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
            "linger_ms": LINGER_MS,
            "batch_bytes": BATCH_BYTES,
            "compression": "none",
            "partitions": PARTITIONS,
            "records": opts.records,
            "consume_records": runner.consume_records,
            "repetitions": opts.reps,
            "latency_rate_per_s": opts.rate,
            "latency_seconds": opts.latency_secs,
            "latency_value_bytes": opts.latency_value_size,
            "consume_value_bytes": opts.consume_value_size,
        }),
        rows,
        samples: runner.samples,
        failures: runner.failures,
    };
    let md = table(&report.rows);
    println!();
    println!("{date} · {command}");
    println!("broker: {broker}");
    println!("machine: {}", report.machine);
    println!(
        "settings: acks=all, linger 5 ms, batch ≤ 1 MiB, no compression, {PARTITIONS} partitions, \
         {} records, {} repetition(s) (median; ± = half the range)",
        opts.records, opts.reps
    );
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
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
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
            "{date} · `{command}`\n\nbroker: {broker}\n\nmachine: {}\n\n{md}",
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
