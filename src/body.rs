//! The body type of every response the gateway (and its demo servers) send.
//!
//! Owns: `Body` (a boxed stream of `Bytes`, so that a proxied upstream body streams through
//! untouched and a JSON answer is one chunk), complete bodies, JSON responses with
//! `Cache-Control: no-store`, reading a request body up to a limit, and lingering on the rest of
//! a request body answered early. Must not: know about errors or endpoints.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body as _, Incoming};

/// How much of a request body answered early is still read (and discarded), and for how long.
const LINGER_BYTES: usize = 4 << 20;
const LINGER_TIME: Duration = Duration::from_secs(5);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response.
pub type Body = BoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// A JSON response; `Cache-Control: no-store` unless the caller sets its own.
pub fn json<T: serde::Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    // Serialising to memory fails only for maps with non-string keys, which no answer has.
    json_bytes(status, serde_json::to_vec(value).unwrap_or_default())
}

/// A JSON response of JSON text already serialised; `Cache-Control: no-store`.
pub fn json_bytes(status: StatusCode, json: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(full(json));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Why a request body was not read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Larger than the limit (declared or sent); the rest is left to [`linger`].
    TooLarge,
    /// The client broke off or sent a malformed body.
    Broken,
}

/// The whole request body if it is at most `limit` bytes (a larger `Content-Length` is refused
/// before reading anything). The caller bounds the time.
pub async fn read_limited(headers: &HeaderMap, mut body: Incoming, limit: usize) -> Result<Bytes, ReadError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        linger(body);
        return Err(ReadError::TooLarge);
    }
    let mut read = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| ReadError::Broken)?.into_data() else { continue };
        if read.len() + data.len() > limit {
            linger(body);
            return Err(ReadError::TooLarge);
        }
        read.extend_from_slice(&data);
    }
    Ok(read.freeze())
}

/// Reads and discards what is left of a request body that was answered without it (at most
/// 4 MiB, for at most 5 s), so that a client still sending reads the answer rather than a
/// connection reset, as nginx's lingering close does. The answer is not delayed.
pub fn linger(mut body: Incoming) {
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let mut left = LINGER_BYTES;
        let drain = async {
            while let Some(Ok(frame)) = body.frame().await {
                let n = frame.data_ref().map_or(0, Bytes::len);
                if n >= left {
                    break;
                }
                left -= n;
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}
