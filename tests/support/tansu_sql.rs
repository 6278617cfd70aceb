//! tansu 0.6.0 with SQLite storage (`tansu-sql`, built by `testcontainers/tansu/install.sh
//! --sql`) on a database of the test's own, and a topic's partitions grown in that database.
//!
//! tansu 0.6.0 has no CreatePartitions (its ApiVersions does not list it; the request is only
//! a message definition in tansu-sans-io), and librdkafka's mock cluster can neither add
//! partitions nor answer CreatePartitions. But tansu's SQLite storage answers Metadata, Produce
//! and Fetch from its tables on every request: a topic grows exactly as tansu's own
//! `create_topic` lays a topic out (`topic.partitions`, one `topition` and one `watermark`
//! row per partition), written by Python's `sqlite3` while the broker runs (the database is
//! in WAL mode, so the broker's readers are not blocked; its writers would be, for the
//! moment of the update, so tests grow a topic while nothing is being written to it).

use std::path::PathBuf;
use std::process::Command;

use purekafka_testkit::unique_name;

use super::process::{free_port, wait_listening, Proc};

/// A running `tansu-sql` broker on 127.0.0.1, killed when dropped (and when the test process
/// dies: a `sh` watchdog kills it when its stdin, a pipe from the test, closes); its
/// directory (database and log) is removed when dropped.
pub struct TansuSql {
    broker: Option<Proc>,
    dir: PathBuf,
    port: u16,
}

impl Drop for TansuSql {
    fn drop(&mut self) {
        // The broker first (its drop waits for it), then its directory.
        drop(self.broker.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The tansu-sql binary (`PUREKAFKA_TANSU_SQL_BIN`, else `~/.cargo/bin/tansu-sql`).
pub fn tansu_sql_bin() -> String {
    std::env::var("PUREKAFKA_TANSU_SQL_BIN").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cargo/bin/tansu-sql")
    })
}

impl TansuSql {
    /// Starts tansu-sql on a free port with a new database; returns once it listens.
    pub fn start() -> TansuSql {
        let bin = tansu_sql_bin();
        assert!(
            std::path::Path::new(&bin).exists(),
            "{bin} is missing: `bash testcontainers/tansu/install.sh --sql` builds it \
             (scripts/setup-test-env.sh runs it)"
        );
        let dir = std::env::temp_dir().join(unique_name("purekafka-tansu-sql"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        // tansu takes the URL's path without its first `/`: four slashes name an absolute path.
        let storage = format!(
            "--storage-engine=sqlite:///{}",
            dir.join("tansu.db").display()
        );
        let args = [
            "broker",
            &storage,
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ];
        let broker = Proc::spawn(&bin, &args, dir.join("tansu.log"));
        wait_listening(port, &broker);
        TansuSql {
            broker: Some(broker),
            dir,
            port,
        }
    }

    /// `127.0.0.1:port`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's output so far.
    pub fn log(&self) -> String {
        self.broker.as_ref().map(Proc::log).unwrap_or_default()
    }

    /// Grows `topic` to `partitions` partitions in the broker's database (see the module
    /// docs); panics unless the topic exists with fewer.
    pub fn grow_topic(&self, topic: &str, partitions: i32) {
        const GROW: &str = r#"
import sqlite3, sys
path, name, new = sys.argv[1], sys.argv[2], int(sys.argv[3])
db = sqlite3.connect(path, timeout=30)
with db:
    row = db.execute(
        "select t.id, t.partitions from topic t join cluster c on t.cluster = c.id where t.name = ?",
        (name,),
    ).fetchone()
    if row is None:
        sys.exit(f"no topic {name}")
    topic, old = row
    if new <= old:
        sys.exit(f"{name} has {old} partitions already")
    db.execute(
        "update topic set partitions = ?, last_updated = current_timestamp where id = ?",
        (new, topic),
    )
    for p in range(old, new):
        cur = db.execute("insert into topition (topic, partition) values (?, ?)", (topic, p))
        db.execute("insert into watermark (topition) values (?)", (cur.lastrowid,))
print(old)
"#;
        let out = Command::new("python3")
            .arg("-c")
            .arg(GROW)
            .arg(self.dir.join("tansu.db"))
            .arg(topic)
            .arg(partitions.to_string())
            .output()
            .expect("run python3 (sqlite3)");
        assert!(
            out.status.success(),
            "growing {topic} to {partitions} partitions: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
