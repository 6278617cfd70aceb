//! Running a measured child and reading what it cost: `wait4` gives the child's own CPU time
//! and peak RSS; `/proc/<pid>/stat` gives a running process's CPU time (the broker's).

use std::io::{BufRead, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::model::{ChildResult, RESULT_PREFIX};

/// What one child run cost and reported.
#[derive(Debug, Clone)]
pub struct ChildRun {
    pub result: ChildResult,
    pub user_s: f64,
    pub sys_s: f64,
    /// Peak resident set size in bytes.
    pub max_rss: u64,
    pub wall_s: f64,
}

/// Runs `program args...`, waits for it (killing it after `timeout`), and returns its result
/// line with its rusage. A child that fails or prints no result line is an error carrying the
/// end of its stderr.
pub fn run_child(program: &str, args: &[String], timeout: Duration) -> Result<ChildRun, String> {
    run_process(program, args, timeout, |stdout| {
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(RESULT_PREFIX))
            .ok_or_else(|| "child printed no result line".to_string())?;
        serde_json::from_str(line).map_err(|e| format!("bad result line {line:?}: {e}"))
    })
}

/// Runs `program args...` like [`run_child`], reading its result from its stdout with
/// `parse` (for a program that is not `compare child`, e.g. rdkafka_performance).
pub fn run_process(
    program: &str,
    args: &[String],
    timeout: Duration,
    parse: impl Fn(&str) -> Result<ChildResult, String>,
) -> Result<ChildRun, String> {
    run_process_timed(program, args, timeout, |stdout, _| parse(stdout))
}

/// One line the child wrote to its stderr, with when it arrived (seconds after the child was
/// spawned). stderr is unbuffered in C programs, so this is when the child wrote it.
#[derive(Debug, Clone)]
pub struct TimedLine {
    pub at_s: f64,
    pub text: String,
}

/// [`run_process`] for a program whose timing is read off the arrival times of its stderr
/// lines (rdkafka_performance's consumer: "Waiting for group rebalance" right after its
/// subscribe, "... assigned" when its partitions are assigned): `parse` gets stdout and every
/// stderr line with its arrival time.
pub fn run_process_timed(
    program: &str,
    args: &[String],
    timeout: Duration,
    parse: impl Fn(&str, &[TimedLine]) -> Result<ChildResult, String>,
) -> Result<ChildRun, String> {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {program}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut reader = std::io::BufReader::new(&mut stderr);
        let mut buf = Vec::new();
        // Byte lines (not `lines()`, which stops at the first line that is not UTF-8 and would
        // leave the pipe undrained).
        while let Ok(n) = reader.read_until(b'\n', &mut buf) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buf);
            lines.push(TimedLine {
                at_s: start.elapsed().as_secs_f64(),
                text: text.trim_end_matches(['\n', '\r']).to_string(),
            });
            buf.clear();
        }
        lines
    });

    // Reap with wait4 (not Child::wait) to get the child's rusage.
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; zeroed is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut killed = false;
    let mut hwm_seen = 0u64;
    loop {
        // SAFETY: pid is our own unreaped child; the pointers are valid for the call.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 {
            return Err(format!("wait4: {}", std::io::Error::last_os_error()));
        }
        // The child's own high-water mark, while it runs (see `vm_hwm`).
        if let Some(hwm) = vm_hwm(pid) {
            hwm_seen = hwm_seen.max(hwm);
        }
        if !killed && start.elapsed() > timeout {
            // SAFETY: signalling our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall_s = start.elapsed().as_secs_f64();
    let stdout = out.join().unwrap_or_default();
    let stderr_lines = err.join().unwrap_or_default();
    let stderr = stderr_lines
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    if killed {
        return Err(format!(
            "child timed out after {timeout:?} and was killed; stderr:\n{}",
            tail(&stderr)
        ));
    }
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !ok {
        return Err(format!(
            "child failed (wait status {status:#x}); stdout:\n{}\nstderr:\n{}",
            tail(&stdout),
            tail(&stderr)
        ));
    }
    let result =
        parse(&stdout, &stderr_lines).map_err(|e| format!("{e}; stderr:\n{}", tail(&stderr)))?;
    let self_reported = result.vm_hwm_kib.unwrap_or(0) * 1024;
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(ChildRun {
        result,
        user_s: secs(usage.ru_utime),
        sys_s: secs(usage.ru_stime),
        // Not `ru_maxrss`: Linux carries the parent's high-water mark into a child across
        // fork + exec, so a child smaller than this orchestrator would report the
        // orchestrator's size. `VmHWM` of the child's own memory map is exact: read while it
        // runs (every 5 ms) and, for `compare child`, reported by the child at its end.
        max_rss: hwm_seen.max(self_reported),
        wall_s,
    })
}

/// `VmHWM` (peak resident set of the process's current memory map) of `pid` in bytes, while it
/// runs.
pub fn vm_hwm(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_hwm(&status)
}

/// `VmHWM` of this process, in KiB.
pub fn own_vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status_hwm(&status).map(|b| b / 1024)
}

fn status_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU seconds (user + system) used so far by `pid` and all its live descendants (tansu runs
/// under a watchdog shell, so the broker is a child of the process the testkit started).
/// `None` when `/proc` cannot be read.
pub fn tree_cpu_seconds(pid: u32) -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0.0;
    let mut stack = vec![pid];
    let mut seen = 0;
    while let Some(p) = stack.pop() {
        seen += 1;
        if seen > 64 {
            break;
        }
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        // Fields after the parenthesised command name: state is field 3; utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        total += (utime + stime) / ticks;
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                stack.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable() {
        let t = tree_cpu_seconds(std::process::id()).expect("/proc readable");
        assert!(t >= 0.0);
    }

    #[test]
    fn child_without_result_line_is_an_error_with_its_stderr() {
        let e = run_child(
            "sh",
            &["-c".into(), "echo oops >&2".into()],
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(e.contains("oops"), "{e}");
    }

    #[test]
    fn child_result_and_rusage_are_read() {
        let line = format!(
            "{RESULT_PREFIX}{{\"records\":3,\"bytes\":30,\"elapsed_s\":0.5,\"first_record_ms\":null,\"latency\":null,\"errors\":0}}"
        );
        let run = run_child(
            "sh",
            &["-c".into(), format!("echo '{line}'")],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(run.result.records, 3);
        assert!(own_vm_hwm_kib().unwrap() > 0);
    }
}
