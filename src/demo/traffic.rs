//! The demo's traffic: connector status changes from `failures.csv`,
//! written into the embedded warehouse one after another, as a real
//! warehouse would receive them.

use std::collections::HashMap;

use sqlx::Connection;

use super::DemoError;
use crate::db::sqlite_datetime;

/// One row of `failures.csv`: a connector status change template — a
/// failure, or (`new_status` `Running`) a recovery of the connector last
/// written failing with the same org, environment and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureTemplate {
    pub org_id: String,
    pub env_id: String,
    pub connector_name: String,
    pub connector_type: String,
    pub old_status: String,
    pub new_status: String,
    pub failure_reason: String,
}

impl FailureTemplate {
    pub fn is_recovery(&self) -> bool {
        self.new_status == "Running"
    }
}

const FAILURES_HEADER: &str =
    "org_id,env_id,connector_name,connector_type,old_status,new_status,failure_reason";

/// Reads `failures.csv` (a header, then comma-separated fields; the last
/// field may contain commas).
pub fn parse_failures(text: &str) -> Result<Vec<FailureTemplate>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or("empty file")?;
    if header.trim() != FAILURES_HEADER {
        return Err(format!(
            "unexpected header {header:?}, expected {FAILURES_HEADER:?}"
        ));
    }
    let templates: Vec<FailureTemplate> = lines
        .enumerate()
        .map(|(i, line)| {
            let fields: Vec<&str> = line.splitn(7, ',').map(str::trim).collect();
            match fields.as_slice() {
                [org, env, name, kind, old, new, reason] => Ok(FailureTemplate {
                    org_id: (*org).into(),
                    env_id: (*env).into(),
                    connector_name: (*name).into(),
                    connector_type: (*kind).into(),
                    old_status: (*old).into(),
                    new_status: (*new).into(),
                    failure_reason: (*reason).into(),
                }),
                _ => Err(format!("line {}: expected 7 fields", i + 2)),
            }
        })
        .collect::<Result<_, _>>()?;
    if templates.is_empty() {
        return Err("no rows".into());
    }
    Ok(templates)
}

/// The n-th failure the demo writes: template `n % len`, connector id
/// `lcc-demo-<n>`.
pub fn nth_failure(templates: &[FailureTemplate], n: usize) -> (FailureTemplate, String) {
    (
        templates[n % templates.len()].clone(),
        format!("lcc-demo-{n:04}"),
    )
}

/// Writes connector status changes into the demo warehouse, one after
/// another.
pub(super) struct FailureWriter {
    url: String,
    templates: Vec<FailureTemplate>,
    written: usize,
    last_micros: i64,
    /// The connector id last written failing, by org, environment and
    /// connector name: what a recovery row recovers.
    failing: HashMap<(String, String, String), String>,
}

impl FailureWriter {
    pub(super) fn new(url: String, templates: Vec<FailureTemplate>) -> FailureWriter {
        FailureWriter {
            url,
            templates,
            written: 0,
            last_micros: 0,
            failing: HashMap::new(),
        }
    }

    /// The next row and its connector id: a failure's is new, a
    /// recovery's is the connector it recovers (a new one when none
    /// failed: its alert was never posted).
    fn next_row(&mut self) -> (FailureTemplate, String) {
        let (template, fresh_id) = nth_failure(&self.templates, self.written);
        let connector = (
            template.org_id.clone(),
            template.env_id.clone(),
            template.connector_name.clone(),
        );
        let id = if template.is_recovery() {
            self.failing.remove(&connector).unwrap_or(fresh_id)
        } else {
            self.failing.insert(connector, fresh_id.clone());
            fresh_id
        };
        (template, id)
    }

    pub(super) async fn write(&mut self, count: usize) -> Result<(), DemoError> {
        let mut conn = sqlx::SqliteConnection::connect(&self.url)
            .await
            .map_err(|e| DemoError::Warehouse(e.to_string()))?;
        for _ in 0..count {
            let (template, connector_id) = self.next_row();
            // Strictly increasing times: the job's checkpoint is `failed_at`.
            let now = chrono::Utc::now().timestamp_micros();
            self.last_micros = now.max(self.last_micros + 1);
            let reason = Some(template.failure_reason.as_str()).filter(|r| !r.is_empty());
            sqlx::query(
                "INSERT INTO connector_status_changes VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .bind(&template.org_id)
            .bind(&template.env_id)
            .bind(&connector_id)
            .bind(&template.connector_name)
            .bind(&template.connector_type)
            .bind(&template.old_status)
            .bind(&template.new_status)
            .bind(reason)
            .bind(sqlite_datetime(self.last_micros))
            .execute(&mut conn)
            .await
            .map_err(|e| DemoError::Warehouse(e.to_string()))?;
            self.written += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_csv_parses_and_cycles() {
        let text =
            "org_id,env_id,connector_name,connector_type,old_status,new_status,failure_reason\n\
                    org-a,env-1,c1,S3Sink,Provisioning,Failed,Denied, twice\n\
                    org-b,env-2,c2,S3Sink,Running,Failed,Gone\n";
        let templates = parse_failures(text).unwrap();
        assert_eq!(templates[0].failure_reason, "Denied, twice");
        assert_eq!(templates[1].new_status, "Failed");
        let (third, id) = nth_failure(&templates, 2);
        assert_eq!(third.org_id, "org-a");
        assert_eq!(id, "lcc-demo-0002");
        assert!(parse_failures("a,b\n").is_err());
        let old_header = "org_id,env_id,connector_name,connector_type,old_status,failure_reason\n\
                          org-a,env-1,c1,S3Sink,Provisioning,Denied\n";
        let err = parse_failures(old_header).unwrap_err();
        assert!(err.contains("new_status"), "{err}");
    }

    #[test]
    fn a_recovery_row_recovers_the_connector_last_written_failing() {
        let text =
            "org_id,env_id,connector_name,connector_type,old_status,new_status,failure_reason\n\
                    org-a,env-1,c1,S3Sink,Provisioning,Failed,Denied\n\
                    org-a,env-1,c1,S3Sink,Failed,Running,\n\
                    org-a,env-1,c1,S3Sink,Failed,Running,\n";
        let mut writer = FailureWriter::new(String::new(), parse_failures(text).unwrap());
        let mut ids = Vec::new();
        for _ in 0..5 {
            let (row, id) = writer.next_row();
            ids.push((row.new_status, id));
            writer.written += 1;
        }
        let ids: Vec<(&str, &str)> = ids.iter().map(|(s, i)| (s.as_str(), i.as_str())).collect();
        assert_eq!(
            ids,
            [
                ("Failed", "lcc-demo-0000"),
                ("Running", "lcc-demo-0000"),
                // Nothing failing any more: a connector never alerted.
                ("Running", "lcc-demo-0002"),
                ("Failed", "lcc-demo-0003"),
                ("Running", "lcc-demo-0003"),
            ]
        );
    }
}
