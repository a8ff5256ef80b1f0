//! A group's summary message in Slack: posted and edited with metadata
//! naming the group ([`GROUP_METADATA_EVENT`]), and found by it after an
//! ambiguous answer, like an alert's message.

use std::collections::HashMap;

use slack_morphism::prelude::*;

use super::{Posted, SlackApi, SlackError};

/// Event type of the metadata of a group's summary message.
pub const GROUP_METADATA_EVENT: &str = "alertsvc_group";

/// Which group a summary message stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRef<'a> {
    pub group_id: &'a str,
    pub group_key: &'a str,
}

impl GroupRef<'_> {
    fn metadata(&self) -> SlackMessageMetadata {
        SlackMessageMetadata {
            event_type: GROUP_METADATA_EVENT.to_owned(),
            event_payload: Some(HashMap::from([
                ("group_id".to_owned(), self.group_id.to_owned()),
                ("group_key".to_owned(), self.group_key.to_owned()),
            ])),
        }
    }

    fn matches(&self, meta: &SlackMessageMetadata) -> bool {
        meta.event_type == GROUP_METADATA_EVENT
            && meta
                .event_payload
                .as_ref()
                .and_then(|p| p.get("group_id"))
                .is_some_and(|id| id == self.group_id)
    }
}

impl SlackApi {
    /// `chat.postMessage` of a group's summary.
    pub async fn post_summary(
        &self,
        channel: &str,
        text: &str,
        blocks: &str,
        group: &GroupRef<'_>,
    ) -> Result<Posted, SlackError> {
        self.post_message(channel, text, Some(blocks), group.metadata(), None)
            .await
    }

    /// `chat.update` of a group's summary.
    pub async fn update_summary(
        &self,
        channel: &str,
        ts: &str,
        text: &str,
        blocks: &str,
        group: &GroupRef<'_>,
    ) -> Result<Posted, SlackError> {
        self.update_message(channel, ts, text, blocks, Some(group.metadata()))
            .await
    }

    /// Looks for a group's summary already posted to `channel` among
    /// messages since `oldest_ms`.
    pub async fn find_summary(
        &self,
        channel: &str,
        group: &GroupRef<'_>,
        oldest_ms: Option<i64>,
    ) -> Result<Option<String>, SlackError> {
        self.find_message(channel, None, oldest_ms, |meta| group.matches(meta))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_is_found_by_its_group_only() {
        let group = GroupRef {
            group_id: "g1",
            group_key: "org-1",
        };
        assert!(group.matches(&group.metadata()));
        let other = GroupRef {
            group_id: "g2",
            group_key: "org-1",
        };
        assert!(!group.matches(&other.metadata()));
        let alert = super::super::AlertRef {
            alert_id: "g1",
            occurrence: 1,
        };
        assert!(!group.matches(&alert.metadata()));
    }
}
