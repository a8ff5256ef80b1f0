//! Slack's Web API as notify uses it — post (top-level or in a thread),
//! update, find a message by its alert metadata — with every failure
//! classified as transient (retry), permanent (dead-letter) or an auth
//! failure (stop delivering).
//!
//! Every message notify sends carries metadata naming its alert: an alert's
//! own message (`alertsvc_alert`: alert id, occurrence) and a thread reply
//! about it (`alertsvc_alert_reply`: alert id, occurrence, which reply) have
//! distinct event types, so looking for one after an ambiguous answer never
//! finds the other.
//!
//! [`fake`] is a local Slack Web API for tests and the demo.

pub mod blockkit;
pub mod fake;
pub mod signing;

use std::collections::HashMap;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;

mod group;
pub use group::{GroupRef, GROUP_METADATA_EVENT};

/// Event type of the message metadata every alert carries.
pub const ALERT_METADATA_EVENT: &str = "alertsvc_alert";
/// Event type of the metadata of a thread reply about an alert (a resolved
/// notice, new content in the thread).
pub const REPLY_METADATA_EVENT: &str = "alertsvc_alert_reply";
const HISTORY_PAGES: usize = 5;

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
            SlackClientError::HttpProtocolError(e) => {
                // A connect error means the request never left: safe to
                // send again without looking.
                let connect = e.cause.as_ref().is_some_and(|cause| {
                    cause
                        .downcast_ref::<hyper_util::client::legacy::Error>()
                        .is_some_and(hyper_util::client::legacy::Error::is_connect)
                });
                let detail = e
                    .cause
                    .as_ref()
                    .map_or_else(|| "no detail".to_owned(), |c| format!("{c:?}"));
                if connect {
                    SlackError::Unreachable(detail)
                } else {
                    SlackError::Transport(detail)
                }
            }
            other => SlackError::Transport(other.to_string()),
        }
    }
}

/// A message as Slack stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub channel: String,
    pub ts: String,
}

type Connector = SlackClientHyperConnector<HttpsConnector<HttpConnector>>;

pub struct SlackApi {
    client: SlackClient<Connector>,
    token: SlackApiToken,
    timeout: Duration,
}

impl SlackApi {
    /// `api_url` is Slack's (`https://slack.com/api`) or a local server's.
    pub fn new(api_url: &str, token: &str, timeout: Duration) -> Self {
        // https and plain http: the demo's and the tests' Slack is local.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        // slack-morphism joins the base and the method with a '/'.
        let api_url = api_url.trim_end_matches('/');
        let connector =
            SlackClientHyperConnector::with_connector(https).with_slack_api_url(api_url);
        SlackApi {
            client: SlackClient::new(connector),
            token: SlackApiToken::new(SlackApiTokenValue(token.to_owned())),
            timeout,
        }
    }

    async fn call<T, F>(&self, request: F) -> Result<T, SlackError>
    where
        F: std::future::Future<Output = ClientResult<T>>,
    {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(result) => result.map_err(SlackError::from),
            Err(_) => Err(SlackError::Timeout(self.timeout)),
        }
    }

    fn content(
        text: &str,
        blocks: Option<&str>,
        metadata: Option<SlackMessageMetadata>,
    ) -> Result<SlackMessageContent, SlackError> {
        let mut content = SlackMessageContent::new().with_text(text.to_owned());
        if let Some(blocks) = blocks {
            let blocks: Vec<SlackBlock> = serde_json::from_str(blocks)
                .map_err(|e| SlackError::InvalidBlocks(e.to_string()))?;
            content = content.with_blocks(blocks);
        }
        if let Some(metadata) = metadata {
            content = content.with_metadata(metadata);
        }
        Ok(content)
    }

    /// `chat.postMessage` with the alert id and occurrence in the
    /// message metadata.
    pub async fn post(
        &self,
        channel: &str,
        text: &str,
        blocks: &str,
        alert: &AlertRef<'_>,
    ) -> Result<Posted, SlackError> {
        self.post_message(
            channel,
            Self::content(text, Some(blocks), Some(alert.metadata()))?,
            None,
        )
        .await
    }

    /// Like [`SlackApi::post`], into `thread` (an occurrence recurring
    /// under an earlier one).
    pub async fn post_in_thread(
        &self,
        channel: &str,
        text: &str,
        blocks: &str,
        alert: &AlertRef<'_>,
        thread: &Thread<'_>,
    ) -> Result<Posted, SlackError> {
        self.post_message(
            channel,
            Self::content(text, Some(blocks), Some(alert.metadata()))?,
            Some(thread),
        )
        .await
    }

    /// A reply about an alert in its thread (never broadcast): metadata
    /// [`REPLY_METADATA_EVENT`] names the alert and which reply it is.
    pub async fn reply(
        &self,
        channel: &str,
        thread_ts: &str,
        text: &str,
        blocks: Option<&str>,
        reply: &ReplyRef<'_>,
    ) -> Result<Posted, SlackError> {
        let thread = Thread {
            ts: thread_ts,
            broadcast: false,
        };
        self.post_message(
            channel,
            Self::content(text, blocks, Some(reply.metadata()))?,
            Some(&thread),
        )
        .await
    }

    async fn post_message(
        &self,
        channel: &str,
        content: SlackMessageContent,
        thread: Option<&Thread<'_>>,
    ) -> Result<Posted, SlackError> {
        let mut request =
            SlackApiChatPostMessageRequest::new(SlackChannelId(channel.to_owned()), content);
        if let Some(thread) = thread {
            request = request.with_thread_ts(SlackTs(thread.ts.to_owned()));
            if thread.broadcast {
                request = request.with_reply_broadcast(true);
            }
        }
        let session = self.client.open_session(&self.token);
        let response = self.call(session.chat_post_message(&request)).await?;
        Ok(Posted {
            channel: response.channel.0,
            ts: response.ts.0,
        })
    }

    /// `chat.update` of an earlier message.
    pub async fn update(
        &self,
        channel: &str,
        ts: &str,
        text: &str,
        blocks: &str,
        alert: Option<&AlertRef<'_>>,
    ) -> Result<Posted, SlackError> {
        let request = SlackApiChatUpdateRequest::new(
            SlackChannelId(channel.to_owned()),
            Self::content(text, Some(blocks), alert.map(AlertRef::metadata))?,
            SlackTs(ts.to_owned()),
        );
        let session = self.client.open_session(&self.token);
        let response = self.call(session.chat_update(&request)).await?;
        Ok(Posted {
            channel: response.channel.0,
            ts: response.ts.0,
        })
    }

    /// `auth.test`: a cheap call that tells whether Slack answers (and the
    /// token is good).
    pub async fn auth_test(&self) -> Result<(), SlackError> {
        let session = self.client.open_session(&self.token);
        self.call(session.auth_test()).await.map(drop)
    }

    /// The DM conversation (`D…`) with a user (`U…`/`W…`):
    /// `conversations.open`. History, updates and the ledger need it; a
    /// user id is not a conversation.
    pub async fn open_dm(&self, user: &str) -> Result<String, SlackError> {
        let request =
            SlackApiConversationsOpenRequest::new().with_users(vec![SlackUserId(user.to_owned())]);
        let session = self.client.open_session(&self.token);
        let response = self.call(session.conversations_open(&request)).await?;
        Ok(response.channel.id.0)
    }

    /// Looks for an alert's occurrence already posted to `channel` (by its
    /// metadata) among messages since `oldest_ms`: after an ambiguous answer
    /// or a crash between Slack's answer and the ledger write, this is how
    /// a second post is avoided.
    pub async fn find_alert(
        &self,
        channel: &str,
        alert: &AlertRef<'_>,
        oldest_ms: Option<i64>,
    ) -> Result<Option<String>, SlackError> {
        self.find_message(channel, None, oldest_ms, |meta| alert.matches(meta))
            .await
    }

    /// Like [`SlackApi::find_alert`], for an occurrence posted into the
    /// thread of `thread_ts`.
    pub async fn find_alert_in_thread(
        &self,
        channel: &str,
        thread_ts: &str,
        alert: &AlertRef<'_>,
        oldest_ms: Option<i64>,
    ) -> Result<Option<String>, SlackError> {
        self.find_message(channel, Some(thread_ts), oldest_ms, |meta| {
            alert.matches(meta)
        })
        .await
    }

    /// Looks for a reply about an alert in its thread (by its metadata),
    /// among replies since `oldest_ms`.
    pub async fn find_reply(
        &self,
        channel: &str,
        thread_ts: &str,
        reply: &ReplyRef<'_>,
        oldest_ms: Option<i64>,
    ) -> Result<Option<String>, SlackError> {
        self.find_message(channel, Some(thread_ts), oldest_ms, |meta| {
            reply.matches(meta)
        })
        .await
    }

    /// The ts of the first message whose metadata `wanted` accepts, in the
    /// conversation's history or, given `thread_ts`, in that thread
    /// (`conversations.replies`: history lists no replies but broadcast
    /// ones). Slack's method page says bot tokens may read channel threads
    /// only in DMs; granular bot tokens with the `*:history` scopes are
    /// answered (without them Slack answers `missing_scope` naming those).
    async fn find_message(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        oldest_ms: Option<i64>,
        wanted: impl Fn(&SlackMessageMetadata) -> bool,
    ) -> Result<Option<String>, SlackError> {
        let session = self.client.open_session(&self.token);
        let oldest = oldest_ms.map(|oldest_ms| {
            let oldest = oldest_ms.max(0);
            format!("{}.{:06}", oldest / 1000, (oldest % 1000) * 1000)
        });
        let mut cursor: Option<SlackCursorId> = None;
        for _ in 0..HISTORY_PAGES {
            let (messages, next, has_more) = match thread_ts {
                None => {
                    let mut request = SlackApiConversationsHistoryRequest::new()
                        .with_channel(SlackChannelId(channel.to_owned()))
                        .with_limit(200)
                        .with_include_all_metadata(true);
                    if let Some(oldest) = &oldest {
                        request = request.with_oldest(SlackTs(oldest.clone()));
                    }
                    if let Some(cursor) = cursor.take() {
                        request = request.with_cursor(cursor);
                    }
                    let response = self.call(session.conversations_history(&request)).await?;
                    (
                        response.messages,
                        response.response_metadata.and_then(|m| m.next_cursor),
                        response.has_more,
                    )
                }
                Some(thread_ts) => {
                    // slack-morphism's request type has no
                    // `include_all_metadata`, without which Slack leaves
                    // the metadata out.
                    let params: Vec<(&str, Option<String>)> = vec![
                        ("channel", Some(channel.to_owned())),
                        ("ts", Some(thread_ts.to_owned())),
                        ("limit", Some("200".to_owned())),
                        ("include_all_metadata", Some("true".to_owned())),
                        ("oldest", oldest.clone()),
                        ("cursor", cursor.take().map(|c| c.0)),
                    ];
                    let response: SlackApiConversationsRepliesResponse = self
                        .call(session.http_session_api.http_get(
                            "conversations.replies",
                            &params,
                            None,
                        ))
                        .await?;
                    (
                        response.messages,
                        response.response_metadata.and_then(|m| m.next_cursor),
                        response.has_more,
                    )
                }
            };
            let found = messages
                .iter()
                .find(|m| m.content.metadata.as_ref().is_some_and(&wanted));
            if let Some(message) = found {
                return Ok(Some(message.origin.ts.0.clone()));
            }
            match next {
                Some(next) if !next.0.is_empty() && has_more.unwrap_or(false) => {
                    cursor = Some(next)
                }
                _ => return Ok(None),
            }
        }
        Ok(None)
    }
}

/// Whether a target is a user (posted to as a DM) rather than a
/// conversation.
pub fn is_user_id(target: &str) -> bool {
    target.len() > 1
        && (target.starts_with('U') || target.starts_with('W'))
        && target[1..].chars().all(|c| c.is_ascii_alphanumeric())
}

/// Which alert, and which occurrence of it, a message is: carried in every
/// message's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertRef<'a> {
    pub alert_id: &'a str,
    pub occurrence: i64,
}

/// Where a post goes: into the thread of `ts`, also shown in the channel
/// when `broadcast` (`reply_broadcast`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thread<'a> {
    pub ts: &'a str,
    pub broadcast: bool,
}

/// Messages posted before occurrences existed are occurrence 1.
fn occurrence_of(payload: &HashMap<String, String>) -> i64 {
    payload
        .get("occurrence")
        .and_then(|o| o.parse::<i64>().ok())
        .unwrap_or(1)
}

impl AlertRef<'_> {
    fn metadata(&self) -> SlackMessageMetadata {
        SlackMessageMetadata {
            event_type: ALERT_METADATA_EVENT.to_owned(),
            event_payload: Some(HashMap::from([
                ("alert_id".to_owned(), self.alert_id.to_owned()),
                ("occurrence".to_owned(), self.occurrence.to_string()),
            ])),
        }
    }

    fn matches(&self, meta: &SlackMessageMetadata) -> bool {
        let Some(payload) = meta.event_payload.as_ref() else {
            return false;
        };
        meta.event_type == ALERT_METADATA_EVENT
            && payload
                .get("alert_id")
                .is_some_and(|id| id == self.alert_id)
            && occurrence_of(payload) == self.occurrence
    }
}

/// Which reply about an alert a thread message is: the alert, its
/// occurrence, and the reply's key (`resolved`, `update:<content>`), one
/// reply per key and occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyRef<'a> {
    pub alert_id: &'a str,
    pub occurrence: i64,
    pub key: &'a str,
}

impl ReplyRef<'_> {
    fn metadata(&self) -> SlackMessageMetadata {
        SlackMessageMetadata {
            event_type: REPLY_METADATA_EVENT.to_owned(),
            event_payload: Some(HashMap::from([
                ("alert_id".to_owned(), self.alert_id.to_owned()),
                ("occurrence".to_owned(), self.occurrence.to_string()),
                ("reply".to_owned(), self.key.to_owned()),
            ])),
        }
    }

    fn matches(&self, meta: &SlackMessageMetadata) -> bool {
        let Some(payload) = meta.event_payload.as_ref() else {
            return false;
        };
        meta.event_type == REPLY_METADATA_EVENT
            && payload
                .get("alert_id")
                .is_some_and(|id| id == self.alert_id)
            && occurrence_of(payload) == self.occurrence
            && payload.get("reply").is_some_and(|key| key == self.key)
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

    #[test]
    fn an_alerts_message_and_a_reply_about_it_are_told_apart() {
        let alert = AlertRef {
            alert_id: "a-1",
            occurrence: 2,
        };
        let reply = ReplyRef {
            alert_id: "a-1",
            occurrence: 2,
            key: "resolved",
        };
        assert!(alert.matches(&alert.metadata()));
        assert!(reply.matches(&reply.metadata()));
        assert!(
            !alert.matches(&reply.metadata()),
            "a reply is not the alert"
        );
        assert!(!reply.matches(&alert.metadata()));
        let other_key = ReplyRef {
            key: "update:abc",
            ..reply
        };
        assert!(!reply.matches(&other_key.metadata()));
        let first = AlertRef {
            occurrence: 1,
            ..alert
        };
        assert!(!first.matches(&alert.metadata()));
    }
}
