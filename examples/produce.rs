//! A small command-line producer for people and scripts.
//!
//! ```sh
//! printf 'user-1\t{"a":1}\nplain value\n' \
//!   | KAFKA_BROKERS=127.0.0.1:9092 cargo run --example produce -- orders --header source=cli
//! ```
//!
//! Brokers and the rest of the configuration come from `KAFKA_*` variables (`KAFKA_BROKERS`,
//! `KAFKA_CLIENT_ID`, SASL, ...). Each stdin line is one record: `key<TAB>value`, or the value
//! alone. `--header k=v` (repeatable) adds a header to every record. `--set KEY=VALUE` (or
//! `-X KEY=VALUE`, as kcat; repeatable) sets any librdkafka / Java key after the environment's,
//! e.g. `--set enable.idempotence=false --set acks=1` or `--set linger.ms=50`; a bad key or
//! value exits with 2 naming it. Each delivery is printed
//! as `partition offset`, in input order; failures go to stderr, and the exit status is 1 if
//! any record failed (2 for usage or connection errors).

use std::collections::VecDeque;
use std::io::BufRead;
use std::process::ExitCode;

use purekafka::{Client, ConfigBuilder, DeliveryFuture, Record};

const USAGE: &str = "usage: produce TOPIC [--header KEY=VALUE]... [--set KEY=VALUE]... \
< lines (key<TAB>value or value)";

#[tokio::main]
async fn main() -> ExitCode {
    let mut topic = None;
    let mut headers = Vec::new();
    let mut settings = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--header" | "-H" => match args.next().as_deref().and_then(|h| h.split_once('=')) {
                Some((k, v)) => headers.push((k.to_string(), v.to_string())),
                None => return usage("--header needs KEY=VALUE"),
            },
            "--set" | "-X" => match args.next().as_deref().and_then(|s| s.split_once('=')) {
                Some((k, v)) => settings.push((k.trim().to_string(), v.to_string())),
                None => return usage("--set needs KEY=VALUE"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ if arg.starts_with('-') => return usage(&format!("unknown option {arg}")),
            _ if topic.is_none() => topic = Some(arg),
            _ => return usage(&format!("unexpected argument {arg}")),
        }
    }
    let Some(topic) = topic else {
        return usage("no topic given");
    };

    let mut builder = ConfigBuilder::from_env();
    for (key, value) in &settings {
        builder = builder.set(key, value);
    }
    let client = match builder.build() {
        Ok(config) => match Client::connect(config).await {
            Ok(c) => c,
            Err(e) => return fail(&e.to_string()),
        },
        Err(e) => return fail(&e.to_string()),
    };
    let producer = client.producer();

    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<String>>(1024);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });

    let mut failed = 0usize;
    let mut pending: VecDeque<(usize, DeliveryFuture)> = VecDeque::new();
    let mut line_no = 0usize;
    while let Some(line) = rx.recv().await {
        let line = match line {
            Ok(l) => l,
            Err(e) => return fail(&format!("reading stdin: {e}")),
        };
        line_no += 1;
        let line = line.strip_suffix('\r').unwrap_or(&line);
        let mut record = match line.split_once('\t') {
            Some((key, value)) => {
                Record::new(topic.clone(), value.to_string()).with_key(key.to_string())
            }
            None => Record::new(topic.clone(), line.to_string()),
        };
        for (k, v) in &headers {
            record = record.with_header(k.clone(), v.clone());
        }
        match producer.enqueue(record).await {
            Ok(f) => pending.push_back((line_no, f)),
            Err(e) => {
                eprintln!("line {line_no}: {e}");
                failed += 1;
            }
        }
        // Print what is already acknowledged, in input order.
        while pending.front().is_some_and(|(_, f)| f.is_done()) {
            let (n, f) = pending.pop_front().expect("checked");
            failed += report(n, f.await);
        }
    }
    for (n, f) in pending {
        failed += report(n, f.await);
    }
    producer.close().await;
    if failed > 0 {
        eprintln!("{failed} record(s) failed");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn report(line: usize, result: Result<purekafka::Delivery, purekafka::SendError>) -> usize {
    match result {
        Ok(d) => {
            println!("{} {}", d.partition, d.offset);
            0
        }
        Err(e) => {
            eprintln!("line {line}: {e}");
            1
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("{why}\n{USAGE}");
    ExitCode::from(2)
}

fn fail(why: &str) -> ExitCode {
    eprintln!("error: {why}");
    ExitCode::from(2)
}
