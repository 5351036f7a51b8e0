//! Three services on three transports, traced: `front` answers `/order` over HTTP, calls
//! `stock`'s `/reserve` over NATS and publishes `orders.placed`, which `mailer` handles from
//! Redis. Each request is one trace.
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set (e.g. `http://127.0.0.1:4318`, a collector or Jaeger),
//! the spans are exported there with OTLP; without it, each trace is printed as a tree.
//!
//! `cargo run -p switchyard-examples --features brokers --example observability [-- FRONT STOCK EVENTS]`
//! (transport URLs; a broker transport this build lacks is replaced by an in-process one).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use switchyard::{rpc, Client, HandlerError, Service, Transport};

/// `url`'s transport, or an in-process one when this build cannot speak it.
fn transport(url: &str, fallback: &str) -> Result<Arc<dyn Transport>, switchyard::TransportError> {
    switchyard::connect(url).or_else(|e| {
        eprintln!("{url}: {e}; using {fallback} instead");
        switchyard::connect(fallback)
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let front_url = args.next().unwrap_or_else(|| "http://127.0.0.1:0".into());
    let stock_url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let events_url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());

    // OTLP when the environment names an endpoint; otherwise spans are kept here and printed.
    let exported = switchyard::otlp::init_from_env("observability-example")?;
    let kept = InMemorySpanExporter::default();
    let provider = match exported {
        Some(_) => None,
        None => {
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(kept.clone())
                .build();
            opentelemetry::global::set_tracer_provider(provider.clone());
            switchyard::observe::enable_tracing();
            Some(provider)
        }
    };

    let stock_bus = transport(&stock_url, "mem://stock")?;
    let events_bus = transport(&events_url, "mem://events")?;
    let stock = Service::new("stock").route("/reserve", rpc(|n: u32| async move { n * 10 }));
    let handled = Arc::new(AtomicUsize::new(0));
    let count = handled.clone();
    let mailer = Service::new("mailer").on_event("orders.placed", move |_: u32| {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    let (calls, events) = (
        Client::new(stock_bus.clone()).service("stock"),
        Client::new(events_bus.clone()),
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
                    .map_err(|e| HandlerError::unavailable(e.to_string()))?;
                Ok::<_, HandlerError>(reserved)
            }
        }),
    );
    let stock = switchyard::serve(&stock_bus, stock).await?;
    let mailer = switchyard::serve(&events_bus, mailer).await?;
    let front = switchyard::serve(&transport(&front_url, "http://127.0.0.1:0")?, front).await?;

    let client = Client::new(switchyard::connect(front.url())?).service("front");
    for n in 1..=2u32 {
        let reserved: u32 = client.call("/order", n).await?;
        println!("order {n}: reserved {reserved}");
    }
    let until = Instant::now() + Duration::from_secs(10);
    while handled.load(Ordering::SeqCst) < 2 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    front.shutdown().await;
    mailer.shutdown().await;
    stock.shutdown().await;

    match exported {
        Some(tracing) => {
            tracing.flush();
            println!("spans exported with OTLP (one trace per order)");
        }
        None => {
            let spans = kept.get_finished_spans()?;
            print_traces(&spans);
            if let Some(provider) = provider {
                let _ = provider.shutdown();
            }
        }
    }
    Ok(())
}

/// Prints each trace as a tree of its spans, children under their parent, in start order.
fn print_traces(spans: &[SpanData]) {
    let mut traces: Vec<TraceId> = Vec::new();
    for s in spans {
        if !traces.contains(&s.span_context.trace_id()) {
            traces.push(s.span_context.trace_id());
        }
    }
    let mut children: HashMap<SpanId, Vec<&SpanData>> = HashMap::new();
    for s in spans {
        children.entry(s.parent_span_id).or_default().push(s);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s.start_time);
    }
    println!("{} traces", traces.len());
    for trace in traces {
        println!("trace {trace:032x}");
        let known: Vec<SpanId> = spans.iter().map(|s| s.span_context.span_id()).collect();
        let roots = spans
            .iter()
            .filter(|s| s.span_context.trace_id() == trace && !known.contains(&s.parent_span_id));
        for root in roots {
            print_span(root, &children, 1);
        }
    }
}

fn print_span(span: &SpanData, children: &HashMap<SpanId, Vec<&SpanData>>, depth: usize) {
    let took = span
        .end_time
        .duration_since(span.start_time)
        .unwrap_or_default();
    let kind = format!("{:?}", span.span_kind).to_lowercase();
    println!(
        "{:indent$}{} ({kind}, {:.1} ms)",
        "",
        span.name,
        took.as_secs_f64() * 1e3,
        indent = depth * 2
    );
    for child in children
        .get(&span.span_context.span_id())
        .into_iter()
        .flatten()
    {
        print_span(child, children, depth + 1);
    }
}
