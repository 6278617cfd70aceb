//! A small command-line group consumer.
//!
//! ```text
//! KAFKA_BROKERS=127.0.0.1:9092 cargo run --example consume -- GROUP TOPIC [TOPIC...] \
//!     [--count N] [--idle SECS] [--from-beginning] [--set KEY=VALUE ...]
//! ```
//!
//! Prints each record as one line `topic partition offset key value` (a missing key or value
//! prints as `-`), commits after printing, stops after `--count N` records or after `--idle
//! SECS` without records (or on SIGTERM / Ctrl-C), leaves the group cleanly, and exits
//! non-zero on error. Other settings come from the environment (`KAFKA_*`, see
//! `purekafka::config::env`); `--from-beginning` sets `auto.offset.reset=earliest`, and
//! `--set KEY=VALUE` (repeatable) sets any librdkafka / Java key, e.g.
//! `--set reconnect.max.elapsed.ms=2000` to give up on an unreachable broker sooner.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use purekafka::{Client, ConfigBuilder, Error};

struct Args {
    group: String,
    topics: Vec<String>,
    count: Option<u64>,
    idle: Option<Duration>,
    from_beginning: bool,
    settings: Vec<(String, String)>,
}

fn usage() -> String {
    "usage: consume GROUP TOPIC [TOPIC...] [--count N] [--idle SECS] [--from-beginning] \
     [--set KEY=VALUE ...]"
        .into()
}

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut count = None;
    let mut idle = None;
    let mut from_beginning = false;
    let mut settings = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--count" => {
                let v = args.next().ok_or_else(usage)?;
                count = Some(
                    v.parse()
                        .map_err(|_| format!("--count {v}: not a number"))?,
                );
            }
            "--idle" => {
                let v = args.next().ok_or_else(usage)?;
                let secs: f64 = v.parse().map_err(|_| format!("--idle {v}: not a number"))?;
                idle = Some(Duration::from_secs_f64(secs));
            }
            "--from-beginning" => from_beginning = true,
            "--set" => {
                let v = args.next().ok_or_else(usage)?;
                let (key, value) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--set {v}: expected KEY=VALUE"))?;
                settings.push((key.to_string(), value.to_string()));
            }
            "-h" | "--help" => return Err(usage()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{}", usage())),
            _ => positional.push(a),
        }
    }
    if positional.len() < 2 {
        return Err(usage());
    }
    let group = positional.remove(0);
    Ok(Args {
        group,
        topics: positional,
        count,
        idle,
        from_beginning,
        settings,
    })
}

fn show(bytes: Option<&[u8]>) -> std::borrow::Cow<'_, str> {
    match bytes {
        None => "-".into(),
        Some(b) => String::from_utf8_lossy(b),
    }
}

async fn run(args: Args) -> purekafka::Result<()> {
    let mut builder = ConfigBuilder::from_env().group_id(&args.group);
    if args.from_beginning {
        builder = builder.set("auto.offset.reset", "earliest");
    }
    for (key, value) in &args.settings {
        builder = builder.set(key, value);
    }
    let client = Client::connect(builder.build()?).await?;
    let consumer = client.consumer(&args.topics)?;
    consumer.close_on_shutdown_signal();
    let mut printed = 0u64;
    let mut last_record = tokio::time::Instant::now();
    let stdout = std::io::stdout();
    let result = loop {
        if args.count.is_some_and(|n| printed >= n) {
            break Ok(());
        }
        if args.idle.is_some_and(|idle| last_record.elapsed() >= idle) {
            break Ok(());
        }
        let batch = match consumer.poll(Duration::from_millis(200)).await {
            Ok(b) => b,
            Err(Error::Closed(_)) => break Ok(()),
            Err(e) => break Err(e),
        };
        if batch.is_empty() {
            continue;
        }
        last_record = tokio::time::Instant::now();
        let room = args.count.map_or(batch.len(), |n| (n - printed) as usize);
        let batch = &batch[..batch.len().min(room)];
        let mut out = stdout.lock();
        for r in batch {
            let line = writeln!(
                out,
                "{} {} {} {} {}",
                r.topic,
                r.partition,
                r.offset,
                show(r.key.as_deref()),
                show(r.value.as_deref())
            );
            if let Err(e) = line {
                // A closed pipe (`| head`) ends the run; what was printed is committed.
                let _ = out.flush();
                drop(out);
                consumer.commit_batch(batch).await.ok();
                consumer.close().await?;
                return if e.kind() == std::io::ErrorKind::BrokenPipe {
                    Ok(())
                } else {
                    Err(Error::Io {
                        broker: "stdout".into(),
                        source: std::sync::Arc::new(e),
                    })
                };
            }
        }
        out.flush().ok();
        drop(out);
        printed += batch.len() as u64;
        if let Err(e) = consumer.commit_batch(batch).await {
            break Err(e);
        }
    };
    let closed = consumer.close().await;
    result.and(closed)
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("consume: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
