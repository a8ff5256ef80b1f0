//! What the fake keeps of a message over its life: every text it showed,
//! and thread replies (in the thread, broadcast to the channel).

use super::*;

#[tokio::test]
async fn messages_keep_every_text_they_showed() {
    let (slack, api, posted) = with_a1_posted("U0ADA", "firing").await;
    for text in ["acknowledged", "resolved"] {
        api.update(
            &posted.channel,
            &posted.ts,
            text,
            BLOCKS,
            Some(&alert_ref("a1")),
        )
        .await
        .unwrap();
    }
    let message = &slack.messages()[0];
    assert_eq!(message.revisions, ["firing", "acknowledged", "resolved"]);
    assert_eq!(message.edits, 2);
    slack.insert_message(FakeMessage {
        channel: "C1".into(),
        ts: "1.2".into(),
        text: "earlier".into(),
        blocks: json!([]),
        metadata: Some(json!({"event_type": "alertsvc_alert",
                              "event_payload": {"alert_id": "a1"}})),
        edits: 0,
        revisions: Vec::new(),
        thread_ts: None,
        reply_broadcast: false,
    });
    assert_eq!(slack.messages()[1].revisions, ["earlier"]);
    assert_eq!(
        slack.posts_by_alert(),
        BTreeMap::from([("a1".to_owned(), 2)])
    );
}

fn reply_ref<'a>(alert_id: &'a str, key: &'a str) -> crate::slack::ReplyRef<'a> {
    crate::slack::ReplyRef {
        alert_id,
        occurrence: 1,
        key,
    }
}

/// The ts of each message a list method answered, in its order.
fn listed_ts(list: &Value) -> Vec<&str> {
    list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ts"].as_str().unwrap())
        .collect()
}

/// Threads as Slack keeps them: a reply must name a top-level message of
/// its conversation, is listed by `conversations.replies` (with metadata
/// only when asked) and not by `conversations.history` unless broadcast,
/// and its parent counts it.
#[tokio::test]
async fn threads_hold_replies_out_of_the_channel_unless_broadcast() {
    let (slack, api, parent) = with_a1_posted("C1", "firing").await;
    let reply = api
        .reply(
            "C1",
            &parent.ts,
            "resolved",
            None,
            &reply_ref("a1", "resolved"),
        )
        .await
        .unwrap();
    let two = crate::slack::AlertRef {
        alert_id: "a1",
        occurrence: 2,
    };
    let thread = crate::slack::Thread {
        ts: &parent.ts,
        broadcast: true,
    };
    let broadcast = api
        .post_in_thread("C1", "firing again", BLOCKS, &two, &thread)
        .await
        .unwrap();

    // Nothing else is a thread: unknown ts, a reply's ts, another channel.
    for (channel, ts) in [("C1", "9.000001"), ("C1", reply.ts.as_str())] {
        assert_eq!(
            api.reply(channel, ts, "x", None, &reply_ref("a1", "k"))
                .await,
            Err(api_error("thread_not_found")),
            "{channel} {ts}"
        );
    }
    slack.add_channel("C2");
    assert_eq!(
        api.reply("C2", &parent.ts, "x", None, &reply_ref("a1", "k"))
            .await,
        Err(api_error("thread_not_found"))
    );

    let history = json_of(
        call(
            &slack,
            "conversations.history",
            &[("channel", "C1"), ("include_all_metadata", "true")],
        )
        .await,
    )
    .await;
    assert_eq!(
        listed_ts(&history),
        [broadcast.ts.as_str(), parent.ts.as_str()]
    );
    let top = &history["messages"][1];
    assert_eq!(top["reply_count"], 2);
    assert_eq!(top["latest_reply"], broadcast.ts.as_str());
    assert_eq!(top["thread_ts"], parent.ts.as_str());
    assert_eq!(history["messages"][0]["subtype"], "thread_broadcast");
    assert_eq!(history["messages"][0]["thread_ts"], parent.ts.as_str());

    // The thread, oldest first, from its parent or from any reply in it.
    for named in [&parent.ts, &reply.ts] {
        let thread = json_of(
            call(
                &slack,
                "conversations.replies",
                &[("channel", "C1"), ("ts", named.as_str())],
            )
            .await,
        )
        .await;
        assert_eq!(listed_ts(&thread), [&parent.ts, &reply.ts, &broadcast.ts]);
        assert!(
            thread["messages"][1].get("metadata").is_none(),
            "metadata only when asked"
        );
    }
    assert_eq!(
        json_of(
            call(
                &slack,
                "conversations.replies",
                &[("channel", "C1"), ("ts", "9.000001")]
            )
            .await
        )
        .await["error"],
        "thread_not_found"
    );

    // Found by what they are: the alert's message is not its reply.
    assert_eq!(
        api.find_alert("C1", &alert_ref("a1"), None).await,
        Ok(Some(parent.ts.clone()))
    );
    assert_eq!(
        api.find_reply("C1", &parent.ts, &reply_ref("a1", "resolved"), None)
            .await,
        Ok(Some(reply.ts.clone()))
    );
    assert_eq!(
        api.find_reply("C1", &parent.ts, &reply_ref("a1", "update:x"), None)
            .await,
        Ok(None)
    );
    assert_eq!(
        api.find_alert_in_thread("C1", &parent.ts, &two, None).await,
        Ok(Some(broadcast.ts.clone()))
    );
    assert_eq!(
        slack.posts_by_alert(),
        BTreeMap::from([("a1".to_owned(), 2)]),
        "two occurrences, the reply is not a post of the alert"
    );
    let stats = slack.stats();
    assert_eq!((stats.posts, stats.replies), (3, 2));
    let stored = slack.messages();
    assert_eq!(stored[1].reply_key(), Some("resolved"));
    assert_eq!(stored[1].alert_id(), None);
    assert_eq!(stored[1].about_alert(), Some("a1"));
    assert!(!stored[1].in_channel() && stored[2].in_channel());
}
