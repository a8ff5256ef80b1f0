//! Every failure of a Slack call, classified as transient (retry),
//! permanent (dead-letter) or an auth failure (stop delivering).

use std::time::Duration;

use slack_morphism::errors::SlackClientError;

/// Slack errors after which no message can be delivered with this token.
const AUTH_ERRORS: &[&str] = &[
    "invalid_auth",
    "not_authed",
    "token_revoked",
    "token_expired",
    "account_inactive",
    "missing_scope",
    "not_allowed_token_type",
];

/// Slack errors that a later attempt may not repeat.
const TRANSIENT_ERRORS: &[&str] = &[
    "ratelimited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
];

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SlackError {
    #[error("rate limited by Slack (Retry-After {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    #[error("Slack answered ok=false: {code}")]
    Api { code: String },
    #[error("Slack answered HTTP {status}")]
    Http { status: u16 },
    /// The connection was never made: nothing reached Slack.
    #[error("cannot connect to Slack: {0}")]
    Unreachable(String),
    /// The request may have reached Slack (reset, closed, bad answer).
    #[error("lost the connection to Slack: {0}")]
    Transport(String),
    #[error("Slack did not answer within {0:?}")]
    Timeout(Duration),
    #[error("blocks do not fit Slack's Block Kit model: {0}")]
    InvalidBlocks(String),
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry after a backoff (or after `Retry-After`).
    Transient { retry_after: Option<Duration> },
    /// Retrying cannot help: dead-letter the message.
    Permanent,
    /// The token is bad: stop delivering anything.
    Auth,
}

impl SlackError {
    pub fn class(&self) -> ErrorClass {
        match self {
            SlackError::RateLimited { retry_after } => ErrorClass::Transient {
                retry_after: *retry_after,
            },
            SlackError::Api { code } if AUTH_ERRORS.contains(&code.as_str()) => ErrorClass::Auth,
            SlackError::Api { code } if TRANSIENT_ERRORS.contains(&code.as_str()) => {
                ErrorClass::Transient { retry_after: None }
            }
            SlackError::Api { .. } | SlackError::InvalidBlocks(_) => ErrorClass::Permanent,
            SlackError::Http { status } if *status >= 500 || *status == 408 => {
                ErrorClass::Transient { retry_after: None }
            }
            SlackError::Http { status: 401 | 403 } => ErrorClass::Auth,
            SlackError::Http { .. } => ErrorClass::Permanent,
            SlackError::Unreachable(_) | SlackError::Transport(_) | SlackError::Timeout(_) => {
                ErrorClass::Transient { retry_after: None }
            }
        }
    }

    /// The error as written to `SlackResponse.error`: Slack's own code
    /// where there is one.
    pub fn code(&self) -> String {
        match self {
            SlackError::RateLimited { .. } => "ratelimited".into(),
            SlackError::Api { code } => code.clone(),
            SlackError::Http { status } => format!("http_{status}"),
            SlackError::Unreachable(_) => "unreachable".into(),
            SlackError::Transport(_) => "connection_failed".into(),
            SlackError::Timeout(_) => "timeout".into(),
            SlackError::InvalidBlocks(_) => "invalid_blocks".into(),
        }
    }

    pub fn http_status(&self) -> Option<i32> {
        match self {
            SlackError::RateLimited { .. } => Some(429),
            SlackError::Http { status } => Some(i32::from(*status)),
            SlackError::Api { .. } => Some(200),
            _ => None,
        }
    }
}

impl SlackError {
    /// A request hyper could not complete. A connect error means the
    /// request never left: safe to send again without looking; any other
    /// may have reached Slack.
    pub(super) fn from_hyper(e: &hyper_util::client::legacy::Error) -> SlackError {
        if e.is_connect() {
            SlackError::Unreachable(format!("{e:?}"))
        } else {
            SlackError::Transport(format!("{e:?}"))
        }
    }
}

impl From<SlackClientError> for SlackError {
    fn from(e: SlackClientError) -> Self {
        match e {
            SlackClientError::ApiError(e) => SlackError::Api { code: e.code },
            SlackClientError::RateLimitError(e) => SlackError::RateLimited {
                retry_after: e.retry_after,
            },
            SlackClientError::HttpError(e) => SlackError::Http {
                status: e.status_code.as_u16(),
            },
            SlackClientError::HttpProtocolError(e) => match e.cause.as_ref() {
                Some(cause) => match cause.downcast_ref::<hyper_util::client::legacy::Error>() {
                    Some(hyper) => SlackError::from_hyper(hyper),
                    None => SlackError::Transport(format!("{cause:?}")),
                },
                None => SlackError::Transport("no detail".to_owned()),
            },
            other => SlackError::Transport(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let api = |code: &str| SlackError::Api { code: code.into() };
        assert_eq!(api("channel_not_found").class(), ErrorClass::Permanent);
        assert_eq!(api("invalid_blocks").class(), ErrorClass::Permanent);
        assert_eq!(api("invalid_auth").class(), ErrorClass::Auth);
        assert_eq!(api("token_revoked").class(), ErrorClass::Auth);
        assert_eq!(
            api("internal_error").class(),
            ErrorClass::Transient { retry_after: None }
        );
        assert_eq!(
            SlackError::Http { status: 503 }.class(),
            ErrorClass::Transient { retry_after: None }
        );
        assert_eq!(
            SlackError::Http { status: 400 }.class(),
            ErrorClass::Permanent
        );
        let limited = SlackError::RateLimited {
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(
            limited.class(),
            ErrorClass::Transient {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(limited.code(), "ratelimited");
        assert_eq!(
            SlackError::Timeout(Duration::from_secs(1)).class(),
            ErrorClass::Transient { retry_after: None }
        );
    }
}
