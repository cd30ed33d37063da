//! What a failed Step Functions call means for the drain: the SDK's error, sorted into
//! [`SfnError`]'s kinds, in the short form callers and the trail see.

use aws_sdk_sfn::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use super::SfnError;

/// Error codes that mean "too much, slow down".
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "ExecutionLimitExceeded",
];

/// Error codes that say stepgate's credentials or signature are wrong, not the request.
/// Clock skew shows as `InvalidSignatureException` ("Signature expired") or
/// `RequestExpired`; an expired session as `ExpiredTokenException`.
const SYSTEMIC_CODES: &[&str] = &[
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "RequestExpired",
    "ExpiredToken",
    "ExpiredTokenException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "MissingAuthenticationToken",
    "KmsThrottlingException",
    // The state machine's KMS key is disabled, pending deletion or not granted: an
    // operator mends it, and every entry waits for that.
    "KmsAccessDeniedException",
    "KmsInvalidStateException",
];

/// Error codes that mean "not now" rather than "never".
const RETRYABLE_CODES: &[&str] = &[
    "ServiceUnavailable",
    "InternalServerError",
    "InternalFailure",
    "RequestTimeout",
];

pub(super) fn classify<E>(err: SdkError<E>) -> SfnError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            let status = service.raw().status().as_u16();
            // The short, stable form (`Code: message`) is what callers, dead letters and the
            // trail see; the SDK's full context (request ids, HTTP details) goes to the log only.
            tracing::debug!(error = %DisplayErrorContext(&err), "Step Functions error");
            let text = bounded(match service.err().message() {
                Some(message) => format!("{code}: {message}"),
                None if code.is_empty() => format!("HTTP {status}"),
                None => code.to_owned(),
            });
            if code == "ExecutionAlreadyExists" {
                SfnError::AlreadyExists
            } else if SYSTEMIC_CODES.contains(&code) {
                SfnError::Systemic(text)
            } else if THROTTLING_CODES.contains(&code) || status == 429 {
                SfnError::Throttled(text)
            } else if RETRYABLE_CODES.contains(&code) || status >= 500 {
                // The service may have acted before it failed.
                SfnError::OutcomeUnknown(text)
            } else {
                SfnError::Terminal(text)
            }
        }
        _ => {
            tracing::debug!(error = %DisplayErrorContext(&err), "Step Functions call failed");
            classify_unanswered(&err, bounded(DisplayErrorContext(&err).to_string()))
        }
    }
}

/// Like [`classify`], for `DescribeStateMachine`, which a delivery asks before its first
/// start: only "there is no such state machine" says anything about the triggers (a start
/// would be refused alike). Any other refusal (`AccessDenied` where the role lacks
/// `states:DescribeStateMachine`, as after an upgrade that needs the new permission) is
/// stepgate's side, so entries wait for an operator instead of being dead-lettered.
pub(super) fn classify_describe<E>(err: SdkError<E>) -> SfnError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let missing = match &err {
        SdkError::ServiceError(service) => {
            DESCRIBE_TERMINAL_CODES.contains(&service.err().code().unwrap_or_default())
        }
        _ => false,
    };
    match classify(err) {
        SfnError::Terminal(text) if !missing => SfnError::Systemic(text),
        other => other,
    }
}

/// `DescribeStateMachine` refusals that are the state machine's (so the triggers') own.
const DESCRIBE_TERMINAL_CODES: &[&str] = &["StateMachineDoesNotExist", "InvalidArn"];

/// Error texts kept in statuses, dead letters and audit records are at most this long.
const MAX_ERROR_TEXT: usize = 300;

/// `text`, cut at a character boundary to [`MAX_ERROR_TEXT`] bytes (an ellipsis marks a cut).
fn bounded(mut text: String) -> String {
    if text.len() > MAX_ERROR_TEXT {
        let mut end = MAX_ERROR_TEXT - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// A call Step Functions did not answer with an error of its own.
fn classify_unanswered<E, R>(err: &SdkError<E, R>, text: String) -> SfnError {
    match err {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => SfnError::OutcomeUnknown(text),
        // Refused: nothing reached the service.
        SdkError::DispatchFailure(failure)
            if failure
                .as_connector_error()
                .is_some_and(|e| connection_refused(e)) =>
        {
            SfnError::Retryable(text)
        }
        // Lost once connected (an I/O error, a timeout, a connection closed before the
        // answer, which hyper reports as a transient error): the request may have been sent.
        SdkError::DispatchFailure(failure)
            if failure.is_io()
                || failure.is_timeout()
                || failure.as_other() == Some(aws_config::retry::ErrorKind::TransientError) =>
        {
            SfnError::OutcomeUnknown(text)
        }
        // Credentials that cannot be loaded fail here, before anything is sent.
        SdkError::DispatchFailure(_) => SfnError::Systemic(text),
        // The request could not even be built: stepgate's side, not the entry's.
        _ => SfnError::Systemic(text),
    }
}

/// Whether the connection was refused: among the error's causes is an I/O error of that kind.
fn connection_refused(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}
