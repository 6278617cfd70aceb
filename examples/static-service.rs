//! A small service built as one static binary (musl) for a `FROM scratch` container: it
//! connects with the configuration from the environment (`KAFKA_BROKERS`, `KAFKA_*`),
//! produces `--count` records to `--topic`, consumes them back through the consumer group
//! `--group`, commits, leaves the group, and reports success through its exit code.
//!
//! ```sh
//! CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
//!   cargo build --release --target x86_64-unknown-linux-musl --example static-service
//! KAFKA_BROKERS=127.0.0.1:9092 target/x86_64-unknown-linux-musl/release/examples/static-service \
//!   --topic events --group events-check --count 100
//! ```
//!
//! In an empty root there is no /etc/hosts and no /etc/resolv.conf: give brokers as IP
//! literals (`127.0.0.1:9092`); see the README's "Static builds" section. TLS needs nothing
//! from the root either: `KAFKA_SSL=true KAFKA_SSL_CA_LOCATION=/ca.pem` with the CA file
//! beside the binary (or no CA at all for a broker with a public certificate: the Mozilla
//! roots are compiled in). `--create PARTITIONS` creates the topic first.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use purekafka::{Client, ConfigBuilder, Record};

struct Args {
    topic: String,
    group: String,
    count: usize,
    create: Option<i32>,
}

fn parse_args() -> Result<Args, String> {
    let mut topic = std::env::var("KAFKA_TOPIC").ok();
    let mut group = std::env::var("KAFKA_GROUP_ID").ok();
    let mut count = 100;
    let mut create = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--topic" => topic = Some(value()?),
            "--group" => group = Some(value()?),
            "--count" => {
                let v = value()?;
                count = v
                    .parse()
                    .map_err(|_| format!("--count {v}: not a number"))?
            }
            "--create" => {
                let v = value()?;
                create = Some(
                    v.parse()
                        .map_err(|_| format!("--create {v}: not a number of partitions"))?,
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let topic = topic.ok_or("--topic (or KAFKA_TOPIC) is required")?;
    Ok(Args {
        group: group.unwrap_or_else(|| format!("{topic}-static-service")),
        topic,
        count,
        create,
    })
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = ConfigBuilder::from_env()
        .set("group.id", &args.group)
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .build()?;
    let client = Client::connect(config).await?;
    if let Some(partitions) = args.create {
        client.create_topic(&args.topic, partitions, 1).await?;
    }

    let producer = client.producer();
    let mut deliveries = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let record = Record::new(args.topic.clone(), format!("static-service record {i}"))
            .with_key(format!("k{i}"));
        deliveries.push(producer.enqueue(record).await?);
    }
    for d in deliveries {
        d.await?;
    }
    producer.close().await;
    println!("produced {} records", args.count);

    let consumer = client.consumer(&[args.topic.as_str()])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut read = 0;
    while read < args.count {
        if Instant::now() > deadline {
            return Err(format!("read {read} of {} records in 60 s", args.count).into());
        }
        let batch = consumer.poll(Duration::from_millis(500)).await?;
        read += batch.len();
        consumer.commit_batch(&batch).await?;
    }
    consumer.close().await?;
    println!(
        "consumed {read} records through group {} and left it",
        args.group
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("static-service: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("static-service: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("static-service: {e}");
            ExitCode::FAILURE
        }
    }
}
