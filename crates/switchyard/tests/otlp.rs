//! Spans exported with OTLP over HTTP to a receiver that decodes them with OpenTelemetry's
//! own protocol definitions (`opentelemetry-proto`): a request over HTTP to one service, its
//! nested call in process to another and the event it publishes arrive as one trace, each hop
//! the child of the one before, under the service name given. Without an endpoint nothing is
//! installed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use switchyard::{rpc, Client, HandlerError, Service};

/// A received span: its name, kind, ids and the service that sent it.
#[derive(Clone, Debug)]
struct Received {
    name: String,
    kind: i32,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    service: String,
}

async fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let store = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let store = store.clone();
            async move {
                let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                    return axum::http::StatusCode::BAD_REQUEST;
                };
                let mut got = store.lock().expect("lock");
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| r.attributes.iter())
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            Value::StringValue(s) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            got.push(Received {
                                name: span.name,
                                kind: span.kind,
                                trace: span.trace_id,
                                id: span.span_id,
                                parent: span.parent_span_id,
                                service: service.clone(),
                            });
                        }
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), spans)
}

fn find<'a>(spans: &'a [Received], name: &str, kind: SpanKind) -> &'a Received {
    spans
        .iter()
        .find(|s| s.name == name && s.kind == kind as i32)
        .unwrap_or_else(|| panic!("no {kind:?} span {name:?} in {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_http_receiver_as_one_trace() {
    // Edition 2021: setting the environment is safe; this test is the only one in its process.
    std::env::remove_var("OTEL_EXPORTER_OTLP_ENDPOINT");
    std::env::remove_var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    assert!(
        switchyard::otlp::init_from_env("nothing")
            .expect("init")
            .is_none(),
        "no endpoint, nothing installed"
    );
    assert!(!switchyard::middleware::trace::enabled());

    let (endpoint, received) = receiver().await;
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    std::env::remove_var("OTEL_SERVICE_NAME");
    let tracing = switchyard::otlp::init_from_env("shop")
        .expect("init")
        .expect("an endpoint is set");

    let bus = switchyard::connect("mem://otlp-test").expect("mem");
    let stock = Service::new("stock").route("/reserve", rpc(|n: u32| async move { n }));
    let (calls, events) = (
        Client::new(bus.clone()).service("stock"),
        Client::new(bus.clone()),
    );
    let front = Service::new("front").route(
        "/order",
        rpc(move |n: u32| {
            let (calls, events) = (calls.clone(), events.clone());
            async move {
                let reserved: u32 = calls.call("/reserve", n).await?;
                events
                    .publish("orders.placed", &reserved)
                    .await
                    .map_err(|e| HandlerError::internal(e.to_string()))?;
                Ok::<_, HandlerError>(reserved)
            }
        }),
    );
    let mailer = Service::new("mailer").on_event("orders.placed", |_: u32| async {});
    let _stock = switchyard::serve(&bus, stock).await.expect("stock");
    let _mailer = switchyard::serve(&bus, mailer).await.expect("mailer");
    let http = switchyard::connect("http://127.0.0.1:0").expect("http");
    let served = switchyard::serve(&http, front).await.expect("front");

    let client = Client::new(switchyard::connect(served.url()).expect("url")).service("front");
    let reserved: u32 = client.call("/order", 3u32).await.expect("call");
    assert_eq!(reserved, 3);

    let until = Instant::now() + Duration::from_secs(15);
    let spans = loop {
        tracing.flush();
        let spans = received.lock().expect("lock").clone();
        if spans.len() >= 8 || Instant::now() > until {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let client_front = find(&spans, "front/order", SpanKind::Client);
    let server_front = find(&spans, "front/order", SpanKind::Server);
    let client_stock = find(&spans, "stock/reserve", SpanKind::Client);
    let server_stock = find(&spans, "stock/reserve", SpanKind::Server);
    let send = find(&spans, "send orders.placed", SpanKind::Producer);
    let process = find(&spans, "process orders.placed", SpanKind::Consumer);
    let receive = find(&spans, "receive orders.placed", SpanKind::Consumer);
    let ack = find(&spans, "ack orders.placed", SpanKind::Client);
    assert!(
        client_front.parent.is_empty(),
        "the first hop starts the trace"
    );
    assert_eq!(server_front.parent, client_front.id, "over HTTP");
    assert_eq!(client_stock.parent, server_front.id);
    assert_eq!(server_stock.parent, client_stock.id, "in process");
    assert_eq!(send.parent, server_front.id);
    assert_eq!(process.parent, send.id);
    assert_eq!(receive.parent, send.id);
    assert_eq!(ack.parent, send.id);
    let traces: HashMap<&[u8], usize> = spans.iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(s.trace.as_slice()).or_default() += 1;
        m
    });
    assert_eq!(traces.len(), 1, "one trace: {spans:#?}");
    assert_eq!(spans.len(), 8, "{spans:#?}");
    assert!(spans.iter().all(|s| s.service == "shop"), "{spans:#?}");
    drop(tracing);
    assert!(!switchyard::middleware::trace::enabled());
}
