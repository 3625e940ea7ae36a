//! Request ids: the `X-Request-Id` every request and response carries, and the access line logs.
//!
//! Owns: accepting a caller's sane id and making new ones (a random prefix per process and a
//! counter per worker thread: unique across replicas and restarts, no random-number syscall
//! and no counter another worker writes per request). Must
//! not: log or read anything else of the request.

use http::header::Entry;
use http::{HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// New request ids: a random prefix per process and a counter, so that ids are unique across
/// replicas and restarts without a random-number syscall per request.
pub struct RequestIds {
    prefix: [u8; 12],
    /// One counter per worker slot (worker `i` counts in slot `i % SLOTS`), each on its own
    /// cache line; an id's top byte is its slot.
    next: [Counter; SLOTS],
}

const SLOTS: usize = 16;

/// A counter alone on its cache line (two workers' counters never share one).
#[derive(Default)]
#[repr(align(128))]
struct Counter(std::sync::atomic::AtomicU64);

impl Default for RequestIds {
    fn default() -> Self {
        let mut prefix = [0u8; 12];
        let random = uuid::Uuid::new_v4().simple().to_string();
        prefix.copy_from_slice(&random.as_bytes()[..12]);
        RequestIds { prefix, next: Default::default() }
    }
}

impl RequestIds {
    /// The request's id, left in `headers` as its one `X-Request-Id`: the caller's (its first)
    /// when it is sane (1..=128 visible characters), else a new one. One lookup of the name.
    /// `worker`: the thread serving the request.
    pub fn for_request(&self, headers: &mut HeaderMap, worker: usize) -> HeaderValue {
        let sane = |v: &HeaderValue| {
            let b = v.as_bytes();
            !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:/+=".contains(c))
        };
        match headers.entry(&X_REQUEST_ID) {
            Entry::Occupied(mut e) if sane(e.get()) => {
                let id = e.get().clone();
                if e.iter().nth(1).is_some() {
                    e.insert(id.clone());
                }
                id
            }
            Entry::Occupied(mut e) => {
                let id = self.next_id(worker);
                e.insert(id.clone());
                id
            }
            Entry::Vacant(e) => e.insert(self.next_id(worker)).clone(),
        }
    }

    /// `<12 hex digits>-<16 hex digits>`: the prefix, then the worker's slot (2 digits) and its
    /// count (14 digits).
    fn next_id(&self, worker: usize) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let slot = worker % SLOTS;
        let count = self.next[slot].0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & ((1 << 56) - 1);
        let n = (slot as u64) << 56 | count;
        let mut id = [0u8; 29];
        id[..12].copy_from_slice(&self.prefix);
        id[12] = b'-';
        for (i, slot) in id[13..].iter_mut().enumerate() {
            *slot = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("-"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_keep_a_sane_caller_id() {
        let ids = RequestIds::default();
        let (a, b) = (ids.next_id(0), ids.next_id(0));
        assert_ne!(a, b);
        assert_eq!(a.len(), 29);
        assert_eq!(&a.as_bytes()[..13], &b.as_bytes()[..13], "one prefix per process");
        assert!(a.to_str().unwrap().ends_with("-0000000000000000"), "{a:?}");
        assert!(b.to_str().unwrap().ends_with("-0000000000000001"), "{b:?}");
        assert_ne!(RequestIds::default().next_id(0), a, "another process has another prefix");
        let other = ids.next_id(1).to_str().unwrap().to_string();
        assert!(other.ends_with("-0100000000000000"), "worker 1 counts apart: {other}");
        assert_ne!(ids.next_id(SLOTS + 1), other, "workers sharing a slot share its counter");
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(ids.for_request(&mut h, 0), "abc-123");
        assert_eq!(h.get_all(&X_REQUEST_ID).iter().collect::<Vec<_>>(), ["abc-123"]);
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc 123"));
        let new = ids.for_request(&mut h, 0);
        assert_ne!(new, "abc 123", "an insane id is replaced");
        assert_eq!(h.get_all(&X_REQUEST_ID).iter().collect::<Vec<_>>(), [&new], "in the request too");
        h.append(&X_REQUEST_ID, HeaderValue::from_static("second"));
        assert_eq!(ids.for_request(&mut h, 0), new, "the first of two");
        assert_eq!(h.get_all(&X_REQUEST_ID).iter().collect::<Vec<_>>(), [&new], "one left");
        let mut h = HeaderMap::new();
        let made = ids.for_request(&mut h, 0);
        assert_eq!(h.get_all(&X_REQUEST_ID).iter().collect::<Vec<_>>(), [&made], "none: a new one, set");
    }
}
