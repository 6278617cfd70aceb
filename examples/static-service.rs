//! A small service built as one static binary (musl) for a `FROM scratch` container: it
//! connects with the configuration from the environment, produces `--count` records to
//! `--topic`, reads them back, and reports success through its exit code.
//!
//! ```sh
//! CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
//!   cargo build --release --target x86_64-unknown-linux-musl --example static-service
//! KAFKA_BROKERS=127.0.0.1:9092 target/x86_64-unknown-linux-musl/release/examples/static-service \
//!   --topic events --count 100
//! ```
//!
//! In an empty root there is no /etc/hosts and no /etc/resolv.conf: give brokers as IP
//! literals (`127.0.0.1:9092`); see the README's "Static builds" section.

use std::process::ExitCode;
use std::time::Duration;

use purekafka::rskafka::client::partition::{Compression, OffsetAt};
use purekafka::rskafka::record::Record as RsRecord;
use purekafka::{Client, ConfigBuilder};

struct Args {
    topic: String,
    count: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut topic = std::env::var("KAFKA_TOPIC").ok();
    let mut count = 100;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--topic" => topic = Some(value()?),
            "--count" => {
                let v = value()?;
                count = v
                    .parse()
                    .map_err(|_| format!("--count {v}: not a number"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        topic: topic.ok_or("--topic (or KAFKA_TOPIC) is required")?,
        count,
    })
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = ConfigBuilder::from_env()
        .set("request.timeout.ms", "10000")
        .build()?;
    let client = Client::connect(config).await?;
    let partitions = client.partition_count(&args.topic).await?;
    for i in 0..args.count {
        let p = (i % partitions) as i32;
        let partition = client.partition_client(&args.topic, p).await?;
        partition
            .produce(
                vec![RsRecord {
                    key: Some(format!("k{i}").into_bytes()),
                    value: Some(format!("static-service record {i}").into_bytes()),
                    headers: Default::default(),
                    timestamp: purekafka::rskafka::chrono::Utc::now(),
                }],
                Compression::NoCompression,
            )
            .await?;
    }
    let mut read = 0;
    for p in 0..partitions as i32 {
        let partition = client.partition_client(&args.topic, p).await?;
        let mut offset = partition.get_offset(OffsetAt::Earliest).await?;
        let end = partition.get_offset(OffsetAt::Latest).await?;
        while offset < end {
            let (records, _) = tokio::time::timeout(
                Duration::from_secs(10),
                partition.fetch_records(offset, 1..1_000_000, 500),
            )
            .await??;
            for r in records {
                offset = offset.max(r.offset + 1);
                read += 1;
            }
        }
    }
    println!("produced {} and read back {read} records", args.count);
    if read < args.count {
        return Err(format!("read {read} of {} records", args.count).into());
    }
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
