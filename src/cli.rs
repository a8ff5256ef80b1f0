//! Command-line interface: parsing, and the subcommands' wiring. `anyhow`
//! lives here and in `main`, at the binary's edge.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, Sources};

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
    /// Apply migrations/ to the configured ledger database.
    Migrate,
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate everything; print the resolved config, secrets redacted.
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
    crate::avro::build_codecs(config_dir, settings)
        .map_err(|(topic, e)| anyhow::anyhow!("`topics.{topic}`: {e}"))?;
    if let Some(enrich) = &settings.enrich {
        crate::enrich::compile_pipelines(enrich, config_dir)?;
    }
    crate::kafka::check_client_properties(&settings.kafka).map_err(anyhow::Error::msg)?;
    Ok(())
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

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let settings = load_settings(&cli)?;
            check_config(&settings, &cli.config_dir)?;
            print!("{}", settings.render_redacted()?);
            eprintln!("configuration OK");
            Ok(())
        }
        Command::Enrich => {
            let settings = load_settings(&cli)?;
            crate::telemetry::init(settings.log.format, &settings.log.level);
            crate::enrich::run(&settings, &cli.config_dir, on_signal())
                .await
                .context("enrich failed")
        }
        Command::Notify => {
            let settings = load_settings(&cli)?;
            crate::telemetry::init(settings.log.format, &settings.log.level);
            crate::notify::run(&settings, &cli.config_dir, on_signal())
                .await
                .context("notify failed")
        }
        Command::Migrate => {
            let settings = load_settings(&cli)?;
            crate::telemetry::init(settings.log.format, &settings.log.level);
            crate::notify::migrate(&settings)
                .await
                .context("migration failed")?;
            eprintln!("ledger migrated");
            Ok(())
        }
    }
}
