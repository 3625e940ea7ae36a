//! The access line: one per request of the public listener, written by the worker that served it.
//!
//! Owns: the line's fields and, when the process logs JSON, their encoding, written straight
//! into the worker's log buffer ([`crate::logging::write_json_line`]) with the same keys and
//! shape as the subscriber's JSON lines (`timestamp` in RFC 3339 UTC with microseconds,
//! `level`, `message: "request"`, then the fields), so that a request costs no `tracing` event
//! formatting (about 5% of a proxied request's CPU). The `access` target's filter still
//! decides (`logging.access_log: false`, `RUST_LOG`); with pretty output the line goes through
//! `tracing` as any other. Must not: decide what a request logs (see [`super::public`]) or
//! how lines reach stdout (see `logging`).

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::Level;

/// What the access line says.
pub struct AccessLine<'a> {
    pub level: Level,
    pub method: &'a http::Method,
    pub route: &'a str,
    pub status: u16,
    pub duration: Duration,
    /// `host:port`, or `-` when the gateway answered itself.
    pub upstream: &'a str,
    pub user_id: &'a str,
    pub request_id: &'a str,
    pub trace_id: &'a str,
    /// The failure's class (`-`: none).
    pub error: &'a str,
    pub reason: &'a str,
}

impl AccessLine<'_> {
    /// Writes the line, when its level is enabled for the `access` target.
    pub fn emit(&self) {
        let enabled = match self.level {
            Level::ERROR => tracing::enabled!(target: "access", Level::ERROR),
            Level::WARN => tracing::enabled!(target: "access", Level::WARN),
            _ => tracing::enabled!(target: "access", Level::INFO),
        };
        if enabled && !crate::logging::write_json_line(|out| self.json(SystemTime::now(), out)) {
            self.through_tracing();
        }
    }

    /// The line as the subscriber's JSON formatter writes an event (flattened fields).
    fn json(&self, now: SystemTime, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(now, out);
        out.extend_from_slice(b"\",\"level\":\"");
        out.extend_from_slice(self.level.as_str().as_bytes());
        out.extend_from_slice(b"\",\"message\":\"request\",\"method\":");
        string(self.method.as_str(), out);
        out.extend_from_slice(b",\"route\":");
        string(self.route, out);
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        out.extend_from_slice(b",\"duration_ms\":");
        milliseconds(self.duration, out);
        for (key, value) in [
            (&b",\"upstream\":"[..], self.upstream),
            (b",\"user_id\":", self.user_id),
            (b",\"request_id\":", self.request_id),
            (b",\"trace_id\":", self.trace_id),
            (b",\"error\":", self.error),
            (b",\"reason\":", self.reason),
        ] {
            out.extend_from_slice(key);
            string(value, out);
        }
        out.extend_from_slice(b"}\n");
    }

    /// Through the subscriber (pretty output, or a process whose logging is not set up by
    /// `logging::init`, as in tests that build the state themselves).
    fn through_tracing(&self) {
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "access",
                    method = %self.method,
                    route = self.route,
                    status = self.status,
                    duration_ms = self.duration.as_micros() as f64 / 1000.0,
                    upstream = self.upstream,
                    user_id = self.user_id,
                    request_id = self.request_id,
                    trace_id = self.trace_id,
                    error = self.error,
                    reason = self.reason,
                    "request"
                )
            };
        }
        match self.level {
            Level::ERROR => line!(error),
            Level::WARN => line!(warn),
            _ => line!(info),
        }
    }
}

/// A JSON string: copied as is when nothing needs escaping (the usual case), else escaped by
/// serde_json.
fn string(s: &str, out: &mut Vec<u8>) {
    if crate::byte_class::all(s.as_bytes(), |b| (b >= 0x20) & (b != b'"') & (b != b'\\')) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"-\"");
    }
}

/// Milliseconds with microsecond precision, as a JSON number: `1.195`, `1.19`, `12.0`.
fn milliseconds(d: Duration, out: &mut Vec<u8>) {
    let micros = d.as_micros();
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    out.push(b'.');
    let frac = (micros % 1000) as u16;
    let digits = [b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8];
    let keep = digits.iter().rposition(|d| *d != b'0').map_or(1, |last| last + 1);
    out.extend_from_slice(&digits[..keep]);
}

thread_local! {
    /// The second this thread last formatted, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// `2026-12-07T07:32:45.513985Z` (UTC): the date and time are formatted once a second per
/// thread, the microseconds each time.
fn timestamp(now: SystemTime, out: &mut Vec<u8>) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.0 != secs {
            let text = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
            // `YYYY-MM-DDTHH:MM:SSZ`; a year past 9999 is not written this way (never the case).
            if let Some(head) = text.as_bytes().get(..19) {
                cell.1.copy_from_slice(head);
            }
            cell.0 = secs;
        }
        out.extend_from_slice(&cell.1);
    });
    let micros = since.subsec_micros();
    out.push(b'.');
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(method: &'a http::Method, reason: &'a str, request_id: &'a str) -> AccessLine<'a> {
        AccessLine {
            level: Level::WARN,
            method,
            route: "/api/",
            status: 502,
            duration: Duration::from_micros(1_190),
            upstream: "127.0.0.1:8080",
            user_id: "7faa5055-6156-5fb4-84b7-db56a390f6f1",
            request_id,
            trace_id: "-",
            error: "error",
            reason,
        }
    }

    #[test]
    fn the_line_is_one_json_object_with_the_subscribers_keys_and_types() {
        let method = http::Method::GET;
        let mut out = Vec::new();
        let at = UNIX_EPOCH + Duration::from_micros(1_796_628_765_000_042);
        line(&method, "connect: refused", "req-1").json(at, &mut out);
        assert_eq!(out.last(), Some(&b'\n'), "one line");
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let want = serde_json::json!({
            "timestamp": "2026-12-07T07:32:45.000042Z", "level": "WARN", "message": "request",
            "method": "GET", "route": "/api/", "status": 502, "duration_ms": 1.19,
            "upstream": "127.0.0.1:8080", "user_id": "7faa5055-6156-5fb4-84b7-db56a390f6f1",
            "request_id": "req-1", "trace_id": "-", "error": "error", "reason": "connect: refused",
        });
        assert_eq!(v, want);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 13);
    }

    #[test]
    fn what_a_client_or_an_upstream_wrote_is_escaped_and_never_breaks_the_line() {
        let method: http::Method = "PURGE".parse().unwrap();
        let hostile = "a\"b\\c\nd\r\u{1}{\"level\":\"ERROR\"}\u{2028}é";
        let mut out = Vec::new();
        line(&method, hostile, hostile).json(SystemTime::now(), &mut out);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "{}", String::from_utf8_lossy(&out));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["reason"], hostile);
        assert_eq!(v["request_id"], hostile);
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["method"], "PURGE");
    }

    #[test]
    fn durations_keep_microseconds_without_float_noise() {
        for (micros, want) in
            [(0, "0.0"), (1, "0.001"), (1_190, "1.19"), (1_195, "1.195"), (12_000, "12.0"), (100, "0.1")]
        {
            let mut out = Vec::new();
            milliseconds(Duration::from_micros(micros), &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    #[test]
    fn timestamps_follow_the_clock_across_seconds_and_days() {
        for (micros, want) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (951_782_399_999_999, "2000-02-28T23:59:59.999999Z"),
            (951_782_400_000_001, "2000-02-29T00:00:00.000001Z"),
            (1_796_628_765_513_985, "2026-12-07T07:32:45.513985Z"),
        ] {
            let mut out = Vec::new();
            timestamp(UNIX_EPOCH + Duration::from_micros(micros), &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}
