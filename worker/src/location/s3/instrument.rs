//! S3 request metrics, from an interceptor on the SDK client: every attempt is a request,
//! attempts after the first are retries, and an attempt that ends without a 2xx answer is an
//! error under its S3 code (from the error body), `HTTP<status>` when the body has none (a
//! HEAD), or `io`/`timeout` when no answer came.
//!
//! Labels: `operation` is the SDK's operation name (PutObject, ...), `code` an S3 error code:
//! both small fixed sets. A code that does not look like one is counted as `other`, so a
//! misbehaving server cannot grow the series.

use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use ferry_common::metrics as m;

#[derive(Debug, Default)]
pub struct S3Metrics;

fn operation(cfg: &ConfigBag) -> String {
    cfg.load::<Metadata>().map_or_else(|| "unknown".to_string(), |md| md.name().to_string())
}

/// The `<Code>` of an S3 error body, if it is one.
pub fn error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    let code = &text[start..start + len];
    Some(if !code.is_empty() && code.len() <= 48 && code.bytes().all(|b| b.is_ascii_alphanumeric()) { code.to_string() } else { "other".to_string() })
}

impl Intercept for S3Metrics {
    fn name(&self) -> &'static str {
        "FerryS3Metrics"
    }

    fn read_before_attempt(&self, _: &BeforeTransmitInterceptorContextRef<'_>, _: &RuntimeComponents, cfg: &mut ConfigBag) -> Result<(), BoxError> {
        let op = operation(cfg);
        if cfg.load::<RequestAttempts>().is_some_and(|a| a.attempts() > 1) {
            metrics::counter!(m::S3_RETRIES, "operation" => op.clone()).increment(1);
        }
        metrics::counter!(m::S3_REQUESTS, "operation" => op).increment(1);
        Ok(())
    }

    fn read_after_attempt(&self, ctx: &FinalizerInterceptorContextRef<'_>, _: &RuntimeComponents, cfg: &mut ConfigBag) -> Result<(), BoxError> {
        let code = match (ctx.response(), ctx.output_or_error()) {
            (Some(resp), _) if resp.status().is_success() => return Ok(()),
            (Some(resp), _) => resp.body().bytes().and_then(error_code).unwrap_or_else(|| format!("HTTP{}", resp.status().as_u16())),
            (None, Some(Err(e))) if e.is_timeout_error() => "timeout".to_string(),
            (None, Some(Err(_))) => "io".to_string(),
            (None, _) => return Ok(()),
        };
        metrics::counter!(m::S3_ERRORS, "operation" => operation(cfg), "code" => code).increment(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_come_from_the_body_and_stay_a_small_set() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce</Message></Error>";
        assert_eq!(error_code(body).as_deref(), Some("SlowDown"));
        assert_eq!(error_code(b"<Error><Code>a b/c</Code></Error>").as_deref(), Some("other"));
        assert_eq!(error_code(b"not xml"), None);
    }
}
