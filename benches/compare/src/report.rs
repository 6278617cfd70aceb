//! The results as a Markdown table (printed, and pasted into the README) and as JSON.

use serde::Serialize;

use crate::stats::{Row, Sample, Stat};

/// Everything a run produced, as written to the JSON file.
#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub command: String,
    pub broker: String,
    pub machine: String,
    pub settings: serde_json::Value,
    pub rows: Vec<Row>,
    pub samples: Vec<Sample>,
    /// Runs that failed, with the child's error.
    pub failures: Vec<String>,
}

fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", x / 1e3)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn ratio(r: Option<f64>) -> String {
    match r {
        Some(r) => format!(" ({r:.2}×)"),
        None => String::new(),
    }
}

fn cell(s: Option<Stat>, r: Option<f64>) -> String {
    match s {
        Some(s) => format!("{}{}", num(s.median), ratio(r)),
        None => "—".into(),
    }
}

/// The table: one row per case and client, medians, and in parentheses the ratio to the
/// baseline's median on the same case (rdkafka_performance where it ran, else librdkafka).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| workload | client | records/s | MB/s | client CPU µs/record | peak RSS MiB | \
         latency p50 / p99 / p999 ms | first record ms | broker CPU µs/record | load |\n",
    );
    out.push_str("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for r in rows {
        let rate = match r.records_per_s {
            Some(s) => format!(
                "{} ±{:.0}%{}",
                num(s.median),
                s.spread_pct(),
                ratio(r.vs_librdkafka.records_per_s)
            ),
            None => "—".into(),
        };
        let mb = r.mb_per_s.map_or("—".into(), |s| num(s.median));
        let lat = match (r.p50_ms, r.p99_ms, r.p999_ms) {
            (Some(a), Some(b), Some(c)) => format!(
                "{} / {} / {}{}",
                num(a.median),
                num(b.median),
                num(c.median),
                ratio(r.vs_librdkafka.p99_ms).replace(')', " at p99)")
            ),
            _ => "—".into(),
        };
        let errors = if r.errors > 0 {
            format!(" **{} errors**", r.errors)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "| {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.case,
            r.client.name(),
            errors,
            rate,
            mb,
            if r.case == "first-record" {
                // One record read: the whole run's CPU, in ms.
                match r.cpu_us_per_record {
                    Some(s) => format!(
                        "{} ms in all{}",
                        num(s.median / 1e3),
                        ratio(r.vs_librdkafka.cpu_us_per_record)
                    ),
                    None => "—".into(),
                }
            } else {
                cell(r.cpu_us_per_record, r.vs_librdkafka.cpu_us_per_record)
            },
            cell(r.peak_rss_mib, r.vs_librdkafka.peak_rss_mib),
            lat,
            cell(r.first_record_ms, r.vs_librdkafka.first_record_ms),
            r.broker_cpu_us_per_record
                .map_or("—".into(), |s| num(s.median)),
            r.load1.map_or("—".into(), |l| format!("{l:.1}")),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short() {
        assert_eq!(num(1_234_567.0), "1.23M");
        assert_eq!(num(45_678.0), "46k");
        assert_eq!(num(123.4), "123");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(1.234), "1.23");
    }
}
