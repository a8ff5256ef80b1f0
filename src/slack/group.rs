//! A group's summary message in Slack: posted, edited and found after an
//! ambiguous answer (by `SlackApi::post`, `update` and `find`) with
//! metadata naming the group ([`GROUP_METADATA_EVENT`]), like an alert's
//! message.

use slack_morphism::prelude::*;

use super::metadata::metadata_of;
use super::Tag;

/// Event type of the metadata of a group's summary message.
pub const GROUP_METADATA_EVENT: &str = "alertsvc_group";

/// Which group a summary message stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRef<'a> {
    pub group_id: &'a str,
    pub group_key: &'a str,
}

impl Tag for GroupRef<'_> {
    fn metadata(&self) -> SlackMessageMetadata {
        metadata_of(
            GROUP_METADATA_EVENT,
            [
                ("group_id", self.group_id.to_owned()),
                ("group_key", self.group_key.to_owned()),
            ],
        )
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
