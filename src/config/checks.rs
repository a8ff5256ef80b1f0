//! Rules more than one settings section applies, each in one function, so
//! that a rule and its wording cannot drift apart between stages.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path?mode=rwc` or `postgres://…`; a secret, since URLs
    /// carry passwords. From `ALERTSVC__NOTIFY__LEDGER__DATABASE_URL`.
    pub database_url: Secret,
    /// Apply `migrations/` at start.
    pub migrate_on_start: bool,
    pub max_connections: u32,
}

/// A state database URL alertsvc can open (`crate::db::connect`).
pub fn validate_database_url(key: &str, url: &Secret) -> Result<(), ConfigError> {
    if crate::db::is_supported(url.expose()) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            "must start with sqlite: or postgres://",
        ))
    }
}

/// Endpoints alertsvc calls over HTTP (Slack's API, a BigQuery endpoint).
pub fn validate_http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(ConfigError::invalid(key, "must be an http(s) URL"))
    }
}

/// Counts and rates where 0 would stall a stage rather than disable anything.
pub fn validate_at_least_one(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(ConfigError::invalid(key, "must be at least 1"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_sqlite_or_postgres() {
        for url in [
            "sqlite://x.db?mode=rwc",
            "sqlite::memory:",
            "postgres://h/db",
            "postgresql://h/db",
        ] {
            assert!(
                validate_database_url("k", &Secret::new(url)).is_ok(),
                "{url}"
            );
        }
        let err = validate_database_url("k", &Secret::new("mysql://h/db")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`k`: must start with sqlite: or postgres://"
        );
        assert!(crate::db::is_sqlite("sqlite://x.db"));
        assert!(!crate::db::is_sqlite("postgres://h/db"));
    }

    #[test]
    fn http_urls_and_counts() {
        assert!(validate_http_url("k", "https://slack.com/api").is_ok());
        assert!(validate_http_url("k", "http://127.0.0.1:1").is_ok());
        let err = validate_http_url("k", "slack.com/api").unwrap_err();
        assert_eq!(err.to_string(), "`k`: must be an http(s) URL");
        assert!(validate_at_least_one("k", 1).is_ok());
        let err = validate_at_least_one("k", 0).unwrap_err();
        assert_eq!(err.to_string(), "`k`: must be at least 1");
    }
}
