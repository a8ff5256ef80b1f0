//! What to do about a group, decided from its ledger row alone: pure
//! functions of the row, the member at hand and the time, so the rules
//! that keep a summary from being posted twice, or edited for every member
//! of a burst, are tested in a table below without Slack or a database.

use sha2::{Digest, Sha256};

/// A group's summary message, as the ledger knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStatus {
    /// Nothing sent yet.
    New,
    /// A post of the summary may have reached Slack: look before posting.
    Pending,
    Posted,
    /// Slack refused the summary for good; members go out ungrouped.
    Failed,
}

impl GroupStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupStatus::New => "new",
            GroupStatus::Pending => "pending",
            GroupStatus::Posted => "posted",
            GroupStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<GroupStatus> {
        Some(match s {
            "new" => GroupStatus::New,
            "pending" => GroupStatus::Pending,
            "posted" => GroupStatus::Posted,
            "failed" => GroupStatus::Failed,
            _ => return None,
        })
    }
}

/// One group: per channel and group key, the alerts from `window_start`
/// (its first alert's time) until `window_end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    pub group_id: String,
    /// The conversation the summary lives in (a DM's `D…` id).
    pub channel_id: String,
    pub group_key: String,
    pub window_start: i64,
    pub window_end: i64,
    pub status: GroupStatus,
    /// The summary's ts: the thread every member replies in.
    pub ts: Option<String>,
    /// Bumped whenever a member joins or changes.
    pub revision: i64,
    /// The revision the summary in Slack shows.
    pub shown_revision: i64,
    /// When the summary was last posted or edited (epoch ms).
    pub shown_at: Option<i64>,
    pub error: Option<String>,
    pub updated_at: i64,
    pub owner_run: Option<String>,
}

/// The group a channel's key is taking members into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub group_id: String,
    pub window_start: i64,
    pub window_end: i64,
}

/// The group an alert of `created_at` joins: the head's while its window
/// is open (a late alert from before it opened joins it too, rather than
/// reopening an old group), otherwise a new group opening at the alert.
pub fn joins(
    head: Option<&Head>,
    channel: &str,
    key: &str,
    created_at: i64,
    window_ms: i64,
) -> Head {
    match head {
        Some(head) if created_at < head.window_end => head.clone(),
        _ => Head {
            group_id: group_id(channel, key, created_at),
            window_start: created_at,
            window_end: created_at.saturating_add(window_ms.max(1)),
        },
    }
}

/// A group's id: the same for every replica that opens it.
pub fn group_id(channel: &str, key: &str, window_start: i64) -> String {
    let mut hasher = Sha256::new();
    for part in [channel, key, &window_start.to_string()] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// What a member needs of its group's summary before it replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SummaryPlan {
    /// The summary is in Slack: reply in its thread.
    Thread(String),
    /// Post the summary (showing the members so far).
    Post,
    /// A post may have landed: look in the conversation first.
    Reconcile,
    /// Slack refused the summary: the member goes out on its own.
    Ungrouped,
}

pub fn plan_summary(group: &GroupRow) -> SummaryPlan {
    match (group.status, &group.ts) {
        (GroupStatus::Posted, Some(ts)) => SummaryPlan::Thread(ts.clone()),
        (GroupStatus::Pending, _) => SummaryPlan::Reconcile,
        (GroupStatus::Failed, _) => SummaryPlan::Ungrouped,
        (GroupStatus::New | GroupStatus::Posted, _) => SummaryPlan::Post,
    }
}

/// Whether a posted summary is edited now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPlan {
    /// It shows every member as they are.
    Current,
    /// Members changed, but the summary was edited less than the interval
    /// ago: a burst is edited once per interval, not once per member.
    Later { at: i64 },
    /// Edit it to show `revision`.
    Update { revision: i64 },
}

pub fn plan_flush(group: &GroupRow, now_ms: i64, interval_ms: i64) -> FlushPlan {
    if group.status != GroupStatus::Posted
        || group.ts.is_none()
        || group.revision <= group.shown_revision
    {
        return FlushPlan::Current;
    }
    match group.shown_at {
        Some(at) if now_ms < at.saturating_add(interval_ms) => FlushPlan::Later {
            at: at.saturating_add(interval_ms),
        },
        _ => FlushPlan::Update {
            revision: group.revision,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: GroupStatus, ts: Option<&str>) -> GroupRow {
        GroupRow {
            group_id: "g".into(),
            channel_id: "C1".into(),
            group_key: "org-1".into(),
            window_start: 1_000,
            window_end: 601_000,
            status,
            ts: ts.map(str::to_owned),
            revision: 3,
            shown_revision: 1,
            shown_at: Some(10_000),
            error: None,
            updated_at: 10_000,
            owner_run: None,
        }
    }

    #[test]
    fn a_member_joins_the_open_window_or_opens_the_next() {
        let head = joins(None, "C1", "org-1", 1_000, 600_000);
        assert_eq!(head.window_start, 1_000);
        assert_eq!(head.window_end, 601_000);
        assert_eq!(head.group_id, group_id("C1", "org-1", 1_000));
        assert_eq!(joins(Some(&head), "C1", "org-1", 600_999, 600_000), head);
        // Late: from before the window opened, it still joins it.
        assert_eq!(joins(Some(&head), "C1", "org-1", 500, 600_000), head);
        let next = joins(Some(&head), "C1", "org-1", 601_000, 600_000);
        assert_eq!(next.window_start, 601_000);
        assert_ne!(next.group_id, head.group_id);
    }

    #[test]
    fn group_ids_differ_by_channel_key_and_window() {
        let id = group_id("C1", "org-1", 1);
        assert_eq!(id.len(), 16);
        assert_eq!(id, group_id("C1", "org-1", 1), "every replica agrees");
        assert_ne!(id, group_id("C2", "org-1", 1));
        assert_ne!(id, group_id("C1", "org-2", 1));
        assert_ne!(id, group_id("C1", "org-1", 2));
        // Parts cannot run into each other.
        assert_ne!(group_id("C1", "a1", 1), group_id("C1a", "1", 1));
    }

    #[test]
    fn the_summary_is_posted_once_looked_up_when_unsure_and_replied_under() {
        let cases = [
            (GroupStatus::New, None, SummaryPlan::Post),
            (GroupStatus::Pending, None, SummaryPlan::Reconcile),
            (GroupStatus::Pending, Some("1.1"), SummaryPlan::Reconcile),
            (
                GroupStatus::Posted,
                Some("1.1"),
                SummaryPlan::Thread("1.1".into()),
            ),
            (GroupStatus::Posted, None, SummaryPlan::Post),
            (GroupStatus::Failed, None, SummaryPlan::Ungrouped),
        ];
        for (status, ts, expected) in cases {
            assert_eq!(
                plan_summary(&row(status, ts)),
                expected,
                "{status:?} {ts:?}"
            );
        }
    }

    #[test]
    fn a_burst_edits_the_summary_once_per_interval_and_the_last_change_shows() {
        let posted = row(GroupStatus::Posted, Some("1.1"));
        assert_eq!(
            plan_flush(&posted, 12_000, 5_000),
            FlushPlan::Later { at: 15_000 }
        );
        assert_eq!(
            plan_flush(&posted, 15_000, 5_000),
            FlushPlan::Update { revision: 3 }
        );
        let never_edited = GroupRow {
            shown_at: None,
            ..posted.clone()
        };
        assert_eq!(
            plan_flush(&never_edited, 0, 5_000),
            FlushPlan::Update { revision: 3 }
        );
        let current = GroupRow {
            shown_revision: 3,
            ..posted.clone()
        };
        assert_eq!(plan_flush(&current, 99_000, 5_000), FlushPlan::Current);
        for status in [GroupStatus::New, GroupStatus::Pending, GroupStatus::Failed] {
            assert_eq!(
                plan_flush(&row(status, None), 99_000, 5_000),
                FlushPlan::Current,
                "{status:?}: nothing to edit"
            );
        }
    }
}
