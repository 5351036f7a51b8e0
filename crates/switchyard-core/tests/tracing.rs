//! OpenTelemetry spans of calls and events, through OpenTelemetry's own in-memory exporter: one
//! trace per request, each hop a child of the one that caused it, named and described as the
//! semantic conventions for RPC and messaging say; an event's retries as attempts under its
//! publish, a dead letter linked to the message it stands for. (The same spans exported over
//! OTLP/HTTP are checked by the facade's `otlp` test.)
//!
//! One test function: the tracer provider and the switch are the process's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use switchyard_core::client::Client;
use switchyard_core::context;
use switchyard_core::error::HandlerError;
use switchyard_core::handler::rpc;
use switchyard_core::mem::MemTransport;
use switchyard_core::observe;
use switchyard_core::policy::ConsumerPolicy;
use switchyard_core::server;
use switchyard_core::service::Service;

fn by_name<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found = by_name(spans, name);
    assert_eq!(found.len(), 1, "one span {name:?} in {:#?}", names(spans));
    found[0]
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans.iter().map(|s| s.name.to_string()).collect()
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

async fn spans_settle(exporter: &InMemorySpanExporter, at_least: usize) -> Vec<SpanData> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let spans = exporter.get_finished_spans().expect("spans");
        if spans.len() >= at_least || Instant::now() > until {
            // A moment more: nothing else should come.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return exporter.get_finished_spans().expect("spans");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_makes_a_span_of_one_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());

    let bus = Arc::new(MemTransport::new("tracing-shape"));
    let fast = ConsumerPolicy {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        ..ConsumerPolicy::default()
    };
    let stock = Service::new("stock").route("/reserve", rpc(|n: u32| async move { n }));
    let calls = Client::new(bus.clone()).service("stock");
    let events = Client::new(bus.clone());
    let front = Service::new("front").route(
        "/order",
        rpc(move |n: u32| {
            let (calls, events) = (calls.clone(), events.clone());
            async move {
                let seen = context::current().and_then(|c| c.traceparent().map(str::to_string));
                let reserved: u32 = calls.call("/reserve", n).await?;
                events
                    .publish("orders.placed", &reserved)
                    .await
                    .map_err(|e| HandlerError::internal(e.to_string()))?;
                Ok::<_, HandlerError>((reserved, seen))
            }
        }),
    );
    let handled = Arc::new(AtomicUsize::new(0));
    let tries = Arc::new(AtomicUsize::new(0));
    let (h, t) = (handled.clone(), tries.clone());
    let mailer = Service::new("mailer")
        .consumer_policy(fast)
        .on_event("orders.placed", move |_: u32| {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
            }
        })
        .on_event("orders.flaky", move |_: u32| {
            let t = t.clone();
            async move {
                if t.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(HandlerError::unavailable("not yet"))
                } else {
                    Ok(())
                }
            }
        })
        .on_event("orders.bad", |_: u32| async move {
            Err::<(), _>(HandlerError::bad_request("never"))
        });
    let _stock = server::serve(bus.clone(), stock)
        .await
        .expect("serve stock");
    let _front = server::serve(bus.clone(), front)
        .await
        .expect("serve front");
    let _mailer = server::serve(bus.clone(), mailer)
        .await
        .expect("serve mailer");

    // Off: the context is passed on, and no span is made.
    let client = Client::new(bus.clone()).service("front");
    let (_, seen): (u32, Option<String>) = client.call("/order", 1u32).await.expect("call");
    assert!(
        seen.is_none(),
        "no trace started by a caller outside any handler while off"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(exporter.get_finished_spans().expect("spans").is_empty());

    observe::enable_tracing();
    let (_, seen): (u32, Option<String>) = client.call("/order", 2u32).await.expect("call");
    let spans = spans_settle(&exporter, 6).await;

    let [client_front, server_front] = {
        let both = by_name(&spans, "front/order");
        assert_eq!(
            both.len(),
            2,
            "client and server span: {:#?}",
            names(&spans)
        );
        let client = both.iter().find(|s| s.span_kind == SpanKind::Client);
        let server = both.iter().find(|s| s.span_kind == SpanKind::Server);
        [*client.expect("client span"), *server.expect("server span")]
    };
    let trace = client_front.span_context.trace_id();
    assert_ne!(trace, TraceId::INVALID);
    assert_eq!(
        client_front.parent_span_id,
        SpanId::INVALID,
        "the first hop starts the trace"
    );
    assert_eq!(
        server_front.parent_span_id,
        client_front.span_context.span_id()
    );
    // The handler sees its own span as the trace context.
    let seen = seen.expect("the handler sees a traceparent");
    assert!(
        seen.contains(&format!("{:016x}", server_front.span_context.span_id())),
        "{seen}"
    );

    let stock_calls = by_name(&spans, "stock/reserve");
    let client_stock = stock_calls
        .iter()
        .find(|s| s.span_kind == SpanKind::Client)
        .expect("client span of the nested call");
    let server_stock = stock_calls
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .expect("server span of the nested call");
    assert_eq!(
        client_stock.parent_span_id,
        server_front.span_context.span_id()
    );
    assert_eq!(
        server_stock.parent_span_id,
        client_stock.span_context.span_id()
    );
    assert_eq!(
        attribute(server_stock, "rpc.system").as_deref(),
        Some("switchyard")
    );
    assert_eq!(
        attribute(server_stock, "rpc.service").as_deref(),
        Some("stock")
    );
    assert_eq!(
        attribute(server_stock, "rpc.method").as_deref(),
        Some("/reserve")
    );

    let send = one(&spans, "send orders.placed");
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert_eq!(send.parent_span_id, server_front.span_context.span_id());
    let process = one(&spans, "process orders.placed");
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(process.parent_span_id, send.span_context.span_id());
    assert_eq!(
        attribute(process, "messaging.destination.name").as_deref(),
        Some("orders.placed")
    );
    assert_eq!(
        attribute(process, "messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        attribute(process, "messaging.consumer.group.name").as_deref(),
        Some("mailer")
    );
    // The consumer's receipt of the delivery and its settling: beside the process span,
    // under the message's own context.
    let receive = one(&spans, "receive orders.placed");
    assert_eq!(receive.span_kind, SpanKind::Consumer);
    assert_eq!(receive.parent_span_id, send.span_context.span_id());
    assert_eq!(
        attribute(receive, "messaging.operation.type").as_deref(),
        Some("receive")
    );
    assert!(
        receive.end_time <= process.start_time,
        "received, then handled"
    );
    let ack = one(&spans, "ack orders.placed");
    assert_eq!(ack.span_kind, SpanKind::Client);
    assert_eq!(ack.parent_span_id, send.span_context.span_id());
    assert_eq!(
        attribute(ack, "messaging.operation.type").as_deref(),
        Some("settle")
    );
    assert_eq!(
        attribute(ack, "messaging.operation.name").as_deref(),
        Some("ack")
    );
    assert!(process.end_time <= ack.start_time, "handled, then settled");
    for span in &spans {
        assert_eq!(
            span.span_context.trace_id(),
            trace,
            "one trace: {}",
            span.name
        );
        assert_eq!(span.status, Status::Unset, "{} succeeded", span.name);
    }
    assert_eq!(spans.len(), 8, "{:#?}", names(&spans));
    assert_eq!(handled.load(Ordering::SeqCst), 2);

    // A failed call: the client and server spans say so.
    exporter.reset();
    let missing = Client::new(bus.clone()).service("stock");
    let failed = missing.call::<_, u32>("/reserve", "not a number").await;
    assert!(failed.is_err());
    let spans = spans_settle(&exporter, 2).await;
    let failed = by_name(&spans, "stock/reserve");
    assert_eq!(
        failed.len(),
        2,
        "client and server span: {:#?}",
        names(&spans)
    );
    for span in failed {
        assert!(matches!(span.status, Status::Error { .. }), "{span:?}");
        assert_eq!(
            attribute(span, "error.type").as_deref(),
            Some("bad_request")
        );
    }

    // An event retried: each attempt a process span under the one publish.
    exporter.reset();
    Client::new(bus.clone())
        .publish("orders.flaky", &1u32)
        .await
        .expect("publish");
    let spans = spans_settle(&exporter, 7).await;
    let send = one(&spans, "send orders.flaky");
    let attempts = by_name(&spans, "process orders.flaky");
    assert_eq!(attempts.len(), 2, "{:#?}", names(&spans));
    // Each delivery received, the failed one handed back, the second acknowledged.
    assert_eq!(by_name(&spans, "receive orders.flaky").len(), 2);
    assert_eq!(
        one(&spans, "nack orders.flaky").parent_span_id,
        send.span_context.span_id()
    );
    assert_eq!(
        one(&spans, "ack orders.flaky").parent_span_id,
        send.span_context.span_id()
    );
    assert_eq!(spans.len(), 7, "{:#?}", names(&spans));
    let mut seen_attempts: HashMap<String, &Status> = HashMap::new();
    for attempt in &attempts {
        assert_eq!(attempt.parent_span_id, send.span_context.span_id());
        assert_eq!(
            attempt.span_context.trace_id(),
            send.span_context.trace_id()
        );
        let n = attribute(attempt, "messaging.delivery.attempt").expect("attempt");
        seen_attempts.insert(n, &attempt.status);
    }
    assert!(
        matches!(seen_attempts.get("1"), Some(Status::Error { .. })),
        "{seen_attempts:?}"
    );
    assert_eq!(
        seen_attempts.get("2"),
        Some(&&Status::Unset),
        "{seen_attempts:?}"
    );

    // A dead letter: a producer span in the original's trace, linked to the original.
    exporter.reset();
    Client::new(bus.clone())
        .publish("orders.bad", &1u32)
        .await
        .expect("publish");
    let spans = spans_settle(&exporter, 3).await;
    let send = one(&spans, "send orders.bad");
    let dead = one(&spans, "send orders.bad.dlq");
    assert_eq!(dead.span_kind, SpanKind::Producer);
    assert_eq!(dead.span_context.trace_id(), send.span_context.trace_id());
    let links: Vec<_> = dead
        .links
        .iter()
        .map(|l| l.span_context.span_id())
        .collect();
    assert_eq!(links, vec![send.span_context.span_id()]);

    let _ = provider.shutdown();
}
