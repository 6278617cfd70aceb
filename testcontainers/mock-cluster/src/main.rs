//! `mock-cluster`: librdkafka's mock Kafka cluster behind a line protocol.
//!
//! Test tooling for purekafka only (it links librdkafka, which is C). The process starts a
//! mock cluster, prints `BOOTSTRAP host:port,...` on stdout, then answers one stdout line per
//! command read from stdin. It exits, tearing the cluster down, on `quit` or at stdin EOF, so
//! a test process that dies takes its brokers with it. See `../README.md` for the protocol.
//!
//! The cluster is driven through librdkafka's C mock API (`rd_kafka_mock_*`, reached via
//! `rdkafka::bindings`) rather than `rdkafka::mocking::MockCluster`, because that wrapper keeps
//! its raw handle private and so cannot reach per-broker error stacks, the group rebalance
//! delay, or API keys that have no `RDKafkaApiKey` variant. The calls made are the same.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io::{self, BufRead, Write};
use std::process::ExitCode;

use rdkafka::bindings as rd;
use rdkafka::types::RDKafkaRespErr;

/// Kafka API keys whose mock handlers consume pushed request errors (librdkafka 2.12,
/// `rdkafka_mock_handlers.c`). Errors pushed for any other key (notably Metadata, 3) would sit
/// on the stack forever, so `request-errors` refuses them.
const ERROR_API_KEYS: &[(i16, &str)] = &[
    (0, "Produce"),
    (1, "Fetch"),
    (2, "ListOffsets"),
    (8, "OffsetCommit"),
    (9, "OffsetFetch"),
    (10, "FindCoordinator"),
    (11, "JoinGroup"),
    (12, "Heartbeat"),
    (13, "LeaveGroup"),
    (14, "SyncGroup"),
    (18, "ApiVersions"),
    (22, "InitProducerId"),
    (23, "OffsetForLeaderEpoch"),
    (24, "AddPartitionsToTxn"),
    (25, "AddOffsetsToTxn"),
    (26, "EndTxn"),
    (28, "TxnOffsetCommit"),
    (68, "ConsumerGroupHeartbeat"),
    (71, "GetTelemetrySubscriptions"),
    (72, "PushTelemetry"),
];

const USAGE: &str = "usage: mock-cluster [--brokers N] [--topic NAME:PARTITIONS[:RF]]... \
[--group-initial-rebalance-delay-ms MS] [--debug CONTEXTS]";

/// Command-line options.
struct Options {
    brokers: i32,
    topics: Vec<(String, i32, Option<i32>)>,
    rebalance_delay_ms: Option<i32>,
    debug: Option<String>,
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        brokers: 3,
        topics: Vec::new(),
        rebalance_delay_ms: None,
        debug: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--brokers" => {
                opts.brokers = parse_num(&value()?, "--brokers")?;
                if opts.brokers < 1 {
                    return Err("--brokers must be at least 1".into());
                }
            }
            "--topic" => {
                let v = value()?;
                let mut parts = v.split(':');
                let name = parts.next().unwrap_or_default().to_string();
                let partitions = parts
                    .next()
                    .ok_or_else(|| format!("--topic {v}: expected NAME:PARTITIONS[:RF]"))
                    .and_then(|p| parse_num(p, "--topic partitions"))?;
                let rf = parts
                    .next()
                    .map(|r| parse_num(r, "--topic replication factor"))
                    .transpose()?;
                if name.is_empty() || parts.next().is_some() {
                    return Err(format!("--topic {v}: expected NAME:PARTITIONS[:RF]"));
                }
                opts.topics.push((name, partitions, rf));
            }
            "--group-initial-rebalance-delay-ms" => {
                opts.rebalance_delay_ms = Some(parse_num(&value()?, flag.as_str())?);
            }
            "--debug" => opts.debug = Some(value()?),
            _ => return Err(format!("unknown argument {arg}\n{USAGE}")),
        }
    }
    Ok(opts)
}

fn parse_num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{what}: not a number: {s:?}"))
}

/// A librdkafka client handle (only used as the mock cluster's parent: it never connects
/// anywhere) plus the mock cluster it owns.
struct Cluster {
    rk: *mut rd::rd_kafka_t,
    mc: *mut rd::rd_kafka_mock_cluster_t,
    brokers: i32,
}

impl Cluster {
    fn new(brokers: i32, debug: Option<&str>) -> Result<Cluster, String> {
        // SAFETY: plain librdkafka C API usage; every pointer passed is valid for the call and
        // ownership of `conf` moves to `rd_kafka_new` on success.
        unsafe {
            let conf = rd::rd_kafka_conf_new();
            let mut settings = vec![("log_level", "3".to_string())];
            if let Some(d) = debug {
                settings = vec![("log_level", "7".to_string()), ("debug", d.to_string())];
            }
            for (k, v) in settings {
                let mut errstr = [0 as c_char; 512];
                let (k, v) = (CString::new(k).unwrap(), cstring(&v)?);
                let res = rd::rd_kafka_conf_set(
                    conf,
                    k.as_ptr(),
                    v.as_ptr(),
                    errstr.as_mut_ptr(),
                    errstr.len(),
                );
                if res != rd::rd_kafka_conf_res_t::RD_KAFKA_CONF_OK {
                    rd::rd_kafka_conf_destroy(conf);
                    return Err(CStr::from_ptr(errstr.as_ptr()).to_string_lossy().into());
                }
            }
            let mut errstr = [0 as c_char; 512];
            let rk = rd::rd_kafka_new(
                rd::rd_kafka_type_t::RD_KAFKA_PRODUCER,
                conf,
                errstr.as_mut_ptr(),
                errstr.len(),
            );
            if rk.is_null() {
                rd::rd_kafka_conf_destroy(conf);
                return Err(format!(
                    "rd_kafka_new: {}",
                    CStr::from_ptr(errstr.as_ptr()).to_string_lossy()
                ));
            }
            let mc = rd::rd_kafka_mock_cluster_new(rk, brokers);
            if mc.is_null() {
                rd::rd_kafka_destroy(rk);
                return Err("rd_kafka_mock_cluster_new failed".into());
            }
            Ok(Cluster { rk, mc, brokers })
        }
    }

    fn bootstrap(&self) -> String {
        // SAFETY: `mc` is live; the returned string is owned by the cluster and copied here.
        unsafe { CStr::from_ptr(rd::rd_kafka_mock_cluster_bootstraps(self.mc)) }
            .to_string_lossy()
            .into_owned()
    }

    fn create_topic(&self, name: &str, partitions: i32, rf: Option<i32>) -> Result<(), String> {
        if partitions < 1 {
            return Err("partition count must be at least 1".into());
        }
        let rf = rf.unwrap_or(self.brokers.min(3));
        if rf < 1 || rf > self.brokers {
            return Err(format!(
                "replication factor {rf} not in 1..={} (broker count)",
                self.brokers
            ));
        }
        let name = cstring(name)?;
        // SAFETY: live cluster, valid C string.
        check(unsafe { rd::rd_kafka_mock_topic_create(self.mc, name.as_ptr(), partitions, rf) })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: both handles are live and destroyed exactly once, cluster first.
        unsafe {
            rd::rd_kafka_mock_cluster_destroy(self.mc);
            rd::rd_kafka_destroy(self.rk);
        }
    }
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

fn err_name(err: RDKafkaRespErr) -> String {
    // SAFETY: librdkafka returns static strings.
    unsafe {
        format!(
            "{}: {}",
            CStr::from_ptr(rd::rd_kafka_err2name(err)).to_string_lossy(),
            CStr::from_ptr(rd::rd_kafka_err2str(err)).to_string_lossy()
        )
    }
}

fn check(err: RDKafkaRespErr) -> Result<(), String> {
    if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        Err(err_name(err))
    }
}

/// Parses a numeric error code: a Kafka protocol code (e.g. 6 = NOT_LEADER_OR_FOLLOWER) or one
/// of librdkafka's internal negative codes (e.g. -195 = _TRANSPORT, which makes the mock
/// broker close the connection instead of answering).
fn parse_err(s: &str) -> Result<RDKafkaRespErr, String> {
    let code: i32 = parse_num(s, "error code")?;
    RDKafkaRespErr::try_from(code).map_err(|_| format!("unknown error code {code}"))
}

fn check_api_key(s: &str) -> Result<i16, String> {
    let key: i16 = parse_num(s, "api key")?;
    if ERROR_API_KEYS.iter().any(|(k, _)| *k == key) {
        Ok(key)
    } else {
        let known: Vec<String> = ERROR_API_KEYS
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        Err(format!(
            "api key {key} ignores pushed errors in librdkafka's mock cluster; these do not: {}",
            known.join(" ")
        ))
    }
}

/// Decodes hex; the empty string and `""` decode to the empty byte string.
fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    let s = if s == "\"\"" { "" } else { s };
    if s.len() % 2 != 0 {
        return Err(format!("odd-length hex {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| format!("bad hex {s:?}"))
        })
        .collect()
}

/// librdkafka's default partitioner (`murmur2_random`, Java-compatible murmur2 for keyed
/// messages) for a non-null key.
fn murmur2_partition(key: &[u8], partitions: i32) -> i32 {
    // A dangling-but-non-null pointer for the empty key: NULL would select the random path,
    // which dereferences the (absent) topic handle.
    let ptr = if key.is_empty() {
        std::ptr::NonNull::<u8>::dangling().as_ptr() as *const c_void
    } else {
        key.as_ptr() as *const c_void
    };
    // SAFETY: with a non-NULL key the partitioner only hashes `keylen` bytes at `key`; the
    // topic handle and opaques are not touched.
    unsafe {
        rd::rd_kafka_msg_partitioner_murmur2_random(
            std::ptr::null(),
            ptr,
            key.len(),
            partitions,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    }
}

fn parse_partition_count(s: &str) -> Result<i32, String> {
    let n: i32 = parse_num(s, "partition count")?;
    if n < 1 {
        return Err("partition count must be at least 1".into());
    }
    Ok(n)
}

/// What the main loop should do after a command.
enum Outcome {
    Reply(Result<String, String>),
    Quit,
}

fn run_command(
    cluster: &Cluster,
    line: &str,
    lines: &mut impl Iterator<Item = io::Result<String>>,
) -> Outcome {
    let words: Vec<&str> = line.split_whitespace().collect();
    let args = &words[1..];
    let need = |n: usize, usage: &str| -> Result<(), String> {
        if args.len() < n {
            Err(format!("usage: {usage}"))
        } else {
            Ok(())
        }
    };
    let mc = cluster.mc;
    let result: Result<String, String> = (|| match words[0] {
        "quit" | "exit" => Ok(String::new()),
        "ping" => Ok("pong".into()),
        "bootstrap" => Ok(cluster.bootstrap()),
        "create-topic" => {
            need(2, "create-topic NAME PARTITIONS [RF]")?;
            let partitions = parse_num(args[1], "partitions")?;
            let rf = args.get(2).map(|r| parse_num(r, "rf")).transpose()?;
            cluster.create_topic(args[0], partitions, rf)?;
            Ok(String::new())
        }
        "broker-down" | "broker-up" => {
            need(1, "broker-down|broker-up BROKER_ID (-1 = all)")?;
            let id: i32 = parse_num(args[0], "broker id")?;
            // SAFETY: live cluster handle.
            check(unsafe {
                if words[0] == "broker-down" {
                    rd::rd_kafka_mock_broker_set_down(mc, id)
                } else {
                    rd::rd_kafka_mock_broker_set_up(mc, id)
                }
            })?;
            Ok(String::new())
        }
        "leader" => {
            need(3, "leader TOPIC PARTITION BROKER_ID (-1 = no leader)")?;
            let topic = cstring(args[0])?;
            let partition: i32 = parse_num(args[1], "partition")?;
            let broker: i32 = parse_num(args[2], "broker id")?;
            // SAFETY: live cluster handle, valid C string.
            check(unsafe {
                rd::rd_kafka_mock_partition_set_leader(mc, topic.as_ptr(), partition, broker)
            })?;
            Ok(String::new())
        }
        "follower" => {
            need(3, "follower TOPIC PARTITION BROKER_ID")?;
            let topic = cstring(args[0])?;
            let partition: i32 = parse_num(args[1], "partition")?;
            let broker: i32 = parse_num(args[2], "broker id")?;
            // SAFETY: live cluster handle, valid C string.
            check(unsafe {
                rd::rd_kafka_mock_partition_set_follower(mc, topic.as_ptr(), partition, broker)
            })?;
            Ok(String::new())
        }
        "coordinator" => {
            need(3, "coordinator group|transaction KEY BROKER_ID")?;
            if args[0] != "group" && args[0] != "transaction" {
                return Err("coordinator kind must be `group` or `transaction`".into());
            }
            let kind = cstring(args[0])?;
            let key = cstring(args[1])?;
            let broker: i32 = parse_num(args[2], "broker id")?;
            // SAFETY: live cluster handle, valid C strings.
            check(unsafe {
                rd::rd_kafka_mock_coordinator_set(mc, kind.as_ptr(), key.as_ptr(), broker)
            })?;
            Ok(String::new())
        }
        "request-errors" => {
            need(2, "request-errors API_KEY ERRCODE [ERRCODE ...]")?;
            let key = check_api_key(args[0])?;
            let errs = args[1..]
                .iter()
                .flat_map(|a| a.split(','))
                .filter(|s| !s.is_empty())
                .map(parse_err)
                .collect::<Result<Vec<_>, _>>()?;
            // SAFETY: live cluster handle; `errs` outlives the call and holds `len` items.
            unsafe {
                rd::rd_kafka_mock_push_request_errors_array(mc, key, errs.len(), errs.as_ptr())
            };
            Ok(String::new())
        }
        "clear-request-errors" => {
            need(1, "clear-request-errors API_KEY")?;
            let key: i16 = parse_num(args[0], "api key")?;
            // SAFETY: live cluster handle.
            unsafe { rd::rd_kafka_mock_clear_request_errors(mc, key) };
            Ok(String::new())
        }
        "broker-request-errors" => {
            need(
                3,
                "broker-request-errors BROKER_ID API_KEY ERRCODE[@RTT_MS][,...]",
            )?;
            let broker: i32 = parse_num(args[0], "broker id")?;
            let key = check_api_key(args[1])?;
            let errs = args[2..]
                .iter()
                .flat_map(|a| a.split(','))
                .filter(|s| !s.is_empty())
                .map(|s| {
                    let (code, rtt) = s.split_once('@').unwrap_or((s, "0"));
                    Ok((parse_err(code)?, parse_num::<c_int>(rtt, "rtt ms")?))
                })
                .collect::<Result<Vec<_>, String>>()?;
            for (err, rtt) in errs {
                // SAFETY: live cluster handle; the variadic tail is exactly one
                // (rd_kafka_resp_err_t, int) pair, as `cnt` = 1 announces.
                check(unsafe {
                    rd::rd_kafka_mock_broker_push_request_error_rtts(
                        mc,
                        broker,
                        key,
                        1,
                        err as c_int,
                        rtt,
                    )
                })?;
            }
            Ok(String::new())
        }
        "rtt" => {
            need(2, "rtt BROKER_ID MILLIS (-1 = all brokers)")?;
            let broker: i32 = parse_num(args[0], "broker id")?;
            let ms: c_int = parse_num(args[1], "millis")?;
            // SAFETY: live cluster handle.
            check(unsafe { rd::rd_kafka_mock_broker_set_rtt(mc, broker, ms) })?;
            Ok(String::new())
        }
        "topic-error" => {
            need(2, "topic-error TOPIC ERRCODE")?;
            let topic = cstring(args[0])?;
            let err = parse_err(args[1])?;
            // SAFETY: live cluster handle, valid C string.
            unsafe { rd::rd_kafka_mock_topic_set_error(mc, topic.as_ptr(), err) };
            Ok(String::new())
        }
        "apiversion" => {
            need(3, "apiversion API_KEY MIN MAX (-1 -1 = disable the API)")?;
            let key: i16 = parse_num(args[0], "api key")?;
            let min: i16 = parse_num(args[1], "min version")?;
            let max: i16 = parse_num(args[2], "max version")?;
            // SAFETY: live cluster handle.
            check(unsafe { rd::rd_kafka_mock_set_apiversion(mc, key, min, max) })?;
            Ok(String::new())
        }
        "group-initial-rebalance-delay" => {
            need(1, "group-initial-rebalance-delay MILLIS")?;
            let ms: i32 = parse_num(args[0], "millis")?;
            // SAFETY: live cluster handle.
            unsafe { rd::rd_kafka_mock_group_initial_rebalance_delay_ms(mc, ms) };
            Ok(String::new())
        }
        "partition" => {
            need(2, "partition TOPIC PARTITION_COUNT [KEY_HEX]")?;
            let n = parse_partition_count(args[1])?;
            let key = parse_hex(args.get(2).copied().unwrap_or(""))?;
            Ok(murmur2_partition(&key, n).to_string())
        }
        "partition-keys" => {
            need(
                1,
                "partition-keys PARTITION_COUNT, then one KEY_HEX per line, then `end`",
            )?;
            // Read the whole batch even when the count is bad, so the stream stays in step.
            let n = parse_partition_count(args[0]);
            let mut out = Vec::new();
            let mut bad = None;
            loop {
                match lines.next() {
                    Some(Ok(l)) if l.trim() == "end" => break,
                    Some(Ok(l)) => match parse_hex(&l) {
                        Ok(key) => out.push(key),
                        Err(e) => bad = bad.or(Some(e)),
                    },
                    _ => return Err("stdin ended inside partition-keys".into()),
                }
            }
            let n = n?;
            if let Some(e) = bad {
                return Err(e);
            }
            let parts: Vec<String> = out
                .iter()
                .map(|k| murmur2_partition(k, n).to_string())
                .collect();
            Ok(parts.join(" "))
        }
        other => Err(format!("unknown command {other:?}")),
    })();
    if matches!(words[0], "quit" | "exit") {
        return Outcome::Quit;
    }
    Outcome::Reply(result)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mock-cluster: {e}");
            return ExitCode::from(2);
        }
    };
    let cluster = match Cluster::new(opts.brokers, opts.debug.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mock-cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(ms) = opts.rebalance_delay_ms {
        // SAFETY: live cluster handle.
        unsafe { rd::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster.mc, ms) };
    }
    for (name, partitions, rf) in &opts.topics {
        if let Err(e) = cluster.create_topic(name, *partitions, *rf) {
            eprintln!("mock-cluster: --topic {name}: {e}");
            return ExitCode::FAILURE;
        }
    }

    let stdout = io::stdout();
    let mut out = stdout.lock();
    if writeln!(out, "BOOTSTRAP {}", cluster.bootstrap())
        .and_then(|_| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }

    let stdin = io::stdin();
    let mut lines = stdin.lock().lines();
    while let Some(Ok(line)) = lines.next() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let reply = match run_command(&cluster, line, &mut lines) {
            Outcome::Quit => {
                let _ = writeln!(out, "ok").and_then(|_| out.flush());
                break;
            }
            Outcome::Reply(Ok(data)) if data.is_empty() => "ok".to_string(),
            Outcome::Reply(Ok(data)) => format!("ok {data}"),
            Outcome::Reply(Err(e)) => format!("err {}", e.replace('\n', " ")),
        };
        if writeln!(out, "{reply}").and_then(|_| out.flush()).is_err() {
            break; // nobody is listening any more
        }
    }
    drop(cluster);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_java_vectors() {
        // Java murmur2 results from librdkafka's own unit test (rdmurmur2.c); with
        // n = i32::MAX the partition is just the positive hash.
        assert_eq!(murmur2_partition(b"kafka", i32::MAX), 0x5067_cf64);
        assert_eq!(
            murmur2_partition(b"giberish123456789", i32::MAX),
            0x0f55_2b0c
        );
        assert_eq!(murmur2_partition(b"", i32::MAX), 0x106e_08d9);
        assert!((0..10).contains(&murmur2_partition(b"", 10)));
    }

    #[test]
    fn hex() {
        assert_eq!(parse_hex("00ff10").unwrap(), vec![0, 255, 16]);
        assert_eq!(parse_hex("\"\"").unwrap(), Vec::<u8>::new());
        assert!(parse_hex("0").is_err());
        assert!(parse_hex("zz").is_err());
    }
}
