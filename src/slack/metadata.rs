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

/// Messages posted before occurrences existed are occurrence 1.
fn occurrence_of(payload: &HashMap<String, String>) -> i64 {
    payload
        .get("occurrence")
        .and_then(|o| o.parse::<i64>().ok())
        .unwrap_or(1)
}

impl AlertRef<'_> {
    pub(super) fn metadata(&self) -> SlackMessageMetadata {
        SlackMessageMetadata {
            event_type: ALERT_METADATA_EVENT.to_owned(),
            event_payload: Some(HashMap::from([
                ("alert_id".to_owned(), self.alert_id.to_owned()),
                ("occurrence".to_owned(), self.occurrence.to_string()),
            ])),
        }
    }

    pub(super) fn matches(&self, meta: &SlackMessageMetadata) -> bool {
        let Some(payload) = meta.event_payload.as_ref() else {
            return false;
        };
        meta.event_type == ALERT_METADATA_EVENT
            && payload
                .get("alert_id")
                .is_some_and(|id| id == self.alert_id)
            && occurrence_of(payload) == self.occurrence
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

impl ReplyRef<'_> {
    pub(super) fn metadata(&self) -> SlackMessageMetadata {
        SlackMessageMetadata {
            event_type: REPLY_METADATA_EVENT.to_owned(),
            event_payload: Some(HashMap::from([
                ("alert_id".to_owned(), self.alert_id.to_owned()),
                ("occurrence".to_owned(), self.occurrence.to_string()),
                ("reply".to_owned(), self.key.to_owned()),
            ])),
        }
    }

    pub(super) fn matches(&self, meta: &SlackMessageMetadata) -> bool {
        let Some(payload) = meta.event_payload.as_ref() else {
            return false;
        };
        meta.event_type == REPLY_METADATA_EVENT
            && payload
                .get("alert_id")
                .is_some_and(|id| id == self.alert_id)
            && occurrence_of(payload) == self.occurrence
            && payload.get("reply").is_some_and(|key| key == self.key)
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
