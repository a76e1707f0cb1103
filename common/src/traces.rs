//! Traces: OpenTelemetry spans exported over OTLP/HTTP (protobuf), configured by the standard
//! `OTEL_*` variables and off unless an endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
//!
//! One trace per execution: whoever creates the execution (the CLI, an API request, the
//! scheduler) records its span's W3C `traceparent` in the execution's spec, and every
//! coordinator and agent that works on it parents its spans there ([`adopt`]). A link stream
//! carries the sending shard's `traceparent` in its HELLO, so the writer's side joins too.
//!
//! The exporter never blocks a transfer: spans go to the SDK's batch processor, which runs on
//! its own thread with a bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2,048) and drops
//! spans when the collector cannot keep up. What is exported: ferry's own spans (executions,
//! phases, shards, Store requests, link streams) and the S3 client's one span per operation;
//! events at WARN and above, as span events. Per-file work gets no span of its own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Level, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The provider of this process, kept to flush it at exit.
static PROVIDER: Mutex<Option<SdkTracerProvider>> = Mutex::new(None);

/// How long [`shutdown`] waits for the last spans to leave: an unreachable collector must not
/// hold up a process that has finished its work.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// Whether the environment (`env`) asks for traces, or why it cannot have them.
fn wanted(env: impl Fn(&str) -> Option<String>) -> Result<bool, String> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    match env("OTEL_TRACES_EXPORTER").as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(false),
        Some(other) => return Err(format!("OTEL_TRACES_EXPORTER={other} is not supported: ferry exports traces with otlp (or set none)")),
    }
    let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(p) = protocol.filter(|p| p != "http/protobuf") {
        return Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={p} is not supported: ferry sends OTLP over HTTP; set http/protobuf and the collector's HTTP port (4318)"
        ));
    }
    Ok(env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT")).is_some())
}

/// Which spans and events go to the exporter: ferry's spans (not the long-lived per-mover
/// span, which would be one span as long as the execution with nothing of its own), the S3
/// client's per-operation span, and ferry's warnings and errors as span events.
fn exported(meta: &tracing::Metadata<'_>) -> bool {
    let ours = meta.target().starts_with("ferry");
    if meta.is_span() {
        (ours && !matches!(meta.name(), "mover" | "detached")) || (meta.target().starts_with("aws_sdk_s3::operation") && meta.name().starts_with("S3."))
    } else {
        ours && *meta.level() <= Level::WARN
    }
}

/// The exporting layer for `service` (`ferry`, `ferry-coordinator`, `ferry-worker`), when the
/// environment asks for one. `instance` names this process among its peers (an agent's name).
/// A configuration ferry cannot honour is reported on stderr, and the process runs without
/// traces rather than not at all.
pub fn layer<S>(service: &'static str, instance: &str) -> Option<Box<dyn Layer<S> + Send + Sync>>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    match wanted(env) {
        Ok(true) => {}
        Ok(false) => return None,
        Err(why) => {
            eprintln!("{service}: warning: traces are off: {why}");
            return None;
        }
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{service}: warning: traces are off: the OTLP exporter cannot start: {e} (check OTEL_EXPORTER_OTLP_ENDPOINT)");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    // OTEL_SERVICE_NAME, when set, wins (the environment detector reads it).
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let mut attrs = vec![opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    if !instance.is_empty() {
        attrs.push(opentelemetry::KeyValue::new("service.instance.id", instance.to_string()));
    }
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.with_attributes(attrs).build()).build();
    let tracer = provider.tracer("ferry");
    *PROVIDER.lock().unwrap_or_else(|p| p.into_inner()) = Some(provider);
    Some(tracing_opentelemetry::layer().with_tracer(tracer).with_threads(false).with_filter(FilterFn::new(exported)).boxed())
}

/// Sends the spans still queued and stops the exporter, waiting at most [`SHUTDOWN_WAIT`].
/// Call once, at the end of `main`. Runs on a thread of its own: the blocking HTTP client
/// must not be driven (or dropped) from inside an async runtime.
pub fn shutdown() {
    let Some(provider) = PROVIDER.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = provider.shutdown_with_timeout(SHUTDOWN_WAIT);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(SHUTDOWN_WAIT + Duration::from_secs(1));
}

/// The W3C `traceparent` of `span`, when it is being traced.
pub fn traceparent_of(span: &Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The `traceparent` of the current span.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&Span::current())
}

/// Makes `span` a child of the remote span `traceparent` (from an execution's spec or a
/// link's HELLO). Does nothing without one, or when traces are off; a malformed value is
/// ignored (it comes from a peer, and a trace is not worth failing a transfer for).
pub fn adopt(span: &Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else { return };
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_string(), tp.to_string());
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Whether the current span is part of a trace. Work that runs outside any (lease keep-alives,
/// idle polls) gets no spans: each would be a trace of its own, and noise.
pub fn in_trace() -> bool {
    opentelemetry::Context::current().span().span_context().is_valid()
}

/// Runs `f` outside the current span. For calls that spawn long-lived tasks carrying the
/// current span with them (quinn's connection driver does): a shard's span would otherwise
/// stay open, and unexported, for as long as the connection lives.
pub fn detached<T>(f: impl FnOnce() -> T) -> T {
    // INFO, so that a daemon's layers enable it and it becomes the current span; not exported.
    tracing::info_span!(parent: None, "detached").in_scope(f)
}

/// The trace and span IDs of the current span (hex), for log lines.
pub fn current_ids() -> Option<(String, String)> {
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::trace::InMemorySpanExporter;
    use tracing_subscriber::layer::SubscriberExt;

    /// A span adopted from a traceparent joins that trace under that parent, and its own
    /// traceparent names it; without a traced parent nothing is invented.
    #[test]
    fn a_span_adopts_a_remote_parent_and_hands_on_its_own() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")).with_filter(FilterFn::new(exported)));
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("shard");
            adopt(&span, Some(parent));
            let mine = traceparent_of(&span).expect("traced");
            assert!(mine.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{mine}");
            assert!(!mine.contains("00f067aa0ba902b7"), "a span of its own: {mine}");
            span.in_scope(|| {
                assert_eq!(current_ids().map(|(t, _)| t).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
                tracing::info_span!("store").in_scope(|| assert_eq!(current_traceparent().unwrap()[..36], mine[..36]));
            });
            // Hostile or absent values leave a span alone.
            let other = tracing::info_span!("x");
            adopt(&other, Some("00-zz-yy-01"));
            adopt(&other, None);
            let _ = traceparent_of(&other);
            // The per-mover span is not exported.
            drop(tracing::info_span!("mover"));
        });
        let spans = exporter.get_finished_spans().unwrap();
        let shard = spans.iter().find(|s| s.name == "shard").unwrap();
        assert_eq!(shard.parent_span_id.to_string(), "00f067aa0ba902b7");
        let store = spans.iter().find(|s| s.name == "store").unwrap();
        assert_eq!(store.parent_span_id, shard.span_context.span_id());
        assert!(!spans.iter().any(|s| s.name == "mover"));
        assert_ne!(spans.iter().find(|s| s.name == "x").unwrap().span_context.trace_id(), shard.span_context.trace_id());
    }

    #[test]
    fn traces_are_on_with_an_endpoint_and_only_over_otlp_http() {
        let with = |vars: &[(&str, &str)]| {
            let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            wanted(move |k| vars.get(k).cloned())
        };
        assert_eq!(with(&[]), Ok(false));
        assert_eq!(with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]), Ok(true));
        assert_eq!(with(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")]), Ok(true));
        assert_eq!(with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "TRUE")]), Ok(false));
        assert_eq!(with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_TRACES_EXPORTER", "none")]), Ok(false));
        assert_eq!(with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]), Ok(true));
        let grpc = with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap_err();
        assert!(grpc.contains("http/protobuf"), "{grpc}");
        assert!(with(&[("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err().contains("otlp"));
    }
}
