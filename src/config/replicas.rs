//! What the configuration cannot know about its own deployment: how many
//! replicas run it. The manifests state it in `ALERTSVC_REPLICAS` (a pod
//! cannot read its own `spec.replicas`), and `config check` warns about
//! combinations that run but lose a guarantee.

use super::{ConfigError, Settings};

/// How many replicas run this configuration; set by the manifests.
pub const REPLICAS_ENV: &str = "ALERTSVC_REPLICAS";

/// Parses `ALERTSVC_REPLICAS` (unset or empty: unknown).
pub fn parse_replicas(value: Option<&str>) -> Result<Option<u32>, ConfigError> {
    let Some(text) = value.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    text.parse().map(Some).map_err(|_| {
        ConfigError::invalid(
            REPLICAS_ENV,
            format!("`{text}` is not a replica count (a whole number, 0 or more)"),
        )
    })
}

impl Settings {
    /// Deployments that start and run but lose a guarantee. Warnings, not
    /// errors: a SQLite ledger shared by replicas on one node's volume is
    /// still one ledger, which only the operator can tell.
    pub fn deployment_warnings(&self, replicas: Option<u32>) -> Vec<String> {
        let mut warnings = Vec::new();
        if let (Some(notify), Some(replicas)) = (&self.notify, replicas) {
            // Never the URL itself: it is a secret (it may carry a password).
            if replicas > 1 && crate::db::is_sqlite(notify.ledger.database_url.expose()) {
                warnings.push(format!(
                    "{REPLICAS_ENV}={replicas} with a SQLite ledger (notify.ledger.database_url): \
                     each replica keeps its own ledger file, so an alert can be posted twice \
                     when its partition moves to another replica; use PostgreSQL \
                     (postgres://…) for more than one notify replica"
                ));
            }
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_counts_parse_and_garbage_names_the_variable() {
        assert_eq!(parse_replicas(None).unwrap(), None);
        assert_eq!(parse_replicas(Some(" ")).unwrap(), None);
        assert_eq!(parse_replicas(Some("0")).unwrap(), Some(0));
        assert_eq!(parse_replicas(Some(" 3 ")).unwrap(), Some(3));
        for bad in ["two", "-1", "1.5"] {
            let error = parse_replicas(Some(bad)).unwrap_err().to_string();
            assert_eq!(
                error,
                format!(
                    "`ALERTSVC_REPLICAS`: `{bad}` is not a replica count (a whole number, 0 or more)"
                )
            );
        }
    }
}
