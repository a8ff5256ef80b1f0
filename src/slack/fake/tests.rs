//! The fake over HTTP, through the production client where it can say
//! what notify would see, and through plain requests for status codes
//! and headers the client hides.

use std::time::Duration;

use serde_json::json;
use slack_morphism::prelude::*;

use super::*;
use crate::slack::{Posted, SlackApi, SlackError};

const TOKEN: &str = "xoxb-fake-token";
const BLOCKS: &str = r#"[{"type":"section","text":{"type":"mrkdwn","text":"*hi*"}}]"#;

async fn fake(config: FakeSlackConfig) -> FakeSlack {
    let _ = rustls::crypto::ring::default_provider().install_default();
    FakeSlack::start(FakeSlackConfig {
        channels: vec!["C1".into()],
        users: vec!["U0ADA".into(), "W0GRACE".into()],
        per_channel_per_second: None,
        ..config
    })
    .await
    .expect("fake slack")
}

fn api(slack: &FakeSlack, timeout: Duration) -> SlackApi {
    SlackApi::new(&slack.url, TOKEN, timeout)
}

/// A raw form-encoded call, for what the production client hides.
async fn call(slack: &FakeSlack, method: &str, form: &[(&str, &str)]) -> reqwest::Response {
    call_with(&reqwest::Client::new(), slack, method, form).await
}

async fn call_with(
    client: &reqwest::Client,
    slack: &FakeSlack,
    method: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    client
        .post(format!("{}/{method}", slack.url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish(),
        )
        .send()
        .await
        .expect("the fake answers")
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON answer")
}

/// A fake, the client on it, and alert a1's message posted to `channel`.
async fn with_a1_posted(channel: &str, text: &str) -> (FakeSlack, SlackApi, Posted) {
    let slack = fake(FakeSlackConfig::default()).await;
    let api = api(&slack, Duration::from_secs(5));
    let posted = api
        .post(channel, text, BLOCKS, &alert_ref("a1"))
        .await
        .unwrap();
    (slack, api, posted)
}

fn api_error(code: &str) -> SlackError {
    SlackError::Api { code: code.into() }
}

#[tokio::test]
async fn a_post_to_a_user_lands_in_the_dm_and_only_the_dm_id_works_after() {
    let (slack, api, posted) = with_a1_posted("U0ADA", "hi").await;
    assert_eq!(posted.channel, "D0ADA");
    assert_eq!(slack.messages()[0].channel, "D0ADA");
    assert_eq!(slack.dm_user("D0ADA").as_deref(), Some("U0ADA"));
    let grace = api
        .post("W0GRACE", "hi", BLOCKS, &alert_ref("a2"))
        .await
        .unwrap();
    assert_eq!(grace.channel, "D0GRACE");
    let direct = api
        .post("D0ADA", "again", BLOCKS, &alert_ref("a3"))
        .await
        .unwrap();
    assert_eq!(direct.channel, "D0ADA");

    assert_eq!(
        api.post("U0NOBODY", "hi", BLOCKS, &alert_ref("a4")).await,
        Err(api_error("channel_not_found"))
    );
    assert_eq!(
        api.find_alert("U0ADA", &alert_ref("a1"), None).await,
        Err(api_error("channel_not_found"))
    );
    assert_eq!(
        api.update(
            "U0ADA",
            &posted.ts,
            "edited",
            BLOCKS,
            Some(&alert_ref("a1"))
        )
        .await,
        Err(api_error("channel_not_found"))
    );
    assert_eq!(
        api.find_alert("D0ADA", &alert_ref("a1"), None).await,
        Ok(Some(posted.ts.clone()))
    );
    let updated = api
        .update(
            "D0ADA",
            &posted.ts,
            "edited",
            BLOCKS,
            Some(&alert_ref("a1")),
        )
        .await
        .unwrap();
    assert_eq!(updated.channel, "D0ADA");
    // A DM nobody posted to yet exists all the same.
    assert_eq!(
        api.find_alert("D0GRACE", &alert_ref("a1"), None).await,
        Ok(None)
    );
}

#[tokio::test]
async fn conversations_open_answers_the_dm_for_json_and_form_bodies() {
    let slack = fake(FakeSlackConfig::default()).await;
    let client = SlackClient::new(
        SlackClientHyperConnector::with_connector(
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_webpki_roots()
                .https_or_http()
                .enable_http1()
                .build(),
        )
        .with_slack_api_url(&slack.url),
    );
    let token = SlackApiToken::new(SlackApiTokenValue(TOKEN.into()));
    let session = client.open_session(&token);
    let request =
        SlackApiConversationsOpenRequest::new().with_users(vec![SlackUserId("U0ADA".into())]);
    let opened = session.conversations_open(&request).await.unwrap();
    assert_eq!(opened.channel.id.0, "D0ADA");
    assert_eq!(opened.already_open, None);
    let full = session.conversations_open_full(&request).await.unwrap();
    assert_eq!(full.channel.id.0, "D0ADA");
    assert_eq!(full.channel.flags.is_im, Some(true));
    assert_eq!(full.already_open, Some(true));
    let unknown =
        SlackApiConversationsOpenRequest::new().with_users(vec![SlackUserId("U0NOBODY".into())]);
    match session.conversations_open(&unknown).await {
        Err(slack_morphism::errors::SlackClientError::ApiError(e)) => {
            assert_eq!(e.code, "user_not_found")
        }
        other => panic!("expected user_not_found, got {other:?}"),
    }

    let form = json_of(call(&slack, "conversations.open", &[("users", "W0GRACE")]).await).await;
    assert_eq!(form, json!({"ok": true, "channel": {"id": "D0GRACE"}}));
    let resumed =
        json_of(call(&slack, "conversations.open", &[("channel", "D0GRACE")]).await).await;
    assert_eq!(resumed["channel"]["id"], "D0GRACE");
    for (form, code) in [
        (&[][..], "users_list_not_supplied"),
        (&[("users", "U0ADA,W0GRACE")][..], "invalid_arguments"),
        (&[("channel", "C1")][..], "channel_not_found"),
    ] {
        let answer = json_of(call(&slack, "conversations.open", form).await).await;
        assert_eq!(answer["error"], code, "{form:?}");
    }
    assert_eq!(slack.stats().opens, 8);
}

#[tokio::test]
async fn bad_input_gets_slack_error_codes() {
    let slack = fake(FakeSlackConfig::default()).await;
    let client = reqwest::Client::new();
    let send = |body: &'static str| {
        client
            .post(format!("{}/chat.postMessage", slack.url))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (body, code) in [
        ("{not json", "invalid_json"),
        ("[1]", "json_not_object"),
        (r#"{"channel": 7, "text": "hi"}"#, "invalid_arguments"),
        (r#"{"text": "hi"}"#, "channel_not_found"),
        (r#"{"channel": "C1"}"#, "no_text"),
    ] {
        let answer = json_of(send(body).await.unwrap()).await;
        assert_eq!(answer["error"], code, "{body}");
    }
    assert!(slack.messages().is_empty());
}

#[tokio::test]
async fn a_refusing_outage_is_a_transport_error_and_stores_nothing() {
    let slack = fake(FakeSlackConfig::default()).await;
    let api = api(&slack, Duration::from_secs(5));
    // Opens a connection the client keeps: the outage must drop it too.
    api.post("C1", "before", BLOCKS, &alert_ref("a0"))
        .await
        .unwrap();
    slack.set_outage(Some(OutageMode::Refuse));
    for alert in ["a1", "a2"] {
        match api.post("C1", "during", BLOCKS, &alert_ref(alert)).await {
            Err(SlackError::Transport(_)) => {}
            other => panic!("expected a transport error, got {other:?}"),
        }
    }
    assert_eq!(slack.messages().len(), 1);
    assert_eq!(slack.stats().outage_rejections, 2);
    slack.set_outage(None);
    api.post("C1", "after", BLOCKS, &alert_ref("a3"))
        .await
        .unwrap();
    assert_eq!(slack.messages().len(), 2);
}

#[tokio::test]
async fn a_server_error_outage_answers_every_call_with_its_status() {
    let slack = fake(FakeSlackConfig::default()).await;
    let api = api(&slack, Duration::from_secs(5));
    slack.set_outage(Some(OutageMode::ServerError(503)));
    assert_eq!(
        api.post("C1", "during", BLOCKS, &alert_ref("a1")).await,
        Err(SlackError::Http { status: 503 })
    );
    assert_eq!(
        api.find_alert("C1", &alert_ref("a1"), None).await,
        Err(SlackError::Http { status: 503 })
    );
    assert!(slack.messages().is_empty());
    assert_eq!(slack.stats().outage_rejections, 2);
    assert_eq!(slack.stats().posts, 0);
}

#[tokio::test]
async fn ambiguous_posts_are_stored_but_answered_500_or_too_late() {
    let slack = fake(FakeSlackConfig::default()).await;
    let impatient = api(&slack, Duration::from_millis(50));
    let api = api(&slack, Duration::from_secs(5));
    // Far beyond the client's timeout: the answer cannot win the race.
    slack.set_ambiguous(1.0, Duration::from_secs(30));
    assert_eq!(
        api.post("C1", "first", BLOCKS, &alert_ref("a1")).await,
        Err(SlackError::Http { status: 500 })
    );
    assert_eq!(
        impatient
            .post("U0ADA", "second", BLOCKS, &alert_ref("a2"))
            .await,
        Err(SlackError::Timeout(Duration::from_millis(50)))
    );
    assert_eq!(slack.messages()[1].channel, "D0ADA");
    slack.set_ambiguous(0.0, Duration::ZERO);
    let ts = api.find_alert("C1", &alert_ref("a1"), None).await.unwrap();
    assert!(ts.is_some(), "the 500'd post is in the history");
    let retried = api
        .post("C1", "first", BLOCKS, &alert_ref("a1"))
        .await
        .unwrap();
    assert_ne!(Some(retried.ts), ts);
    let stats = slack.stats();
    assert_eq!((stats.posts, stats.ambiguous), (3, 2));
    assert_eq!(
        slack.posts_by_alert(),
        BTreeMap::from([("a1".to_owned(), 2), ("a2".to_owned(), 1)])
    );
}

#[tokio::test]
async fn injected_429s_carry_retry_after_and_store_nothing() {
    let slack = fake(FakeSlackConfig::default()).await;
    slack.set_rate_limit_injection(1.0, 7);
    let response = call(
        &slack,
        "chat.postMessage",
        &[("channel", "C1"), ("text", "hi")],
    )
    .await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(
        api(&slack, Duration::from_secs(5))
            .post("C1", "hi", BLOCKS, &alert_ref("a1"))
            .await,
        Err(SlackError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        })
    );
    assert!(slack.messages().is_empty());
    assert_eq!(slack.stats().rate_limited, 2);
}

#[tokio::test]
async fn injected_faults_repeat_with_the_seed() {
    async fn pattern(seed: u64) -> Vec<u16> {
        let slack = fake(FakeSlackConfig {
            seed,
            ..FakeSlackConfig::default()
        })
        .await;
        slack.set_rate_limit_injection(0.5, 1);
        let client = reqwest::Client::new();
        let mut statuses = Vec::new();
        for _ in 0..24 {
            let form = [("channel", "C1"), ("text", "hi")];
            let response = call_with(&client, &slack, "chat.postMessage", &form).await;
            statuses.push(response.status().as_u16());
        }
        statuses
    }
    let first = pattern(42).await;
    assert_eq!(first, pattern(42).await);
    assert!(first.contains(&200) && first.contains(&429), "{first:?}");
    assert_ne!(first, pattern(43).await);
}

#[tokio::test]
async fn history_beyond_its_tier_limit_is_429() {
    let slack = fake(FakeSlackConfig {
        history_per_minute: Some(2),
        ..FakeSlackConfig::default()
    })
    .await;
    let api = api(&slack, Duration::from_secs(5));
    assert_eq!(api.find_alert("C1", &alert_ref("a1"), None).await, Ok(None));
    assert_eq!(api.find_alert("C1", &alert_ref("a1"), None).await, Ok(None));
    match api.find_alert("C1", &alert_ref("a1"), None).await {
        Err(SlackError::RateLimited {
            retry_after: Some(wait),
        }) => assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(60)),
        other => panic!("expected a 429, got {other:?}"),
    }
    slack.set_history_per_minute(None);
    assert_eq!(api.find_alert("C1", &alert_ref("a1"), None).await, Ok(None));
}

#[tokio::test]
async fn updates_beyond_their_tier_limit_are_429_until_the_window_passes() {
    let slack = fake(FakeSlackConfig {
        updates_per_minute: Some(2),
        tier_window: Duration::from_secs(1),
        ..FakeSlackConfig::default()
    })
    .await;
    let api = api(&slack, Duration::from_secs(5));
    let posted = api
        .post("C1", "v1", "[]", &alert_ref("a1"))
        .await
        .expect("posted");
    let update = |text: &'static str| {
        let (api, ts) = (&api, posted.ts.clone());
        async move {
            api.update("C1", &ts, text, "[]", Some(&alert_ref("a1")))
                .await
        }
    };
    assert!(update("v2").await.is_ok());
    assert!(update("v3").await.is_ok());
    match update("v4").await {
        Err(SlackError::RateLimited {
            retry_after: Some(wait),
        }) => assert_eq!(wait, Duration::from_secs(1)),
        other => panic!("expected a 429, got {other:?}"),
    }
    // Refused before it was read: the message still shows v3.
    let shown = slack.messages();
    assert_eq!(shown[0].text, "v3");
    assert_eq!(shown[0].revisions, ["v1", "v2", "v3"]);
    assert_eq!(slack.stats().rate_limited, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(update("v4").await.is_ok());
    assert_eq!(slack.messages()[0].text, "v4");
}

mod threads;

fn alert_ref(alert_id: &str) -> crate::slack::AlertRef<'_> {
    crate::slack::AlertRef {
        alert_id,
        occurrence: 1,
    }
}
