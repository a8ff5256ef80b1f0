//! Where the configuration comes from and how its layers stack:
//! `config/default.toml` → `config/$ALERTSVC_ENV.toml` → layers (the demo's
//! `demo/demo.toml`) → `--config FILE` → `ALERTSVC__A__B` variables.

use std::path::PathBuf;

use super::{ConfigError, Settings};

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub dir: PathBuf,
    pub env_name: Option<String>,
    pub extra_file: Option<PathBuf>,
    pub use_env_vars: bool,
}

impl Sources {
    /// The sources a deployed binary uses: `ALERTSVC_ENV` and `ALERTSVC__*`.
    pub fn from_process(dir: PathBuf, extra_file: Option<PathBuf>) -> Self {
        Sources {
            dir,
            env_name: std::env::var("ALERTSVC_ENV").ok().filter(|s| !s.is_empty()),
            extra_file,
            use_env_vars: true,
        }
    }

    /// The files in `dir` alone, without `ALERTSVC_ENV` or `ALERTSVC__*`:
    /// what tests and benches load, whatever the environment they run in.
    pub fn files_only(dir: PathBuf) -> Self {
        Sources {
            dir,
            env_name: None,
            extra_file: None,
            use_env_vars: false,
        }
    }
}

impl Settings {
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        Settings::load_with(sources, &[])
    }

    /// Like [`Settings::load`], with `layers` (files under the config
    /// directory, e.g. `demo/demo.toml`) between the environment's file and
    /// `--config`.
    pub fn load_with(sources: &Sources, layers: &[&str]) -> Result<Settings, ConfigError> {
        let default = sources.dir.join("default.toml");
        if !default.is_file() {
            return Err(ConfigError::MissingDefault(sources.dir.clone()));
        }
        let mut builder = ::config::Config::builder().add_source(::config::File::from(default));
        if let Some(env_name) = &sources.env_name {
            let path = sources.dir.join(format!("{env_name}.toml"));
            builder = builder.add_source(::config::File::from(path).required(false));
        }
        for layer in layers {
            builder =
                builder.add_source(::config::File::from(sources.dir.join(layer)).required(true));
        }
        if let Some(extra) = &sources.extra_file {
            builder = builder.add_source(::config::File::from(extra.as_path()).required(true));
        }
        if sources.use_env_vars {
            builder = builder.add_source(
                ::config::Environment::with_prefix("ALERTSVC")
                    .prefix_separator("__")
                    .separator("__"),
            );
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }
}
