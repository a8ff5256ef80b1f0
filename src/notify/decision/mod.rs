//! What to do with one message, decided from the ledger entry alone: a pure
//! function of the entry (as claimed), the message, the time and the
//! settings. [`super::delivery`] only executes the plan, so every rule that
//! keeps an alert from being posted twice, lost, or shown older than before
//! is here and tested in a table (`tests`).
//!
//! A delivery may take several steps — a resolved alert gets a reply in its
//! thread, then its message is edited — and each step is recorded in the
//! ledger before the next is decided, so a crash between two steps leaves
//! an entry from which the same decision picks up the rest: never a second
//! post, never a second reply.

mod failure;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::time::Duration;

use crate::messages::{AlertStatus, RecurrenceMode, ResolvedUnposted, UpdateMode};

pub use failure::{classify, Failure};

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
    /// What the message shows, hashed: the same content is not sent twice.
    pub content_hash: &'a str,
    pub version: &'a Version,
    pub status: AlertStatus,
    /// The pipeline's rules for a later record of an alert already posted.
    pub updates: UpdateMode,
    pub recurrence: RecurrenceMode,
    pub resolved_unposted: ResolvedUnposted,
    /// Re-injected from the dead-letter topic by `alertsvc dlq replay`
    /// (header `alertsvc.replayed.from`): an operator fixed the cause, so a
    /// refusal is tried again rather than repeated.
    pub replayed: bool,
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
