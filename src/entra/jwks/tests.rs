//! Unit tests.

use super::*;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

const GOOD_N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

fn doc(kids: &[&str]) -> String {
    let keys: Vec<serde_json::Value> = kids
        .iter()
        .map(|k| serde_json::json!({"kty": "RSA", "use": "sig", "kid": k, "n": GOOD_N, "e": "AQAB"}))
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// A key source whose published kids and availability the test sets; counts fetches.
struct Fake {
    kids: Mutex<Vec<String>>,
    down: std::sync::atomic::AtomicBool,
    fetches: AtomicUsize,
    /// Fetches wait for this many `gate` permits (0: no waiting).
    hold: AtomicU32,
    gate: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl KeySource for Fake {
    async fn fetch(&self, _tid: &str, _want: Option<&str>) -> Result<Arc<KeySet>, String> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        if self.hold.load(Ordering::SeqCst) > 0 {
            let _ = self.gate.acquire().await.map(|p| p.forget());
        }
        if self.down.load(Ordering::SeqCst) {
            return Err("HTTP 503".into());
        }
        let kids = self.kids.lock().unwrap().clone();
        let kids: Vec<&str> = kids.iter().map(String::as_str).collect();
        KeySet::parse(doc(&kids).as_bytes()).map(Arc::new)
    }
}

fn cache(fake: &Arc<Fake>, ttl: Duration, max_stale: Duration) -> JwksCache {
    JwksCache::with_source(fake.clone(), ttl, max_stale, Metrics::new())
}

fn fake(kids: &[&str]) -> Arc<Fake> {
    let f = Fake {
        kids: Mutex::default(),
        down: Default::default(),
        fetches: Default::default(),
        hold: Default::default(),
        gate: tokio::sync::Semaphore::new(0),
    };
    *f.kids.lock().unwrap() = kids.iter().map(|k| k.to_string()).collect();
    Arc::new(f)
}

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test(start_paused = true)]
async fn an_unknown_kid_refetches_once_per_cooldown_and_a_rotation_is_found() {
    let f = fake(&["k1"]);
    let c = cache(&f, DAY, DAY);
    assert!(c.key("t", "k1").await.is_ok());
    assert_eq!(f.fetches.load(Ordering::SeqCst), 1);
    assert_eq!(c.key("t", "random-1").await.err(), Some(JwksError::UnknownKid));
    assert_eq!(f.fetches.load(Ordering::SeqCst), 2, "one refetch for the miss");
    // A real rotation inside the cooldown is refused without a fetch...
    f.kids.lock().unwrap().push("k2".into());
    tokio::time::advance(UNKNOWN_KID_COOLDOWN - Duration::from_secs(1)).await;
    assert_eq!(c.key("t", "k2").await.err(), Some(JwksError::UnknownKid));
    assert_eq!(f.fetches.load(Ordering::SeqCst), 2);
    // ...and found right after it.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(c.key("t", "k2").await.is_ok());
    assert_eq!(f.fetches.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_kid_already_tried_and_more_than_the_cap_of_distinct_kids_do_not_refetch() {
    let f = fake(&["k1"]);
    let c = cache(&f, DAY, DAY);
    c.key("t", "k1").await.unwrap();
    for i in 0..MAX_UNKNOWN_KIDS {
        tokio::time::advance(UNKNOWN_KID_COOLDOWN).await;
        let _ = c.key("t", &format!("random-{i}")).await;
    }
    assert_eq!(f.fetches.load(Ordering::SeqCst), 1 + MAX_UNKNOWN_KIDS);
    tokio::time::advance(UNKNOWN_KID_COOLDOWN).await;
    let _ = c.key("t", "random-0").await;
    let _ = c.key("t", "one-more").await;
    assert_eq!(f.fetches.load(Ordering::SeqCst), 1 + MAX_UNKNOWN_KIDS, "capped within the window");
    // A new window allows refetches again.
    tokio::time::advance(UNKNOWN_KID_WINDOW).await;
    f.kids.lock().unwrap().push("k2".into());
    assert!(c.key("t", "k2").await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn misses_during_a_refetch_join_it_instead_of_being_refused() {
    let f = fake(&["k1"]);
    let c = cache(&f, DAY, DAY);
    c.key("t", "k1").await.unwrap();
    f.kids.lock().unwrap().push("k2".into());
    f.hold.store(1, Ordering::SeqCst);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.key("t", "k2").await.is_ok() })
        })
        .collect();
    // Let every task reach the miss, then release the one fetch.
    while f.fetches.load(Ordering::SeqCst) < 2 {
        tokio::task::yield_now().await;
    }
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    f.gate.add_permits(1);
    for t in tasks {
        assert!(t.await.unwrap(), "a concurrent sign-in with the new key was refused");
    }
    assert_eq!(f.fetches.load(Ordering::SeqCst), 2, "one refetch for all of them");
}

#[tokio::test(start_paused = true)]
async fn a_miss_right_after_another_refetch_sees_its_keys() {
    let f = fake(&["k1"]);
    let c = cache(&f, DAY, DAY);
    let old = c.current("t").await.unwrap();
    f.kids.lock().unwrap().push("k2".into());
    // Another request refetched (forced) and finished; this one still holds `old`.
    assert!(c.key("t", "k2").await.is_ok());
    assert!(old.get("k2").is_none());
    assert!(matches!(c.on_miss("t", "k2"), OnMiss::Found), "the newest set is consulted before the cooldown");
}

#[tokio::test(start_paused = true)]
async fn stale_keys_serve_during_an_outage_within_max_stale_then_fail_closed() {
    let f = fake(&["k1"]);
    let ttl = Duration::from_secs(3600);
    let c = cache(&f, ttl, Duration::from_secs(7200));
    c.key("t", "k1").await.unwrap();
    f.down.store(true, Ordering::SeqCst);
    tokio::time::advance(ttl).await;
    assert!(c.key("t", "k1").await.is_ok(), "stale keys serve while the refresh fails");
    assert_eq!(f.fetches.load(Ordering::SeqCst), 2);
    for _ in 0..5 {
        assert!(c.key("t", "k1").await.is_ok());
    }
    assert_eq!(f.fetches.load(Ordering::SeqCst), 2, "no refetch within the back-off");
    tokio::time::advance(FAILED_REFRESH_BACKOFF - Duration::from_secs(1)).await;
    assert!(c.key("t", "k1").await.is_ok());
    assert_eq!(f.fetches.load(Ordering::SeqCst), 2, "one second before the back-off ends");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(c.key("t", "k1").await.is_ok());
    assert_eq!(f.fetches.load(Ordering::SeqCst), 3, "after the back-off, one more try");
    assert!(c.has_keys("t"));
    tokio::time::advance(Duration::from_secs(7199 - FAILED_REFRESH_BACKOFF.as_secs())).await;
    assert!(c.key("t", "k1").await.is_ok(), "one second before max_stale");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(matches!(c.key("t", "k1").await, Err(JwksError::Unavailable(_))), "too old: fail closed");
    assert!(!c.has_keys("t"));
    f.down.store(false, Ordering::SeqCst);
    tokio::time::advance(FAILED_REFRESH_BACKOFF).await;
    assert!(c.key("t", "k1").await.is_ok(), "recovers once Entra answers");
}

#[test]
fn jwks_parsing_keeps_rsa_signature_keys_and_their_issuer() {
    let doc = format!(
        r#"{{"keys":[
        {{"kty":"RSA","use":"enc","kid":"enc","n":"sXch","e":"AQAB"}},
        {{"kty":"EC","kid":"ec","crv":"P-256","x":"a","y":"b"}},
        {{"kty":"RSA","use":"sig","kid":"good","n":"{GOOD_N}","e":"AQAB","issuer":"https://login.example/{{tenantid}}/v2.0"}}
    ]}}"#
    );
    let set = KeySet::parse(doc.as_bytes()).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(set.get("good").unwrap().issuer.as_deref(), Some("https://login.example/{tenantid}/v2.0"));
    assert!(KeySet::parse(br#"{"keys":[]}"#).is_err());
    assert!(KeySet::parse(b"<html>").is_err());
}
