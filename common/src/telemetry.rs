//! Logging setup shared by the binaries: human text or JSON lines on stderr.

use tracing_subscriber::EnvFilter;

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

/// Installs the global subscriber. `RUST_LOG` overrides `default_level`.
pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let mut quiet: Vec<String> = QUIET_TARGETS.iter().map(|t| format!("{t}=error")).collect();
        quiet.extend(SILENT_TARGETS.iter().map(|t| format!("{t}=off")));
        EnvFilter::new(format!("{default_level},{}", quiet.join(",")))
    });
    // Colours only on a terminal: logs sent to a file or a collector stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
}
