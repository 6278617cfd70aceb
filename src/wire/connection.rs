//! One connection (TCP or TLS, see `transport`) to one broker: length-prefixed frames, request headers, correlation ids
//! with many requests in flight, ApiVersions negotiation and SASL.
//!
//! Requests are written under a short async lock (one write per request, never per record);
//! a reader task matches responses to waiting callers by correlation id.
//!
//! Every request has a write deadline and a read deadline (`request.timeout.ms`, or the
//! caller's longer one). The connection is *poisoned* — closed, with every request pending on
//! it failed as a retriable [`Error::Io`] — when a request times out, a write fails or is cut
//! short (the caller's future dropped in the middle of writing a frame), or the framing is in
//! doubt (a frame over `receive.message.max.bytes`, a correlation id never sent, a response
//! that does not decode). [`BrokerConnection::is_closed`] then turns true and its owner
//! ([`Cluster`](super::Cluster)) opens a new one. A caller that drops its future after the
//! frame went out only removes its pending entry; the connection stays usable.
//!
//! Response frames are read into a buffer that grows as bytes arrive (never allocated at the
//! size a peer announces). The stream is generic: anything `AsyncRead + AsyncWrite`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::error::{Error, Result};

/// First capacity of a response buffer; it grows (doubling) as bytes arrive.
const INITIAL_READ_BUFFER: usize = 64 << 10;

/// The write half of the stream, whatever the transport (TCP, TLS).
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

type Waiters = HashMap<i32, oneshot::Sender<Result<Bytes>>>;

/// What the connection, its reader task and its request guards share.
struct Shared {
    addr: String,
    /// Waiting requests by correlation id; `None` once the connection is closed.
    pending: Mutex<Option<Waiters>>,
    closed: AtomicBool,
    /// Ids below this have been handed out; a response with any other id means the framing
    /// is in doubt.
    next_correlation: AtomicI32,
    /// Set once the ids wrapped around (then any non-negative id may be in flight).
    wrapped: AtomicBool,
    /// Stops the reader task (and with it the read half of the socket) on poisoning.
    reader: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Shared {
    /// Closes the connection: every pending request fails with `why` (a retriable
    /// [`Error::Io`]), later requests fail at once, the reader stops.
    fn poison(&self, kind: std::io::ErrorKind, why: &str) {
        let first = !self.closed.swap(true, Ordering::AcqRel);
        let waiters = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if first {
            tracing::debug!(broker = %self.addr, reason = why, "connection closed");
        }
        for (_, tx) in waiters.into_iter().flatten() {
            let _ = tx.send(Err(self.io_error(kind, why)));
        }
        if let Some(reader) = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take() {
            reader.abort();
        }
    }

    fn io_error(&self, kind: std::io::ErrorKind, why: &str) -> Error {
        Error::io(
            self.addr.clone(),
            std::io::Error::new(kind, why.to_string()),
        )
    }

    fn forget(&self, correlation_id: i32) {
        if let Some(map) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            map.remove(&correlation_id);
        }
    }
}

/// A registered request waiting for its response; dropping it (the caller gave up) removes
/// its pending entry.
struct ResponseWait {
    shared: Arc<Shared>,
    correlation_id: i32,
    rx: oneshot::Receiver<Result<Bytes>>,
}

impl Drop for ResponseWait {
    fn drop(&mut self) {
        self.shared.forget(self.correlation_id);
    }
}

/// Poisons the connection if dropped while armed: a frame was partly written.
struct WriteGuard<'a> {
    shared: &'a Shared,
    armed: bool,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.poison(
                std::io::ErrorKind::ConnectionAborted,
                "a request was cancelled in the middle of its write",
            );
        }
    }
}

/// A connection to one broker. Cheap to share behind an `Arc`; requests from many tasks are
/// pipelined on it.
pub(crate) struct BrokerConnection {
    client_id: StrBytes,
    writer: tokio::sync::Mutex<Writer>,
    shared: Arc<Shared>,
    /// Supported version range per API key, from ApiVersions.
    versions: HashMap<i16, (i16, i16)>,
    request_timeout: Duration,
}

impl std::fmt::Debug for BrokerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConnection")
            .field("addr", &self.shared.addr)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Drop for BrokerConnection {
    fn drop(&mut self) {
        if let Some(reader) = self
            .shared
            .reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            reader.abort();
        }
    }
}

impl BrokerConnection {
    /// Opens a connection: TCP (keepalive on, no delay), ApiVersions, then SASL when
    /// configured. One attempt; the caller's retry loop decides about more.
    pub(crate) async fn connect(addr: &str, config: &Config) -> Result<BrokerConnection> {
        let stream = super::transport::connect(addr, config).await?;
        Self::over(stream, addr, config).await
    }

    /// Speaks the protocol over an established `stream` (TCP, or TLS over TCP): ApiVersions,
    /// then SASL when configured.
    pub(crate) async fn over<S>(stream: S, addr: &str, config: &Config) -> Result<BrokerConnection>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            pending: Mutex::new(Some(HashMap::new())),
            closed: AtomicBool::new(false),
            next_correlation: AtomicI32::new(0),
            wrapped: AtomicBool::new(false),
            reader: Mutex::new(None),
        });
        let reader = tokio::spawn(read_loop(
            read,
            Arc::clone(&shared),
            config.receive_message_max_bytes,
        ));
        *shared.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(reader.abort_handle());
        let mut conn = BrokerConnection {
            client_id: StrBytes::from_string(config.client_id.clone()),
            writer: tokio::sync::Mutex::new(Box::new(write)),
            shared,
            versions: HashMap::new(),
            request_timeout: config.request_timeout,
        };
        conn.versions = conn
            .negotiate_versions()
            .await
            .map_err(|e| super::transport::first_request_failed(e, config))?;
        if let Some(lifetime) = super::sasl::authenticate(&conn, config).await? {
            conn.retire_after(lifetime.mul_f64(0.85));
        }
        tracing::debug!(broker = addr, "connected");
        Ok(conn)
    }

    /// KIP-368: the broker ends an authenticated session after the lifetime it returned.
    /// After `after` (85 % of it) the connection reports itself closed, so its owner opens a
    /// new, freshly authenticated one before the broker cuts this one; requests already in
    /// flight on it finish.
    fn retire_after(&self, after: Duration) {
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            tracing::debug!(broker = %shared.addr, "SASL session lifetime nearly over: reconnecting");
            shared.closed.store(true, Ordering::Release);
        });
    }

    /// The broker's address.
    pub(crate) fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// Whether the connection broke or was poisoned; a closed connection fails every request.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// The highest version of `R` both sides support, capped at `cap` when given.
    pub(crate) fn version_for<R: Request>(&self, cap: Option<i16>) -> Result<i16> {
        let ours = R::VERSIONS;
        let (their_min, their_max) =
            self.versions
                .get(&R::KEY)
                .copied()
                .ok_or_else(|| Error::Unsupported {
                    broker: self.addr().to_string(),
                    what: format!("{} (API key {})", api_name(R::KEY), R::KEY),
                })?;
        let max = ours.max.min(their_max).min(cap.unwrap_or(i16::MAX));
        let min = ours.min.max(their_min);
        if max < min {
            return Err(Error::Unsupported {
                broker: self.addr().to_string(),
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
        let frame = self.request_frame(request, version, timeout).await?;
        self.decode::<R>(frame, version)
    }

    /// Sends `request` at `version` and returns the response body (after the response
    /// header), undecoded, for callers that decode it themselves (the fetcher: its decoder
    /// never sizes an allocation by a count read off the wire).
    pub(crate) async fn send_version_raw<R: Request>(
        &self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<Bytes> {
        let mut frame = self.request_frame(request, version, timeout).await?;
        let header_version =
            <R::Response as kafka_protocol::protocol::HeaderVersion>::header_version(version);
        ResponseHeader::decode(&mut frame, header_version).map_err(|e| {
            let e = Error::Protocol(format!(
                "decoding the {} response header from {}: {e}",
                api_name(R::KEY),
                self.addr()
            ));
            self.shared
                .poison(std::io::ErrorKind::InvalidData, &e.to_string());
            e
        })?;
        Ok(frame)
    }

    /// Sends `request` and returns its response frame (from the correlation id), undecoded.
    async fn request_frame<R: Request>(
        &self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<Bytes> {
        let wait = self.write_request(request, version, true).await?;
        let wait = wait.ok_or_else(|| Error::Protocol("no response registered".into()))?;
        self.wait_response::<R>(wait, timeout).await
    }

    /// Sends a request the broker does not answer (produce with `acks=0`).
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
        let correlation_id = self.next_correlation();
        let body_size: usize = body.iter().map(Bytes::len).sum();
        let head = self
            .encode_header::<R>(correlation_id, version, body_size)?
            .freeze();
        let mut chunks: Vec<&[u8]> = Vec::with_capacity(body.len() + 1);
        chunks.push(&head);
        chunks.extend(body.iter().map(|b| &b[..]));
        let wait = self
            .write_frame(correlation_id, &chunks, expect_response)
            .await?;
        let Some(wait) = wait else { return Ok(None) };
        let frame = self.wait_response::<R>(wait, self.request_timeout).await?;
        self.decode::<R>(frame, version).map(Some)
    }

    fn next_correlation(&self) -> i32 {
        // Wraps from i32::MAX to 0, never negative (a response id is checked against it).
        let id = self
            .shared
            .next_correlation
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |id| {
                Some(id.checked_add(1).unwrap_or(0))
            })
            .unwrap_or(0);
        if id == i32::MAX {
            self.shared.wrapped.store(true, Ordering::Release);
        }
        id.max(0)
    }

    /// Waits up to `timeout` for a registered response; a timeout poisons the connection
    /// (the broker may still answer later, and every request behind it is in doubt).
    async fn wait_response<R: Request>(
        &self,
        mut wait: ResponseWait,
        timeout: Duration,
    ) -> Result<Bytes> {
        match tokio::time::timeout(timeout, &mut wait.rx).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => {
                let operation = format!("{} request to {}", api_name(R::KEY), self.addr());
                self.shared.poison(
                    std::io::ErrorKind::TimedOut,
                    &format!("{operation} timed out after {timeout:?}"),
                );
                Err(Error::Timeout {
                    operation,
                    after: timeout,
                })
            }
        }
    }

    /// Decodes a response frame; a frame that does not decode poisons the connection.
    fn decode<R: Request>(&self, frame: Bytes, version: i16) -> Result<R::Response> {
        decode_response::<R>(frame, version, self.addr()).inspect_err(|e| {
            self.shared
                .poison(std::io::ErrorKind::InvalidData, &e.to_string());
        })
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
            Error::Protocol(format!("encoding {} v{version}: {e}", api_name(R::KEY)))
        };
        let header_size = header.compute_size(header_version).map_err(encode_error)?;
        let size = i32::try_from(header_size + body_size).map_err(|_| {
            Error::Protocol(format!(
                "{} request of {body_size} bytes is too large",
                api_name(R::KEY)
            ))
        })?;
        let mut frame = BytesMut::with_capacity(4 + header_size + body_size.min(64 << 10));
        frame.put_i32(size);
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
    ) -> Result<Option<ResponseWait>> {
        let correlation_id = self.next_correlation();
        let encode_error = |e: anyhow::Error| {
            Error::Protocol(format!("encoding {} v{version}: {e}", api_name(R::KEY)))
        };
        let size = request.compute_size(version).map_err(encode_error)?;
        let mut frame = self.encode_header::<R>(correlation_id, version, size)?;
        frame.reserve(size);
        request.encode(&mut frame, version).map_err(encode_error)?;
        self.write_frame(correlation_id, &[&frame], expect_response)
            .await
    }

    /// Registers for the response (when `expect_response`) and writes a frame given as
    /// chunks, with vectored writes, under the writer lock and within `request.timeout.ms`.
    ///
    /// Cancellation: dropped while waiting for the lock, nothing was written and the pending
    /// entry goes with the returned guard; dropped in the middle of the write, the connection
    /// is poisoned (half a frame is on the wire), so no later request reads a corrupt stream.
    async fn write_frame(
        &self,
        correlation_id: i32,
        chunks: &[&[u8]],
        expect_response: bool,
    ) -> Result<Option<ResponseWait>> {
        let wait = if expect_response {
            let (tx, rx) = oneshot::channel();
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match pending.as_mut() {
                Some(map) => {
                    map.insert(correlation_id, tx);
                }
                None => return Err(self.closed_error()),
            }
            Some(ResponseWait {
                shared: Arc::clone(&self.shared),
                correlation_id,
                rx,
            })
        } else {
            None
        };
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut writer = match tokio::time::timeout_at(deadline, self.writer.lock()).await {
            Ok(w) => w,
            Err(_) => {
                // Another request has held the writer for a whole timeout: its own deadline
                // poisons the connection; this one never started.
                return Err(Error::Timeout {
                    operation: format!("write to {}", self.addr()),
                    after: self.request_timeout,
                });
            }
        };
        if self.is_closed() {
            return Err(self.closed_error());
        }
        let mut guard = WriteGuard {
            shared: &self.shared,
            armed: true,
        };
        let written =
            tokio::time::timeout_at(deadline, write_all_vectored(&mut *writer, chunks)).await;
        guard.armed = false;
        match written {
            Ok(Ok(())) => Ok(wait),
            Ok(Err(source)) => {
                let why = format!("write failed: {source}");
                self.shared.poison(source.kind(), &why);
                Err(Error::io(self.addr(), source))
            }
            Err(_) => {
                self.shared.poison(
                    std::io::ErrorKind::TimedOut,
                    "a write did not finish within request.timeout.ms (the broker stopped reading)",
                );
                Err(Error::Timeout {
                    operation: format!("write to {}", self.addr()),
                    after: self.request_timeout,
                })
            }
        }
    }

    fn closed_error(&self) -> Error {
        self.shared.io_error(
            std::io::ErrorKind::ConnectionAborted,
            "connection to broker closed",
        )
    }

    /// ApiVersions: v3 first, then v0 when the broker is older. A broker that does not know
    /// v3 answers UNSUPPORTED_VERSION in the v0 layout (KIP-511: brokers before 2.4), which
    /// the v3 decoder cannot read, so the error code is read from the frame first.
    async fn negotiate_versions(&self) -> Result<HashMap<i16, (i16, i16)>> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("purekafka"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let frame = self
            .request_frame(&request, 3, self.request_timeout)
            .await?;
        // Response header v0 (ApiVersions answers never carry tagged header fields): the
        // correlation id, then the body, whose first field is the error code in every layout.
        let unsupported = frame.len() >= 6 && i16::from_be_bytes([frame[4], frame[5]]) == 35;
        let response: ApiVersionsResponse = if unsupported {
            tracing::debug!(
                broker = %self.addr(),
                "ApiVersions v3 answered UNSUPPORTED_VERSION; retrying at v0"
            );
            self.send_version(&request, 0).await?
        } else {
            self.decode::<ApiVersionsRequest>(frame, 3)?
        };
        if response.error_code != 0 {
            return Err(Error::broker(
                response.error_code,
                format!("ApiVersions with {}", self.addr()),
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
async fn write_all_vectored<W: tokio::io::AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    chunks: &[&[u8]],
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
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
    // TLS keeps written records in its buffer until flushed; for TCP this is a no-op.
    writer.flush().await
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

/// Reads one frame of `len` bytes into a buffer that grows as bytes arrive.
async fn read_frame<R: AsyncRead + Unpin>(read: &mut R, len: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(len.min(INITIAL_READ_BUFFER));
    while buf.len() < len {
        if buf.len() == buf.capacity() {
            let grow = buf.len().max(INITIAL_READ_BUFFER).min(len - buf.len());
            buf.reserve(grow);
        }
        let want = (len - buf.len()) as u64;
        let n = (&mut *read).take(want).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed after {} of a {len}-byte response frame",
                    buf.len()
                ),
            ));
        }
    }
    Ok(buf.freeze())
}

/// Reads frames and hands each to the request waiting for its correlation id.
async fn read_loop<R: AsyncRead + Unpin>(mut read: R, shared: Arc<Shared>, max_frame: usize) {
    let outcome: std::io::Result<()> = async {
        loop {
            let len = read.read_i32().await?;
            if len < 4 || len as usize > max_frame {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} (receive.message.max.bytes is {max_frame})",
                        super::transport::bad_frame_length(len)
                    ),
                ));
            }
            let frame = read_frame(&mut read, len as usize).await?;
            // The id stays in the frame: the response decoder reads the whole header.
            let correlation_id = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
            let issued = shared.next_correlation.load(Ordering::Acquire);
            let wrapped = shared.wrapped.load(Ordering::Acquire);
            if correlation_id < 0 || (!wrapped && correlation_id >= issued) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("response with correlation id {correlation_id}, never sent"),
                ));
            }
            let waiter = shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
                .and_then(|map| map.remove(&correlation_id));
            match waiter {
                Some(tx) => {
                    // The caller may have given up meanwhile; that is fine.
                    let _ = tx.send(Ok(frame));
                }
                None => tracing::debug!(
                    broker = %shared.addr,
                    correlation_id,
                    "response for a request nobody waits for"
                ),
            }
        }
    }
    .await;
    let err = outcome
        .err()
        .unwrap_or_else(|| std::io::ErrorKind::UnexpectedEof.into());
    shared.poison(err.kind(), &err.to_string());
}

/// Hostile and slow peers against the real connection code over real sockets: a peer that
/// answers garbage, one announcing a 2 GiB frame, one announcing 90 MB and sending little,
/// one silent; cancellation mid-write and after the write; KIP-511's v0-layout answer.
#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::protocol::decode_request_header_from_buffer;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    #[derive(Clone, Copy)]
    enum Peer {
        /// Answers ApiVersions (every version) after `delay_ms`, or stops reading when
        /// `stall` is set.
        Broker,
        /// Writes these bytes to the first request, then keeps the connection open.
        Bytes(&'static [u8]),
        /// Announces a frame of this size, sends 16 bytes of it, then is silent.
        Announce(i32),
        /// Accepts and never answers.
        Silent,
        /// Answers ApiVersions above v2 with UNSUPPORTED_VERSION in the v0 layout (KIP-511).
        OldBroker,
    }

    #[derive(Default)]
    struct Control {
        delay_ms: AtomicU64,
        stall: AtomicBool,
    }

    fn config(timeout_ms: u64) -> Config {
        Config::builder()
            .brokers(["127.0.0.1:1"])
            .set("request.timeout.ms", timeout_ms.to_string())
            .build()
            .unwrap()
    }

    async fn start(peer: Peer) -> (String, Arc<Control>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let control = Arc::new(Control::default());
        let c = Arc::clone(&control);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, peer, Arc::clone(&c)));
            }
        });
        (addr, control)
    }

    fn api_versions_body(version: i16, error: i16) -> BytesMut {
        let response = ApiVersionsResponse::default()
            .with_error_code(error)
            .with_api_keys(vec![ApiVersion::default()
                .with_api_key(18)
                .with_min_version(0)
                .with_max_version(3)]);
        let mut body = BytesMut::new();
        response.encode(&mut body, version).unwrap();
        body
    }

    async fn answer(socket: &mut TcpStream, correlation_id: i32, body: &[u8]) {
        let mut out = BytesMut::new();
        out.put_i32(4 + body.len() as i32);
        out.put_i32(correlation_id);
        out.extend_from_slice(body);
        let _ = socket.write_all(&out).await;
    }

    async fn serve(mut socket: TcpStream, peer: Peer, control: Arc<Control>) {
        loop {
            if control.stall.load(Ordering::Acquire) {
                // Stops reading: the client's writes fill the socket buffers and block.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            let Ok(len) = socket.read_i32().await else {
                return;
            };
            let mut frame = BytesMut::zeroed(len as usize);
            if socket.read_exact(&mut frame).await.is_err() {
                return;
            }
            let mut frame = frame.freeze();
            let header = decode_request_header_from_buffer(&mut frame).unwrap();
            let id = header.correlation_id;
            let version = header.request_api_version;
            match peer {
                Peer::Broker => {
                    let delay = control.delay_ms.load(Ordering::Acquire);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    answer(&mut socket, id, &api_versions_body(version, 0)).await;
                }
                Peer::OldBroker if version > 2 => {
                    answer(&mut socket, id, &api_versions_body(0, 35)).await;
                }
                Peer::OldBroker => answer(&mut socket, id, &api_versions_body(version, 0)).await,
                Peer::Bytes(bytes) => {
                    let _ = socket.write_all(bytes).await;
                }
                Peer::Announce(size) => {
                    let _ = socket.write_all(&size.to_be_bytes()).await;
                    let _ = socket.write_all(&id.to_be_bytes()).await;
                    let _ = socket.write_all(&[0u8; 12]).await;
                }
                Peer::Silent => {}
            }
        }
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

    async fn connect_err(peer: Peer) -> Error {
        let (addr, _control) = start(peer).await;
        let outcome = tokio::time::timeout(
            Duration::from_secs(60),
            BrokerConnection::connect(&addr, &config(1500)),
        )
        .await
        .expect("a hostile peer must give an error within the request timeout");
        outcome.expect_err("a hostile peer must not give a connection")
    }

    #[tokio::test]
    async fn garbage_answer_is_a_clear_error() {
        // A frame of 8 bytes whose "correlation id" was never sent.
        let err = connect_err(Peer::Bytes(b"\x00\x00\x00\x08garbage!")).await;
        assert!(err.to_string().contains("never sent"), "{err}");
        assert!(err.is_retriable(), "{err}");
        // A negative frame size.
        let err = connect_err(Peer::Bytes(b"\xff\xff\xff\xfegarbage")).await;
        assert!(
            err.to_string()
                .contains("response frame of 4294967294 bytes"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn two_gib_announcement_is_refused_without_allocating() {
        let before = peak_rss_kib();
        let err = connect_err(Peer::Announce(i32::MAX)).await;
        assert!(
            err.to_string().contains("receive.message.max.bytes"),
            "{err}"
        );
        let after = peak_rss_kib();
        eprintln!("peak RSS before {before} KiB, after a 2 GiB announcement {after} KiB");
        assert!(
            after - before < 32 << 10,
            "peak RSS grew by {} KiB",
            after - before
        );
    }

    #[tokio::test]
    async fn announced_size_is_not_allocated_up_front() {
        // 90 MB is under receive.message.max.bytes: the frame is accepted, but only the 16
        // bytes that arrive are buffered; the request then times out.
        let before = peak_rss_kib();
        let err = connect_err(Peer::Announce(90_000_000)).await;
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        let after = peak_rss_kib();
        eprintln!("peak RSS before {before} KiB, after a 90 MB announcement {after} KiB");
        assert!(
            after - before < 32 << 10,
            "peak RSS grew by {} KiB",
            after - before
        );
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        let err = connect_err(Peer::Silent).await;
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(err.is_retriable());
    }

    #[tokio::test]
    async fn timed_out_request_poisons_the_connection() {
        let (addr, control) = start(Peer::Broker).await;
        let conn = BrokerConnection::connect(&addr, &config(3000))
            .await
            .unwrap();
        control.delay_ms.store(10_000, Ordering::Release);
        let request = ApiVersionsRequest::default();
        let err = conn.send_version(&request, 3).await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(conn.is_closed());
        let err = conn.send_version(&request, 3).await.unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }

    #[tokio::test]
    async fn dropped_after_write_keeps_the_connection_usable() {
        let (addr, control) = start(Peer::Broker).await;
        let conn = BrokerConnection::connect(&addr, &config(20_000))
            .await
            .unwrap();
        control.delay_ms.store(1000, Ordering::Release);
        let request = ApiVersionsRequest::default();
        let cut = tokio::time::timeout(Duration::from_millis(100), conn.send_version(&request, 3));
        assert!(cut.await.is_err(), "the caller's timeout cut the request");
        assert!(!conn.is_closed());
        let pending = conn.shared.pending.lock().unwrap().as_ref().unwrap().len();
        assert_eq!(pending, 0, "the dropped request's entry is gone");
        control.delay_ms.store(0, Ordering::Release);
        // The late answer to the dropped request is skipped; this one gets its own.
        let response = conn.send_version(&request, 3).await.unwrap();
        assert_eq!(response.error_code, 0);
        assert!(!conn.is_closed());
    }

    #[tokio::test]
    async fn dropped_mid_write_closes_the_connection_cleanly() {
        let (addr, control) = start(Peer::Broker).await;
        let conn = BrokerConnection::connect(&addr, &config(20_000))
            .await
            .unwrap();
        control.stall.store(true, Ordering::Release);
        // Wake the peer's loop so that it sees the stall, then stop it reading.
        let _ = tokio::time::timeout(
            Duration::from_millis(300),
            conn.send_version(&ApiVersionsRequest::default(), 3),
        )
        .await;
        // 64 MiB cannot fit in loopback socket buffers: the write blocks part-way.
        let body = Bytes::from(vec![0u8; 64 << 20]);
        let cut = tokio::time::timeout(
            Duration::from_millis(500),
            conn.send_parts::<ApiVersionsRequest>(std::slice::from_ref(&body), 3, true),
        )
        .await;
        assert!(cut.is_err(), "the write was still blocked");
        assert!(
            conn.is_closed(),
            "half a frame on the wire poisons the connection"
        );
        let next = tokio::time::timeout(
            Duration::from_secs(30),
            conn.send_version(&ApiVersionsRequest::default(), 3),
        )
        .await
        .expect("fails at once, does not hang");
        assert!(matches!(next, Err(Error::Io { .. })), "{next:?}");
    }

    #[tokio::test]
    async fn write_to_a_peer_that_stopped_reading_hits_the_deadline() {
        let (addr, control) = start(Peer::Broker).await;
        let conn = BrokerConnection::connect(&addr, &config(3000))
            .await
            .unwrap();
        control.stall.store(true, Ordering::Release);
        // The peer reads and answers this one, then sees the stall and stops reading.
        conn.send_version(&ApiVersionsRequest::default(), 3)
            .await
            .unwrap();
        // A write bigger than the socket buffers: without a write deadline it would wait
        // for the kernel's retransmission timeout.
        let body = Bytes::from(vec![0u8; 64 << 20]);
        let err = tokio::time::timeout(
            Duration::from_secs(60),
            conn.send_parts::<ApiVersionsRequest>(std::slice::from_ref(&body), 3, true),
        )
        .await
        .expect("the write deadline ends the write")
        .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(conn.is_closed());
    }

    #[tokio::test]
    async fn kip_511_v0_layout_answer_falls_back_to_v0() {
        let (addr, _control) = start(Peer::OldBroker).await;
        let conn = BrokerConnection::connect(&addr, &config(5000))
            .await
            .expect("connects at ApiVersions v0");
        assert_eq!(conn.version_for::<ApiVersionsRequest>(None).unwrap(), 3);
    }
}
