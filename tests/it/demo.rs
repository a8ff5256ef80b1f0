//! `alertsvc demo`, as a newcomer runs it: it finishes by itself with
//! exactly the alerts its sample data should make, and its preview page,
//! in a real headless Chromium, shows them and acknowledges one through
//! notify's signed interactions endpoint (Acknowledge, then Snooze), and
//! renders threads and edits as Slack does.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use alertsvc::slack::fake::{FakeSlack, FakeSlackConfig};
use serde_json::Value;

use crate::common::testkit::{address_after, KillOnDrop as Killed};
use crate::common::{config_dir, eventually, free_port, http_get};

/// `alertsvc demo ARGS` with every endpoint on port 0 (never the shipped
/// 8090/818x): each binds a free port, and the demo prints the preview
/// page's address.
fn demo_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_alertsvc"));
    command
        .arg("--config-dir")
        .arg(config_dir())
        .arg("demo")
        .args(args)
        .envs(
            ["DEMO", "ENRICH", "NOTIFY", "PRODUCE"]
                .map(|stage| (format!("ALERTSVC__{stage}__HTTP_ADDR"), "127.0.0.1:0")),
        )
        .env_remove("ALERTSVC_ENV")
        .env_remove("RUST_LOG");
    command
}

/// What the shipped pipeline must make of the demo's first `events`
/// status changes, worked out from the demo's files alone: alert id →
/// channel, and the alerts a later recovery resolves.
fn expected_alerts(events: usize) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let dir = config_dir().join("demo");
    let csv = std::fs::read_to_string(dir.join("failures.csv")).unwrap();
    let rows: Vec<Vec<String>> = csv
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.splitn(7, ',').map(str::to_owned).collect())
        .collect();
    let read = |file: &str| -> Vec<Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap()
    };
    let assignments = read("assignments.json");
    let users = read("slack_users.json");
    let mut alerts = BTreeMap::new();
    let mut resolved = BTreeSet::new();
    // The connector id last written failing per org, env and name: what a
    // recovery row recovers.
    let mut failing: BTreeMap<(String, String, String), String> = BTreeMap::new();
    for n in 0..events {
        let row = &rows[n % rows.len()];
        let (org, env, name, old_status, new_status) =
            (&row[0], &row[1], &row[2], &row[4], &row[5]);
        let connector = (org.clone(), env.clone(), name.clone());
        let id = if new_status == "Running" {
            failing
                .remove(&connector)
                .unwrap_or_else(|| format!("lcc-demo-{n:04}"))
        } else {
            failing.insert(connector, format!("lcc-demo-{n:04}"));
            format!("lcc-demo-{n:04}")
        };
        let alert = format!("{org}-{env}-{id}-connector-failure");
        if new_status == "Running" {
            if alerts.contains_key(&alert) {
                resolved.insert(alert);
            }
            continue;
        }
        if old_status != "Provisioning" {
            continue;
        }
        let Some(assignment) = assignments.iter().find(|a| a["org_id"] == org.as_str()) else {
            continue;
        };
        let channel = users
            .iter()
            .find(|u| u["email"] == assignment["csdr_email"])
            .and_then(|u| u["slack_user_id"].as_str())
            .unwrap_or("C0ALERTS");
        alerts.insert(alert, channel.to_owned());
    }
    (alerts, resolved)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_delivers_exactly_the_expected_alerts_and_exits() {
    let events = 14;
    let (expected, resolved) = expected_alerts(events);
    assert_eq!(
        (expected.len(), resolved.len()),
        (8, 2),
        "the sample data makes alerts, non-alerts and recoveries"
    );
    let mut command = demo_command(&["--events", &events.to_string(), "--exit-after", "120s"]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run alertsvc demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("Kafka broker: 127.0.0.1:"), "{stdout}");
    let lines: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("slack  "))
        .collect();
    let delivered: BTreeMap<String, String> = lines
        .iter()
        .map(|rest| {
            let mut parts = rest.split_whitespace();
            let channel = parts.next().unwrap_or_default().to_owned();
            let alert = parts.next().unwrap_or_default().to_owned();
            (alert, channel)
        })
        .collect();
    assert_eq!(delivered, expected, "{stdout}");
    // Each alert posted once; each resolved one edited once and replied
    // to once, in that order.
    let of = |alert: &str, kind: &str| {
        lines
            .iter()
            .filter(|l| l.split_whitespace().nth(1) == Some(alert))
            .filter(|l| match kind {
                "post" => !l.contains("(updated)") && !l.contains("(reply)"),
                kind => l.contains(kind),
            })
            .count()
    };
    for alert in expected.keys() {
        let done = usize::from(resolved.contains(alert));
        assert_eq!(
            (
                of(alert, "post"),
                of(alert, "(updated)"),
                of(alert, "(reply)")
            ),
            (1, done, done),
            "{alert}: {stdout}"
        );
    }
    assert_eq!(lines.len(), expected.len() + 2 * resolved.len(), "{stdout}");
    for alert in &resolved {
        let line = lines
            .iter()
            .find(|l| l.contains(alert.as_str()) && l.contains("(reply)"))
            .unwrap();
        assert!(line.contains("is running again"), "{line}");
    }
    assert!(
        stdout.contains(&format!(
            "demo: {} alerts delivered to the Slack stand-in, {} thread replies",
            expected.len(),
            resolved.len()
        )),
        "{stdout}"
    );
}

fn chromium() -> (Killed, u16) {
    let driver = std::env::var("ALERTSVC_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let port = free_port();
    let child = Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{driver}: {e} (scripts/install-test-deps.sh installs chromium-driver)")
        });
    (Killed(child), port)
}

/// A headless Chromium session (and the chromedriver serving it).
async fn browser() -> (Killed, fantoccini::Client) {
    let (driver, driver_port) = chromium();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]}),
    );
    let client = eventually(
        Duration::from_secs(10),
        "a chromedriver session",
        || async {
            fantoccini::ClientBuilder::new(
                    hyper_util::client::legacy::connect::HttpConnector::new(),
                )
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{driver_port}"))
                .await
                .ok()
        },
    )
    .await;
    (driver, client)
}

/// A Slack Web API call to the fake, as notify makes it.
async fn slack_call(slack: &FakeSlack, method: &str, body: Value) -> Value {
    reqwest::Client::new()
        .post(format!("{}/{method}", slack.url))
        .bearer_auth("xoxb-preview")
        .json(&body)
        .send()
        .await
        .expect("fake Slack answers")
        .json()
        .await
        .expect("JSON answer")
}

/// The preview page renders a thread as Slack does: the replies under their
/// parent with a reply count, a broadcast reply marked, an edited message
/// marked as updated, and the replies never as messages of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_page_shows_threads_and_edits_in_a_browser() {
    crate::common::init();
    let slack = std::sync::Arc::new(
        FakeSlack::start(FakeSlackConfig {
            token: "xoxb-preview".into(),
            channels: vec!["C1".into()],
            per_channel_per_second: None,
            ..FakeSlackConfig::default()
        })
        .await
        .expect("fake Slack"),
    );
    let metadata = serde_json::json!({"event_type": "alertsvc_alert",
        "event_payload": {"alert_id": "A-1"}});
    let posted = slack_call(
        &slack,
        "chat.postMessage",
        serde_json::json!({"channel": "C1", "text": "Connector failed", "metadata": metadata}),
    )
    .await;
    let ts = posted["ts"].as_str().expect("posted").to_owned();
    for (text, broadcast) in [("Failing again", true), ("Resolved: running again", false)] {
        let reply = slack_call(
            &slack,
            "chat.postMessage",
            serde_json::json!({"channel": "C1", "text": text, "thread_ts": ts,
                               "reply_broadcast": broadcast}),
        )
        .await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
    let edited = slack_call(
        &slack,
        "chat.update",
        serde_json::json!({"channel": "C1", "ts": ts, "text": "Connector running again"}),
    )
    .await;
    assert_eq!(edited["ok"], true, "{edited}");
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let page = alertsvc::demo::preview::serve(
        "127.0.0.1:0".parse().expect("address"),
        slack.clone(),
        // No clicks here: nothing listens there.
        "127.0.0.1:9".parse().expect("address"),
        "secret".into(),
        stop,
    )
    .await
    .expect("preview page");

    let (_driver, browser) = browser().await;
    browser
        .goto(&format!("http://{page}/"))
        .await
        .expect("open page");
    let card = browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(fantoccini::Locator::Css("article[data-alert='A-1']"))
        .await
        .expect("the alert is rendered");
    let text = card.text().await.expect("text");
    assert!(text.contains("Connector running again"), "{text}");
    assert!(text.contains("updated"), "{text}");
    let thread = card
        .find(fantoccini::Locator::Css(".thread"))
        .await
        .expect("a thread under the message")
        .text()
        .await
        .expect("thread text");
    assert!(thread.starts_with("2 replies"), "{thread}");
    let failing = thread.find("Failing again").expect("first reply");
    let resolved = thread
        .find("Resolved: running again")
        .expect("second reply");
    assert!(failing < resolved, "replies oldest first: {thread}");
    assert!(thread.contains("also sent to the channel"), "{thread}");
    // The broadcast reply shows in the channel too; the other only in
    // the thread.
    let cards = browser
        .find_all(fantoccini::Locator::Css("article"))
        .await
        .expect("cards");
    assert_eq!(cards.len(), 2, "the message and the broadcast reply");
    browser.close().await.ok();
}

/// The preview page in headless Chromium: the alert's header and fields
/// are in the rendered DOM, and a click on Acknowledge, then a Snooze
/// choice, go through notify's signed `/slack/interactions` to an updated
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_page_renders_alerts_and_acknowledges_in_a_browser() {
    crate::common::init();
    // Live mode writes its first failure at once (an acme one, which
    // alerts); the next would come in an hour.
    let dir = tempfile::tempdir().unwrap();
    let stdout = dir.path().join("demo.out");
    let mut demo = Killed(
        demo_command(&["--exit-after", "180s"])
            .env("ALERTSVC__DEMO__EVENT_INTERVAL", "1h")
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn demo"),
    );
    let preview = address_after(&stdout, 0, "preview page: http://", &mut demo.0);
    let base = format!("http://{preview}");
    eventually(
        Duration::from_secs(90),
        &format!("one alert on {base}"),
        || async {
            let (status, body) = http_get(&format!("{base}/api/messages")).await?;
            let list: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
            (status == 200 && list.len() == 1).then_some(())
        },
    )
    .await;

    let (_driver, browser) = browser().await;
    browser.goto(&format!("{base}/")).await.expect("open page");
    let alert = "org-acme-env-prod1-lcc-demo-0000-connector-failure";
    let card = browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(fantoccini::Locator::Css(&format!(
            "article[data-alert='{alert}']"
        )))
        .await
        .expect("the alert is rendered");
    let header = card
        .find(fantoccini::Locator::Css(".block-header"))
        .await
        .expect("header block")
        .text()
        .await
        .unwrap();
    assert!(
        header.contains("Connector failed while provisioning"),
        "{header}"
    );
    let text = card.text().await.unwrap();
    for field in [
        "Organization",
        "Acme Corp",
        "Environment",
        "env-prod1",
        "SnowflakeSink",
    ] {
        assert!(text.contains(field), "{field} missing from:\n{text}");
    }
    let button = card
        .find(fantoccini::Locator::XPath(
            ".//button[normalize-space()='Acknowledge']",
        ))
        .await
        .expect("Acknowledge button");
    button.click().await.expect("click");
    let updated = browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(fantoccini::Locator::XPath(&format!(
            "//article[@data-alert='{alert}'][.//span[@class='updated']]"
        )))
        .await
        .expect("the message is updated");
    let text = updated.text().await.unwrap();
    assert!(text.contains("Acknowledged by @U0DEMO at "), "{text}");
    let buttons: Vec<String> = {
        let mut labels = Vec::new();
        for b in updated
            .find_all(fantoccini::Locator::Css(
                ".block-actions button, .block-actions select",
            ))
            .await
            .unwrap()
        {
            labels.push(b.text().await.unwrap().trim().to_owned());
        }
        labels
    };
    assert_eq!(buttons.len(), 2, "Resolve and the Snooze menu: {buttons:?}");
    assert_eq!(buttons[0], "Resolve", "no Acknowledge once acknowledged");
    assert!(buttons[1].starts_with("Snooze"), "{buttons:?}");
    let menu = updated
        .find(fantoccini::Locator::Css(
            "select[data-action='alertsvc_snooze']",
        ))
        .await
        .expect("the Snooze menu");
    menu.select_by_value("4h").await.expect("choose 4 hours");
    let snoozed = browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(fantoccini::Locator::XPath(&format!(
            "//article[@data-alert='{alert}'][contains(., 'Snoozed by @U0DEMO')]"
        )))
        .await
        .expect("the message says it is snoozed");
    let text = snoozed.text().await.unwrap();
    assert!(text.contains(" until "), "{text}");
    assert!(!text.contains("Acknowledged by"), "one state line: {text}");
    let cards = browser
        .find_all(fantoccini::Locator::Css("article"))
        .await
        .unwrap();
    assert_eq!(cards.len(), 1, "one message, updated in place");
    browser.close().await.ok();
}
