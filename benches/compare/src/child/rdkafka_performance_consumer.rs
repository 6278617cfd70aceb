//! librdkafka's own benchmark tool as a group consumer: `rdkafka_performance -G GROUP -t TOPIC
//! -c N`, run as a process of its own with the librdkafka consumer settings (`-X`), its
//! summary line parsed and its stderr lines timed.
//!
//! What the tool can and cannot show (it is the maintainers' tool, run as they run it):
//! - Its own clock runs from its first record to its last (`-c N` reached), so its join is not
//!   in its figure. To put it on the clock the other consumers run on (from subscribe), the
//!   orchestrator times its stderr: "Waiting for group rebalance.." is written right after
//!   `rd_kafka_subscribe`, "Group rebalanced (...): N new partition(s) assigned" in the rebalance
//!   callback just before `rd_kafka_assign`. Its time is then subscribe → assignment (timed
//!   here) + first → last record (its own). The gap from assignment to its first record
//!   (OffsetFetch, ListOffsets, the first Fetch) is not counted: in the tool's favour.
//! - It counts records and value bytes (`rkmessage->len`) and prints consume errors; it never
//!   reads a key or value byte and keeps no offsets. So a run is accepted when it read N
//!   records of N × value-size bytes with no consume error, and the group's committed offsets
//!   (librdkafka commits the final positions when the consumer closes with auto-commit on) equal
//!   every partition's high watermark. A gap and a repeat in one partition that cancel out would
//!   pass: it cannot show per-offset completeness or a checksum of the bytes, which every other
//!   consumer here checks per record.

use std::process::Command;

use crate::model::{ChildResult, ChildSpec, WorkloadKind};
use crate::proc::TimedLine;

use super::rdkafka_performance::{available, number_before, BIN};

/// What the tool writes to stderr right after `rd_kafka_subscribe`.
const SUBSCRIBED: &str = "Waiting for group rebalance";
/// What its rebalance callback writes to stderr before `rd_kafka_assign`.
const ASSIGNED: &str = "new partition(s) assigned";

/// The tool's command line for a group consume of `spec.records` records.
pub fn command(spec: &ChildSpec) -> Result<(String, Vec<String>), String> {
    if !available() {
        return Err("rdkafka_performance was not built (see the cargo build warnings)".into());
    }
    if spec.workload != WorkloadKind::Consume {
        return Err("rdkafka_performance's consumer runs the consume workload only".into());
    }
    let mut args: Vec<String> = vec![
        "-G".into(),
        spec.group.clone(),
        "-t".into(),
        spec.topic.clone(),
        "-b".into(),
        spec.brokers.clone(),
        "-c".into(),
        spec.records.to_string(),
    ];
    for (k, v) in super::librdkafka::consumer_settings() {
        // The tool sets enable.partition.eof=true itself (after reading -X), and ends on -c.
        if k == "enable.partition.eof" {
            continue;
        }
        args.push("-X".into());
        args.push(format!("{k}={v}"));
    }
    Ok((BIN.to_string(), args))
}

/// The first stderr line containing `what`, its arrival time in seconds.
fn line_at(lines: &[TimedLine], what: &str) -> Option<f64> {
    lines.iter().find(|l| l.text.contains(what)).map(|l| l.at_s)
}

/// Reads the tool's last consumer summary line,
/// `% N messages (B bytes) consumed in Tms: R msgs/s (X MB/s)`, and its stderr timings.
pub fn parse(spec: &ChildSpec, stdout: &str, stderr: &[TimedLine]) -> Result<ChildResult, String> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" messages (") && l.contains(" consumed in "))
        .ok_or("rdkafka_performance printed no consumer summary line")?;
    let records = number_before(line, "messages", "message count")?;
    let bytes = number_before(line, "bytes)", "byte count")?;
    let rate = number_before(line, "msgs/s", "msgs/s")?;
    if rate == 0 {
        return Err(format!("rdkafka_performance reported 0 msgs/s: {line:?}"));
    }
    let subscribed = line_at(stderr, SUBSCRIBED)
        .ok_or("rdkafka_performance wrote no \"Waiting for group rebalance\" line")?;
    let assigned = line_at(stderr, ASSIGNED)
        .ok_or("rdkafka_performance wrote no \"partition(s) assigned\" line")?;
    let join_s = (assigned - subscribed).max(0.0);
    // Consume errors are printed to stdout, one line each ("% Consume error for topic ...").
    let errors = stdout
        .lines()
        .filter(|l| l.starts_with("% Consume error"))
        .count() as u64
        + stderr
            .iter()
            .filter(|l| l.text.starts_with("% Error"))
            .count() as u64;
    let expected_bytes = spec.records * spec.value_size as u64;
    Ok(ChildResult {
        records,
        bytes,
        elapsed_s: join_s + records as f64 / rate as f64,
        first_record_ms: None,
        latency: None,
        errors: errors + u64::from(records != spec.records) + u64::from(bytes != expected_bytes),
        checksum: None,
        warmup: 0,
        vm_hwm_kib: None,
    })
}

/// `compare child --client rdkafka_performance --workload consume ...`: the orchestrator runs
/// the tool directly instead (so that its rusage is the tool's own); this runs it and reads
/// its stdout (without stderr timing: first → last record only).
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
    let stderr: Vec<TimedLine> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| TimedLine {
            at_s: 0.0,
            text: l.to_string(),
        })
        .collect();
    parse(spec, &stdout, &stderr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ChildSpec {
        ChildSpec {
            client: crate::model::ClientKind::RdkafkaPerformance,
            workload: WorkloadKind::Consume,
            brokers: "x".into(),
            topic: "t".into(),
            records: 1000,
            value_size: 100,
            rate: 0,
            duration_s: 0.0,
            group: "g".into(),
            keyed: true,
            linger_ms: 5,
            compression: "none".into(),
            partitions: 48,
            dedup: false,
            idempotence: false,
        }
    }

    fn timed(at_s: f64, text: &str) -> TimedLine {
        TimedLine {
            at_s,
            text: text.into(),
        }
    }

    #[test]
    fn the_summary_and_the_join_are_read() {
        let stdout = "% Consumer reached end of t [0] message queue at offset 20\n\
            % 1000 messages (100000 bytes) consumed in 250ms: 4000 msgs/s (0.40 MB/s)\n";
        let stderr = [
            timed(0.010, "% Waiting for group rebalance.."),
            timed(
                0.110,
                "% Group rebalanced (EAGER): 48 new partition(s) assigned",
            ),
        ];
        let r = parse(&spec(), stdout, &stderr).unwrap();
        assert_eq!(r.records, 1000);
        assert_eq!(r.bytes, 100_000);
        assert_eq!(r.errors, 0);
        // 100 ms from subscribe to assignment + 250 ms from first to last record.
        assert!((r.elapsed_s - 0.35).abs() < 1e-9, "{}", r.elapsed_s);
    }

    #[test]
    fn short_counts_and_consume_errors_count_as_errors() {
        let stderr = [
            timed(0.0, "% Waiting for group rebalance.."),
            timed(
                0.1,
                "% Group rebalanced (EAGER): 48 new partition(s) assigned",
            ),
        ];
        let short = "% 999 messages (99900 bytes) consumed in 250ms: 3996 msgs/s (0.40 MB/s)\n";
        assert_eq!(parse(&spec(), short, &stderr).unwrap().errors, 2);
        let failed = "% Consume error for topic \"t\" [3] offset 7: Broker: Unknown\n\
            % 1000 messages (100000 bytes) consumed in 250ms: 4000 msgs/s (0.40 MB/s)\n";
        assert_eq!(parse(&spec(), failed, &stderr).unwrap().errors, 1);
        assert!(parse(&spec(), "nothing", &stderr).is_err());
        let no_join = "% 1000 messages (100000 bytes) consumed in 250ms: 4000 msgs/s (0.40 MB/s)\n";
        assert!(parse(&spec(), no_join, &[]).is_err());
    }
}
