//! OpenTelemetry traces: the exporter, the sampler, W3C trace context in and out, and the
//! spans of a request.
//!
//! Owns: the tracer provider built from `telemetry.*` and the standard `OTEL_*` variables
//! (OTLP/HTTP protobuf or gRPC, batch export on the SDK's own thread, flushed at shutdown);
//! the request's server span, whose parent comes from `traceparent`/`tracestate` only when the
//! peer is a trusted proxy (otherwise a new trace); child spans opened where the work is
//! ([`Span::child`]: nothing unless the current context holds a sampled span: the tracer
//! travels in that context, so no global holds it); and the trace context an upstream gets
//! (always ours when traces are on; a client's own is dropped unless its peer is trusted).
//! Must not: put a token, a name, an e-mail address or a URL into an attribute; cost a request
//! anything when traces are off (no span, no context, no allocation).

use std::borrow::Cow;
use std::future::Future;

use futures_util::future::Either;
use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{FutureExt, Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::config::{OtlpProtocol, OtlpTarget, TelemetrySettings};

/// The W3C trace context headers.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The process's traces: off, or a provider and its tracer.
pub struct Telemetry {
    inner: Option<(SdkTracerProvider, SdkTracer)>,
}

/// The tracer, carried in a traced request's context so that child spans find it.
#[derive(Clone)]
struct TracerHandle(SdkTracer);

impl Telemetry {
    /// Traces off: every method is a no-op.
    pub fn off() -> Telemetry {
        Telemetry { inner: None }
    }

    /// Builds the exporter and the provider (inside a Tokio runtime: the gRPC client needs one).
    /// `tls`: the roots of outbound calls (system + `server.tls.extra_ca_file`), for an
    /// `https://` receiver; `extra_ca` the same extra CAs for gRPC's own TLS stack.
    pub fn start(
        settings: &TelemetrySettings,
        tls: rustls::ClientConfig,
        extra_ca: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Telemetry, String> {
        let Some(target) = &settings.exporter else { return Ok(Telemetry::off()) };
        let exporter = exporter(target, tls, extra_ca)?;
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(settings.service_name.clone()).build();
        let mut builder = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource);
        if let Some(ratio) = settings.sample_ratio {
            builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))));
        }
        let provider = builder.build();
        let tracer = provider.tracer("entra-gateway");
        tracing::info!(
            protocol = ?target.protocol,
            endpoint = target.endpoint.as_deref().unwrap_or("(OTEL_EXPORTER_OTLP_ENDPOINT)"),
            "OpenTelemetry traces on"
        );
        Ok(Telemetry { inner: Some((provider, tracer)) })
    }

    /// The server span of a request (`None` when traces are off, and `trusted` is not asked).
    /// Its parent is the caller's `traceparent` only when `trusted()` (the peer is in
    /// `server.trusted_proxies`).
    pub fn request(&self, method: &http::Method, headers: &HeaderMap, trusted: impl FnOnce() -> bool) -> Option<Span> {
        let (_, tracer) = self.inner.as_ref()?;
        let parent = match trusted() {
            true => TraceContextPropagator::new().extract(&HeaderExtractor(headers)),
            false => Context::new(),
        };
        let span =
            tracer.span_builder(method_name(method)).with_kind(SpanKind::Server).start_with_context(tracer, &parent);
        if !span.span_context().is_sampled() {
            // Not recorded: the context only carries the trace id on (logs, the upstream).
            return Some(Span { cx: parent.with_span(span) });
        }
        let cx = parent.with_span(span).with_value(TracerHandle(tracer.clone()));
        cx.span().set_attribute(KeyValue::new("http.request.method", method_name(method)));
        Some(Span { cx })
    }

    /// Sends what is buffered and stops the exporter (at shutdown; blocks up to its timeout).
    pub fn shutdown(&self) {
        if let Some((provider, _)) = &self.inner
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "OpenTelemetry: spans not flushed at shutdown");
        }
    }
}

/// The method as a static name (no allocation per request); `_OTHER` as the conventions say.
fn method_name(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "_OTHER",
    }
}

fn exporter(
    target: &OtlpTarget,
    tls: rustls::ClientConfig,
    extra_ca: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
    let built = match target.protocol {
        OtlpProtocol::Http => {
            // reqwest's blocking client owns a runtime: build it off this one.
            let client = std::thread::spawn(move || {
                reqwest::blocking::Client::builder()
                    .tls_backend_preconfigured(tls)
                    .timeout(std::time::Duration::from_secs(10))
                    .build()
            })
            .join()
            .map_err(|_| "OTLP HTTP client: the thread building it panicked".to_string())?
            .map_err(|e| format!("OTLP HTTP client: {e}"))?;
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(client);
            if let Some(endpoint) = &target.endpoint {
                b = b.with_endpoint(endpoint.clone());
            }
            b.build()
        }
        OtlpProtocol::Grpc => {
            use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
            let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(endpoint) = &target.endpoint {
                if endpoint.starts_with("https://") {
                    let mut tls = ClientTlsConfig::new().with_native_roots();
                    for ca in extra_ca {
                        let pem = pem::encode(&pem::Pem::new("CERTIFICATE", ca.to_vec()));
                        tls = tls.ca_certificate(Certificate::from_pem(pem));
                    }
                    b = b.with_tls_config(tls);
                }
                b = b.with_endpoint(endpoint.clone());
            }
            b.build()
        }
    };
    built.map_err(|e| format!("OTLP exporter: {e}"))
}

/// A span and the context it is current in; the span ends when this is dropped.
pub struct Span {
    cx: Context,
}

impl Span {
    /// A child of the current context's span, when that span is sampled (else `None`: no
    /// allocation, nothing recorded).
    pub fn child(name: &'static str, kind: SpanKind) -> Option<Span> {
        Context::map_current(|cx| {
            if !cx.span().span_context().is_sampled() {
                return None;
            }
            let TracerHandle(tracer) = cx.get::<TracerHandle>()?;
            let span = tracer.span_builder(name).with_kind(kind).start_with_context(tracer, cx);
            Some(Span { cx: cx.with_span(span) })
        })
    }

    /// Whether attributes are kept (the span is sampled).
    pub fn is_recording(&self) -> bool {
        self.cx.span().is_recording()
    }

    pub fn set(&self, attribute: KeyValue) {
        self.cx.span().set_attribute(attribute);
    }

    pub fn rename(&self, name: String) {
        self.cx.span().update_name(name);
    }

    /// Marks the span failed; `why` must hold no token, name or URL.
    pub fn fail(&self, why: impl Into<Cow<'static, str>>) {
        self.cx.span().set_status(Status::error(why));
    }

    /// The trace id (32 hex digits), for log lines.
    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    /// Sets `traceparent` (and `tracestate`) of this span on an outgoing request.
    pub fn inject(&self, headers: &mut HeaderMap) {
        TraceContextPropagator::new().inject_context(&self.cx, &mut HeaderInjector(headers));
    }

    /// Runs `fut` with this span current (its children are this span's).
    pub fn run<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> {
        fut.with_context(self.cx.clone())
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.cx.span().end();
    }
}

/// Runs `fut` inside a child span of the current one (a plain `fut` when there is none).
pub fn in_child<F: Future>(name: &'static str, kind: SpanKind, fut: F) -> impl Future<Output = F::Output> {
    match Span::child(name, kind) {
        Some(span) => Either::Left(async move { span.run(fut).await }),
        None => Either::Right(fut),
    }
}

/// The trace context an upstream gets: a client span of the current request (when traces are
/// on), whose `traceparent` replaces the caller's; with traces off, the caller's own only when
/// its peer is trusted. Returns the client span (ended when dropped, after the upstream answered).
pub fn to_upstream(headers: &mut HeaderMap, trusted_peer: bool) -> Option<Span> {
    let current = Context::map_current(|cx| cx.has_active_span().then(|| cx.clone()));
    let Some(cx) = current else {
        // One look at the names (a removal hashes its name; most requests carry neither).
        if !trusted_peer && headers.keys().any(|n| n.as_str().starts_with("trace")) {
            headers.remove(&TRACEPARENT);
            headers.remove(&TRACESTATE);
        }
        return None;
    };
    headers.remove(&TRACEPARENT);
    headers.remove(&TRACESTATE);
    match Span::child("upstream", SpanKind::Client) {
        Some(span) => {
            span.inject(headers);
            Some(span)
        }
        None => {
            // Not sampled: the upstream still joins the trace (with the "not sampled" flag).
            TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
            None
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_traces_off_nothing_is_created_and_an_untrusted_callers_context_is_dropped() {
        let t = Telemetry::off();
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap());
        assert!(t.request(&http::Method::GET, &h, || unreachable!("not asked when traces are off")).is_none());
        assert!(Span::child("x", SpanKind::Internal).is_none());
        let mut trusted = h.clone();
        assert!(to_upstream(&mut trusted, true).is_none());
        assert!(trusted.contains_key(&TRACEPARENT), "a trusted proxy's context passes");
        assert!(to_upstream(&mut h, false).is_none());
        assert!(!h.contains_key(&TRACEPARENT), "an untrusted client's is dropped");
    }
}
