//! `[kafka]`: the brokers, credentials and pass-through client properties
//! every stage shares.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};

use super::{ConfigError, Secret, REDACTED};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    /// SASL credentials (Confluent Cloud API key and secret). They are kept
    /// out of `client` so that they can be typed secrets set from the
    /// environment (`ALERTSVC__KAFKA__SASL_PASSWORD`).
    #[serde(default)]
    pub sasl_username: Option<Secret>,
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// librdkafka properties applied last, verbatim.
    #[serde(default, serialize_with = "serialize_client_properties")]
    pub client: BTreeMap<String, String>,
    #[serde(default = "default_dlq_suffix")]
    pub dlq_suffix: String,
}

fn default_dlq_suffix() -> String {
    ".dlq".to_owned()
}

/// librdkafka property names whose values are credentials.
pub fn is_sensitive_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "oauthbearer.config",
        "key.pem",
        "token",
    ]
    .iter()
    .any(|marker| name.contains(marker))
}

fn serialize_client_properties<S: Serializer>(
    props: &BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let redacted: BTreeMap<&str, &str> = props
        .iter()
        .map(|(k, v)| {
            let shown = if is_sensitive_property(k) {
                REDACTED
            } else {
                v.as_str()
            };
            (k.as_str(), shown)
        })
        .collect();
    redacted.serialize(s)
}

impl KafkaSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::invalid(
                "kafka.bootstrap_servers",
                "must not be empty",
            ));
        }
        if self.sasl_username.is_some() != self.sasl_password.is_some() {
            return Err(ConfigError::invalid(
                "kafka.sasl_password",
                "sasl_username and sasl_password must be set together",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_client_properties_are_recognised() {
        assert!(is_sensitive_property("sasl.password"));
        assert!(is_sensitive_property("ssl.key.password"));
        assert!(is_sensitive_property("sasl.oauthbearer.client.secret"));
        assert!(is_sensitive_property("ssl.key.pem"));
        assert!(!is_sensitive_property("bootstrap.servers"));
        assert!(!is_sensitive_property("security.protocol"));
    }
}
