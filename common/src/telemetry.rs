//! Logging setup shared by the binaries: human text or JSON lines on stderr, and for daemons
//! the execution-log layer that ships lines about executions to the Store
//! ([`crate::execlog`]).

use std::sync::{Arc, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::FilterFn;
#[cfg(test)]
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::execlog::{self, BatchLimits, LineLevel, LogLine, LogSink};
use crate::store::SharedStore;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Libraries whose warnings are ferry's to report: the AWS SDK warns once per credential
/// provider it tries, which ferry turns into one actionable error instead.
const QUIET_TARGETS: &[&str] = &["aws_config", "aws_smithy_runtime", "aws_smithy_http_client", "aws_sdk_s3", "aws_runtime"];

/// Libraries whose errors ferry reports itself, in one line (smb-rs logs each refused logon).
const SILENT_TARGETS: &[&str] = &["smb", "smb_transport"];

fn stderr_filter(default_level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let mut quiet: Vec<String> = QUIET_TARGETS.iter().map(|t| format!("{t}=error")).collect();
        quiet.extend(SILENT_TARGETS.iter().map(|t| format!("{t}=off")));
        EnvFilter::new(format!("{default_level},{}", quiet.join(",")))
    })
}

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

/// The stderr layer: text for people, or JSON lines that carry the trace and span IDs of the
/// span they were logged in (when traces are on).
fn stderr_layer(format: LogFormat) -> BoxedLayer {
    // Colours only on a terminal: logs sent to a file or a collector stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).with_target(false).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(WithTraceIds(tracing_subscriber::fmt::format().json().with_current_span(false)))
            .with_writer(std::io::stderr)
            .boxed(),
    }
}

/// Installs the global subscriber of a command-line run (service `ferry` in traces).
/// `RUST_LOG` overrides `default_level`.
pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter = stderr_filter(default_level);
    let traces = crate::traces::layer("ferry", "");
    let _ = tracing_subscriber::registry().with(stderr_layer(format).with_filter(filter)).with(traces).try_init();
}

/// The sink of this process's execution-log layer, once [`init_daemon_logging`] ran.
static SINK: OnceLock<Arc<LogSink>> = OnceLock::new();

/// [`init_logging`] for a daemon (`service` is `ferry-worker` or `ferry-coordinator`, `agent`
/// its name): also installs the layer that collects lines naming an execution (an
/// `execution` field on the event or on a span around it) from ferry's own code, up to DEBUG
/// whatever `RUST_LOG` says for stderr. They wait in a bounded buffer until
/// [`ship_execution_logs`] starts writing them to the Store.
pub fn init_daemon_logging(format: LogFormat, default_level: &str, service: &'static str, agent: &str) {
    let sink = SINK.get_or_init(|| LogSink::new(agent, BatchLimits::default())).clone();
    let filter = stderr_filter(default_level);
    // Only ferry's own events: libraries' lines never name an execution, and what they could
    // carry (URLs, headers) stays out of the Store. Spans only down to INFO: the DEBUG ones
    // (Store requests, link streams) are for traces, and cost nothing when those are off.
    let ours = FilterFn::new(|m: &tracing::Metadata<'_>| m.target().starts_with("ferry") && (!m.is_span() || *m.level() <= tracing::Level::INFO));
    let traces = crate::traces::layer(service, agent);
    let _ = tracing_subscriber::registry().with(stderr_layer(format).with_filter(filter)).with(ExecLogLayer { sink }.with_filter(ours)).with(traces).try_init();
}

/// Wraps a JSON event formatter: adds `trace_id` and `span_id` to the object when the event
/// happened inside a traced span, so a log line leads to its trace.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let Some((trace, span)) = crate::traces::current_ids() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&with_ids(&line, &trace, &span))
    }
}

/// `line` (one JSON object and a newline) with the two IDs added as its last fields.
fn with_ids(line: &str, trace: &str, span: &str) -> String {
    match line.trim_end().strip_suffix('}') {
        Some(head) => format!("{head},\"trace_id\":\"{trace}\",\"span_id\":\"{span}\"}}\n"),
        None => line.to_string(),
    }
}

/// Starts writing the collected lines to `store` (on the current tokio runtime) until `stop`
/// turns true. Does nothing when [`init_daemon_logging`] was not called.
/// Await the handle after `stop` to let the last lines out (within one Store timeout).
pub fn ship_execution_logs(store: SharedStore, stop: tokio::sync::watch::Receiver<bool>) -> Option<tokio::task::JoinHandle<()>> {
    SINK.get().map(|sink| tokio::spawn(execlog::ship(sink.clone(), store, stop)))
}

/// The execution a span is about, kept in its extensions.
struct ExecSpan(String);

/// Sends events that name an execution to the [`LogSink`]. Cheap for the rest: one pass over
/// the event's fields looking for `execution`, then a look at the enclosing spans.
struct ExecLogLayer {
    sink: Arc<LogSink>,
}

impl<S> Layer<S> for ExecLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut find = FindExecution(None);
        attrs.record(&mut find);
        if let (Some(exec), Some(span)) = (find.0, ctx.span(id)) {
            span.extensions_mut().insert(ExecSpan(exec));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(level) = LineLevel::of(event.metadata().level()) else { return };
        let mut find = FindExecution(None);
        event.record(&mut find);
        let exec = match find.0 {
            Some(e) => e,
            None => {
                match ctx.event_scope(event).and_then(|scope| scope.from_root().filter_map(|s| s.extensions().get::<ExecSpan>().map(|e| e.0.clone())).last()) {
                    Some(e) => e,
                    None => return,
                }
            }
        };
        let mut line = LineVisitor { line: LogLine { ts_ms: crate::schedule::now_ms(), level, message: String::new(), fields: Default::default() } };
        event.record(&mut line);
        if let Some((trace, span)) = crate::traces::current_ids() {
            line.line.fields.insert("trace_id".into(), trace.into());
            line.line.fields.insert("span_id".into(), span.into());
        }
        execlog::truncate(&mut line.line.message, execlog::MAX_MESSAGE_BYTES);
        self.sink.push(&exec, line.line);
    }
}

/// Finds a non-empty `execution` field.
struct FindExecution(Option<String>);

impl Visit for FindExecution {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "execution" && !value.is_empty() {
            self.0 = Some(value.to_string());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "execution" {
            let v = format!("{value:?}");
            if !v.is_empty() && v != "\"\"" {
                self.0 = Some(v);
            }
        }
    }
}

/// The message and fields of an event, bounded.
struct LineVisitor {
    line: LogLine,
}

impl LineVisitor {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "execution" || self.line.fields.len() >= execlog::MAX_FIELDS {
            return;
        }
        self.line.fields.insert(field.name().to_string(), value);
    }
}

impl Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.line.message = value.to_string();
            return;
        }
        let mut v = value.to_string();
        execlog::truncate(&mut v, execlog::MAX_FIELD_BYTES);
        self.put(field, v.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        match serde_json::Number::from_f64(value) {
            Some(n) => self.put(field, serde_json::Value::Number(n)),
            None => self.put(field, value.to_string().into()),
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut v = format!("{value:?}");
        if field.name() == "message" {
            self.line.message = v;
            return;
        }
        execlog::truncate(&mut v, execlog::MAX_FIELD_BYTES);
        self.put(field, v.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_get_the_ids_as_their_last_fields() {
        let line = with_ids("{\"level\":\"INFO\",\"fields\":{\"message\":\"x\"}}\n", "4bf9", "00f0");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!((v["trace_id"].as_str(), v["span_id"].as_str(), v["fields"]["message"].as_str()), (Some("4bf9"), Some("00f0"), Some("x")));
        assert!(line.ends_with("}\n"));
        assert_eq!(with_ids("not json", "a", "b"), "not json");
    }

    /// The layer picks lines naming an execution, from the event or an enclosing span, with
    /// their fields; other lines are left alone.
    #[test]
    fn the_layer_collects_lines_that_name_an_execution() {
        let sink = LogSink::new("w1", BatchLimits::default());
        let subscriber =
            tracing_subscriber::registry().with(ExecLogLayer { sink: sink.clone() }.with_filter(Targets::new().with_target("ferry", LevelFilter::DEBUG)));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(execution = "e1", path = "a/b", size = 3u64, "Entry");
            tracing::info!(execution = "", "no execution");
            tracing::warn!("unrelated");
            let span = tracing::info_span!("mover", execution = %"e2");
            span.in_scope(|| tracing::debug!(shard = "1c-x", "ShardClaimed"));
            tracing::trace!(execution = "e1", "too verbose");
        });
        let mut b = sink.batcher.lock().unwrap();
        assert_eq!(b.unresolved(), vec!["e1", "e2"]);
        b.handle_log_level("e1", Some(Some(crate::task::LogLevelOpt::Transfer)));
        b.handle_log_level("e2", Some(Some(crate::task::LogLevelOpt::Transfer)));
        let out = b.poll_chunks(u64::MAX / 2, true);
        let e1 = out.iter().find(|c| c.exec == "e1").unwrap();
        assert_eq!(e1.chunk.lines.len(), 1);
        let l = &e1.chunk.lines[0];
        assert_eq!((l.message.as_str(), l.level), ("Entry", LineLevel::Info));
        assert_eq!(l.fields["path"], "a/b");
        assert_eq!(l.fields["size"], 3);
        assert!(!l.fields.contains_key("execution"));
        let e2 = out.iter().find(|c| c.exec == "e2").unwrap();
        assert_eq!(e2.chunk.lines[0].message, "ShardClaimed");
        assert_eq!(e2.chunk.lines[0].level, LineLevel::Debug);
    }
}
