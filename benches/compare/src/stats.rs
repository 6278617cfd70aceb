//! Samples (one per child run) and rows (one per case and client: medians over repetitions).

use serde::Serialize;

use crate::model::{ClientKind, Latency};

/// One measured child run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub case: String,
    pub client: ClientKind,
    pub rep: usize,
    pub records: u64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
    /// Child process CPU (user + system, whole process) per record, µs.
    pub cpu_us_per_record: f64,
    pub cpu_user_s: f64,
    pub cpu_sys_s: f64,
    pub peak_rss_mib: f64,
    pub latency: Option<Latency>,
    pub first_record_ms: Option<f64>,
    /// Broker CPU (all broker processes) during the run, per record, µs.
    pub broker_cpu_us_per_record: Option<f64>,
    pub elapsed_s: f64,
    pub wall_s: f64,
    pub errors: u64,
    /// The 1-minute load average when the run started (other work on the machine).
    pub load1: f64,
}

/// Median of the values (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// A median with the range of the repetitions around it.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Stat> {
        let median = median(values)?;
        let finite = values.iter().copied().filter(|x| x.is_finite());
        Some(Stat {
            median,
            min: finite.clone().fold(f64::INFINITY, f64::min),
            max: finite.fold(f64::NEG_INFINITY, f64::max),
        })
    }

    /// Half the range as a percentage of the median: the "±" shown in the table.
    pub fn spread_pct(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.min) / 2.0 / self.median * 100.0
        }
    }
}

/// One case × client: medians over its repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub case: String,
    pub client: ClientKind,
    pub reps: usize,
    pub records_per_s: Option<Stat>,
    pub mb_per_s: Option<Stat>,
    pub cpu_us_per_record: Option<Stat>,
    pub peak_rss_mib: Option<Stat>,
    pub p50_ms: Option<Stat>,
    pub p99_ms: Option<Stat>,
    pub p999_ms: Option<Stat>,
    pub first_record_ms: Option<Stat>,
    pub broker_cpu_us_per_record: Option<Stat>,
    pub errors: u64,
    /// Median of the 1-minute load average at the start of the runs.
    pub load1: Option<f64>,
    /// The client the ratios are to: rdkafka_performance where it ran the case, else
    /// librdkafka (rust-rdkafka's BaseProducer / BaseConsumer).
    pub baseline: Option<ClientKind>,
    /// Each metric's median divided by the baseline's (same case), where both exist.
    pub vs_librdkafka: Ratios,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratios {
    pub records_per_s: Option<f64>,
    pub cpu_us_per_record: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub first_record_ms: Option<f64>,
}

/// Which numbers a case reports (a latency run's records/s is its fixed rate, a first-record
/// run reads one record).
pub fn is_throughput_case(case: &str) -> bool {
    case.starts_with("produce-") && !case.starts_with("produce-latency")
        || case == "consume"
        || case.starts_with("runtime")
}

/// Groups samples into rows, in order of first appearance of each case and in `clients` order.
pub fn rows(samples: &[Sample], clients: &[ClientKind]) -> Vec<Row> {
    let mut cases: Vec<&str> = Vec::new();
    for s in samples {
        if !cases.contains(&s.case.as_str()) {
            cases.push(&s.case);
        }
    }
    let mut rows = Vec::new();
    for case in cases {
        let throughput = is_throughput_case(case);
        let mut case_rows: Vec<Row> = Vec::new();
        for &client in clients {
            let ss: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.case == case && s.client == client)
                .collect();
            if ss.is_empty() {
                continue;
            }
            let stat = |f: &dyn Fn(&Sample) -> Option<f64>| {
                Stat::of(&ss.iter().filter_map(|s| f(s)).collect::<Vec<_>>())
            };
            let lat =
                |f: fn(&Latency) -> f64| stat(&|s: &Sample| s.latency.as_ref().map(|l| f(l) / 1e3));
            case_rows.push(Row {
                case: case.to_string(),
                client,
                reps: ss.len(),
                records_per_s: if throughput {
                    stat(&|s| Some(s.records_per_s))
                } else {
                    None
                },
                mb_per_s: if throughput {
                    stat(&|s| Some(s.mb_per_s))
                } else {
                    None
                },
                cpu_us_per_record: stat(&|s| Some(s.cpu_us_per_record)),
                peak_rss_mib: stat(&|s| Some(s.peak_rss_mib)),
                p50_ms: lat(|l| l.p50_us),
                p99_ms: lat(|l| l.p99_us),
                p999_ms: lat(|l| l.p999_us),
                first_record_ms: stat(&|s| s.first_record_ms),
                // One record: the broker's CPU is the group join's, below /proc's 10 ms tick.
                broker_cpu_us_per_record: if case == "first-record" {
                    None
                } else {
                    stat(&|s| s.broker_cpu_us_per_record)
                },
                errors: ss.iter().map(|s| s.errors).sum(),
                load1: crate::stats::median(&ss.iter().map(|s| s.load1).collect::<Vec<_>>()),
                baseline: None,
                vs_librdkafka: Ratios::default(),
            });
        }
        let base = [ClientKind::RdkafkaPerformance, ClientKind::Librdkafka]
            .iter()
            .find_map(|b| case_rows.iter().find(|r| r.client == *b))
            .cloned();
        if let Some(base) = base {
            let ratio = |a: Option<Stat>, b: Option<Stat>| match (a, b) {
                (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
                _ => None,
            };
            for r in &mut case_rows {
                r.baseline = Some(base.client);
                r.vs_librdkafka = Ratios {
                    records_per_s: ratio(r.records_per_s, base.records_per_s),
                    cpu_us_per_record: ratio(r.cpu_us_per_record, base.cpu_us_per_record),
                    peak_rss_mib: ratio(r.peak_rss_mib, base.peak_rss_mib),
                    p50_ms: ratio(r.p50_ms, base.p50_ms),
                    p99_ms: ratio(r.p99_ms, base.p99_ms),
                    p999_ms: ratio(r.p999_ms, base.p999_ms),
                    first_record_ms: ratio(r.first_record_ms, base.first_record_ms),
                };
            }
        }
        rows.extend(case_rows);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn spread_is_half_the_range_over_the_median() {
        let s = Stat::of(&[90.0, 100.0, 110.0]).unwrap();
        assert_eq!(s.median, 100.0);
        assert!((s.spread_pct() - 10.0).abs() < 1e-9);
    }

    fn sample(client: ClientKind, rate: f64, cpu: f64) -> Sample {
        Sample {
            case: "produce-100B".into(),
            client,
            rep: 0,
            records: 10,
            records_per_s: rate,
            mb_per_s: rate / 1e4,
            cpu_us_per_record: cpu,
            cpu_user_s: 0.0,
            cpu_sys_s: 0.0,
            peak_rss_mib: 10.0,
            latency: None,
            first_record_ms: None,
            broker_cpu_us_per_record: None,
            elapsed_s: 1.0,
            wall_s: 1.0,
            errors: 0,
            load1: 1.0,
        }
    }

    #[test]
    fn rows_carry_ratios_to_librdkafka() {
        let samples = vec![
            sample(ClientKind::Librdkafka, 100.0, 2.0),
            sample(ClientKind::Rskafka, 50.0, 4.0),
            sample(ClientKind::Librdkafka, 300.0, 2.0),
        ];
        let rows = rows(&samples, &[ClientKind::Librdkafka, ClientKind::Rskafka]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].records_per_s.unwrap().median, 200.0);
        assert_eq!(rows[1].vs_librdkafka.records_per_s, Some(0.25));
        assert_eq!(rows[1].vs_librdkafka.cpu_us_per_record, Some(2.0));
        assert_eq!(rows[0].vs_librdkafka.peak_rss_mib, Some(1.0));
    }
}
