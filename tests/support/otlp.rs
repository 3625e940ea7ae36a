//! An OTLP receiver on a loopback socket, for OTLP/HTTP (`POST /v1/traces`, protobuf) and
//! OTLP/gRPC (HTTP/2 `TraceService/Export`, length-prefixed protobuf, `grpc-status` trailer):
//! it decodes each body as the `ExportTraceServiceRequest` of the official OpenTelemetry
//! definitions (the `opentelemetry-proto` crate is generated from them) and keeps every span.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

/// One received span with the `service.name` of its resource.
#[derive(Debug, Clone)]
pub struct Received {
    pub service: String,
    pub span: Span,
}

impl Received {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    /// A string or integer attribute, as text.
    pub fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| value_text(kv.value.as_ref()?.value.as_ref()?))
    }
    /// Every attribute value as text (to search for what must never be there).
    pub fn all_values(&self) -> Vec<String> {
        let mut out = vec![self.span.name.clone()];
        out.extend(self.span.attributes.iter().filter_map(|kv| value_text(kv.value.as_ref()?.value.as_ref()?)));
        out.extend(self.span.status.iter().map(|s| s.message.clone()));
        out
    }
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub struct OtlpReceiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    /// Bodies that did not decode (a test asserts none).
    pub bad: Arc<Mutex<Vec<String>>>,
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let bad: Arc<Mutex<Vec<String>>> = Arc::default();
        let (s, b) = (spans.clone(), bad.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (s, b) = (s.clone(), b.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (s, b) = (s.clone(), b.clone());
                        async move { Ok::<_, Infallible>(receive(req, &s, &b).await) }
                    });
                    let auto = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                    let _ = auto.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        OtlpReceiver { addr, spans, bad }
    }

    /// The base URL (`telemetry.otlp_endpoint`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<Received> {
        self.spans().into_iter().filter(|s| s.trace_id() == trace_id).collect()
    }
}

type Body = BoxBody<Bytes, Infallible>;

const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

async fn receive(req: Request<Incoming>, spans: &Mutex<Vec<Received>>, bad: &Mutex<Vec<String>>) -> Response<Body> {
    let content_type =
        req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let grpc = req.version() == http::Version::HTTP_2
        && req.uri().path() == GRPC_EXPORT
        && content_type.starts_with("application/grpc");
    let http = req.uri().path() == "/v1/traces" && content_type == "application/x-protobuf";
    let ok = req.method() == http::Method::POST && (grpc || http);
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if !ok {
        bad.lock().unwrap().push(format!("not an OTLP export: {content_type}"));
        let empty = Full::new(Bytes::new()).boxed();
        return Response::builder().status(StatusCode::NOT_FOUND).body(empty).unwrap();
    }
    // gRPC: a 5-byte prefix (compressed flag, big-endian length) before the message.
    let message = match grpc {
        true if body.len() >= 5 && body[0] == 0 => body.slice(5..),
        true => {
            bad.lock().unwrap().push("a compressed or short gRPC frame".into());
            Bytes::new()
        }
        false => body,
    };
    decode(message, spans, bad);
    if grpc {
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
            Ok(Frame::trailers({
                let mut t = http::HeaderMap::new();
                t.insert("grpc-status", http::HeaderValue::from_static("0"));
                t
            })),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
        return Response::builder().header(http::header::CONTENT_TYPE, "application/grpc").body(body).unwrap();
    }
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

fn decode(message: Bytes, spans: &Mutex<Vec<Received>>, bad: &Mutex<Vec<String>>) {
    match ExportTraceServiceRequest::decode(message) {
        Ok(export) => {
            let mut kept = spans.lock().unwrap();
            for rs in export.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| value_text(kv.value.as_ref()?.value.as_ref()?))
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    kept.extend(ss.spans.into_iter().map(|span| Received { service: service.clone(), span }));
                }
            }
        }
        Err(e) => bad.lock().unwrap().push(e.to_string()),
    }
}
