//! The decision table: each case is the ledger entry, the message and
//! the plan `decide` must return.

mod lifecycle;

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
