//! `POST /slack/interactions`: signed clicks are recorded and acknowledged;
//! anything not signed by Slack is refused and produces nothing.

use std::time::Duration;

use alertsvc::messages::SlackInteraction;
use alertsvc::slack::signing::sign;
use serde_json::json;

use crate::common::eventually;
use crate::common::slack::{message, notify_env, Backend, NotifyEnv, SIGNING_SECRET};

const WAIT: Duration = Duration::from_secs(60);

async fn post(url: &str, body: &str, timestamp: Option<i64>, signature: Option<String>) -> u16 {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    if let Some(ts) = timestamp {
        request = request.header("x-slack-request-timestamp", ts.to_string());
    }
    if let Some(sig) = signature {
        request = request.header("x-slack-signature", sig);
    }
    request.send().await.expect("request").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_click_is_recorded_and_acknowledged_forgeries_are_refused() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], None, Backend::Sqlite, 50).await;
    env.produce_message(&message("ack-me", "C1", "Please acknowledge"))
        .await;
    let notify = env.start_notify().await;
    let responses = env.read_responses(1, WAIT).await;
    let ts = responses[0].ts.clone().expect("ts");
    let posted = slack.messages().remove(0);

    let payload = json!({
        "type": "block_actions",
        "user": {"id": "U0ACK", "username": "ada", "team_id": "T1"},
        "channel": {"id": "C1", "name": "alerts"},
        "container": {"type": "message", "message_ts": ts, "channel_id": "C1"},
        "message": {"type": "message", "ts": ts, "text": posted.text, "blocks": posted.blocks, "metadata": posted.metadata},
        "actions": [{"type": "button", "action_id": "alertsvc_acknowledge", "block_id": "alertsvc_actions", "value": "ack-me"}]
    });
    let body = format!(
        "payload={}",
        form_urlencoded::byte_serialize(payload.to_string().as_bytes()).collect::<String>()
    );
    let url = format!("http://{}/slack/interactions", env.notify_addr());
    let now = crate::common::slack::now_ms() / 1000;

    assert_eq!(
        post(
            &url,
            &body,
            Some(now),
            Some(sign("not-the-secret", &now.to_string(), body.as_bytes()))
        )
        .await,
        401,
        "forged"
    );
    let old = now - 600;
    assert_eq!(
        post(
            &url,
            &body,
            Some(old),
            Some(sign(SIGNING_SECRET, &old.to_string(), body.as_bytes()))
        )
        .await,
        401,
        "expired"
    );
    assert_eq!(post(&url, &body, None, None).await, 401, "unsigned");
    let tampered = body.replace("ack-me", "ack-you");
    let valid = sign(SIGNING_SECRET, &now.to_string(), body.as_bytes());
    assert_eq!(
        post(&url, &tampered, Some(now), Some(valid.clone())).await,
        401,
        "body changed after signing"
    );
    assert_eq!(
        post(&url, &body, Some(now), Some(valid.clone())).await,
        200,
        "valid"
    );
    assert_eq!(
        post(&url, &body, Some(now), Some(valid)).await,
        401,
        "replayed"
    );

    let records = env.read(&env.topic("slack_interactions"), 1, WAIT).await;
    assert_eq!(records.len(), 1, "exactly one interaction recorded");
    assert_eq!(records[0].key.as_deref(), Some("ack-me"));
    let value = env.codecs["slack_interactions"]
        .decode(records[0].payload.as_deref().unwrap())
        .await
        .unwrap();
    let interaction: SlackInteraction = serde_json::from_value(value).unwrap();
    assert_eq!(
        (
            interaction.alert_id.as_str(),
            interaction.action_id.as_str(),
            interaction.user_id.as_str(),
            interaction.message_ts.as_deref()
        ),
        ("ack-me", "alertsvc_acknowledge", "U0ACK", Some(ts.as_str()))
    );
    assert_eq!(interaction.user_name.as_deref(), Some("ada"));

    let message = eventually(WAIT, "the message updated", || async {
        Some(slack.messages().remove(0)).filter(|m| m.edits == 1)
    })
    .await;
    let blocks = message.blocks.to_string();
    assert!(blocks.contains("Acknowledged by <@U0ACK>"), "{blocks}");
    assert!(
        !blocks.contains("\"actions\""),
        "the button is gone: {blocks}"
    );
    let metrics = env.notify_metrics().await;
    assert_eq!(
        crate::common::metric_value(
            &metrics,
            "alertsvc_slack_interactions_total{result=\"rejected\"}"
        ),
        Some(5.0)
    );
    notify.stop().await.expect("clean stop");
}
