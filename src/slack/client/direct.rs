//! `chat.postMessage` and `chat.update` sent on hyper directly, answered as
//! slack-morphism's connector answers them.
//!
//! slack-morphism's connector reads every answer twice (once for its
//! envelope, once for the typed answer), copies it into a `String` and its
//! headers into a new map first, and parses its content type: for a post's
//! answer, which echoes the whole message, the call cost 44,500
//! instructions per post, 31,700 here (callgrind, `unlimited 4000`). Here
//! the answer is read once, for what [`Answered`] needs. Every other method
//! still goes through slack-morphism.
//!
//! The outcomes are slack-morphism's (see [`answer`] for the one
//! difference), so that [`SlackError`]'s classification — above all, "the
//! request never left" vs "it may have reached Slack" — is unchanged.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, ACCEPT_CHARSET, AUTHORIZATION, CONTENT_TYPE};
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use url::Url;

use super::super::SlackError;
use super::Posted;

/// What is read of a posting method's answer: Slack's error code, or the
/// message's place.
#[derive(serde::Deserialize)]
struct Answered {
    error: Option<String>,
    channel: Option<String>,
    ts: Option<String>,
}

/// An HTTP client for the posting methods, with the token's header.
pub(super) struct Direct {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `Bearer <token>`, marked sensitive (never printed by `http`).
    authorization: Option<HeaderValue>,
}

impl Direct {
    pub(super) fn new(https: HttpsConnector<HttpConnector>, token: &str) -> Direct {
        let authorization =
            HeaderValue::from_str(&format!("Bearer {token}"))
                .ok()
                .map(|mut value| {
                    value.set_sensitive(true);
                    value
                });
        Direct {
            http: Client::builder(TokioExecutor::new()).build(https),
            authorization,
        }
    }

    /// `POST`s `body` (JSON) to `url` within `timeout`, as slack-morphism
    /// would (the same headers), and reads the answer.
    pub(super) async fn post(
        &self,
        url: &Url,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Posted, SlackError> {
        let mut request = http::Request::post(url.as_str())
            .header(ACCEPT_CHARSET, "utf-8")
            .header(CONTENT_TYPE, "application/json; charset=utf-8");
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SlackError::Transport(e.to_string()))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| SlackError::from_hyper(&e))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| SlackError::Transport(format!("{e:?}")))?
                .to_bytes();
            answer(parts.status, &parts.headers, &body)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(SlackError::Timeout(timeout)),
        }
    }
}

/// The outcome of a posting method's answer, as slack-morphism's connector
/// decides it (`send_http_request`): a JSON `200` is an error when it names
/// one (whatever `ok` says), else the message's place; a `429` is rate
/// limited with its `Retry-After` (seconds); any other status is an HTTP
/// error. An answer that cannot be read so (not JSON, no `channel` or `ts`)
/// is a transport failure: the post may have been made. One difference: a
/// `429` whose JSON body does not parse is rate limited here (slack-morphism
/// reads its body first and calls it a transport failure).
fn answer(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Result<Posted, SlackError> {
    match status {
        StatusCode::OK if is_json(headers) => {
            let answered: Answered = serde_json::from_slice(body)
                .map_err(|e| SlackError::Transport(format!("unreadable answer: {e}")))?;
            match answered {
                Answered {
                    error: Some(code), ..
                } => Err(SlackError::Api { code }),
                Answered {
                    channel: Some(channel),
                    ts: Some(ts),
                    ..
                } => Ok(Posted { channel, ts }),
                Answered { .. } => Err(placeless()),
            }
        }
        StatusCode::OK | StatusCode::NO_CONTENT => Err(placeless()),
        StatusCode::TOO_MANY_REQUESTS => Err(SlackError::RateLimited {
            retry_after: headers
                .get(http::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse().ok())
                .map(Duration::from_secs),
        }),
        status => Err(SlackError::Http {
            status: status.as_u16(),
        }),
    }
}

/// A success that does not say where the message is: it may have posted.
fn placeless() -> SlackError {
    SlackError::Transport("answer without the message's channel and ts".into())
}

/// Whether the answer is JSON: its content type says so, or it has none
/// or one that does not parse (slack-morphism then reads it as JSON).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return true;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    match essence.split_once('/') {
        Some((kind, subtype)) if !kind.is_empty() && !subtype.is_empty() => {
            kind.eq_ignore_ascii_case("application") && subtype.eq_ignore_ascii_case("json")
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::header::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                    HeaderValue::from_str(value).expect("value"),
                )
            })
            .collect()
    }

    fn json() -> HeaderMap {
        headers(&[("content-type", "application/json; charset=utf-8")])
    }

    #[test]
    fn a_post_is_answered_with_its_place() {
        let body = br#"{"ok":true,"channel":"C1","ts":"1.000001","message":{"blocks":[{"type":"divider"}],"text":"\"x\""}}"#;
        assert_eq!(
            answer(StatusCode::OK, &json(), body),
            Ok(Posted {
                channel: "C1".into(),
                ts: "1.000001".into()
            })
        );
        // No content type: read as JSON, as slack-morphism does.
        assert!(answer(StatusCode::OK, &HeaderMap::new(), body).is_ok());
    }

    #[test]
    fn slack_s_error_code_is_the_error() {
        let body = br#"{"ok":false,"error":"channel_not_found"}"#;
        assert_eq!(
            answer(StatusCode::OK, &json(), body),
            Err(SlackError::Api {
                code: "channel_not_found".into()
            })
        );
    }

    #[test]
    fn a_rate_limit_carries_its_retry_after() {
        let limited = headers(&[("content-type", "application/json"), ("retry-after", "3")]);
        assert_eq!(
            answer(
                StatusCode::TOO_MANY_REQUESTS,
                &limited,
                br#"{"ok":false,"error":"ratelimited"}"#
            ),
            Err(SlackError::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            })
        );
        let plain = headers(&[("content-type", "text/plain"), ("retry-after", "soon")]);
        assert_eq!(
            answer(StatusCode::TOO_MANY_REQUESTS, &plain, b"slow down"),
            Err(SlackError::RateLimited { retry_after: None })
        );
    }

    #[test]
    fn other_statuses_are_http_errors() {
        for status in [400, 401, 403, 404, 500, 502, 503] {
            let status = StatusCode::from_u16(status).expect("status");
            assert_eq!(
                answer(status, &json(), b"{}"),
                Err(SlackError::Http {
                    status: status.as_u16()
                })
            );
        }
    }

    #[test]
    fn an_answer_that_cannot_be_read_may_have_posted() {
        let transport =
            |result: Result<Posted, SlackError>| matches!(result, Err(SlackError::Transport(_)));
        let html = headers(&[("content-type", "text/html")]);
        assert!(transport(answer(StatusCode::OK, &html, b"<html>")));
        assert!(transport(answer(StatusCode::NO_CONTENT, &json(), b"")));
        assert!(transport(answer(StatusCode::OK, &json(), b"{not json")));
        assert!(transport(answer(
            StatusCode::OK,
            &json(),
            br#"{"ok":true}"#
        )));
        assert!(transport(answer(
            StatusCode::OK,
            &json(),
            br#"{"ok":true,"channel":"C1"}"#
        )));
    }

    #[test]
    fn content_types_read_as_json() {
        let is = |value: &str| is_json(&headers(&[("content-type", value)]));
        assert!(is("application/json"));
        assert!(is("Application/JSON; charset=utf-8"));
        assert!(is("garbage"));
        assert!(!is("text/plain"));
        assert!(!is("application/xml"));
    }
}
