//! BigQuery job labels: its rules, and the labels a job's queries carry.

use std::collections::BTreeMap;

use super::{BigQuerySettings, JobSettings};

const LABEL_RULES: &str = "lowercase letters, digits, `_` and `-`";

/// A label BigQuery would refuse; the message says which rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("a label key must not be empty")]
    EmptyKey,
    #[error("label key {0:?} is longer than {MAX_LABEL_CHARS} characters")]
    LongKey(String),
    #[error("label key {0:?} must start with a lowercase letter")]
    KeyStart(String),
    #[error("label key {key:?} has {bad:?}: keys may hold only {LABEL_RULES}")]
    KeyChar { key: String, bad: char },
    #[error("label {key:?}: value {value:?} is longer than {MAX_LABEL_CHARS} characters")]
    LongValue { key: String, value: String },
    #[error("label {key:?}: value {value:?} has {bad:?}: values may hold only {LABEL_RULES}")]
    ValueChar {
        key: String,
        value: String,
        bad: char,
    },
}

/// BigQuery accepts at most this many labels on a job.
pub const MAX_QUERY_LABELS: usize = 64;
/// … and keys and values of at most this many characters.
const MAX_LABEL_CHARS: usize = 63;

/// Lowercase letters (international ones too), digits, `_` and `-`:
/// BigQuery's label alphabet.
fn label_char(c: char) -> bool {
    c.is_ascii_lowercase()
        || c.is_ascii_digit()
        || c == '_'
        || c == '-'
        || (!c.is_ascii() && c.is_alphanumeric() && !c.is_uppercase())
}

/// Checks one label against BigQuery's rules; the error says which rule.
pub fn validate_label(key: &str, value: &str) -> Result<(), LabelError> {
    let (key_text, value_text) = (key.to_owned(), value.to_owned());
    if key.is_empty() {
        return Err(LabelError::EmptyKey);
    }
    if key.chars().count() > MAX_LABEL_CHARS {
        return Err(LabelError::LongKey(key_text));
    }
    if !key
        .chars()
        .next()
        .is_some_and(|c| label_char(c) && !c.is_ascii_digit() && c != '_' && c != '-')
    {
        return Err(LabelError::KeyStart(key_text));
    }
    if let Some(bad) = key.chars().find(|c| !label_char(*c)) {
        return Err(LabelError::KeyChar { key: key_text, bad });
    }
    if value.chars().count() > MAX_LABEL_CHARS {
        return Err(LabelError::LongValue {
            key: key_text,
            value: value_text,
        });
    }
    if let Some(bad) = value.chars().find(|c| !label_char(*c)) {
        return Err(LabelError::ValueChar {
            key: key_text,
            value: value_text,
            bad,
        });
    }
    Ok(())
}

/// `text` as a valid label value: lowercased, other characters as `_`,
/// cut to 63 characters.
pub fn label_value(text: &str) -> String {
    text.chars()
        .flat_map(char::to_lowercase)
        .map(|c| if label_char(c) { c } else { '_' })
        .take(MAX_LABEL_CHARS)
        .collect()
}

/// The labels a job's BigQuery query jobs carry: `app = "alertsvc"` and
/// `job = <job name>` (made a valid value), then the source's labels, then
/// the job's, later ones winning.
pub fn query_labels(
    job_name: &str,
    source: &BigQuerySettings,
    job: &JobSettings,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("app".to_owned(), "alertsvc".to_owned()),
        ("job".to_owned(), label_value(job_name)),
    ]);
    labels.extend(source.labels.clone());
    labels.extend(job.labels.clone());
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_bigquery_rules() {
        assert_eq!(validate_label("team", "data-platform_2"), Ok(()));
        assert_eq!(validate_label("cost_center", ""), Ok(()));
        assert_eq!(validate_label("équipe", "données"), Ok(()));
        assert!(validate_label("Team", "x")
            .unwrap_err()
            .to_string()
            .contains("must start with a lowercase letter"));
        assert!(validate_label("1team", "x")
            .unwrap_err()
            .to_string()
            .contains("must start with a lowercase letter"));
        assert!(validate_label("", "x")
            .unwrap_err()
            .to_string()
            .contains("must not be empty"));
        assert!(validate_label("team.name", "x")
            .unwrap_err()
            .to_string()
            .contains("'.'"));
        assert!(validate_label("team", "Data")
            .unwrap_err()
            .to_string()
            .contains("values may hold only"));
        assert!(validate_label(&"k".repeat(64), "x")
            .unwrap_err()
            .to_string()
            .contains("longer than 63"));
        assert_eq!(validate_label(&"k".repeat(63), &"v".repeat(63)), Ok(()));
        assert!(validate_label("team", &"v".repeat(64))
            .unwrap_err()
            .to_string()
            .contains("longer than 63"));
    }

    #[test]
    fn job_names_become_valid_label_values() {
        assert_eq!(label_value("connector-failures"), "connector-failures");
        assert_eq!(label_value("Nightly Export.v2"), "nightly_export_v2");
        assert_eq!(label_value(&"j".repeat(80)).chars().count(), 63);
        for name in ["Nightly Export.v2", "a/b:c", "ÉTÉ"] {
            assert_eq!(validate_label("job", &label_value(name)), Ok(()), "{name}");
        }
    }
}
