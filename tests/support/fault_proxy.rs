//! A TCP proxy between a client and a broker that injects network faults. It knows nothing
//! of Kafka: it relays bytes, and while a fault is set it black-holes them, delays them,
//! resets connections, cuts a response in the middle, or stops reading.
//!
//! Use it by pointing the broker's *advertised* address at the proxy, so that every
//! connection the client opens (bootstrap and after metadata) goes through it.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Relay everything.
    None,
    /// Bytes in both directions are read and dropped; connections stay open (a network
    /// that loses every packet, or a frozen broker as the client sees it).
    BlackHole,
    /// Each chunk is held this long before it is passed on.
    Delay(Duration),
    /// Open connections are reset (RST); new ones are reset as soon as they are accepted.
    Reset,
    /// The next chunk from the broker is passed on only in part (its first half, at most
    /// 7 bytes), then the connection is closed: a response cut in the middle of a frame.
    CutResponse,
    /// Stop reading in both directions: the peers' writes fill the socket buffers and block.
    Stall,
}

/// A running proxy; dropping it stops accepting (open relays end with their peers).
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    task: tokio::task::JoinHandle<()>,
    connections: Arc<Mutex<u64>>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Listens on `listen` (a `127.0.0.1:0` address picks a free port) and relays each
    /// connection to `upstream`.
    pub async fn start(listen: &str, upstream: String) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (fault, _) = watch::channel(Fault::None);
        let connections = Arc::new(Mutex::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            upstream,
            fault.clone(),
            Arc::clone(&connections),
        ));
        Ok(FaultProxy {
            addr,
            fault,
            task,
            connections,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the fault; [`Fault::None`] ends it.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// A handle that sets the fault from elsewhere (another task).
    pub fn switch(&self) -> FaultSwitch {
        FaultSwitch(self.fault.clone())
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        *self.connections.lock().unwrap()
    }
}

/// Sets a proxy's fault; see [`FaultProxy::switch`].
#[derive(Clone)]
pub struct FaultSwitch(watch::Sender<Fault>);

impl FaultSwitch {
    /// Sets the fault; [`Fault::None`] ends it.
    pub fn set(&self, fault: Fault) {
        self.0.send_replace(fault);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: String,
    fault: watch::Sender<Fault>,
    connections: Arc<Mutex<u64>>,
) {
    while let Ok((client, _)) = listener.accept().await {
        *connections.lock().unwrap() += 1;
        let rx = fault.subscribe();
        if *rx.borrow() == Fault::Reset {
            reset(client);
            continue;
        }
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                reset(client);
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let up = tokio::spawn(relay(cr, sw, rx.clone(), false));
            let down = tokio::spawn(relay(sr, cw, rx, true));
            // When one direction ends (or resets), end the other too.
            let (a, b) = (up.abort_handle(), down.abort_handle());
            tokio::select! {
                _ = up => b.abort(),
                _ = down => a.abort(),
            }
        });
    }
}

fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Relays one direction until EOF, an error, or a fault that ends the connection.
async fn relay(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
    from_broker: bool,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // Stall: read nothing until the fault changes.
        while *fault.borrow_and_update() == Fault::Stall {
            if fault.changed().await.is_err() {
                return;
            }
        }
        if *fault.borrow() == Fault::Reset {
            return reset_halves(from, to);
        }
        let n = tokio::select! {
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = fault.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let current = *fault.borrow();
        match current {
            Fault::None | Fault::Stall => {}
            Fault::BlackHole => continue,
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::Reset => return reset_halves(from, to),
            Fault::CutResponse if from_broker => {
                let part = (n / 2).clamp(1, 7);
                let _ = to.write_all(&buf[..part]).await;
                return;
            }
            Fault::CutResponse => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Closes both sockets of the relay with RST (linger 0) once all their halves are dropped.
fn reset_halves(from: OwnedReadHalf, to: OwnedWriteHalf) {
    let _ = socket2::SockRef::from(from.as_ref()).set_linger(Some(Duration::ZERO));
    let _ = socket2::SockRef::from(to.as_ref()).set_linger(Some(Duration::ZERO));
}
