//! The metadata naming the alert (or the reply about it) that a message
//! is, and how a found message is matched against it.

use std::collections::HashMap;

use slack_morphism::prelude::*;

/// Event type of the message metadata every alert carries.
pub const ALERT_METADATA_EVENT: &str = "alertsvc_alert";
/// Event type of the metadata of a thread reply about an alert (a resolved
/// notice, new content in the thread).
pub const REPLY_METADATA_EVENT: &str = "alertsvc_alert_reply";

/// Which alert, and which occurrence of it, a message is: carried in every
/// message's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertRef<'a> {
    pub alert_id: &'a str,
    pub occurrence: i64,
}

/// What a message is, as its metadata says: it is posted with it, and
/// found again by it after an ambiguous answer.
pub trait Tag {
    fn metadata(&self) -> SlackMessageMetadata;
    /// Whether a found message's metadata names this very message.
    fn matches(&self, meta: &SlackMessageMetadata) -> bool;
}

/// Metadata of `event_type` with these payload fields.
pub(super) fn metadata_of<const N: usize>(
    event_type: &str,
    fields: [(&str, String); N],
) -> SlackMessageMetadata {
    SlackMessageMetadata {
        event_type: event_type.to_owned(),
        event_payload: Some(
            fields
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect(),
        ),
    }
}

/// Messages posted before occurrences existed are occurrence 1.
fn occurrence_of(payload: &HashMap<String, String>) -> i64 {
    payload
        .get("occurrence")
        .and_then(|o| o.parse::<i64>().ok())
        .unwrap_or(1)
}

/// The payload of `meta` when it is of `event_type` and about this
/// occurrence of `alert_id`.
fn payload_about<'m>(
    meta: &'m SlackMessageMetadata,
    event_type: &str,
    alert_id: &str,
    occurrence: i64,
) -> Option<&'m HashMap<String, String>> {
    let payload = meta.event_payload.as_ref()?;
    (meta.event_type == event_type
        && payload.get("alert_id").is_some_and(|id| id == alert_id)
        && occurrence_of(payload) == occurrence)
        .then_some(payload)
}

impl Tag for AlertRef<'_> {
    fn metadata(&self) -> SlackMessageMetadata {
        metadata_of(
            ALERT_METADATA_EVENT,
            [
                ("alert_id", self.alert_id.to_owned()),
                ("occurrence", self.occurrence.to_string()),
            ],
        )
    }

    fn matches(&self, meta: &SlackMessageMetadata) -> bool {
        payload_about(meta, ALERT_METADATA_EVENT, self.alert_id, self.occurrence).is_some()
    }
}

/// Which reply about an alert a thread message is: the alert, its
/// occurrence, and the reply's key (`resolved`, `update:<content>`), one
/// reply per key and occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyRef<'a> {
    pub alert_id: &'a str,
    pub occurrence: i64,
    pub key: &'a str,
}

impl Tag for ReplyRef<'_> {
    fn metadata(&self) -> SlackMessageMetadata {
        metadata_of(
            REPLY_METADATA_EVENT,
            [
                ("alert_id", self.alert_id.to_owned()),
                ("occurrence", self.occurrence.to_string()),
                ("reply", self.key.to_owned()),
            ],
        )
    }

    fn matches(&self, meta: &SlackMessageMetadata) -> bool {
        payload_about(meta, REPLY_METADATA_EVENT, self.alert_id, self.occurrence)
            .is_some_and(|payload| payload.get("reply").is_some_and(|key| key == self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alerts_message_and_a_reply_about_it_are_told_apart() {
        let alert = AlertRef {
            alert_id: "a-1",
            occurrence: 2,
        };
        let reply = ReplyRef {
            alert_id: "a-1",
            occurrence: 2,
            key: "resolved",
        };
        assert!(alert.matches(&alert.metadata()));
        assert!(reply.matches(&reply.metadata()));
        assert!(
            !alert.matches(&reply.metadata()),
            "a reply is not the alert"
        );
        assert!(!reply.matches(&alert.metadata()));
        let other_key = ReplyRef {
            key: "update:abc",
            ..reply
        };
        assert!(!reply.matches(&other_key.metadata()));
        let first = AlertRef {
            occurrence: 1,
            ..alert
        };
        assert!(!first.matches(&alert.metadata()));
    }
}
