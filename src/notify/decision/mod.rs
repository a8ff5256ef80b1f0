//! What to do with one message, decided from the ledger entry alone: a pure
//! function of the entry (as claimed), the message, the time and the
//! settings. [`super::delivery`] only executes the plan, so every rule that
//! keeps an alert from being posted twice, lost, or shown older than before
//! is here and tested in a table below.
//!
//! A delivery may take several steps — a resolved alert gets a reply in its
//! thread, then its message is edited — and each step is recorded in the
//! ledger before the next is decided, so a crash between two steps leaves
//! an entry from which the same decision picks up the rest: never a second
//! post, never a second reply.

use std::cmp::Ordering;
use std::time::Duration;

use crate::messages::{AlertStatus, RecurrenceMode, ResolvedUnposted, UpdateMode};
use crate::slack::{ErrorClass, SlackError};

/// Key of the reply that says an alert resolved (one per occurrence).
pub const RESOLVED_REPLY: &str = "resolved";

/// Key of the reply carrying new content: one per content, so the same
/// content is never replied twice.
pub fn update_reply_key(content_hash: &str) -> String {
    let short = content_hash.get(..16).unwrap_or(content_hash);
    format!("update:{short}")
}

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
    /// What the message shows, firing or resolved (never shown: what the
    /// last record said).
    pub alert: AlertStatus,
    /// The thread this occurrence was posted into; `None`: its own ts.
    pub thread_ts: Option<String>,
    /// The last reply made for this occurrence.
    pub reply_key: Option<String>,
    /// A reply that may have reached Slack.
    pub reply_pending: Option<String>,
}

impl Shown {
    /// The thread replies about this occurrence go to.
    fn thread(&self) -> Option<String> {
        self.thread_ts.clone().or_else(|| self.ts.clone())
    }
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
    pub status: AlertStatus,
    pub updates: UpdateMode,
    pub recurrence: RecurrenceMode,
    pub resolved_unposted: ResolvedUnposted,
}

impl<'a> Incoming<'a> {
    /// A firing message with the default lifecycle settings.
    pub fn firing(content_hash: &'a str, version: &'a Version) -> Incoming<'a> {
        Incoming {
            content_hash,
            version,
            replayed: false,
            status: AlertStatus::Firing,
            updates: UpdateMode::Edit,
            recurrence: RecurrenceMode::New,
            resolved_unposted: ResolvedUnposted::Skip,
        }
    }
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

/// What a thread reply says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// The alert resolved: a short notice (the message's text).
    Resolved,
    /// The alert's new content (text and blocks).
    Update,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A peer is working on this alert: ask again later.
    WaitForPeer { until: i64 },
    /// Post it (`occurrence` goes into the message metadata): top-level,
    /// or into the thread of `thread` and to the channel (a recurrence).
    Post {
        occurrence: i64,
        thread: Option<String>,
    },
    /// A post may have landed: look in the conversation first.
    Reconcile,
    /// Edit the posted message to show the new content.
    Update,
    /// Reply in the thread of `thread`; `key` names the reply, so it is
    /// made once per occurrence.
    Reply {
        thread: String,
        key: String,
        kind: ReplyKind,
    },
    /// The reply `key` may have landed: look in the thread first.
    ReconcileReply { thread: String, key: String },
    /// The new content went to the thread only: record it as delivered.
    Settle,
    /// Nothing to show. `newer` when the record is newer than the shown
    /// version with the same content (the ledger notes it was seen).
    Duplicate { newer: bool },
    /// Too old to post.
    Expire,
    /// A resolved record for an alert never posted: nothing is sent.
    ResolvedUnposted,
}

pub fn is_expired(created_at_ms: i64, now_ms: i64, max_age: Duration) -> bool {
    now_ms.saturating_sub(created_at_ms) > duration_ms(max_age)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub fn decide(claim: &ClaimView, message: &Incoming<'_>, now_ms: i64, rules: &Rules) -> Plan {
    let expired = is_expired(message.version.created_at, now_ms, rules.max_age);
    let resolved = message.status == AlertStatus::Resolved;
    // The first message of an alert (or of an occurrence never shown).
    let first = |occurrence, thread: Option<String>| {
        if resolved && message.resolved_unposted == ResolvedUnposted::Skip {
            Plan::ResolvedUnposted
        } else if expired {
            Plan::Expire
        } else {
            Plan::Post { occurrence, thread }
        }
    };
    let shown = match claim {
        ClaimView::Busy { lease_until } => {
            return Plan::WaitForPeer {
                until: *lease_until,
            }
        }
        ClaimView::Held(None) => return first(1, None),
        ClaimView::Held(Some(shown)) => shown,
    };
    // Whatever the state, a crash may have left a post or a reply behind:
    // find it before anything else is decided.
    if shown.status == Status::Pending {
        return Plan::Reconcile;
    }
    if let (Some(key), Some(thread)) = (&shown.reply_pending, shown.thread()) {
        return Plan::ReconcileReply {
            thread,
            key: key.clone(),
        };
    }
    let order = message.version.compare(&shown.version);
    // Known to be resolved (a skipped resolved record): an older or the
    // same firing record does not bring it back.
    let known_resolved =
        shown.alert == AlertStatus::Resolved && !resolved && order != Ordering::Greater;
    if shown.status == Status::New {
        if known_resolved {
            return Plan::ResolvedUnposted;
        }
        // A thread an earlier attempt chose stays chosen.
        return first(shown.occurrence.max(1), shown.thread_ts.clone());
    }
    let posted = shown.status == Status::Posted && shown.ts.is_some();
    // Firing again after the window, or after it resolved, is a new
    // occurrence; a resolved record always speaks for the current one.
    let recurs = !resolved
        && (message
            .version
            .created_at
            .saturating_sub(shown.version.created_at)
            > duration_ms(rules.dedup_window)
            || (posted && shown.alert == AlertStatus::Resolved && order == Ordering::Greater));
    if recurs {
        if expired {
            return Plan::Expire;
        }
        let thread = match message.recurrence {
            RecurrenceMode::Thread if posted => shown.thread(),
            _ => None,
        };
        return Plan::Post {
            occurrence: shown.occurrence + 1,
            thread,
        };
    }
    if order == Ordering::Less {
        // A redelivered older version: the message never goes backwards.
        return Plan::Duplicate { newer: false };
    }
    let Some(thread) = shown.thread().filter(|_| posted) else {
        // Never shown (refused or expired): a newer record, or other
        // content (a fixed channel, a new template), is a new attempt; the
        // same record again gets the same answer (unless an operator
        // replayed it after fixing the cause).
        if resolved && message.resolved_unposted == ResolvedUnposted::Skip {
            return Plan::ResolvedUnposted;
        }
        if order == Ordering::Equal
            && message.content_hash == shown.content_hash
            && !(message.replayed && shown.status == Status::Failed)
        {
            return Plan::Duplicate { newer: false };
        }
        return first(shown.occurrence.max(1), shown.thread_ts.clone());
    };
    if resolved && shown.alert == AlertStatus::Firing {
        // Resolved: a short reply in the thread (not for old news), then
        // the message in place, whatever `updates` says.
        if !expired && shown.reply_key.as_deref() != Some(RESOLVED_REPLY) {
            return Plan::Reply {
                thread,
                key: RESOLVED_REPLY.to_owned(),
                kind: ReplyKind::Resolved,
            };
        }
        return Plan::Update;
    }
    if message.content_hash == shown.content_hash {
        return Plan::Duplicate {
            newer: order == Ordering::Greater,
        };
    }
    let key = update_reply_key(message.content_hash);
    let replied = shown.reply_key.as_deref() == Some(key.as_str());
    if message.updates.replies() && !replied {
        if !expired {
            return Plan::Reply {
                thread,
                key,
                kind: ReplyKind::Update,
            };
        }
        if !message.updates.edits() {
            return Plan::Expire;
        }
    }
    if message.updates.edits() {
        Plan::Update
    } else {
        Plan::Settle
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
    "thread_not_found",
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

    fn entry(status: Status, hash: &str, v: Version) -> Shown {
        Shown {
            status,
            ts: matches!(status, Status::Posted).then(|| "1.0001".to_owned()),
            content_hash: hash.into(),
            version: v,
            occurrence: 1,
            alert: AlertStatus::Firing,
            thread_ts: None,
            reply_key: None,
            reply_pending: None,
        }
    }

    fn shown(status: Status, hash: &str, v: Version) -> ClaimView {
        ClaimView::Held(Some(entry(status, hash, v)))
    }

    fn decide_for(claim: &ClaimView, hash: &str, v: &Version) -> Plan {
        decide(claim, &Incoming::firing(hash, v), NOW, &RULES)
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
                Plan::Post {
                    occurrence: 1,
                    thread: None,
                },
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
                Plan::Post {
                    occurrence: 1,
                    thread: None,
                },
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
                Plan::Post {
                    occurrence: 2,
                    thread: None,
                },
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
                Plan::Post {
                    occurrence: 1,
                    thread: None,
                },
            ),
            (
                "failed, the same content in a newer record: try again",
                shown(Status::Failed, "h", fresh.clone()),
                "h",
                &newer,
                Plan::Post {
                    occurrence: 1,
                    thread: None,
                },
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
                    replayed: true,
                    ..Incoming::firing("h", &v)
                },
                NOW,
                &RULES,
            )
        };
        assert_eq!(
            replay(Status::Failed),
            Plan::Post {
                occurrence: 1,
                thread: None
            }
        );
        assert_eq!(replay(Status::Posted), Plan::Duplicate { newer: false });
        assert_eq!(replay(Status::Expired), Plan::Duplicate { newer: false });
    }

    /// Resolve, threads and recurrence: each case is the entry as the
    /// ledger holds it, the message, and the one step that comes next.
    #[test]
    fn lifecycle_decisions() {
        let v10 = version(10, NOW - 2_000);
        let v11 = version(11, NOW - 1_000);
        let v12 = version(12, NOW - 500);
        let next_month = version(500, NOW + 30 * 24 * 3_600_000);
        // Both older than max_age: news too old for a reply.
        let old_shown = version(10, NOW - 3 * 3_600_000);
        let old_news = version(11, NOW - 2 * 3_600_000);
        let firing = entry(Status::Posted, "h", v10.clone());
        let resolved = Shown {
            alert: AlertStatus::Resolved,
            content_hash: "hr".into(),
            version: v11.clone(),
            reply_key: Some(RESOLVED_REPLY.into()),
            ..firing.clone()
        };
        fn incoming<'a>(hash: &'a str, v: &'a Version, status: AlertStatus) -> Incoming<'a> {
            Incoming {
                status,
                ..Incoming::firing(hash, v)
            }
        }
        let reply = |key: &str, kind| Plan::Reply {
            thread: "1.0001".into(),
            key: key.into(),
            kind,
        };
        let post = |occurrence, thread: Option<&str>| Plan::Post {
            occurrence,
            thread: thread.map(str::to_owned),
        };
        let update_key = update_reply_key("h2");
        let cases: Vec<(&str, Option<Shown>, Incoming, Plan)> = vec![
            (
                "never seen, resolved: resolved_unposted, nothing sent",
                None,
                incoming("hr", &v11, AlertStatus::Resolved),
                Plan::ResolvedUnposted,
            ),
            (
                "never seen, resolved, resolved_unposted = post: posted",
                None,
                Incoming {
                    resolved_unposted: ResolvedUnposted::Post,
                    ..incoming("hr", &v11, AlertStatus::Resolved)
                },
                post(1, None),
            ),
            (
                "posted firing, then resolved: the resolved reply first",
                Some(firing.clone()),
                incoming("hr", &v11, AlertStatus::Resolved),
                reply(RESOLVED_REPLY, ReplyKind::Resolved),
            ),
            (
                "resolved reply made: the message is edited in place",
                Some(Shown {
                    reply_key: Some(RESOLVED_REPLY.into()),
                    ..firing.clone()
                }),
                incoming("hr", &v11, AlertStatus::Resolved),
                Plan::Update,
            ),
            (
                "resolved with updates = thread: still edited in place",
                Some(Shown {
                    reply_key: Some(RESOLVED_REPLY.into()),
                    ..firing.clone()
                }),
                Incoming {
                    updates: UpdateMode::Thread,
                    ..incoming("hr", &v11, AlertStatus::Resolved)
                },
                Plan::Update,
            ),
            (
                "resolved, too old for a reply: edited only",
                Some(entry(Status::Posted, "h", old_shown.clone())),
                incoming("hr", &old_news, AlertStatus::Resolved),
                Plan::Update,
            ),
            (
                "resolved after the dedup window: still this occurrence",
                Some(firing.clone()),
                incoming("hr", &next_month, AlertStatus::Resolved),
                reply(RESOLVED_REPLY, ReplyKind::Resolved),
            ),
            (
                "resolved, the same record again: duplicate, no second reply",
                Some(resolved.clone()),
                incoming("hr", &v11, AlertStatus::Resolved),
                Plan::Duplicate { newer: false },
            ),
            (
                "resolved, the firing record redelivered: never backwards",
                Some(resolved.clone()),
                incoming("h", &v10, AlertStatus::Firing),
                Plan::Duplicate { newer: false },
            ),
            (
                "resolved, firing again: a new occurrence, a new message",
                Some(resolved.clone()),
                incoming("h3", &v12, AlertStatus::Firing),
                post(2, None),
            ),
            (
                "resolved, firing again, recurrence = thread: the first thread",
                Some(resolved.clone()),
                Incoming {
                    recurrence: RecurrenceMode::Thread,
                    ..incoming("h3", &v12, AlertStatus::Firing)
                },
                post(2, Some("1.0001")),
            ),
            (
                "after the dedup window, recurrence = thread: the first thread",
                Some(firing.clone()),
                Incoming {
                    recurrence: RecurrenceMode::Thread,
                    ..incoming("h", &next_month, AlertStatus::Firing)
                },
                post(2, Some("1.0001")),
            ),
            (
                "an occurrence in a thread recurs into the same thread",
                Some(Shown {
                    occurrence: 2,
                    thread_ts: Some("0.5".into()),
                    ..resolved.clone()
                }),
                Incoming {
                    recurrence: RecurrenceMode::Thread,
                    ..incoming("h3", &v12, AlertStatus::Firing)
                },
                post(3, Some("0.5")),
            ),
            (
                "recurrence = thread, the last occurrence never shown: top-level",
                Some(Shown {
                    alert: AlertStatus::Resolved,
                    ..entry(Status::Failed, "h", v10.clone())
                }),
                Incoming {
                    recurrence: RecurrenceMode::Thread,
                    ..incoming("h", &next_month, AlertStatus::Firing)
                },
                post(2, None),
            ),
            (
                "updates = thread, new content: a reply",
                Some(firing.clone()),
                Incoming {
                    updates: UpdateMode::Thread,
                    ..incoming("h2", &v11, AlertStatus::Firing)
                },
                reply(&update_key, ReplyKind::Update),
            ),
            (
                "updates = thread, the reply made: settled, no edit",
                Some(Shown {
                    reply_key: Some(update_key.clone()),
                    ..firing.clone()
                }),
                Incoming {
                    updates: UpdateMode::Thread,
                    ..incoming("h2", &v11, AlertStatus::Firing)
                },
                Plan::Settle,
            ),
            (
                "updates = edit_and_thread: the reply first",
                Some(firing.clone()),
                Incoming {
                    updates: UpdateMode::EditAndThread,
                    ..incoming("h2", &v11, AlertStatus::Firing)
                },
                reply(&update_key, ReplyKind::Update),
            ),
            (
                "updates = edit_and_thread, the reply made: then the edit",
                Some(Shown {
                    reply_key: Some(update_key.clone()),
                    ..firing.clone()
                }),
                Incoming {
                    updates: UpdateMode::EditAndThread,
                    ..incoming("h2", &v11, AlertStatus::Firing)
                },
                Plan::Update,
            ),
            (
                "updates = thread, the same content again: duplicate",
                Some(Shown {
                    content_hash: "h2".into(),
                    version: v11.clone(),
                    reply_key: Some(update_key.clone()),
                    ..firing.clone()
                }),
                Incoming {
                    updates: UpdateMode::Thread,
                    ..incoming("h2", &v11, AlertStatus::Firing)
                },
                Plan::Duplicate { newer: false },
            ),
            (
                "updates = thread, new content too old: expired, not replied",
                Some(entry(Status::Posted, "h", old_shown.clone())),
                Incoming {
                    updates: UpdateMode::Thread,
                    ..incoming("h2", &old_news, AlertStatus::Firing)
                },
                Plan::Expire,
            ),
            (
                "updates = edit_and_thread, too old for a reply: edited",
                Some(entry(Status::Posted, "h", old_shown.clone())),
                Incoming {
                    updates: UpdateMode::EditAndThread,
                    ..incoming("h2", &old_news, AlertStatus::Firing)
                },
                Plan::Update,
            ),
            (
                "a reply may have landed: look in the thread first",
                Some(Shown {
                    reply_pending: Some(RESOLVED_REPLY.into()),
                    ..firing.clone()
                }),
                incoming("hr", &v11, AlertStatus::Resolved),
                Plan::ReconcileReply {
                    thread: "1.0001".into(),
                    key: RESOLVED_REPLY.into(),
                },
            ),
            (
                "a pending post is looked for before anything else",
                Some(Shown {
                    status: Status::Pending,
                    reply_pending: Some(RESOLVED_REPLY.into()),
                    ..firing.clone()
                }),
                incoming("hr", &v11, AlertStatus::Resolved),
                Plan::Reconcile,
            ),
            (
                "a resolved record skipped, the older firing one late: skipped too",
                Some(Shown {
                    alert: AlertStatus::Resolved,
                    ..entry(Status::New, "hr", v11.clone())
                }),
                incoming("h", &v10, AlertStatus::Firing),
                Plan::ResolvedUnposted,
            ),
            (
                "a resolved record skipped, then firing anew: posted",
                Some(Shown {
                    alert: AlertStatus::Resolved,
                    ..entry(Status::New, "hr", v11.clone())
                }),
                incoming("h3", &v12, AlertStatus::Firing),
                post(1, None),
            ),
            (
                "refused when posted, then resolved: resolved_unposted",
                Some(entry(Status::Failed, "h", v10.clone())),
                incoming("hr", &v11, AlertStatus::Resolved),
                Plan::ResolvedUnposted,
            ),
            (
                "claimed for a post into a thread, not sent: the same thread",
                Some(Shown {
                    occurrence: 2,
                    thread_ts: Some("1.0001".into()),
                    ..entry(Status::New, "h3", v12.clone())
                }),
                Incoming {
                    recurrence: RecurrenceMode::Thread,
                    ..incoming("h3", &v12, AlertStatus::Firing)
                },
                post(2, Some("1.0001")),
            ),
        ];
        for (name, entry, message, expected) in cases {
            assert_eq!(
                decide(&ClaimView::Held(entry), &message, NOW, &RULES),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn update_reply_keys_name_the_content() {
        let hash = "0123456789abcdef0123456789abcdef";
        assert_eq!(update_reply_key(hash), "update:0123456789abcdef");
        assert_ne!(
            update_reply_key(hash),
            update_reply_key("fedcba9876543210ff")
        );
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
