//! The Slack Web API client: post (top-level or in a thread), update, find
//! a message by its metadata.

use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::value::RawValue;
use slack_morphism::prelude::*;
use url::Url;

use super::{AlertRef, ReplyRef, SlackError, Tag};

mod direct;

const HISTORY_PAGES: usize = 5;

const POST_MESSAGE: &str = "chat.postMessage";
const UPDATE: &str = "chat.update";

/// A message as Slack stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub channel: String,
    pub ts: String,
}

/// What we read of `chat.postMessage`'s and `chat.update`'s answers when
/// they go through slack-morphism (only when the base URL does not parse,
/// see `direct`; its connector checks the error and the status first, as
/// for its typed calls). Their typed responses also decode the message
/// Slack echoes back, its blocks included, into Block Kit types: about a
/// tenth of a post's CPU on notify's runtime, for fields nothing reads.
#[derive(serde::Deserialize)]
struct Answered {
    channel: SlackChannelId,
    ts: SlackTs,
}

impl From<Answered> for Posted {
    fn from(answered: Answered) -> Posted {
        Posted {
            channel: answered.channel.0,
            ts: answered.ts.0,
        }
    }
}

/// The body of `chat.postMessage` and `chat.update`, as slack-morphism's
/// requests write it, except the blocks: they go as rendered (enrich
/// checked them against Block Kit's limits). Read into slack-morphism's
/// Block Kit types and written back, they cost an eighth of a post's
/// request (~6,000 instructions, callgrind), and a block or field those
/// types do not know was refused here or dropped on the way; Slack is the
/// judge of what it takes (`invalid_blocks`, a permanent failure either
/// way).
#[derive(serde::Serialize)]
struct Body<'a> {
    channel: &'a str,
    /// `chat.update`'s message.
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<&'a str>,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocks: Option<&'a RawValue>,
    /// Without it, `chat.update` keeps the message's metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a SlackMessageMetadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread_ts: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_broadcast: Option<bool>,
}

type Connector = SlackClientHyperConnector<HttpsConnector<HttpConnector>>;

pub struct SlackApi {
    pub(super) client: SlackClient<Connector>,
    /// The posting methods' own HTTP client (see `direct`).
    direct: direct::Direct,
    pub(super) token: SlackApiToken,
    timeout: Duration,
    /// The posting methods' URLs, parsed once: slack-morphism parses the
    /// base URL joined with the method on every call otherwise. `None`
    /// (the base does not parse): each call fails as slack-morphism's own.
    post_message_url: Option<Url>,
    update_url: Option<Url>,
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
        let direct = direct::Direct::new(https.clone(), token);
        let connector =
            SlackClientHyperConnector::with_connector(https).with_slack_api_url(api_url);
        // As slack-morphism's `create_method_uri_path` joins them.
        let method_url = |method: &str| format!("{api_url}/{method}").parse::<Url>().ok();
        SlackApi {
            client: SlackClient::new(connector),
            direct,
            token: SlackApiToken::new(SlackApiTokenValue(token.to_owned())),
            timeout,
            post_message_url: method_url(POST_MESSAGE),
            update_url: method_url(UPDATE),
        }
    }

    /// A `POST` of `method` (at `url`, if parsed) answered as `Answered`.
    async fn post_method<RQ>(
        &self,
        method: &str,
        url: Option<&Url>,
        request: &RQ,
        rate: &'static SlackApiMethodRateControlConfig,
    ) -> Result<Posted, SlackError>
    where
        RQ: serde::Serialize + Send + Sync,
    {
        if let Some(url) = url {
            // Serializing these bodies cannot fail (strings, a raw JSON
            // value, slack-morphism's metadata type).
            let body = serde_json::to_vec(request)
                .map_err(|e| SlackError::Transport(format!("request body: {e}")))?;
            return self.direct.post(url, body, self.timeout).await;
        }
        // The base URL does not parse: slack-morphism fails the call its way.
        let session = self.client.open_session(&self.token);
        let api = &session.http_session_api;
        let answered: Answered = self
            .call(api.http_post(method, request, Some(rate)))
            .await?;
        Ok(answered.into())
    }

    pub(super) async fn call<T, F>(&self, request: F) -> Result<T, SlackError>
    where
        F: std::future::Future<Output = ClientResult<T>>,
    {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(result) => result.map_err(SlackError::from),
            Err(_) => Err(SlackError::Timeout(self.timeout)),
        }
    }

    /// `blocks` as they go to Slack: as rendered, checked here only to be
    /// a JSON array.
    fn raw_blocks(blocks: &str) -> Result<&RawValue, SlackError> {
        let raw: &RawValue =
            serde_json::from_str(blocks).map_err(|e| SlackError::InvalidBlocks(e.to_string()))?;
        if raw.get().starts_with('[') {
            Ok(raw)
        } else {
            Err(SlackError::InvalidBlocks("not a JSON array".into()))
        }
    }

    /// `chat.postMessage` with what the message is (an alert's
    /// occurrence, a group's summary) in its metadata.
    pub async fn post(
        &self,
        channel: &str,
        text: &str,
        blocks: &str,
        tag: &impl Tag,
    ) -> Result<Posted, SlackError> {
        self.post_message(channel, text, Some(blocks), tag.metadata(), None)
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
        self.post_message(channel, text, Some(blocks), alert.metadata(), Some(thread))
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
        self.post_message(channel, text, blocks, reply.metadata(), Some(&thread))
            .await
    }

    /// `chat.postMessage`: every post carries metadata saying what it is,
    /// by which it is found again after an ambiguous answer.
    async fn post_message(
        &self,
        channel: &str,
        text: &str,
        blocks: Option<&str>,
        metadata: SlackMessageMetadata,
        thread: Option<&Thread<'_>>,
    ) -> Result<Posted, SlackError> {
        let request = Body {
            channel,
            ts: None,
            text,
            blocks: blocks.map(Self::raw_blocks).transpose()?,
            metadata: Some(&metadata),
            thread_ts: thread.map(|thread| thread.ts),
            reply_broadcast: thread.and_then(|thread| thread.broadcast.then_some(true)),
        };
        self.post_method(
            POST_MESSAGE,
            self.post_message_url.as_ref(),
            &request,
            &CHAT_POST_MESSAGE_SPECIAL_LIMIT_RATE_CTL,
        )
        .await
    }

    /// `chat.update` of an earlier message; without `tag` the message
    /// keeps the metadata it had.
    pub async fn update(
        &self,
        channel: &str,
        ts: &str,
        text: &str,
        blocks: &str,
        tag: Option<&impl Tag>,
    ) -> Result<Posted, SlackError> {
        let metadata = tag.map(Tag::metadata);
        let request = Body {
            channel,
            ts: Some(ts),
            text,
            blocks: Some(Self::raw_blocks(blocks)?),
            metadata: metadata.as_ref(),
            thread_ts: None,
            reply_broadcast: None,
        };
        self.post_method(
            UPDATE,
            self.update_url.as_ref(),
            &request,
            &SLACK_TIER3_METHOD_CONFIG,
        )
        .await
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
        self.find(channel, None, alert, oldest_ms).await
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
        self.find(channel, Some(thread_ts), alert, oldest_ms).await
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
        self.find(channel, Some(thread_ts), reply, oldest_ms).await
    }

    /// The ts of the first message whose metadata is `tag`'s, in the
    /// conversation's history or, given `thread_ts`, in that thread
    /// (`conversations.replies`: history lists no replies but broadcast
    /// ones). Slack's method page says bot tokens may read channel threads
    /// only in DMs; granular bot tokens with the `*:history` scopes are
    /// answered (without them Slack answers `missing_scope` naming those).
    pub async fn find(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        tag: &impl Tag,
        oldest_ms: Option<i64>,
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
            let found = messages.iter().find(|m| {
                m.content
                    .metadata
                    .as_ref()
                    .is_some_and(|meta| tag.matches(meta))
            });
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

/// Where a post goes: into the thread of `ts`, also shown in the channel
/// when `broadcast` (`reply_broadcast`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thread<'a> {
    pub ts: &'a str,
    pub broadcast: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks reach Slack as rendered, whatever slack-morphism's Block Kit
    /// types know of them; the rest of the body is what its requests write.
    #[test]
    fn a_post_carries_its_blocks_as_rendered() {
        let blocks = r#"[{"type":"rich_text","elements":[],"future_field":{"x":1}}]"#;
        let metadata = super::super::metadata::metadata_of("alert", [("alert_id", "a".into())]);
        let body = Body {
            channel: "C1",
            ts: None,
            text: "fallback \"quoted\"",
            blocks: Some(SlackApi::raw_blocks(blocks).expect("a JSON array")),
            metadata: Some(&metadata),
            thread_ts: Some("1.000001"),
            reply_broadcast: Some(true),
        };
        let written = serde_json::to_string(&body).expect("serializes");
        assert!(
            written.contains(&format!(r#""blocks":{blocks}"#)),
            "{written}"
        );
        let read: serde_json::Value = serde_json::from_str(&written).expect("JSON");
        assert_eq!(
            read,
            serde_json::json!({
                "channel": "C1",
                "text": "fallback \"quoted\"",
                "blocks": [{"type": "rich_text", "elements": [], "future_field": {"x": 1}}],
                "metadata": {"event_type": "alert", "event_payload": {"alert_id": "a"}},
                "thread_ts": "1.000001",
                "reply_broadcast": true,
            })
        );
    }

    #[test]
    fn blocks_that_are_not_a_json_array_are_refused_before_slack() {
        for blocks in ["", "[{", r#"{"type":"section"}"#, "null"] {
            assert!(
                matches!(
                    SlackApi::raw_blocks(blocks),
                    Err(SlackError::InvalidBlocks(_))
                ),
                "{blocks:?}"
            );
        }
        assert!(SlackApi::raw_blocks(" [ ] ").is_ok());
    }
}
