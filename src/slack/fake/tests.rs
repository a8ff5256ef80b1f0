//! The fake over HTTP, through the production client where it can say
//! what notify would see, and through plain requests for status codes
//! and headers the client hides.

use std::time::Duration;

use serde_json::json;
use slack_morphism::prelude::*;

use super::*;
use crate::slack::{SlackApi, SlackError};

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

fn api_error(code: &str) -> SlackError {
    SlackError::Api { code: code.into() }
}

#[tokio::test]
async fn a_post_to_a_user_lands_in_the_dm_and_only_the_dm_id_works_after() {
    let slack = fake(FakeSlackConfig::default()).await;
    let api = api(&slack, Duration::from_secs(5));
    let posted = api
        .post("U0ADA", "hi", BLOCKS, &alert_ref("a1"))
        .await
        .unwrap();
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
async fn messages_keep_every_text_they_showed() {
    let slack = fake(FakeSlackConfig::default()).await;
    let api = api(&slack, Duration::from_secs(5));
    let posted = api
        .post("U0ADA", "firing", BLOCKS, &alert_ref("a1"))
        .await
        .unwrap();
    for text in ["acknowledged", "resolved"] {
        api.update(
            &posted.channel,
            &posted.ts,
            text,
            BLOCKS,
            Some(&alert_ref("a1")),
        )
        .await
        .unwrap();
    }
    let message = &slack.messages()[0];
    assert_eq!(message.revisions, ["firing", "acknowledged", "resolved"]);
    assert_eq!(message.edits, 2);
    slack.insert_message(FakeMessage {
        channel: "C1".into(),
        ts: "1.2".into(),
        text: "earlier".into(),
        blocks: json!([]),
        metadata: Some(json!({"event_type": "alertsvc_alert",
                              "event_payload": {"alert_id": "a1"}})),
        edits: 0,
        revisions: Vec::new(),
        thread_ts: None,
        reply_broadcast: false,
    });
    assert_eq!(slack.messages()[1].revisions, ["earlier"]);
    assert_eq!(
        slack.posts_by_alert(),
        BTreeMap::from([("a1".to_owned(), 2)])
    );
}

fn reply_ref<'a>(alert_id: &'a str, key: &'a str) -> crate::slack::ReplyRef<'a> {
    crate::slack::ReplyRef {
        alert_id,
        occurrence: 1,
        key,
    }
}

/// Threads as Slack keeps them: a reply must name a top-level message of
/// its conversation, is listed by `conversations.replies` (with metadata
/// only when asked) and not by `conversations.history` unless broadcast,
/// and its parent counts it.
#[tokio::test]
async fn threads_hold_replies_out_of_the_channel_unless_broadcast() {
    let slack = fake(FakeSlackConfig::default()).await;
    let api = api(&slack, Duration::from_secs(5));
    let parent = api
        .post("C1", "firing", BLOCKS, &alert_ref("a1"))
        .await
        .unwrap();
    let reply = api
        .reply(
            "C1",
            &parent.ts,
            "resolved",
            None,
            &reply_ref("a1", "resolved"),
        )
        .await
        .unwrap();
    let two = crate::slack::AlertRef {
        alert_id: "a1",
        occurrence: 2,
    };
    let thread = crate::slack::Thread {
        ts: &parent.ts,
        broadcast: true,
    };
    let broadcast = api
        .post_in_thread("C1", "firing again", BLOCKS, &two, &thread)
        .await
        .unwrap();

    // Nothing else is a thread: unknown ts, a reply's ts, another channel.
    for (channel, ts) in [("C1", "9.000001"), ("C1", reply.ts.as_str())] {
        assert_eq!(
            api.reply(channel, ts, "x", None, &reply_ref("a1", "k"))
                .await,
            Err(api_error("thread_not_found")),
            "{channel} {ts}"
        );
    }
    slack.add_channel("C2");
    assert_eq!(
        api.reply("C2", &parent.ts, "x", None, &reply_ref("a1", "k"))
            .await,
        Err(api_error("thread_not_found"))
    );

    let history = json_of(
        call(
            &slack,
            "conversations.history",
            &[("channel", "C1"), ("include_all_metadata", "true")],
        )
        .await,
    )
    .await;
    let listed: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ts"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [broadcast.ts.as_str(), parent.ts.as_str()]);
    let top = &history["messages"][1];
    assert_eq!(top["reply_count"], 2);
    assert_eq!(top["latest_reply"], broadcast.ts.as_str());
    assert_eq!(top["thread_ts"], parent.ts.as_str());
    assert_eq!(history["messages"][0]["subtype"], "thread_broadcast");
    assert_eq!(history["messages"][0]["thread_ts"], parent.ts.as_str());

    // The thread, oldest first, from its parent or from any reply in it.
    for named in [&parent.ts, &reply.ts] {
        let thread = json_of(
            call(
                &slack,
                "conversations.replies",
                &[("channel", "C1"), ("ts", named.as_str())],
            )
            .await,
        )
        .await;
        let listed: Vec<&str> = thread["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["ts"].as_str().unwrap())
            .collect();
        assert_eq!(listed, [&parent.ts, &reply.ts, &broadcast.ts]);
        assert!(
            thread["messages"][1].get("metadata").is_none(),
            "metadata only when asked"
        );
    }
    assert_eq!(
        json_of(
            call(
                &slack,
                "conversations.replies",
                &[("channel", "C1"), ("ts", "9.000001")]
            )
            .await
        )
        .await["error"],
        "thread_not_found"
    );

    // Found by what they are: the alert's message is not its reply.
    assert_eq!(
        api.find_alert("C1", &alert_ref("a1"), None).await,
        Ok(Some(parent.ts.clone()))
    );
    assert_eq!(
        api.find_reply("C1", &parent.ts, &reply_ref("a1", "resolved"), None)
            .await,
        Ok(Some(reply.ts.clone()))
    );
    assert_eq!(
        api.find_reply("C1", &parent.ts, &reply_ref("a1", "update:x"), None)
            .await,
        Ok(None)
    );
    assert_eq!(
        api.find_alert_in_thread("C1", &parent.ts, &two, None).await,
        Ok(Some(broadcast.ts.clone()))
    );
    assert_eq!(
        slack.posts_by_alert(),
        BTreeMap::from([("a1".to_owned(), 2)]),
        "two occurrences, the reply is not a post of the alert"
    );
    let stats = slack.stats();
    assert_eq!((stats.posts, stats.replies), (3, 2));
    let stored = slack.messages();
    assert_eq!(stored[1].reply_key(), Some("resolved"));
    assert_eq!(stored[1].alert_id(), None);
    assert_eq!(stored[1].about_alert(), Some("a1"));
    assert!(!stored[1].in_channel() && stored[2].in_channel());
}

fn alert_ref(alert_id: &str) -> crate::slack::AlertRef<'_> {
    crate::slack::AlertRef {
        alert_id,
        occurrence: 1,
    }
}
