//! `compare`: purekafka, raw rskafka and librdkafka side by side on the same broker.
//!
//! ```text
//! compare run [--quick] [--broker mock|tansu] [--clients a,b] [--workloads a,b] [--reps N]
//!             [--records N] [--rate R] [--latency-secs S] [--out DIR]
//! compare child --client C --workload W --brokers B --topic T [...]   (one measured run)
//! ```
//!
//! See README.md beside Cargo.toml.

mod broker;
mod child;
mod model;
mod proc;
mod report;
mod run;
mod stats;
mod svg;

use std::time::Duration;

use model::{ChildSpec, ClientKind, WorkloadKind};
use run::RunOptions;

const USAGE: &str = "\
usage:
  compare run [options]     run the whole comparison and print the table
  compare child [options]   one measured run (started by `run`)

run options:
  --quick                   smoke mode: 50,000 records, 1 repetition, 2 s latency run (< 2 min)
  --broker mock|tansu       local broker started through the testkit (default: mock);
                            KAFKA_BROKERS=host:port,... uses that cluster instead
  --clients LIST            comma-separated: rdkafka_performance,rdkafka_performance-copy (-D),
                            librdkafka,librdkafka-future,
                            krafka (not on the mock cluster),
                            rskafka,purekafka
  --workloads LIST          comma-separated: produce,produce-latency,consume,first-record,runtime
  --sizes LIST              value sizes of the produce runs (default 100,1024; quick 100)
  --keys LIST               keyless,keyed (default both; quick keyless)
  --lingers LIST            linger.ms of the produce runs (default 5,50; quick 5)
  --idempotence LIST        on,off (default both): enable.idempotence of every producer in
                            the row (on: purekafka's default; rskafka runs the off rows only);
                            the latency row runs with the first value
  --compressions LIST       none,snappy (default; quick none); lz4,zstd,gzip where the
                            clients are built with them
  --consume-records N       records of the consume topic (default 4000000; quick 50000)
  --reps N                  repetitions per case and client (default 5; quick 1)
  --records N               records per produce run (default 1000000; quick 50000)
  --rate R                  records/s of the latency run (default 20000)
  --latency-secs S          length of the latency run (default 10; quick 2)
  --out DIR                 where latest.{json,svg,md} go (default benches/compare/results)
  --child-timeout SECS      kill a measured child after this long
";

fn list<T>(s: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    s.split(',').filter(|x| !x.is_empty()).map(parse).collect()
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: not a number: {v:?}"))
}

fn parse_run(args: &[String]) -> Result<RunOptions, String> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = RunOptions::defaults(quick);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--quick" {
            continue;
        }
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--broker" => o.broker = broker::BrokerChoice::parse(&value()?)?,
            "--clients" => o.clients = list(&value()?, ClientKind::parse)?,
            "--workloads" => o.workloads = list(&value()?, WorkloadKind::parse)?,
            "--reps" => o.reps = num(flag, &value()?)?,
            "--records" => o.records = num(flag, &value()?)?,
            "--rate" => o.rate = num(flag, &value()?)?,
            "--latency-secs" => o.latency_secs = num(flag, &value()?)?,
            "--sizes" => o.sizes = list(&value()?, |x| num("--sizes", x))?,
            "--keys" => {
                o.keys = list(&value()?, |x| match x {
                    "keyless" => Ok(false),
                    "keyed" => Ok(true),
                    other => Err(format!("--keys: {other:?}: expected keyless or keyed")),
                })?
            }
            "--lingers" => o.lingers = list(&value()?, |x| num("--lingers", x))?,
            "--idempotence" => {
                o.idempotence = list(&value()?, |x| match x {
                    "on" => Ok(true),
                    "off" => Ok(false),
                    other => Err(format!("--idempotence: {other:?}: expected on or off")),
                })?
            }
            "--compressions" => o.compressions = list(&value()?, |x| Ok(x.to_string()))?,
            "--consume-records" => o.consume_records = num(flag, &value()?)?,
            "--out" => o.out_dir = value()?.into(),
            "--child-timeout" => o.child_timeout = Duration::from_secs(num(flag, &value()?)?),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if let Ok(b) = std::env::var("KAFKA_BROKERS") {
        if !b.trim().is_empty() {
            o.broker = broker::BrokerChoice::External(b.trim().to_string());
        }
    }
    if let Some(c) = o.clients.iter().find(|c| !c.available()) {
        return Err(format!(
            "client {} is not in this build (cargo build --features purekafka)",
            c.name()
        ));
    }
    if o.reps == 0 || o.records == 0 || o.clients.is_empty() || o.idempotence.is_empty() {
        return Err(
            "--reps, --records, --clients and --idempotence must not be zero or empty".into(),
        );
    }
    Ok(o)
}

fn parse_child(args: &[String]) -> Result<ChildSpec, String> {
    let mut spec = ChildSpec {
        client: ClientKind::Librdkafka,
        workload: WorkloadKind::Produce,
        brokers: String::new(),
        topic: String::new(),
        records: 0,
        value_size: 100,
        rate: 20_000,
        duration_s: 1.0,
        group: String::new(),
        keyed: true,
        linger_ms: 5,
        compression: "none".into(),
        partitions: model::PARTITIONS,
        dedup: false,
        idempotence: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--client" => spec.client = ClientKind::parse(v)?,
            "--workload" => spec.workload = WorkloadKind::parse(v)?,
            "--brokers" => spec.brokers = v.clone(),
            "--topic" => spec.topic = v.clone(),
            "--records" => spec.records = num(flag, v)?,
            "--value-size" => spec.value_size = num(flag, v)?,
            "--rate" => spec.rate = num(flag, v)?,
            "--duration-s" => spec.duration_s = num(flag, v)?,
            "--group" => spec.group = v.clone(),
            "--keyed" => spec.keyed = v == "true",
            "--linger-ms" => spec.linger_ms = num(flag, v)?,
            "--compression" => spec.compression = v.clone(),
            "--partitions" => spec.partitions = num(flag, v)?,
            "--dedup" => spec.dedup = v == "true",
            "--idempotence" => spec.idempotence = v == "true",
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if spec.brokers.is_empty() || spec.topic.is_empty() {
        return Err("--brokers and --topic are required".into());
    }
    Ok(spec)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let command = format!(
        "compare {}",
        args.iter().skip(1).cloned().collect::<Vec<_>>().join(" ")
    );
    if args.iter().skip(1).any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return;
    }
    let result = match args.get(1).map(String::as_str) {
        Some("run") => parse_run(&args[2..]).and_then(|o| run::run(o, command.trim().to_string())),
        Some("child") => parse_child(&args[2..]).and_then(child::main),
        _ => Err(String::new()),
    };
    if let Err(e) = result {
        if e.is_empty() {
            eprint!("{USAGE}");
        } else {
            eprintln!("compare: {e}");
        }
        std::process::exit(2);
    }
}
