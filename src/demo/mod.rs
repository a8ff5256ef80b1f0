//! `alertsvc demo`: the whole pipeline in one process (DESIGN §8). An
//! embedded Kafka broker (librdkafka's mock cluster, reachable by any client
//! at the printed address), a SQLite warehouse seeded from `config/demo`,
//! the assignment and Slack-user tables, `produce`, `enrich` and `notify` on
//! the shipped pipelines, and a local Slack stand-in whose messages show in
//! the terminal and on a preview page. Each part can be the real thing
//! instead (`[demo]` in `config/demo/demo.toml`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{DemoSettings, DemoWarehouse, Settings};
use crate::http::StageHandle;
use crate::slack::fake::{FakeMessage, FakeSlack};

pub mod preview;
mod setup;
mod traffic;

use setup::{read_file, Scratch};
use traffic::FailureWriter;
pub use traffic::{nth_failure, parse_failures, FailureTemplate};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("no [demo] section: the demo layers config/demo/demo.toml over the config")]
    NotConfigured,
    #[error("demo file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("embedded broker: {0}")]
    Broker(String),
    #[error("demo warehouse: {0}")]
    Warehouse(String),
    #[error("local Slack stand-in: {0}")]
    Slack(String),
    #[error("{stage} stopped: {reason}")]
    Stage { stage: &'static str, reason: String },
    #[error("--events counts the failures the demo writes into its own warehouse: it needs demo.warehouse = \"embedded\"")]
    EventsNeedWarehouse,
    #[error("the demo did not finish within {limit:?}: {progress}")]
    Unfinished { limit: Duration, progress: String },
}

/// How the demo ends by itself (for scripts); by default it runs until
/// Ctrl-C.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Write this many connector failures, wait until every resulting alert
    /// is delivered, then exit.
    pub events: Option<usize>,
    /// Exit after this long (with `events`: fail if not finished by then).
    pub exit_after: Option<Duration>,
}

pub async fn run(
    mut settings: Settings,
    config_dir: &Path,
    options: Options,
    shutdown: CancellationToken,
) -> Result<(), DemoError> {
    let demo = settings.demo.clone().ok_or(DemoError::NotConfigured)?;
    if options.events.is_some() && demo.warehouse != DemoWarehouse::Embedded {
        return Err(DemoError::EventsNeedWarehouse);
    }
    let scratch = Scratch::new()?;
    let templates = parse_failures(&read_file(config_dir, &demo.failures)?).map_err(|reason| {
        DemoError::File {
            path: demo.failures.clone(),
            reason,
        }
    })?;
    let _cluster = setup::start_broker(&mut settings, &demo)?;
    let bootstrap = settings.kafka.bootstrap_servers.clone();
    println!("Kafka broker: {bootstrap}   (watch: kcat -b {bootstrap} -C -t slack-messages)");
    setup::use_scratch_databases(&mut settings, &scratch);
    let signing_secret = setup::random_secret("");
    let slack = setup::start_slack(&mut settings, config_dir, &demo, &signing_secret).await?;
    let warehouse_url = scratch.sqlite_url("warehouse.db");
    setup::seed_warehouse(&mut settings, config_dir, &demo, &warehouse_url).await?;
    setup::seed_tables(&settings, config_dir, &demo).await?;

    let stages = shutdown.child_token();
    let (handles, mut tasks) = start_stages(&settings, config_dir, &stages).await?;
    if let Some(slack) = &slack {
        show_slack(slack, &demo, &handles, signing_secret, &stages).await?;
    }

    // Traffic, and the end.
    let writer = FailureWriter::new(warehouse_url, templates);
    let outcome = drive(&handles, &demo, &options, writer, &shutdown, &mut tasks).await;
    stages.cancel();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Err(e)) = joined {
            tracing::warn!(error = %e, "stage ended with an error");
        }
    }
    if let Some(slack) = &slack {
        let delivered = slack.messages();
        let alerts = delivered.iter().filter(|m| m.alert_id().is_some()).count();
        println!(
            "demo: {alerts} alerts delivered to the Slack stand-in, {} thread replies",
            delivered.len() - alerts
        );
    }
    outcome
}

/// Binds the three stages first (the preview needs notify's address, the
/// progress check reads enrich's and notify's registries; a taken port
/// fails before anything runs), then runs them until `stages` is cancelled.
async fn start_stages(
    settings: &Settings,
    config_dir: &Path,
    stages: &CancellationToken,
) -> Result<(Handles, JoinSet<Result<(), DemoError>>), DemoError> {
    let failed = |stage: &'static str, e: &dyn std::fmt::Display| DemoError::Stage {
        stage,
        reason: e.to_string(),
    };
    let enrich = crate::enrich::Enrich::build(settings, config_dir)
        .await
        .map_err(|e| failed("enrich", &e))?;
    let notify = crate::notify::Notify::build(settings, config_dir)
        .await
        .map_err(|e| failed("notify", &e))?;
    let produce =
        crate::produce::Produce::build(settings, config_dir, &crate::produce::Options::default())
            .await
            .map_err(|e| failed("produce", &e))?;
    let handles = Handles {
        enrich: enrich.handle(),
        notify: notify.handle(),
    };
    let mut tasks = JoinSet::new();
    spawn_stage(
        &mut tasks,
        "enrich",
        enrich.run_until_stopped(stages.clone()),
    );
    spawn_stage(
        &mut tasks,
        "notify",
        notify.run_until_stopped(stages.clone()),
    );
    spawn_stage(
        &mut tasks,
        "produce",
        produce.run_until_stopped(stages.clone()),
    );
    Ok((handles, tasks))
}

/// Every message the stand-in stores is printed to the terminal, and the
/// preview page shows them with working buttons.
async fn show_slack(
    slack: &Arc<FakeSlack>,
    demo: &DemoSettings,
    handles: &Handles,
    signing_secret: String,
    stages: &CancellationToken,
) -> Result<(), DemoError> {
    let mut messages = slack.subscribe();
    let fake = slack.clone();
    tokio::spawn(async move {
        while let Some(message) = messages.recv().await {
            let dm_user = fake.dm_user(&message.channel);
            println!("{}", terminal_line(&message, dm_user.as_deref()));
        }
    });
    let addr = preview::serve(
        demo.http_addr,
        slack.clone(),
        handles.notify.addr,
        signing_secret,
        stages.clone(),
    )
    .await
    .map_err(|e| DemoError::Slack(format!("preview page on {}: {e}", demo.http_addr)))?;
    println!("Slack stand-in: every delivered alert prints here; preview page: http://{addr}/");
    Ok(())
}

/// Runs a stage in the demo's task set; its error names the stage.
fn spawn_stage<E: std::fmt::Display>(
    tasks: &mut JoinSet<Result<(), DemoError>>,
    stage: &'static str,
    run: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
) {
    tasks.spawn(async move {
        run.await.map_err(|e| DemoError::Stage {
            stage,
            reason: e.to_string(),
        })
    });
}

/// What the terminal shows for a stored or updated message. A DM is
/// named by its user, the id the alert was addressed to: its `D…`
/// conversation id means nothing to a reader.
fn terminal_line(message: &FakeMessage, dm_user: Option<&str>) -> String {
    let to = dm_user.unwrap_or(&message.channel);
    let alert = message.about_alert().unwrap_or("-");
    let text: String = message.text.chars().take(100).collect();
    if message.edits > 0 {
        format!("slack  {to:<10} {alert}  (updated) {text}")
    } else if message.reply_key().is_some() {
        format!("slack  {to:<10} {alert}  (reply) {text}")
    } else {
        format!("slack  {to:<10} {alert}  {text}")
    }
}

/// The stage counters the end condition reads.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Progress {
    enrich_in: f64,
    enrich_done: f64,
    enrich_out: f64,
    notify_done: f64,
}

impl Progress {
    fn describe(&self, events: usize) -> String {
        format!(
            "{} of {events} events through enrich, {} of {} alerts answered by Slack",
            self.enrich_done, self.notify_done, self.enrich_out
        )
    }

    fn finished(&self, events: usize) -> bool {
        let events = events as f64;
        self.enrich_in >= events
            && self.enrich_done >= events
            && self.notify_done >= self.enrich_out
    }
}

/// The running stages the demo watches, read from their own registries.
struct Handles {
    enrich: StageHandle,
    notify: StageHandle,
}

fn read_progress(handles: &Handles) -> Progress {
    let enrich = |name| handles.enrich.metric_sum(name);
    let out = enrich("alertsvc_enrich_records_out_total");
    Progress {
        enrich_in: enrich("alertsvc_enrich_records_in_total"),
        enrich_done: out
            + enrich("alertsvc_enrich_records_dropped_total")
            + enrich("alertsvc_enrich_records_dlq_total"),
        enrich_out: out,
        notify_done: handles.notify.metric_sum("alertsvc_slack_posts_total"),
    }
}

/// Writes traffic and decides when the demo ends.
async fn drive(
    handles: &Handles,
    demo: &DemoSettings,
    options: &Options,
    mut writer: FailureWriter,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<Result<(), DemoError>>,
) -> Result<(), DemoError> {
    let deadline = options
        .exit_after
        .map(|limit| (tokio::time::Instant::now() + limit, limit));
    let live = demo.warehouse == DemoWarehouse::Embedded;
    if let (Some(events), true) = (options.events, live) {
        writer.write(events).await?;
    }
    let mut traffic = tokio::time::interval(demo.event_interval);
    let mut check = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = async {
                match deadline {
                    Some((at, _)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                return match (options.events, deadline) {
                    (Some(events), Some((_, limit))) => Err(DemoError::Unfinished {
                        limit,
                        progress: read_progress(handles).describe(events),
                    }),
                    _ => Ok(()),
                };
            }
            Some(joined) = tasks.join_next() => {
                let (stage, reason) = match joined {
                    Ok(Err(DemoError::Stage { stage, reason })) => (stage, reason),
                    Ok(Err(other)) => ("a stage", other.to_string()),
                    Ok(Ok(())) => ("a stage", "it returned early".to_owned()),
                    Err(e) => ("a stage", e.to_string()),
                };
                return Err(DemoError::Stage { stage, reason });
            }
            _ = traffic.tick(), if options.events.is_none() && live => {
                writer.write(1).await?;
            }
            _ = check.tick(), if options.events.is_some() => {
                let events = options.events.unwrap_or_default();
                let progress = read_progress(handles);
                if progress.finished(events) {
                    // Let the last answers reach the terminal.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_finished_when_every_alert_is_answered() {
        let mut p = Progress {
            enrich_in: 6.0,
            enrich_done: 6.0,
            enrich_out: 4.0,
            notify_done: 3.0,
        };
        assert!(!p.finished(6));
        p.notify_done = 4.0;
        assert!(p.finished(6));
        assert!(!p.finished(7));
    }
}
