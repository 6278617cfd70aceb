//! `Client::connect` against peers that are not brokers: one answering garbage, one
//! announcing a 2 GiB response frame, one announcing 90 MB and sending a few bytes, one
//! accepting and never answering. Each gives a bounded, clear error and no panic, and the
//! process's peak RSS stays small (printed; run with `--no-capture` to see it).
//!
//! (The connection layer's own unit tests, in src/wire/connection.rs, cover the same peers
//! request by request, plus cancellation and the write deadline.)

use std::time::Duration;

use purekafka::{Client, Config, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the peer writes after reading the first request, before going silent.
async fn peer(answer: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let _ = socket.write_all(answer).await;
            held.push(socket);
        }
    });
    addr
}

/// Peak resident set size of this process in KiB (nextest runs each test in its own).
fn peak_rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Connects to a peer answering `answer`; returns the error and the growth of peak RSS.
async fn connect_to(answer: &'static [u8]) -> (Error, i64) {
    let addr = peer(answer).await;
    let config = Config::builder()
        .brokers([addr])
        .set("request.timeout.ms", "1000")
        .set("reconnect.max.elapsed.ms", "3000")
        .set("reconnect.backoff.max.ms", "200")
        .build()
        .unwrap();
    let before = peak_rss_kib();
    let result = tokio::time::timeout(Duration::from_secs(120), Client::connect(config))
        .await
        .expect("connect gives up within its reconnect budget");
    let grown = peak_rss_kib() - before;
    let err = result.expect_err("a hostile peer is not a broker");
    (err, grown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_answer() {
    let (err, grown) = connect_to(b"\x00\x00\x00\x10this is no kafka").await;
    eprintln!("garbage: {err}; peak RSS grew {grown} KiB");
    assert!(format!("{err:?}").contains("never sent"), "{err:?}");
    assert!(grown < 32 << 10, "peak RSS grew by {grown} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gib_frame_announced() {
    let (err, grown) = connect_to(b"\x7f\xff\xff\xff\x00\x00\x00\x00").await;
    eprintln!("2 GiB announcement: {err}; peak RSS grew {grown} KiB");
    assert!(
        format!("{err:?}").contains("receive.message.max.bytes"),
        "{err:?}"
    );
    assert!(grown < 32 << 10, "peak RSS grew by {grown} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_mb_frame_announced_then_silence() {
    // 90 MB is under receive.message.max.bytes: only the bytes that arrive are buffered.
    let (err, grown) = connect_to(b"\x05\x5d\x4a\x80\x00\x00\x00\x00garbage").await;
    eprintln!("90 MB announcement: {err}; peak RSS grew {grown} KiB");
    assert!(format!("{err:?}").contains("Timeout"), "{err:?}");
    assert!(grown < 32 << 10, "peak RSS grew by {grown} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer() {
    let (err, grown) = connect_to(b"").await;
    eprintln!("silent: {err}; peak RSS grew {grown} KiB");
    assert!(format!("{err:?}").contains("Timeout"), "{err:?}");
    assert!(err.is_retriable() || matches!(err, Error::Connect { .. }));
}
