//! Outbound calls (Entra, Graph): rendering why one failed.
//!
//! Owns: the cause chain of an error (`error sending request` → `dns error` / `connection
//! refused` / `invalid peer certificate`), so that a log line says why, not just that, a call
//! failed. Must not: include URLs with secrets or any token (reqwest's URL is stripped; our
//! URLs carry no secrets).

/// `outer: cause: root cause`, URLs left out.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(e);
    while let Some(err) = current {
        let text = match err.downcast_ref::<reqwest::Error>() {
            Some(r) => reqwest_kind(r).to_string(),
            None => err.to_string(),
        };
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

fn reqwest_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connect failed"
    } else if e.is_decode() {
        "invalid body"
    } else if e.is_body() {
        "body error"
    } else if e.is_redirect() {
        "redirect refused"
    } else {
        "request failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_names_its_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/x")).send().await.unwrap_err();
        let chain = error_chain(&err);
        assert!(chain.starts_with("connect failed: "), "{chain}");
        assert!(chain.to_lowercase().contains("refused"), "{chain}");
        assert!(!chain.contains("127.0.0.1"), "no URL: {chain}");
    }
}
