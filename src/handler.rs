//! What a record handler returns to the runtime ([`HandlerError`]) and how the runtime calls
//! plain and JSON handlers (one trait, so the run loop is written once).

use std::future::Future;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;

use crate::record::ConsumedRecord;

/// The cause of a handler failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A handler's failure: retriable (retried with backoff, then dead-lettered) or permanent
/// (dead-lettered at once). Each carries its cause, which ends up in the `dlq.error` header.
///
/// ```
/// use purekafka::HandlerError;
///
/// let e = HandlerError::retriable("payments service unavailable");
/// assert!(e.is_retriable());
/// let e = HandlerError::permanent(std::io::Error::other("order 7 is unknown"));
/// assert_eq!(e.to_string(), "permanent: order 7 is unknown");
/// ```
#[derive(Debug)]
pub enum HandlerError {
    /// May succeed when tried again (a dependency timed out, a lock was busy, ...).
    Retriable(BoxError),
    /// Will fail again (invalid content, a business rule said no, ...).
    Permanent(BoxError),
}

impl HandlerError {
    /// A retriable failure caused by `cause`.
    pub fn retriable(cause: impl Into<BoxError>) -> Self {
        HandlerError::Retriable(cause.into())
    }
    /// A permanent failure caused by `cause`.
    pub fn permanent(cause: impl Into<BoxError>) -> Self {
        HandlerError::Permanent(cause.into())
    }
    /// Whether the runtime retries it.
    pub fn is_retriable(&self) -> bool {
        matches!(self, HandlerError::Retriable(_))
    }
    /// The cause.
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        match self {
            HandlerError::Retriable(e) | HandlerError::Permanent(e) => e.as_ref(),
        }
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandlerError::Retriable(e) => write!(f, "retriable: {e}"),
            HandlerError::Permanent(e) => write!(f, "permanent: {e}"),
        }
    }
}

impl std::error::Error for HandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.cause())
    }
}

/// A purekafka error from inside a handler (e.g. a `send` to another topic) is retriable
/// when [`Error::is_retriable`](crate::Error::is_retriable) says so, permanent otherwise.
impl From<crate::Error> for HandlerError {
    fn from(e: crate::Error) -> Self {
        if e.is_retriable() {
            HandlerError::Retriable(Box::new(e))
        } else {
            HandlerError::Permanent(Box::new(e))
        }
    }
}

/// How the run loop calls a handler: `Err` = the record's payload does not decode.
pub(crate) trait Process: Send + Sync + 'static {
    type Fut: Future<Output = Result<(), HandlerError>> + Send + 'static;
    fn call(&self, record: &ConsumedRecord) -> Result<Self::Fut, String>;
}

/// `handler(record)`.
pub(crate) struct Plain<F>(pub(crate) F);

impl<F, Fut> Process for Plain<F>
where
    F: Fn(ConsumedRecord) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    type Fut = Fut;
    #[inline]
    fn call(&self, record: &ConsumedRecord) -> Result<Fut, String> {
        Ok((self.0)(record.clone()))
    }
}

/// `handler(value decoded as T, record)`; the value is decoded again on each attempt (so `T`
/// needs no `Clone`; retries are rare).
pub(crate) struct Json<T, F>(pub(crate) F, pub(crate) PhantomData<fn() -> T>);

impl<T, F, Fut> Process for Json<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, ConsumedRecord) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    type Fut = Fut;
    #[inline]
    fn call(&self, record: &ConsumedRecord) -> Result<Fut, String> {
        let value = record
            .json::<T>()
            .map_err(|e| format!("payload does not decode: {e}"))?;
        Ok((self.0)(value, record.clone()))
    }
}
