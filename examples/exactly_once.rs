//! Consume-transform-produce, exactly once: every record of INPUT is written to OUTPUT
//! (same key, value upper-cased) by the processing runtime in exactly-once mode, so the
//! outputs, the dead letters and the consumed offsets of each transaction commit together.
//! A restart after a crash (even SIGKILL) neither loses nor repeats an output among the
//! committed records.
//!
//! ```sh
//! KAFKA_BROKERS=127.0.0.1:9092 cargo run --example exactly_once -- GROUP INPUT OUTPUT TXN_ID \
//!   [--set KEY=VALUE]...
//! ```
//!
//! Brokers and the rest of the configuration come from `KAFKA_*` variables; `--set KEY=VALUE`
//! (repeatable) sets any other key. `TXN_ID` is the `transactional.id`: keep it stable across
//! restarts of one instance (the restart fences the crashed one and aborts its open
//! transaction). `--delay-ms N` sleeps N ms per record (to watch it work). Stops on SIGTERM /
//! SIGINT after committing; exit status 1 on a run error, 2 on usage or connection errors.

use std::process::ExitCode;
use std::time::Duration;

use purekafka::worker::RunnerConfig;
use purekafka::{Client, ConfigBuilder, HandlerError, Record};

const USAGE: &str =
    "usage: exactly_once GROUP INPUT OUTPUT TXN_ID [--set KEY=VALUE]... [--delay-ms N]";

#[tokio::main]
async fn main() -> ExitCode {
    let mut positional = Vec::new();
    let mut settings = Vec::new();
    let mut delay = Duration::ZERO;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--set" | "-X" => match args.next().as_deref().and_then(|s| s.split_once('=')) {
                Some((k, v)) => settings.push((k.trim().to_string(), v.to_string())),
                None => return usage("--set needs KEY=VALUE"),
            },
            "--delay-ms" => match args.next().and_then(|n| n.parse().ok()) {
                Some(ms) => delay = Duration::from_millis(ms),
                None => return usage("--delay-ms needs a number"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ if arg.starts_with('-') => return usage(&format!("unknown option {arg}")),
            _ => positional.push(arg),
        }
    }
    let [group, input, output, txn_id] = match <[String; 4]>::try_from(positional) {
        Ok(p) => p,
        Err(_) => return usage("expected GROUP INPUT OUTPUT TXN_ID"),
    };
    let mut builder = ConfigBuilder::from_env()
        .group_id(&group)
        .set("transactional.id", &txn_id)
        .set("auto.offset.reset", "earliest");
    for (key, value) in &settings {
        builder = builder.set(key, value);
    }
    let client = match builder.build() {
        Ok(config) => match Client::connect(config).await {
            Ok(c) => c,
            Err(e) => return fail(2, &e.to_string()),
        },
        Err(e) => return fail(2, &e.to_string()),
    };
    let consumer = match client.consumer(&[&input]) {
        Ok(c) => c,
        Err(e) => return fail(2, &e.to_string()),
    };
    let producer = client.producer();
    let runner = consumer
        .runner()
        .config(
            RunnerConfig::default()
                .exactly_once(true)
                .commit_interval(Duration::from_millis(200)),
        )
        .producer(producer.clone());
    let result = runner
        .run(move |record| {
            let producer = producer.clone();
            let output = output.clone();
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let value = record.value_str().unwrap_or_default().to_uppercase();
                let mut out = Record::new(output, value);
                if let Some(key) = &record.key {
                    out = out.with_key(key.clone());
                }
                producer.send(out).await.map_err(HandlerError::retriable)?;
                Ok(())
            }
        })
        .await;
    match result {
        Ok(metrics) => {
            eprintln!(
                "exactly_once: stopped; processed {}, dead-lettered {}",
                metrics.processed, metrics.dead_lettered
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, &e.to_string()),
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("exactly_once: {why}\n{USAGE}");
    ExitCode::from(2)
}

fn fail(code: u8, why: &str) -> ExitCode {
    eprintln!("exactly_once: {why}");
    ExitCode::from(code)
}
