//! librdkafka's own benchmark tool, `rdkafka_performance` (built by `build.rs` from
//! librdkafka's `examples/rdkafka_performance.c` against the librdkafka rdkafka-sys builds),
//! run as a process of its own with the settings every client gets, its summary line parsed.
//!
//! What it does differently (it is the maintainers' tool, run as they run it): it sends
//! keyless records only (`-k` is one fixed key), from one buffer without copying
//! (`RD_KAFKA_MSG_F_COPY` off), serves delivery reports every 1,000 sends, and its clock
//! starts before the first send, so its bootstrap is inside its window (no warm-up record);
//! its clock stops at the last delivery report.
//!
//! `rdkafka_performance-copy` is the same tool with `-D`: each payload is first copied into a
//! buffer of its own (malloc + memcpy, handed to librdkafka with `RD_KAFKA_MSG_F_FREE`), so the
//! records it holds are resident, as an application's records are (the default row produces
//! one static buffer, never copied until librdkafka builds its requests). A second row beside
//! the default one, which stays the baseline of the ratios.

use std::process::Command;

use crate::model::{ChildResult, ChildSpec, ClientKind, WorkloadKind};

/// Path of the built tool; empty when build.rs could not build it.
pub const BIN: &str = env!("RDKAFKA_PERFORMANCE_BIN");

/// Whether this build has the tool.
pub fn available() -> bool {
    !BIN.is_empty()
}

/// The tool's command line for `spec` (produce only).
pub fn command(spec: &ChildSpec) -> Result<(String, Vec<String>), String> {
    if !available() {
        return Err("rdkafka_performance was not built (see the cargo build warnings)".into());
    }
    if spec.workload != WorkloadKind::Produce || spec.keyed {
        return Err("rdkafka_performance runs keyless produce workloads only".into());
    }
    let payload = String::from_utf8(super::value(spec.value_size))
        .map_err(|_| "the payload is printable ASCII".to_string())?;
    let mut args: Vec<String> = vec![
        "-P".into(),
        "-t".into(),
        spec.topic.clone(),
        "-b".into(),
        spec.brokers.clone(),
        "-s".into(),
        spec.value_size.to_string(),
        "-c".into(),
        spec.records.to_string(),
        // The same bytes as every other client's records.
        "-m".into(),
        payload,
        // Required acks: all.
        "-a".into(),
        "-1".into(),
    ];
    if spec.client == ClientKind::RdkafkaPerformanceCopy {
        // Copy each payload into a buffer of its own before producing it (the tool's `-D`).
        args.push("-D".into());
    }
    for (k, v) in super::librdkafka::producer_settings(spec) {
        if k == "acks" {
            continue;
        }
        args.push("-X".into());
        args.push(format!("{k}={v}"));
    }
    Ok((BIN.to_string(), args))
}

/// The number in the word just before `word` in one of the tool's summary lines (digits
/// only: `(offset 123,` reads 123); `what` names it in the error.
pub fn number_before(line: &str, word: &str, what: &str) -> Result<u64, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .iter()
        .position(|x| *x == word)
        .and_then(|i| words.get(i.checked_sub(1)?))
        .map(|s| s.trim_matches(|c: char| !c.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("rdkafka_performance summary without {what}: {line:?}"))
}

/// Reads the tool's last summary line:
/// `% N messages produced (B bytes), D delivered (offset O, F failed) in Tms: R msgs/s and ...`
pub fn parse(spec: &ChildSpec, stdout: &str) -> Result<ChildResult, String> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" messages produced (") && l.contains(" delivered ("))
        .ok_or("rdkafka_performance printed no summary line")?;
    let delivered = number_before(line, "delivered", "delivered count")?;
    let failed = number_before(line, "failed)", "failed count")?;
    let rate = number_before(line, "msgs/s", "msgs/s")?;
    if rate == 0 {
        return Err(format!("rdkafka_performance reported 0 msgs/s: {line:?}"));
    }
    Ok(ChildResult {
        records: delivered,
        bytes: delivered * spec.value_size as u64,
        elapsed_s: delivered as f64 / rate as f64,
        first_record_ms: None,
        latency: None,
        errors: failed + spec.records.saturating_sub(delivered + failed),
        checksum: None,
        warmup: 0,
        vm_hwm_kib: None,
    })
}

/// `compare child --client rdkafka_performance ...`: runs the tool and prints its result (the
/// orchestrator runs the tool directly instead, so that its rusage is the tool's own).
pub fn run(spec: &ChildSpec) -> Result<ChildResult, String> {
    let (bin, args) = command(spec)?;
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| format!("rdkafka_performance: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "rdkafka_performance failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse(spec, &stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_is_read() {
        let spec = ChildSpec {
            client: crate::model::ClientKind::RdkafkaPerformance,
            workload: WorkloadKind::Produce,
            brokers: "x".into(),
            topic: "t".into(),
            records: 1000,
            value_size: 100,
            rate: 0,
            duration_s: 0.0,
            group: String::new(),
            keyed: false,
            linger_ms: 5,
            compression: "none".into(),
            partitions: 6,
            dedup: false,
            idempotence: true,
        };
        let out = "% Sending 1000 messages of size 100 bytes\n\
            % 1000 messages produced (100000 bytes), 1000 delivered (offset 170, 0 failed) \
            in 250ms: 4000 msgs/s and 0.40 MB/s, 0 produce failures, 0 in queue, no compression\n";
        let r = parse(&spec, out).unwrap();
        assert_eq!(r.records, 1000);
        assert_eq!(r.errors, 0);
        assert!((r.elapsed_s - 0.25).abs() < 1e-9);
        assert!(parse(&spec, "nothing").is_err());
    }
}
