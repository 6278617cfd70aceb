//! Processes the tests start (tansu, stunnel, tansu-sql), each killed when dropped and when
//! the test process dies: a `sh` watchdog kills the child when its stdin, a pipe from the
//! test, closes.

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// A process started by [`Proc::spawn`], its output in a log file.
pub struct Proc {
    child: Child,
    _stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self._stdin.take());
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `program` with `args` under the watchdog, stdout and stderr to `log`.
    pub fn spawn(program: &str, args: &[&str], log: PathBuf) -> Proc {
        const WATCHDOG: &str = r#"bin=$1; shift
"$bin" "$@" </dev/null &
child=$!
cat >/dev/null
kill -KILL "$child" 2>/dev/null
wait "$child" 2>/dev/null
exit 0"#;
        let out = std::fs::File::create(&log).unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("watchdog")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let stdin = child.stdin.take();
        Proc {
            child,
            _stdin: stdin,
            log,
        }
    }

    /// The process's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to 30 s) until something listens on `port`; panics with `what`'s log.
pub fn wait_listening(port: u16, what: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {port}: {}",
            what.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
