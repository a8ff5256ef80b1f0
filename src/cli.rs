//! Command-line interface: parsing, and the subcommands' wiring. `anyhow`
//! lives here and in `main`, at the binary's edge.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{RegistryMode, Settings, Sources};

#[derive(Debug, Parser)]
#[command(
    name = "alertsvc",
    version,
    about = "Real-time alerting pipeline: events → enriched Slack messages"
)]
pub struct Cli {
    /// Directory holding default.toml, $ALERTSVC_ENV.toml, schemas and templates.
    #[arg(
        long,
        global = true,
        env = "ALERTSVC_CONFIG_DIR",
        default_value = "config"
    )]
    pub config_dir: PathBuf,
    /// An extra configuration file, applied after the directory's files.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the stream processor: filter, join, render, write slack-messages.
    Enrich,
    /// Deliver slack-messages to Slack; serve /slack/interactions.
    Notify,
    /// Run warehouse queries; emit one event per row.
    Produce(ProduceArgs),
    /// Apply migrations/ to the configured state databases.
    Migrate,
    /// The whole pipeline in one process: embedded broker, SQLite warehouse,
    /// local Slack stand-in with a preview page.
    Demo(DemoArgs),
    /// Dead-letter tools.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// Run only this job (repeatable). Default: every enabled job.
    #[arg(long = "job", value_name = "NAME")]
    pub jobs: Vec<String>,
    /// Run once and exit: 0 only when every row was acknowledged by Kafka.
    #[arg(long, conflicts_with = "schedule")]
    pub once: bool,
    /// Run in-process on this cron schedule (UTC), serving /healthz and
    /// /metrics. Without --once or --schedule, each job's `schedule` is used.
    #[arg(long, value_name = "CRON")]
    pub schedule: Option<String>,
    /// Print the events as JSON lines; produce and record nothing.
    #[arg(long, conflicts_with = "schedule")]
    pub dry_run: bool,
    /// When another run holds a job, wait up to this long (e.g. `90s`) for
    /// it instead of giving up at once (exit code 75).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub wait_for_lease: Option<std::time::Duration>,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Write this many connector failures, exit 0 once every resulting alert
    /// is delivered.
    #[arg(long, value_name = "N")]
    pub events: Option<usize>,
    /// Exit after this long (e.g. `90s`); with --events, fail if unfinished.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub exit_after: Option<std::time::Duration>,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Re-produce dead letters of a topic to their source topic (original
    /// key and bytes, header alertsvc.replayed.from); one replayed and
    /// recorded is not sent again.
    Replay(ReplayArgs),
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Topic id from [topics] (e.g. notifications); reads its `<name><dlq_suffix>`.
    #[arg(long, value_name = "ID")]
    pub topic: String,
    /// Only dead letters written at or after this: RFC 3339 time or a
    /// duration back from now (e.g. 24h).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only dead letters whose alertsvc.dlq.reason contains this text.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Print one JSON line per record that would be replayed; replay nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate everything; print the resolved config, secrets
    /// redacted, and the Schema Registry subjects and ids avro-confluent
    /// topics would write with.
    Check,
}

pub fn load_settings(cli: &Cli) -> anyhow::Result<Settings> {
    let sources = Sources::from_process(cli.config_dir.clone(), cli.config.clone());
    Settings::load(&sources).with_context(|| {
        format!(
            "invalid configuration (directory {})",
            cli.config_dir.display()
        )
    })
}

/// Everything `config check` verifies beyond parsing: schemas, topic
/// formats, filters, templates and librdkafka properties.
pub fn check_config(settings: &Settings, config_dir: &Path) -> anyhow::Result<()> {
    topic_codecs(settings, config_dir)?;
    crate::avro::build_key_codecs(config_dir, settings)
        .map_err(|(topic, e)| anyhow::anyhow!("`topics.{topic}.key_schema`: {e}"))?;
    if let Some(enrich) = &settings.enrich {
        crate::enrich::compile_pipelines(enrich, config_dir)?;
    }
    if settings.produce.is_some() {
        crate::produce::compile_jobs(settings, config_dir, &[])?;
    }
    crate::kafka::check_client_properties(&settings.kafka).map_err(anyhow::Error::msg)?;
    Ok(())
}

/// The topics' codecs, an error naming the topic's config key.
fn topic_codecs(settings: &Settings, config_dir: &Path) -> anyhow::Result<crate::avro::Codecs> {
    crate::avro::build_codecs(config_dir, settings)
        .map_err(|(topic, e)| anyhow::anyhow!("`topics.{topic}`: {e}"))
}

/// Warnings about how this configuration is deployed (`ALERTSVC_REPLICAS`).
fn deployment_warnings(settings: &Settings) -> anyhow::Result<Vec<String>> {
    let replicas = std::env::var(crate::config::REPLICAS_ENV).ok();
    let replicas = crate::config::parse_replicas(replicas.as_deref())?;
    Ok(settings.deployment_warnings(replicas))
}

/// How long `config check` waits for the Schema Registry's answers.
const REGISTRY_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// `config check`'s view of the Schema Registry: for every `avro-confluent`
/// topic the subject, the mode and the schema id and version a stage would
/// write with, asked of the registry without registering anything. An
/// unreachable registry is reported and skipped (the check also runs where
/// the registry is out of reach); an answer that a stage would refuse at
/// startup (our schema not registered under a subject alertsvc may only
/// read, a latest version our records cannot be written as) fails it.
async fn check_registry(settings: &Settings, config_dir: &Path) -> anyhow::Result<()> {
    let Some(registry) = &settings.schema_registry else {
        return Ok(());
    };
    let codecs = topic_codecs(settings, config_dir)?;
    let topics: Vec<(&String, &crate::avro::Confluent)> = settings
        .topics
        .keys()
        .filter_map(|id| Some((id, codecs.get(id)?.confluent()?)))
        .collect();
    if topics.is_empty() {
        return Ok(());
    }
    let timeout = REGISTRY_CHECK_TIMEOUT.min(registry.timeout);
    let probes = futures::future::join_all(
        topics
            .iter()
            .map(|(_, codec)| tokio::time::timeout(timeout, codec.probe())),
    )
    .await;
    eprintln!("Schema Registry subjects of avro-confluent topics:");
    let mut refused = Vec::new();
    for ((id, codec), probe) in topics.iter().zip(probes) {
        let outcome = match probe {
            Ok(Ok(used)) => describe_subject_use(&used),
            Err(_) => format!(
                "not checked: no answer from the registry within {}",
                humantime::format_duration(timeout)
            ),
            Ok(Err(e)) if e.is_transient() => format!("not checked: {e}"),
            Ok(Err(e)) => {
                refused.push(format!("`topics.{id}`: {e}"));
                format!("ERROR: {e}")
            }
        };
        eprintln!(
            "  topics.{id}: subject {}, {}: {outcome}",
            codec.subject(),
            codec.mode()
        );
    }
    if !refused.is_empty() {
        anyhow::bail!("{}", refused.join("\n"));
    }
    Ok(())
}

fn describe_subject_use(used: &crate::avro::SubjectUse) -> String {
    let version = used
        .version
        .map(|v| format!(", version {v}"))
        .unwrap_or_default();
    match (used.mode, used.id) {
        (RegistryMode::AutoRegister, None) => {
            "not registered yet (the first write registers it)".to_owned()
        }
        (RegistryMode::UseLatest, Some(id)) => format!("latest is schema id {id}{version}"),
        (_, Some(id)) => format!("schema id {id}{version}"),
        (_, None) => "no schema id".to_owned(),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown requested");
}

/// A token cancelled on SIGTERM or SIGINT.
fn on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        trigger.cancel();
    });
    shutdown
}

/// Applies `migrations/` to every configured state database (notify's
/// ledger, produce's state; once when they are the same).
async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let mut urls: Vec<(&str, &str)> = Vec::new();
    if let Some(notify) = &settings.notify {
        urls.push(("notify.ledger", notify.ledger.database_url.expose()));
    }
    if let Some(produce) = &settings.produce {
        urls.push(("produce.state", produce.state.database_url.expose()));
    }
    if urls.is_empty() {
        anyhow::bail!("no database configured ([notify.ledger] or [produce.state])");
    }
    let mut done: Vec<&str> = Vec::new();
    for (key, url) in urls {
        if done.contains(&url) {
            continue;
        }
        let pool = crate::db::connect(url, 1)
            .await
            .with_context(|| format!("`{key}.database_url`"))?;
        crate::db::migrate(&pool, crate::db::is_postgres(url))
            .await
            .with_context(|| format!("`{key}.database_url`"))?;
        eprintln!("{key}: database migrated");
        done.push(url);
    }
    Ok(())
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let settings = load_settings(&cli)?;
            check_config(&settings, &cli.config_dir)?;
            check_registry(&settings, &cli.config_dir).await?;
            for warning in deployment_warnings(&settings)? {
                eprintln!("warning: {warning}");
            }
            for warning in crate::kafka::client_warnings(&settings) {
                eprintln!("warning: {warning}");
            }
            print!("{}", settings.render_redacted()?);
            eprintln!("configuration OK");
            Ok(())
        }
        Command::Enrich => {
            let settings = load_settings(&cli)?;
            crate::telemetry::init(settings.log.format, &settings.log.level);
            crate::enrich::Enrich::run(&settings, &cli.config_dir, on_signal())
                .await
                .context("enrich failed")
        }
        Command::Notify => {
            let settings = load_settings(&cli)?;
            crate::telemetry::init(settings.log.format, &settings.log.level);
            for warning in deployment_warnings(&settings)? {
                tracing::warn!("{warning}");
            }
            crate::notify::Notify::run(&settings, &cli.config_dir, on_signal())
                .await
                .context("notify failed")
        }
        Command::Produce(args) => {
            let settings = load_settings(&cli)?;
            crate::telemetry::init(settings.log.format, &settings.log.level);
            let options = crate::produce::Options {
                jobs: args.jobs.clone(),
                once: args.once,
                schedule: args.schedule.clone(),
                dry_run: args.dry_run,
                wait_for_lease: args.wait_for_lease.unwrap_or_default(),
            };
            crate::produce::run(&settings, &cli.config_dir, &options, on_signal())
                .await
                .context("produce failed")
        }
        Command::Demo(args) => {
            let sources = Sources::from_process(cli.config_dir.clone(), cli.config.clone());
            let settings =
                Settings::load_with(&sources, &["demo/demo.toml"]).with_context(|| {
                    format!(
                        "invalid configuration (directory {}, with demo/demo.toml)",
                        cli.config_dir.display()
                    )
                })?;
            crate::telemetry::init(settings.log.format, &settings.log.level);
            let options = crate::demo::Options {
                events: args.events,
                exit_after: args.exit_after,
            };
            crate::demo::run(settings, &cli.config_dir, options, on_signal())
                .await
                .context("demo failed")
        }
        Command::Dlq {
            command: DlqCommand::Replay(args),
        } => {
            let settings = load_settings(&cli)?;
            crate::telemetry::init(settings.log.format, &settings.log.level);
            let since = args
                .since
                .as_deref()
                .map(|text| crate::dlq::Since::parse(text, chrono::Utc::now().timestamp_millis()))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
            let options = crate::dlq::Options {
                topic: args.topic.clone(),
                since,
                reason: args.reason.clone(),
                dry_run: args.dry_run,
            };
            crate::dlq::run(&settings, &options)
                .await
                .map(drop)
                .context("dlq replay failed")
        }
        Command::Migrate => {
            let settings = load_settings(&cli)?;
            crate::telemetry::init(settings.log.format, &settings.log.level);
            migrate(&settings).await.context("migration failed")
        }
    }
}
