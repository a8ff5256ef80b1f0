//! A dead letter as read back, which records a filter selects, and the
//! record replaying it produces.

use rdkafka::message::{Header, OwnedHeaders};

use super::{Options, Since, REPLAYED_FROM};
use crate::kafka::{dlq_headers, OutRecord};

/// Every header a dead letter gained on its way to the DLQ starts with this;
/// they are not copied to the replayed record.
const DLQ_HEADER_PREFIX: &str = "alertsvc.dlq.";

/// Why the skipped dead letters of produce were skipped (see [`skip_reason`]).
const SKIP_NO_SOURCE: &str = "no source position (produce's dead letters hold the warehouse \
     row as JSON, not an encoded event: fix the data and re-run the job or reset its checkpoint)";

/// One dead letter as read.
#[derive(Debug, Clone)]
pub(super) struct DeadLetter {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) timestamp_ms: Option<i64>,
    pub(super) key: Option<Vec<u8>>,
    pub(super) payload: Option<Vec<u8>>,
    pub(super) headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    pub(super) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub(super) fn matches(&self, options: &Options) -> bool {
        if let Some(Since(since)) = options.since {
            // A record without a timestamp cannot be shown to be recent.
            if self.timestamp_ms.is_none_or(|t| t < since) {
                return false;
            }
        }
        if let Some(wanted) = &options.reason {
            let reason = self.header(dlq_headers::REASON).unwrap_or_default();
            if !reason.contains(wanted.as_str()) {
                return false;
            }
        }
        true
    }

    /// `<dlq topic>/<partition>/<offset>`.
    pub(super) fn origin(&self, dlq_topic: &str) -> String {
        format!("{dlq_topic}/{}/{}", self.partition, self.offset)
    }

    /// The record to re-produce: original key and bytes, original headers
    /// but the dead-letter ones, and where it came from.
    pub(super) fn replay_record(&self, dlq_topic: &str, target: &str) -> OutRecord {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &self.headers {
            if key.starts_with(DLQ_HEADER_PREFIX) || key == REPLAYED_FROM {
                continue;
            }
            headers = headers.insert(Header {
                key: key.as_str(),
                value: value.as_deref(),
            });
        }
        let origin = self.origin(dlq_topic);
        headers = headers.insert(Header {
            key: REPLAYED_FROM,
            value: Some(origin.as_bytes()),
        });
        OutRecord {
            topic: target.to_owned(),
            key: self.key.clone(),
            payload: self.payload.clone(),
            headers: Some(headers),
        }
    }
}

/// Where a selected dead letter goes, or why it cannot be replayed.
pub(super) fn target_of(letter: &DeadLetter) -> Result<String, &'static str> {
    match letter.header(dlq_headers::SOURCE_TOPIC) {
        Some(topic) if !topic.is_empty() => Ok(topic),
        // produce writes rows that could not become events: the payload is
        // the row, so producing it to the job's topic would put a record
        // no consumer can decode there.
        _ if letter.header(dlq_headers::JOB).is_some() => Err(SKIP_NO_SOURCE),
        _ => Err("no alertsvc.dlq.source.topic header"),
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;

    fn letter(headers: &[(&str, &str)], timestamp_ms: Option<i64>) -> DeadLetter {
        DeadLetter {
            partition: 0,
            offset: 7,
            timestamp_ms,
            key: Some(b"k".to_vec()),
            payload: Some(vec![0, 1, 0xff]),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Some(v.as_bytes().to_vec())))
                .collect(),
        }
    }

    #[test]
    fn filters_compare_the_record_time_and_the_reason() {
        let l = letter(&[(dlq_headers::REASON, "template failed: x")], Some(1000));
        let opts = |since: Option<i64>, reason: Option<&str>| Options {
            topic: "t".into(),
            since: since.map(Since),
            reason: reason.map(str::to_owned),
            dry_run: false,
        };
        assert!(l.matches(&opts(None, None)));
        assert!(l.matches(&opts(Some(1000), Some("template"))));
        assert!(!l.matches(&opts(Some(1001), None)));
        assert!(!l.matches(&opts(None, Some("decode"))));
        assert!(!letter(&[], None).matches(&opts(Some(0), None)));
    }

    #[test]
    fn the_replayed_record_keeps_bytes_and_foreign_headers_only() {
        let l = letter(
            &[
                (dlq_headers::REASON, "r"),
                (dlq_headers::SOURCE_TOPIC, "in"),
                ("trace", "abc"),
            ],
            None,
        );
        assert_eq!(target_of(&l), Ok("in".to_owned()));
        let record = l.replay_record("in.dlq", "in");
        assert_eq!(record.topic, "in");
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(record.payload.as_deref(), Some(&[0, 1, 0xff][..]));
        let headers: Vec<(String, String)> = record
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            headers,
            [
                ("trace".to_owned(), "abc".to_owned()),
                (REPLAYED_FROM.to_owned(), "in.dlq/0/7".to_owned())
            ]
        );
    }

    #[test]
    fn produce_rows_are_skipped_with_a_reason() {
        let l = letter(&[(dlq_headers::JOB, "j"), (dlq_headers::ROW, "5")], None);
        assert_eq!(target_of(&l), Err(SKIP_NO_SOURCE));
    }
}
