//! The one place S3 errors become [`FerryError`]s.
//!
//! The SDK itself retries throttling (SlowDown, 503) and 5xx with exponential backoff and
//! jitter (its standard retry mode, configured in `S3Location::open`). What reaches this
//! function has used those attempts up, or is permanent: auth failures, a missing bucket, a
//! wrong region. Those get a one-line message that names the bucket and the fix, and a kind
//! that is not transient, so no retry storm follows.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use ferry_common::error::{ErrorKind, FerryError};

/// What an S3 failure means, decided from the error code, the HTTP status and the failure
/// class. Pure, so the table is tested without a server.
pub fn classify_parts(code: Option<&str>, status: Option<u16>, dispatch_failed: bool, timed_out: bool, no_credentials: bool) -> (ErrorKind, &'static str) {
    if no_credentials {
        return (
            ErrorKind::Config,
            "no AWS credentials were found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an instance or container role)",
        );
    }
    if timed_out {
        return (ErrorKind::Unavailable, "the request timed out (ferry retried; check the network and the endpoint)");
    }
    if dispatch_failed {
        return (ErrorKind::Unavailable, "cannot reach the S3 endpoint (check --endpoint-url, the network and that the server runs)");
    }
    match (code, status) {
        (Some("NoSuchBucket"), _) => (ErrorKind::Config, "the bucket does not exist (check the bucket name in the URI, or create the bucket)"),
        (Some("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired"), _) => (
            ErrorKind::Config,
            "the credentials were refused (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role; renew expired credentials)",
        ),
        (Some("AccessDenied" | "AllAccessDisabled" | "AccountProblem"), _) | (_, Some(403)) => {
            (ErrorKind::PermissionDenied, "access denied (grant these credentials s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject on the bucket)")
        }
        (Some("PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException"), _) | (_, Some(301)) => {
            (ErrorKind::Config, "the bucket is in another region (set --region or AWS_REGION to the bucket's region)")
        }
        (Some("NoSuchKey" | "NotFound" | "NoSuchUpload"), _) | (_, Some(404)) => (ErrorKind::NotFound, "not found"),
        (Some("BadDigest" | "InvalidDigest" | "XAmzContentChecksumMismatch"), _) => {
            (ErrorKind::Corrupt, "the server computed a different checksum for the bytes it received (ferry retries the upload)")
        }
        (Some("EntityTooLarge" | "EntityTooSmall" | "InvalidPart" | "InvalidPartOrder" | "InvalidArgument" | "InvalidRequest" | "InvalidStorageClass"), _) => {
            (ErrorKind::Config, "the request was refused as invalid (check the storage class, encryption and size options)")
        }
        (Some("KMS.NotFoundException" | "KMS.DisabledException" | "KMS.KMSInvalidStateException"), _) => {
            (ErrorKind::Config, "the KMS key cannot be used (check --sse-kms-key-id and the key's state and policy)")
        }
        (Some("NotImplemented"), _) | (_, Some(501)) => (ErrorKind::Unsupported, "this S3-compatible server does not implement the request"),
        (Some("SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout" | "RequestTimeTooSkewed" | "OperationAborted"), _) => {
            (ErrorKind::Unavailable, "the server is throttling or failing (ferry backed off and retried; lower --movers or rerun later)")
        }
        (_, Some(s)) if s == 429 || s >= 500 => {
            (ErrorKind::Unavailable, "the server is throttling or failing (ferry backed off and retried; lower --movers or rerun later)")
        }
        (_, Some(412)) => (ErrorKind::SourceChanged, "the object changed while it was read"),
        _ => (ErrorKind::Other, "the request failed"),
    }
}

/// Turns an SDK error from `op` on `target` (an `s3://` URI) into a one-line error.
pub fn classify<E>(op: &str, target: &str, err: &SdkError<E>) -> FerryError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let (code, detail) = match err {
        SdkError::ServiceError(s) => (s.err().code().map(str::to_string), s.err().message().map(str::to_string)),
        _ => (None, None),
    };
    let context = aws_sdk_s3::error::DisplayErrorContext(err).to_string();
    // The SDK reports a failed credential chain as a dispatch failure; its message says so.
    let no_credentials = matches!(err, SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_))
        && (context.contains("loading credentials") || context.contains("no credentials") || context.contains("credentials provider"));
    let (kind, what) =
        classify_parts(code.as_deref(), status, matches!(err, SdkError::DispatchFailure(_)), matches!(err, SdkError::TimeoutError(_)), no_credentials);
    let mut msg = format!("cannot {op} {target}: {what}");
    if let Some(code) = &code {
        msg.push_str(&format!(" [{code}"));
        if let Some(d) = detail.filter(|d| !d.is_empty()) {
            msg.push_str(&format!(": {d}"));
        }
        msg.push(']');
    } else if let (Some(s), false) = (status, kind == ErrorKind::Other) {
        msg.push_str(&format!(" [HTTP {s}]"));
    } else if (kind == ErrorKind::Other || kind == ErrorKind::Unavailable) && !no_credentials {
        msg.push_str(&format!(" [{}]", context.replace('\n', " ")));
    }
    FerryError::new(kind, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_failures_are_not_retried_and_throttling_is() {
        assert_eq!(classify_parts(None, None, true, false, true).0, ErrorKind::Config, "a missing credential chain is not retried");
        // (code, HTTP status, dispatch failed, timed out, what it means)
        type Case<'a> = (Option<&'a str>, Option<u16>, bool, bool, ErrorKind);
        let table: &[Case] = &[
            (Some("NoSuchBucket"), Some(404), false, false, ErrorKind::Config),
            (Some("InvalidAccessKeyId"), Some(403), false, false, ErrorKind::Config),
            (Some("SignatureDoesNotMatch"), Some(403), false, false, ErrorKind::Config),
            (Some("ExpiredToken"), Some(400), false, false, ErrorKind::Config),
            (Some("AccessDenied"), Some(403), false, false, ErrorKind::PermissionDenied),
            (None, Some(403), false, false, ErrorKind::PermissionDenied),
            (Some("PermanentRedirect"), Some(301), false, false, ErrorKind::Config),
            (Some("NoSuchKey"), Some(404), false, false, ErrorKind::NotFound),
            (Some("BadDigest"), Some(400), false, false, ErrorKind::Corrupt),
            (Some("SlowDown"), Some(503), false, false, ErrorKind::Unavailable),
            (None, Some(500), false, false, ErrorKind::Unavailable),
            (None, None, true, false, ErrorKind::Unavailable),
            (None, None, false, true, ErrorKind::Unavailable),
            (Some("NotImplemented"), Some(501), false, false, ErrorKind::Unsupported),
        ];
        for &(code, status, dispatch, timeout, want) in table {
            let (kind, msg) = classify_parts(code, status, dispatch, timeout, false);
            assert_eq!(kind, want, "{code:?} {status:?}");
            assert!(!msg.is_empty());
            assert_eq!(kind.is_transient(), matches!(want, ErrorKind::Unavailable | ErrorKind::Corrupt));
        }
    }
}
