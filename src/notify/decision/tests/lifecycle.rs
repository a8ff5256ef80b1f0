use super::*;

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
