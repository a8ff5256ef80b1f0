//! Event-time latency histograms: enrich's from an event to its committed
//! Slack message, notify's from the same event time to Slack's answer.

use std::time::{Duration, Instant};

use alertsvc::messages::DeliveryOutcome;

use crate::common::slack::{notify_env, now_ms, Backend, NotifyEnv};
use crate::common::{connector_event, metric_value};

const WAIT: Duration = Duration::from_secs(60);
const PIPELINE: &str = "connector-provisioning-failure";

/// Events written with a timestamp 1,000 s in the past: each histogram
/// counts every alert exactly once, from that event time (none of them in
/// the buckets up to 300 s), and nothing for a filtered event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_histograms_count_every_alert_from_its_event_time() {
    const ALERTS: usize = 8;
    const AGE_MS: i64 = 1_000_000;
    let users: Vec<String> = (0..ALERTS).map(|i| format!("U{i:04}")).collect();
    let channels: Vec<&str> = users.iter().map(String::as_str).collect();
    let NotifyEnv {
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&channels, None, Backend::Sqlite, 50).await;
    for (i, user) in users.iter().enumerate() {
        let email = format!("csdr{i}@example.com");
        env.put_assignment(&format!("org-{i}"), &email, &format!("Org {i}"))
            .await;
        env.put_slack_user(&email, user).await;
    }
    let started = Instant::now();
    let event_ms = now_ms() - AGE_MS;
    for i in 0..ALERTS {
        env.produce_event_at(
            &format!("org-{i}"),
            &connector_event(&format!("e{i}"), "env", &format!("c{i}"), "Provisioning"),
            event_ms,
        )
        .await;
    }
    // Filtered out (not from Provisioning): no alert, no observation.
    env.produce_event_at(
        "org-0",
        &connector_event("e-running", "env", "c-running", "Running"),
        event_ms,
    )
    .await;

    let enrich = env.start_enrich().await;
    let notify = env.start_notify().await;
    let responses = env.read_responses(ALERTS, WAIT).await;
    assert_eq!(responses.len(), ALERTS);
    assert!(
        responses
            .iter()
            .all(|r| r.ok && r.outcome == DeliveryOutcome::Posted),
        "{responses:?}"
    );
    // At most this old when observed.
    let max_age = (AGE_MS as f64 / 1000.0) + started.elapsed().as_secs_f64() + 1.0;

    let enrich_metrics = env.metrics().await;
    let enrich_series = |suffix: &str| {
        metric_value(
            &enrich_metrics,
            &format!("alertsvc_enrich_event_latency_seconds_{suffix}"),
        )
    };
    assert_eq!(
        enrich_series(&format!("count{{pipeline=\"{PIPELINE}\"}}")),
        Some(ALERTS as f64),
        "{enrich_metrics}"
    );
    assert_eq!(
        enrich_series(&format!("bucket{{pipeline=\"{PIPELINE}\",le=\"300\"}}")),
        Some(0.0),
        "measured from the event time, not from when enrich read it"
    );
    assert_eq!(
        enrich_series(&format!("bucket{{pipeline=\"{PIPELINE}\",le=\"+Inf\"}}")),
        Some(ALERTS as f64)
    );
    let sum = enrich_series(&format!("sum{{pipeline=\"{PIPELINE}\"}}")).unwrap_or_default();
    assert!(
        (ALERTS as f64 * 1000.0..=ALERTS as f64 * max_age).contains(&sum),
        "enrich latency sum {sum} for {ALERTS} alerts {AGE_MS} ms old"
    );

    let notify_metrics = env.notify_metrics().await;
    let notify_series = |suffix: &str| {
        metric_value(
            &notify_metrics,
            &format!("alertsvc_notify_event_to_slack_seconds_{suffix}"),
        )
    };
    assert_eq!(
        notify_series("count"),
        Some(ALERTS as f64),
        "{notify_metrics}"
    );
    assert_eq!(notify_series("bucket{le=\"300\"}"), Some(0.0));
    assert_eq!(notify_series("bucket{le=\"+Inf\"}"), Some(ALERTS as f64));
    let sum = notify_series("sum").unwrap_or_default();
    assert!(
        (ALERTS as f64 * 1000.0..=ALERTS as f64 * max_age).contains(&sum),
        "notify latency sum {sum} for {ALERTS} alerts {AGE_MS} ms old"
    );

    notify.stop().await.expect("notify stops cleanly");
    enrich.stop().await.expect("enrich stops cleanly");
}
