//! What to do with one message, decided from the ledger entry alone: a pure
//! function of the entry (as claimed), the message, the time and the
//! settings. [`super::delivery`] only executes the plan, so every rule that
//! keeps an alert from being posted twice, lost, or shown older than before
//! is here and tested in a table below.

use std::cmp::Ordering;
use std::time::Duration;

use crate::slack::{ErrorClass, SlackError};

/// Where a message's content comes from: later records of one source
/// partition supersede earlier ones; across sources, the later `createdAt`
/// wins.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Version {
    /// `topic/partition` of the record enrich rendered the message from.
    pub source: String,
    pub offset: i64,
    /// Epoch milliseconds of that record.
    pub created_at: i64,
}

impl Version {
    /// How `self` compares with `shown`, the version a message shows.
    pub fn compare(&self, shown: &Version) -> Ordering {
        if !shown.source.is_empty() && self.source == shown.source {
            self.offset.cmp(&shown.offset)
        } else {
            self.created_at.cmp(&shown.created_at)
        }
    }
}

/// A ledger row's delivery state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Claimed, nothing sent yet.
    New,
    /// A post may have reached Slack: look before posting again.
    Pending,
    Posted,
    /// Slack refused the post for good (the alert is dead-lettered).
    Failed,
    /// Too old to post when it came.
    Expired,
}

/// The part of a ledger entry the decision reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub status: Status,
    pub ts: Option<String>,
    pub content_hash: String,
    pub version: Version,
    pub occurrence: i64,
}

/// The message at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming<'a> {
    pub content_hash: &'a str,
    pub version: &'a Version,
    /// Re-injected from the dead-letter topic by `alertsvc dlq replay`
    /// (header `alertsvc.replayed.from`): an operator fixed the cause, so a
    /// refusal is tried again rather than repeated.
    pub replayed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Alerts older than this are not posted.
    pub max_age: Duration,
    /// Seen again after this long (by `createdAt`), an alert id is a new
    /// occurrence and is posted anew.
    pub dedup_window: Duration,
}

/// What the claim on an alert id gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimView {
    /// This instance holds the alert; `None` for an alert never seen.
    Held(Option<Shown>),
    /// A live peer holds it until `lease_until` (epoch ms).
    Busy { lease_until: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A peer is working on this alert: ask again later.
    WaitForPeer { until: i64 },
    /// Post it (`occurrence` goes into the message metadata).
    Post { occurrence: i64 },
    /// A post may have landed: look in the conversation first.
    Reconcile,
    /// Edit the posted message to show the new content.
    Update,
    /// Nothing to show. `newer` when the record is newer than the shown
    /// version with the same content (the ledger notes it was seen).
    Duplicate { newer: bool },
    /// Too old to post.
    Expire,
}

pub fn is_expired(created_at_ms: i64, now_ms: i64, max_age: Duration) -> bool {
    now_ms.saturating_sub(created_at_ms) > duration_ms(max_age)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub fn decide(claim: &ClaimView, message: &Incoming<'_>, now_ms: i64, rules: &Rules) -> Plan {
    let expired = is_expired(message.version.created_at, now_ms, rules.max_age);
    let post = |occurrence| {
        if expired {
            Plan::Expire
        } else {
            Plan::Post { occurrence }
        }
    };
    let shown = match claim {
        ClaimView::Busy { lease_until } => {
            return Plan::WaitForPeer {
                until: *lease_until,
            }
        }
        ClaimView::Held(None) => return post(1),
        ClaimView::Held(Some(shown)) => shown,
    };
    if shown.status == Status::New {
        return post(shown.occurrence.max(1));
    }
    // Whatever the state, a crash may have left a post behind: find it
    // before anything else is decided.
    if shown.status == Status::Pending {
        return Plan::Reconcile;
    }
    let order = message.version.compare(&shown.version);
    let new_occurrence = message
        .version
        .created_at
        .saturating_sub(shown.version.created_at)
        > duration_ms(rules.dedup_window);
    if new_occurrence {
        return post(shown.occurrence + 1);
    }
    if order == Ordering::Less {
        // A redelivered older version: the message never goes backwards.
        return Plan::Duplicate { newer: false };
    }
    match (shown.status, &shown.ts) {
        (Status::Posted, Some(_)) if message.content_hash == shown.content_hash => {
            Plan::Duplicate {
                newer: order == Ordering::Greater,
            }
        }
        (Status::Posted, Some(_)) => Plan::Update,
        // Never shown (refused or expired): a newer record, or other
        // content (a fixed channel, a new template), is a new attempt; the
        // same record again gets the same answer (unless an operator
        // replayed it after fixing the cause).
        _ if order == Ordering::Equal
            && message.content_hash == shown.content_hash
            && !(message.replayed && shown.status == Status::Failed) =>
        {
            Plan::Duplicate { newer: false }
        }
        _ => post(shown.occurrence.max(1)),
    }
}

/// How a failed Slack call is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Slack certainly did nothing; try again after `after` (or backoff).
    Retry { after: Option<Duration> },
    /// Slack may have done it (timeout after send, reset, 5xx): look
    /// before doing it again.
    Ambiguous,
    /// Slack refused for good.
    Permanent,
    /// An error this code does not know: retried a few times
    /// (`retry.max_attempts`), then treated as permanent.
    Unknown,
    /// The token is bad: stop delivering anything.
    Auth,
    /// Slack is unreachable (nothing was sent): retry, and count towards
    /// the outage detector.
    Unreachable,
}

/// Slack's error codes that mean the message was not and will not be
/// accepted as sent.
const PERMANENT_CODES: &[&str] = &[
    "channel_not_found",
    "user_not_found",
    "not_in_channel",
    "is_archived",
    "invalid_blocks",
    "invalid_blocks_format",
    "msg_too_long",
    "no_text",
    "too_many_attachments",
    "restricted_action",
    "restricted_action_read_only_channel",
    "restricted_action_thread_only_channel",
    "restricted_action_non_threadable_channel",
    "cannot_reply_to_message",
    "message_not_found",
    "cant_update_message",
    "edit_window_closed",
    "invalid_metadata_format",
    "invalid_metadata_schema",
    "metadata_too_large",
    "invalid_arguments",
    "invalid_arg_name",
    "invalid_array_arg",
    "invalid_charset",
    "invalid_form_data",
    "invalid_post_type",
    "missing_post_type",
    "user_disabled",
    "cannot_dm_bot",
    "team_access_not_granted",
    "channel_type_not_supported",
];

pub fn classify(error: &SlackError) -> Failure {
    match error {
        SlackError::Unreachable(_) => Failure::Unreachable,
        SlackError::Transport(_) | SlackError::Timeout(_) => Failure::Ambiguous,
        SlackError::InvalidBlocks(_) => Failure::Permanent,
        SlackError::Api { code } if PERMANENT_CODES.contains(&code.as_str()) => Failure::Permanent,
        SlackError::Api { code }
            if matches!(
                code.as_str(),
                "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout"
            ) =>
        {
            Failure::Ambiguous
        }
        _ => match error.class() {
            ErrorClass::Auth => Failure::Auth,
            ErrorClass::Transient { retry_after } => match error {
                SlackError::Http { .. } => Failure::Ambiguous,
                _ => Failure::Retry { after: retry_after },
            },
            ErrorClass::Permanent => Failure::Unknown,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const RULES: Rules = Rules {
        max_age: HOUR,
        dedup_window: Duration::from_secs(24 * 3600),
    };
    const NOW: i64 = 1_800_000_000_000;

    fn version(offset: i64, created_at: i64) -> Version {
        Version {
            source: "events/0".into(),
            offset,
            created_at,
        }
    }

    fn shown(status: Status, hash: &str, v: Version) -> ClaimView {
        ClaimView::Held(Some(Shown {
            status,
            ts: matches!(status, Status::Posted).then(|| "1.0001".to_owned()),
            content_hash: hash.into(),
            version: v,
            occurrence: 1,
        }))
    }

    fn decide_for(claim: &ClaimView, hash: &str, v: &Version) -> Plan {
        decide(
            claim,
            &Incoming {
                content_hash: hash,
                version: v,
                replayed: false,
            },
            NOW,
            &RULES,
        )
    }

    #[test]
    fn decisions() {
        let fresh = version(10, NOW - 1_000);
        let older = version(9, NOW - 2_000);
        let newer = version(11, NOW - 500);
        let stale = version(10, NOW - 2 * 3_600_000);
        let next_month = version(500, NOW + 30 * 24 * 3_600_000);
        let cases: Vec<(&str, ClaimView, &str, &Version, Plan)> = vec![
            (
                "never seen: post",
                ClaimView::Held(None),
                "h",
                &fresh,
                Plan::Post { occurrence: 1 },
            ),
            (
                "never seen, too old: expire",
                ClaimView::Held(None),
                "h",
                &stale,
                Plan::Expire,
            ),
            (
                "claimed, nothing sent: post",
                shown(Status::New, "", Version::default()),
                "h",
                &fresh,
                Plan::Post { occurrence: 1 },
            ),
            (
                "a live peer holds it: wait",
                ClaimView::Busy {
                    lease_until: NOW + 5,
                },
                "h",
                &fresh,
                Plan::WaitForPeer { until: NOW + 5 },
            ),
            (
                "pending: look before posting",
                shown(Status::Pending, "h", fresh.clone()),
                "h",
                &fresh,
                Plan::Reconcile,
            ),
            (
                "pending and too old: still look (it may be there)",
                shown(Status::Pending, "h", stale.clone()),
                "h",
                &stale,
                Plan::Reconcile,
            ),
            (
                "posted, same content: duplicate",
                shown(Status::Posted, "h", fresh.clone()),
                "h",
                &fresh,
                Plan::Duplicate { newer: false },
            ),
            (
                "posted, same content in a newer record: duplicate, noted",
                shown(Status::Posted, "h", fresh.clone()),
                "h",
                &newer,
                Plan::Duplicate { newer: true },
            ),
            (
                "posted, newer content: update",
                shown(Status::Posted, "h", fresh.clone()),
                "h2",
                &newer,
                Plan::Update,
            ),
            (
                "posted, same position, other content (new template): update",
                shown(Status::Posted, "h", fresh.clone()),
                "h2",
                &fresh,
                Plan::Update,
            ),
            (
                "posted, an older record redelivered: never backwards",
                shown(Status::Posted, "h2", fresh.clone()),
                "h",
                &older,
                Plan::Duplicate { newer: false },
            ),
            (
                "posted, seen again after the dedup window: a new occurrence",
                shown(Status::Posted, "h", fresh.clone()),
                "h",
                &next_month,
                Plan::Post { occurrence: 2 },
            ),
            (
                "failed, same content: the same answer, no new post",
                shown(Status::Failed, "h", fresh.clone()),
                "h",
                &fresh,
                Plan::Duplicate { newer: false },
            ),
            (
                "failed, newer content (a fixed channel): post",
                shown(Status::Failed, "h", fresh.clone()),
                "h2",
                &newer,
                Plan::Post { occurrence: 1 },
            ),
            (
                "failed, the same content in a newer record: try again",
                shown(Status::Failed, "h", fresh.clone()),
                "h",
                &newer,
                Plan::Post { occurrence: 1 },
            ),
            (
                "expired, redelivered: duplicate",
                shown(Status::Expired, "h", stale.clone()),
                "h",
                &stale,
                Plan::Duplicate { newer: false },
            ),
        ];
        for (name, claim, hash, v, expected) in cases {
            assert_eq!(decide_for(&claim, hash, v), expected, "{name}");
        }
    }

    #[test]
    fn a_replayed_dead_letter_is_tried_again_other_redeliveries_are_not() {
        let v = version(10, NOW - 1_000);
        let replay = |status| {
            decide(
                &shown(status, "h", v.clone()),
                &Incoming {
                    content_hash: "h",
                    version: &v,
                    replayed: true,
                },
                NOW,
                &RULES,
            )
        };
        assert_eq!(replay(Status::Failed), Plan::Post { occurrence: 1 });
        assert_eq!(replay(Status::Posted), Plan::Duplicate { newer: false });
        assert_eq!(replay(Status::Expired), Plan::Duplicate { newer: false });
    }

    #[test]
    fn versions_compare_by_position_within_a_source_else_by_time() {
        let a = version(5, 2_000);
        let b = version(6, 1_000);
        assert_eq!(b.compare(&a), Ordering::Greater, "offset wins in a source");
        let other = Version {
            source: "events/1".into(),
            offset: 1,
            created_at: 3_000,
        };
        assert_eq!(other.compare(&a), Ordering::Greater, "time across sources");
        assert_eq!(a.compare(&Version::default()), Ordering::Greater);
    }

    #[test]
    fn failures_are_classified_by_what_slack_may_have_done() {
        let api = |code: &str| SlackError::Api { code: code.into() };
        assert_eq!(classify(&api("channel_not_found")), Failure::Permanent);
        assert_eq!(classify(&api("invalid_blocks")), Failure::Permanent);
        assert_eq!(classify(&api("internal_error")), Failure::Ambiguous);
        assert_eq!(classify(&api("fatal_error")), Failure::Ambiguous);
        assert_eq!(classify(&api("invalid_auth")), Failure::Auth);
        assert_eq!(classify(&api("something_new")), Failure::Unknown);
        assert_eq!(
            classify(&api("ratelimited")),
            Failure::Retry { after: None }
        );
        let after = Some(Duration::from_secs(3));
        assert_eq!(
            classify(&SlackError::RateLimited { retry_after: after }),
            Failure::Retry { after }
        );
        assert_eq!(
            classify(&SlackError::Http { status: 503 }),
            Failure::Ambiguous
        );
        assert_eq!(classify(&SlackError::Http { status: 401 }), Failure::Auth);
        assert_eq!(
            classify(&SlackError::Timeout(Duration::from_secs(1))),
            Failure::Ambiguous
        );
        assert_eq!(
            classify(&SlackError::Unreachable("tcp connect error".into())),
            Failure::Unreachable
        );
        assert_eq!(
            classify(&SlackError::Transport("connection reset by peer".into())),
            Failure::Ambiguous
        );
    }
}
