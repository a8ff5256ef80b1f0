//! An alert's state as people in Slack set it — firing, acknowledged,
//! snoozed, resolved — kept in notify's ledger (`alert_states`), shown on
//! the alert's message and published to the compacted `alert-state` topic.
//!
//! [`transition`] decides from the current state alone whether an action
//! changes anything; [`decorate`] turns a message's blocks and a state into
//! what Slack shows; [`store`] applies a change with compare-and-set, so
//! two replicas or a double click make one change; [`service`] ties them
//! together for clicks and for notify's own posts and edits.

pub mod decorate;
pub mod first_post;
mod publish;
pub mod service;
mod show;
pub mod store;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use decorate::decorate;
pub use service::{AlertStates, InSlack};

pub const ACKNOWLEDGE_ACTION: &str = "alertsvc_acknowledge";
pub const RESOLVE_ACTION: &str = "alertsvc_resolve";
pub const SNOOZE_ACTION: &str = "alertsvc_snooze";

/// A snooze choice beyond this is a typo or a forged value, not a snooze.
const MAX_SNOOZE: Duration = Duration::from_secs(30 * 24 * 3600);
/// A snooze ending within this of the current one changes nothing: it is
/// the same choice clicked twice (a shorter or longer one is a change).
const SAME_SNOOZE_MS: i64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateKind {
    Firing,
    Acknowledged,
    Snoozed,
    Resolved,
}

impl StateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Firing => "firing",
            StateKind::Acknowledged => "acknowledged",
            StateKind::Snoozed => "snoozed",
            StateKind::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<StateKind> {
        Some(match s {
            "firing" => StateKind::Firing,
            "acknowledged" => StateKind::Acknowledged,
            "snoozed" => StateKind::Snoozed,
            "resolved" => StateKind::Resolved,
            _ => return None,
        })
    }
}

/// Who changed a state: a Slack user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub id: String,
    pub name: Option<String>,
}

/// An alert's state. `actor` is `None` when notify itself changed it (a
/// post, an upstream resolve).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertState {
    pub kind: StateKind,
    pub actor: Option<Actor>,
    /// Epoch milliseconds of the change.
    pub at: i64,
    pub snoozed_until: Option<i64>,
    /// The occurrence of the alert the state belongs to: a new occurrence
    /// starts firing again.
    pub occurrence: i64,
}

/// What can happen to an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// notify showed the alert firing (posted, or edited with firing
    /// content).
    Fired {
        occurrence: i64,
    },
    /// The alert's record says `resolved`.
    UpstreamResolved,
    Acknowledge(Actor),
    Snooze {
        actor: Actor,
        for_ms: i64,
    },
    Resolve(Actor),
    /// The snooze's time is up: the alert is open again (notify's own
    /// change, so every reader of the topic sees it without a clock).
    SnoozeEnded,
}

/// Why an action changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoChange {
    AlreadyFiring,
    AlreadyAcknowledged,
    AlreadySnoozed,
    AlreadyResolved,
    /// A snooze-ended check on an alert not snoozed (or not yet due).
    NotSnoozed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Change(AlertState),
    Same(NoChange),
}

fn by(kind: StateKind, actor: Option<&Actor>, now: i64, occurrence: i64) -> AlertState {
    AlertState {
        kind,
        actor: actor.cloned(),
        at: now,
        snoozed_until: None,
        occurrence,
    }
}

/// What `action` does to an alert in state `current` (`None`: no state
/// recorded yet, as for an alert posted before states existed — it is
/// firing) at `now`.
pub fn transition(current: Option<&AlertState>, action: &Action, now: i64) -> Transition {
    let occurrence = current.map_or(1, |c| c.occurrence);
    let kind = current.map_or(StateKind::Firing, |c| c.kind);
    // An ended snooze is firing again: acknowledging or snoozing it anew
    // is a change.
    let snoozed_until = current
        .and_then(|c| c.snoozed_until)
        .filter(|_| kind == StateKind::Snoozed);
    let kind = match snoozed_until {
        Some(until) if until <= now => StateKind::Firing,
        _ => kind,
    };
    let change = |state: AlertState| Transition::Change(state);
    match action {
        Action::Fired { occurrence: fired } => match current {
            None => change(by(StateKind::Firing, None, now, *fired)),
            Some(c) if *fired > c.occurrence => change(by(StateKind::Firing, None, now, *fired)),
            // Resolved upstream and firing again in the same occurrence:
            // the alert is open again. A person's resolve stands until a
            // new occurrence.
            Some(c) if c.kind == StateKind::Resolved && c.actor.is_none() => {
                change(by(StateKind::Firing, None, now, c.occurrence))
            }
            Some(_) => Transition::Same(NoChange::AlreadyFiring),
        },
        Action::SnoozeEnded => match snoozed_until {
            Some(until) if until <= now => change(by(StateKind::Firing, None, now, occurrence)),
            _ => Transition::Same(NoChange::NotSnoozed),
        },
        _ if kind == StateKind::Resolved => Transition::Same(NoChange::AlreadyResolved),
        Action::UpstreamResolved => change(by(StateKind::Resolved, None, now, occurrence)),
        Action::Resolve(actor) => change(by(StateKind::Resolved, Some(actor), now, occurrence)),
        Action::Acknowledge(_) if kind == StateKind::Acknowledged => {
            Transition::Same(NoChange::AlreadyAcknowledged)
        }
        Action::Acknowledge(actor) => {
            change(by(StateKind::Acknowledged, Some(actor), now, occurrence))
        }
        Action::Snooze { actor, for_ms } => {
            let until = now.saturating_add(*for_ms);
            match snoozed_until {
                Some(current)
                    if kind == StateKind::Snoozed && (until - current).abs() <= SAME_SNOOZE_MS =>
                {
                    Transition::Same(NoChange::AlreadySnoozed)
                }
                _ => change(AlertState {
                    snoozed_until: Some(until),
                    ..by(StateKind::Snoozed, Some(actor), now, occurrence)
                }),
            }
        }
    }
}

/// A snooze menu option's value (`1h`, `4h`, `24h`, any humantime
/// duration up to 30 days) in milliseconds.
pub fn snooze_millis(value: &str) -> Option<i64> {
    let d = humantime::parse_duration(value.trim()).ok()?;
    if d.is_zero() || d > MAX_SNOOZE {
        return None;
    }
    i64::try_from(d.as_millis()).ok()
}

/// The action a click asks for; `None` for clicks that change no state
/// (links, other buttons) or a snooze value that is not a duration.
pub fn action_for(action_id: &str, value: Option<&str>, actor: Actor) -> Option<Action> {
    match action_id {
        ACKNOWLEDGE_ACTION => Some(Action::Acknowledge(actor)),
        RESOLVE_ACTION => Some(Action::Resolve(actor)),
        SNOOZE_ACTION => Some(Action::Snooze {
            for_ms: snooze_millis(value?)?,
            actor,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;
    const H: i64 = 3_600_000;

    fn ada() -> Actor {
        Actor {
            id: "U1".into(),
            name: Some("ada".into()),
        }
    }

    fn st(kind: StateKind, actor: Option<Actor>, until: Option<i64>, occ: i64) -> AlertState {
        AlertState {
            kind,
            actor,
            at: NOW - H,
            snoozed_until: until,
            occurrence: occ,
        }
    }

    fn changed(kind: StateKind, actor: Option<Actor>, until: Option<i64>, occ: i64) -> Transition {
        Transition::Change(AlertState {
            kind,
            actor,
            at: NOW,
            snoozed_until: until,
            occurrence: occ,
        })
    }

    #[test]
    fn transitions_table() {
        use NoChange::*;
        use StateKind::*;
        let firing = st(Firing, None, None, 1);
        let acked = st(Acknowledged, Some(ada()), None, 1);
        let snoozed = st(Snoozed, Some(ada()), Some(NOW + 2 * H), 1);
        let snooze_over = st(Snoozed, Some(ada()), Some(NOW - 1), 1);
        let resolved_up = st(Resolved, None, None, 1);
        let resolved_by = st(Resolved, Some(ada()), None, 1);
        let ack = Action::Acknowledge(ada());
        let snooze = |h: i64| Action::Snooze {
            actor: ada(),
            for_ms: h * H,
        };
        let table: Vec<(Option<&AlertState>, Action, Transition)> = vec![
            (
                None,
                Action::Fired { occurrence: 1 },
                changed(Firing, None, None, 1),
            ),
            (
                Some(&firing),
                Action::Fired { occurrence: 1 },
                Transition::Same(AlreadyFiring),
            ),
            (
                Some(&acked),
                Action::Fired { occurrence: 1 },
                Transition::Same(AlreadyFiring),
            ),
            (
                Some(&acked),
                Action::Fired { occurrence: 2 },
                changed(Firing, None, None, 2),
            ),
            (
                Some(&resolved_up),
                Action::Fired { occurrence: 1 },
                changed(Firing, None, None, 1),
            ),
            (
                Some(&resolved_by),
                Action::Fired { occurrence: 1 },
                Transition::Same(AlreadyFiring),
            ),
            (
                Some(&resolved_by),
                Action::Fired { occurrence: 2 },
                changed(Firing, None, None, 2),
            ),
            (
                None,
                ack.clone(),
                changed(Acknowledged, Some(ada()), None, 1),
            ),
            (
                Some(&firing),
                ack.clone(),
                changed(Acknowledged, Some(ada()), None, 1),
            ),
            (
                Some(&acked),
                ack.clone(),
                Transition::Same(AlreadyAcknowledged),
            ),
            (
                Some(&snoozed),
                ack.clone(),
                changed(Acknowledged, Some(ada()), None, 1),
            ),
            (
                Some(&resolved_by),
                ack.clone(),
                Transition::Same(AlreadyResolved),
            ),
            (
                Some(&firing),
                snooze(4),
                changed(Snoozed, Some(ada()), Some(NOW + 4 * H), 1),
            ),
            (
                Some(&acked),
                snooze(1),
                changed(Snoozed, Some(ada()), Some(NOW + H), 1),
            ),
            (Some(&snoozed), snooze(2), Transition::Same(AlreadySnoozed)),
            (
                Some(&snoozed),
                snooze(1),
                changed(Snoozed, Some(ada()), Some(NOW + H), 1),
            ),
            (
                Some(&snoozed),
                snooze(24),
                changed(Snoozed, Some(ada()), Some(NOW + 24 * H), 1),
            ),
            (
                Some(&snooze_over),
                snooze(1),
                changed(Snoozed, Some(ada()), Some(NOW + H), 1),
            ),
            (
                Some(&snooze_over),
                ack.clone(),
                changed(Acknowledged, Some(ada()), None, 1),
            ),
            (
                Some(&resolved_up),
                snooze(1),
                Transition::Same(AlreadyResolved),
            ),
            (
                Some(&firing),
                Action::Resolve(ada()),
                changed(Resolved, Some(ada()), None, 1),
            ),
            (
                Some(&acked),
                Action::Resolve(ada()),
                changed(Resolved, Some(ada()), None, 1),
            ),
            (
                Some(&resolved_up),
                Action::Resolve(ada()),
                Transition::Same(AlreadyResolved),
            ),
            (
                Some(&acked),
                Action::UpstreamResolved,
                changed(Resolved, None, None, 1),
            ),
            (
                Some(&snoozed),
                Action::UpstreamResolved,
                changed(Resolved, None, None, 1),
            ),
            (
                Some(&resolved_by),
                Action::UpstreamResolved,
                Transition::Same(AlreadyResolved),
            ),
            (
                Some(&snooze_over),
                Action::SnoozeEnded,
                changed(Firing, None, None, 1),
            ),
            (
                Some(&snoozed),
                Action::SnoozeEnded,
                Transition::Same(NotSnoozed),
            ),
            (
                Some(&acked),
                Action::SnoozeEnded,
                Transition::Same(NotSnoozed),
            ),
            (None, Action::SnoozeEnded, Transition::Same(NotSnoozed)),
        ];
        for (i, (current, action, expected)) in table.into_iter().enumerate() {
            assert_eq!(
                transition(current, &action, NOW),
                expected,
                "row {i}: {current:?} + {action:?}"
            );
        }
    }

    #[test]
    fn clicks_become_actions() {
        assert_eq!(
            action_for(ACKNOWLEDGE_ACTION, Some("A-1"), ada()),
            Some(Action::Acknowledge(ada()))
        );
        assert_eq!(
            action_for(SNOOZE_ACTION, Some("4h"), ada()),
            Some(Action::Snooze {
                actor: ada(),
                for_ms: 4 * H
            })
        );
        assert_eq!(
            action_for(RESOLVE_ACTION, None, ada()),
            Some(Action::Resolve(ada()))
        );
        assert_eq!(action_for(SNOOZE_ACTION, Some("soon"), ada()), None);
        assert_eq!(action_for(SNOOZE_ACTION, Some("0s"), ada()), None);
        assert_eq!(action_for(SNOOZE_ACTION, Some("90d"), ada()), None);
        assert_eq!(action_for(SNOOZE_ACTION, None, ada()), None);
        assert_eq!(action_for("alertsvc_open_console", None, ada()), None);
    }

    #[test]
    fn kinds_round_trip() {
        for kind in [
            StateKind::Firing,
            StateKind::Acknowledged,
            StateKind::Snoozed,
            StateKind::Resolved,
        ] {
            assert_eq!(StateKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(StateKind::parse("open"), None);
    }
}
