//! Sorting a failed Slack call by what Slack may have done, which decides
//! whether it is retried, looked up first, or given up.

use std::time::Duration;

use crate::slack::{ErrorClass, SlackError};

/// How a failed Slack call is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Slack certainly did nothing; try again after `after` (or backoff).
    Retry { after: Option<Duration> },
    /// Slack may have done it (timeout after send, reset, 5xx): look
    /// before doing it again.
    Ambiguous,
    /// Slack refused for good.
    Permanent,
    /// An error this code does not know: retried a few times
    /// (`retry.max_attempts`), then treated as permanent.
    Unknown,
    /// The token is bad: stop delivering anything.
    Auth,
    /// Slack is unreachable (nothing was sent): retry, and count towards
    /// the outage detector.
    Unreachable,
}

/// Slack's error codes that mean the message was not and will not be
/// accepted as sent.
const PERMANENT_CODES: &[&str] = &[
    "channel_not_found",
    "user_not_found",
    "not_in_channel",
    "is_archived",
    "invalid_blocks",
    "invalid_blocks_format",
    "msg_too_long",
    "no_text",
    "too_many_attachments",
    "restricted_action",
    "restricted_action_read_only_channel",
    "restricted_action_thread_only_channel",
    "restricted_action_non_threadable_channel",
    "cannot_reply_to_message",
    "thread_not_found",
    "message_not_found",
    "cant_update_message",
    "edit_window_closed",
    "invalid_metadata_format",
    "invalid_metadata_schema",
    "metadata_too_large",
    "invalid_arguments",
    "invalid_arg_name",
    "invalid_array_arg",
    "invalid_charset",
    "invalid_form_data",
    "invalid_post_type",
    "missing_post_type",
    "user_disabled",
    "cannot_dm_bot",
    "team_access_not_granted",
    "channel_type_not_supported",
];

pub fn classify(error: &SlackError) -> Failure {
    match error {
        SlackError::Unreachable(_) => Failure::Unreachable,
        SlackError::Transport(_) | SlackError::Timeout(_) => Failure::Ambiguous,
        SlackError::InvalidBlocks(_) => Failure::Permanent,
        SlackError::Api { code } if PERMANENT_CODES.contains(&code.as_str()) => Failure::Permanent,
        SlackError::Api { code }
            if matches!(
                code.as_str(),
                "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout"
            ) =>
        {
            Failure::Ambiguous
        }
        _ => match error.class() {
            ErrorClass::Auth => Failure::Auth,
            ErrorClass::Transient { retry_after } => match error {
                SlackError::Http { .. } => Failure::Ambiguous,
                _ => Failure::Retry { after: retry_after },
            },
            ErrorClass::Permanent => Failure::Unknown,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_what_slack_may_have_done() {
        let api = |code: &str| SlackError::Api { code: code.into() };
        assert_eq!(classify(&api("channel_not_found")), Failure::Permanent);
        assert_eq!(classify(&api("invalid_blocks")), Failure::Permanent);
        assert_eq!(classify(&api("internal_error")), Failure::Ambiguous);
        assert_eq!(classify(&api("fatal_error")), Failure::Ambiguous);
        assert_eq!(classify(&api("invalid_auth")), Failure::Auth);
        assert_eq!(classify(&api("something_new")), Failure::Unknown);
        assert_eq!(
            classify(&api("ratelimited")),
            Failure::Retry { after: None }
        );
        let after = Some(Duration::from_secs(3));
        assert_eq!(
            classify(&SlackError::RateLimited { retry_after: after }),
            Failure::Retry { after }
        );
        assert_eq!(
            classify(&SlackError::Http { status: 503 }),
            Failure::Ambiguous
        );
        assert_eq!(classify(&SlackError::Http { status: 401 }), Failure::Auth);
        assert_eq!(
            classify(&SlackError::Timeout(Duration::from_secs(1))),
            Failure::Ambiguous
        );
        assert_eq!(
            classify(&SlackError::Unreachable("tcp connect error".into())),
            Failure::Unreachable
        );
        assert_eq!(
            classify(&SlackError::Transport("connection reset by peer".into())),
            Failure::Ambiguous
        );
    }
}
