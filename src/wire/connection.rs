//! One TCP connection to one broker: length-prefixed frames, request headers, correlation ids
//! with many requests in flight, ApiVersions negotiation and SASL.
//!
//! Requests are written under a short async lock (one write per request, never per record);
//! a reader task matches responses to waiting callers by correlation id. When the connection
//! breaks, every waiting request fails with [`Error::Io`] and [`BrokerConnection::is_closed`]
//! turns true, so its owner ([`Cluster`](super::Cluster)) opens a new one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::error::{Error, Result};

/// Largest response frame accepted (a broken or hostile peer cannot make us allocate more).
const MAX_FRAME: usize = 256 << 20;

type Pending = Arc<Mutex<Option<HashMap<i32, oneshot::Sender<Result<Bytes>>>>>>;

/// A connection to one broker. Cheap to share behind an `Arc`; requests from many tasks are
/// pipelined on it.
pub(crate) struct BrokerConnection {
    addr: String,
    client_id: StrBytes,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Waiting requests by correlation id; `None` once the connection is closed.
    pending: Pending,
    next_correlation: AtomicI32,
    closed: Arc<AtomicBool>,
    /// Supported version range per API key, from ApiVersions.
    versions: HashMap<i16, (i16, i16)>,
    request_timeout: Duration,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for BrokerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConnection")
            .field("addr", &self.addr)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Drop for BrokerConnection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl BrokerConnection {
    /// Opens a connection: TCP, ApiVersions, then SASL when configured. One attempt; the
    /// caller's retry loop decides about more.
    pub(crate) async fn connect(addr: &str, config: &Config) -> Result<BrokerConnection> {
        let io = |source| Error::io(addr, source);
        let stream = tokio::time::timeout(config.request_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout {
                operation: format!("connect to {addr}"),
                after: config.request_timeout,
            })?
            .map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let (read, write) = stream.into_split();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let closed = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(read_loop(
            read,
            addr.to_string(),
            Arc::clone(&pending),
            Arc::clone(&closed),
        ));
        let mut conn = BrokerConnection {
            addr: addr.to_string(),
            client_id: StrBytes::from_string(config.client_id.clone()),
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_correlation: AtomicI32::new(0),
            closed,
            versions: HashMap::new(),
            request_timeout: config.request_timeout,
            reader,
        };
        conn.versions = conn.negotiate_versions().await?;
        if let Some(sasl) = &config.sasl {
            super::sasl::authenticate(&conn, sasl).await?;
        }
        tracing::debug!(broker = addr, "connected");
        Ok(conn)
    }

    /// The broker's address.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the connection broke; a closed connection fails every request.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The highest version of `R` both sides support, capped at `cap` when given.
    pub(crate) fn version_for<R: Request>(&self, cap: Option<i16>) -> Result<i16> {
        let ours = R::VERSIONS;
        let (their_min, their_max) =
            self.versions
                .get(&R::KEY)
                .copied()
                .ok_or_else(|| Error::Unsupported {
                    broker: self.addr.clone(),
                    what: format!("{} (API key {})", api_name(R::KEY), R::KEY),
                })?;
        let max = ours.max.min(their_max).min(cap.unwrap_or(i16::MAX));
        let min = ours.min.max(their_min);
        if max < min {
            return Err(Error::Unsupported {
                broker: self.addr.clone(),
                what: format!(
                    "{} in a version we speak: ours {}..={}, the broker's {}..={}",
                    api_name(R::KEY),
                    ours.min,
                    ours.max,
                    their_min,
                    their_max
                ),
            });
        }
        Ok(max)
    }

    /// Sends `request` at the highest common version and waits for its response.
    pub(crate) async fn send<R: Request>(&self, request: &R) -> Result<R::Response> {
        let version = self.version_for::<R>(None)?;
        self.send_version(request, version).await
    }

    /// Sends `request` at `version` and waits for its response.
    pub(crate) async fn send_version<R: Request>(
        &self,
        request: &R,
        version: i16,
    ) -> Result<R::Response> {
        self.send_version_timeout(request, version, self.request_timeout)
            .await
    }

    /// Sends `request` at `version` and waits up to `timeout` for its response (JoinGroup may
    /// legitimately take as long as the group's rebalance timeout).
    pub(crate) async fn send_version_timeout<R: Request>(
        &self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response> {
        let rx = self.write_request(request, version, true).await?;
        let rx = rx.expect("a response was asked for");
        let frame = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(frame)) => frame?,
            Ok(Err(_)) => return Err(self.closed_error()),
            Err(_) => {
                return Err(Error::Timeout {
                    operation: format!("{:?} request to {}", api_name(R::KEY), self.addr),
                    after: timeout,
                })
            }
        };
        decode_response::<R>(frame, version, &self.addr)
    }

    /// Sends a request the broker does not answer (produce with `acks=0`).
    #[allow(dead_code)] // for the producer (issue 3, acks=0)
    pub(crate) async fn send_without_response<R: Request>(
        &self,
        request: &R,
        version: i16,
    ) -> Result<()> {
        self.write_request(request, version, false)
            .await
            .map(|_| ())
    }

    /// Sends a request whose body the caller encoded as `body`, chunks in order (a produce
    /// request's record batches go out as they are, with no copy into a frame); `R` names the
    /// API and decodes the response. `Ok(None)` when `expect_response` is false (acks=0).
    pub(crate) async fn send_parts<R: Request>(
        &self,
        body: &[Bytes],
        version: i16,
        expect_response: bool,
    ) -> Result<Option<R::Response>> {
        let correlation_id = self.next_correlation.fetch_add(1, Ordering::Relaxed);
        let body_size: usize = body.iter().map(Bytes::len).sum();
        let head = self
            .encode_header::<R>(correlation_id, version, body_size)?
            .freeze();
        let mut chunks: Vec<&[u8]> = Vec::with_capacity(body.len() + 1);
        chunks.push(&head);
        chunks.extend(body.iter().map(|b| &b[..]));
        let rx = self
            .write_frame(correlation_id, &chunks, expect_response)
            .await?;
        let Some(rx) = rx else { return Ok(None) };
        let frame = match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(frame)) => frame?,
            Ok(Err(_)) => return Err(self.closed_error()),
            Err(_) => {
                return Err(Error::Timeout {
                    operation: format!("{:?} request to {}", api_name(R::KEY), self.addr),
                    after: self.request_timeout,
                })
            }
        };
        decode_response::<R>(frame, version, &self.addr).map(Some)
    }

    /// The frame's size prefix and the request header, for a body of `body_size` bytes.
    fn encode_header<R: Request>(
        &self,
        correlation_id: i32,
        version: i16,
        body_size: usize,
    ) -> Result<BytesMut> {
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let header_version = R::header_version(version);
        let encode_error = |e: anyhow::Error| {
            Error::Protocol(format!("encoding {:?} v{version}: {e}", api_name(R::KEY)))
        };
        let header_size = header.compute_size(header_version).map_err(encode_error)?;
        let mut frame = BytesMut::with_capacity(4 + header_size + body_size.min(64 << 10));
        frame.put_i32((header_size + body_size) as i32);
        header
            .encode(&mut frame, header_version)
            .map_err(encode_error)?;
        Ok(frame)
    }

    /// Encodes and writes one request; registers for its response when `expect_response`.
    async fn write_request<R: Request>(
        &self,
        request: &R,
        version: i16,
        expect_response: bool,
    ) -> Result<Option<oneshot::Receiver<Result<Bytes>>>> {
        let correlation_id = self.next_correlation.fetch_add(1, Ordering::Relaxed);
        let encode_error = |e: anyhow::Error| {
            Error::Protocol(format!("encoding {:?} v{version}: {e}", api_name(R::KEY)))
        };
        let size = request.compute_size(version).map_err(encode_error)?;
        let mut frame = self.encode_header::<R>(correlation_id, version, size)?;
        frame.reserve(size);
        request.encode(&mut frame, version).map_err(encode_error)?;
        self.write_frame(correlation_id, &[&frame], expect_response)
            .await
    }

    /// Registers for the response (when `expect_response`) and writes a frame given as
    /// chunks, with vectored writes, under the writer lock.
    async fn write_frame(
        &self,
        correlation_id: i32,
        chunks: &[&[u8]],
        expect_response: bool,
    ) -> Result<Option<oneshot::Receiver<Result<Bytes>>>> {
        let rx = if expect_response {
            let (tx, rx) = oneshot::channel();
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            match pending.as_mut() {
                Some(map) => {
                    map.insert(correlation_id, tx);
                }
                None => return Err(self.closed_error()),
            }
            Some(rx)
        } else {
            None
        };
        let mut writer = self.writer.lock().await;
        if let Err(source) = write_all_vectored(&mut *writer, chunks).await {
            self.closed.store(true, Ordering::Release);
            if let Some(map) = self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                map.remove(&correlation_id);
            }
            return Err(Error::io(self.addr.clone(), source));
        }
        Ok(rx)
    }

    fn closed_error(&self) -> Error {
        Error::io(
            self.addr.clone(),
            std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "connection to broker closed",
            ),
        )
    }

    /// ApiVersions: v3 first, then v0 when the broker is older.
    async fn negotiate_versions(&self) -> Result<HashMap<i16, (i16, i16)>> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("purekafka"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let mut response = self.send_version(&request, 3).await?;
        if response.error_code == 35 {
            // UNSUPPORTED_VERSION: the broker lists what it supports; v0 always works.
            response = self.send_version(&request, 0).await?;
        }
        if response.error_code != 0 {
            return Err(Error::broker(
                response.error_code,
                format!("ApiVersions with {}", self.addr),
                None,
            ));
        }
        Ok(response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect())
    }
}

/// Writes every chunk, in order, with as few (vectored) writes as the socket allows.
async fn write_all_vectored<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    chunks: &[&[u8]],
) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> = chunks
        .iter()
        .filter(|c| !c.is_empty())
        .map(|c| std::io::IoSlice::new(c))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = writer.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

fn api_name(key: i16) -> String {
    ApiKey::try_from(key)
        .map(|k| format!("{k:?}"))
        .unwrap_or_else(|_| format!("api {key}"))
}

/// Decodes a response frame (correlation id already matched) as `R::Response`.
fn decode_response<R: Request>(mut frame: Bytes, version: i16, addr: &str) -> Result<R::Response> {
    let header_version =
        <R::Response as kafka_protocol::protocol::HeaderVersion>::header_version(version);
    let decode_error = |e: anyhow::Error| {
        Error::Protocol(format!(
            "decoding {} v{version} response from {addr}: {e}",
            api_name(R::KEY)
        ))
    };
    ResponseHeader::decode(&mut frame, header_version).map_err(decode_error)?;
    R::Response::decode(&mut frame, version).map_err(decode_error)
}

/// Reads frames and hands each to the request waiting for its correlation id.
async fn read_loop(
    mut read: OwnedReadHalf,
    addr: String,
    pending: Pending,
    closed: Arc<AtomicBool>,
) {
    let outcome: std::io::Result<()> = async {
        loop {
            let len = read.read_i32().await? as usize;
            if !(4..=MAX_FRAME).contains(&len) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("response frame of {len} bytes"),
                ));
            }
            let mut buf = BytesMut::zeroed(len);
            read.read_exact(&mut buf).await?;
            let frame = buf.freeze();
            let correlation_id = (&frame[..4]).get_i32();
            let waiter = pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
                .and_then(|map| map.remove(&correlation_id));
            match waiter {
                Some(tx) => {
                    // The caller may have given up (timeout); that is fine.
                    let _ = tx.send(Ok(frame));
                }
                None => tracing::debug!(
                    broker = %addr,
                    correlation_id,
                    "response for a request nobody waits for"
                ),
            }
        }
    }
    .await;
    closed.store(true, Ordering::Release);
    let waiters = pending.lock().unwrap_or_else(|p| p.into_inner()).take();
    let err = outcome
        .err()
        .unwrap_or_else(|| std::io::ErrorKind::UnexpectedEof.into());
    tracing::debug!(broker = %addr, error = %err, "connection closed");
    for (_, tx) in waiters.into_iter().flatten() {
        let _ = tx.send(Err(Error::Io {
            broker: addr.clone(),
            source: std::sync::Arc::new(std::io::Error::new(err.kind(), err.to_string())),
        }));
    }
}
