use super::*;
use crate::notify::ledger::{Claim, Ledger, Owner, Statement, Status};

async fn ledger(dir: &tempfile::TempDir) -> Ledger {
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("l.db").display());
    let ledger = Ledger::connect(&url, 4).await.expect("ledger");
    ledger.migrate().await.expect("migrate");
    ledger
}

fn claim(alert_id: &str, owner: &Owner, now_ms: i64) -> Op {
    Op::Claim {
        alert_id: alert_id.to_owned(),
        channel_id: "C1".to_owned(),
        instance: owner.instance.clone(),
        run: owner.run.clone(),
        now_ms,
        lease_until: now_ms + 60_000,
    }
}

/// Sends `ops` as one batch, the way a writer task would.
async fn batch(ledger: &Ledger, ops: Vec<Op>) -> Vec<Answer> {
    let mut requests = Vec::new();
    let mut answers = Vec::new();
    for op in ops {
        let (reply, answer) = oneshot::channel();
        requests.push(Request { op, reply });
        answers.push(answer);
    }
    let mut held = Held::new(ledger.pool.clone(), false);
    run_batch(&mut held, &mut requests, &ledger.writer.stats).await;
    let mut out = Vec::new();
    for answer in answers {
        out.push(answer.await.expect("answered"));
    }
    out
}

fn run_of(answer: &Answer) -> Option<String> {
    match answer {
        Ok(Outcome::Row(Some(entry))) => entry.owner_run.clone(),
        _ => None,
    }
}

#[tokio::test]
async fn concurrent_writes_share_few_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(&dir).await;
    let owner = Owner::new("a");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (ledger, owner) = (ledger.clone(), owner.clone());
        tasks.spawn(async move {
            let alert = format!("alert-{i}");
            let Claim::Held(mut entry) = ledger.claim(&alert, "C1", &owner, 1, 60_000).await?
            else {
                panic!("{alert} not held");
            };
            entry.status = Status::Pending;
            ledger.save(&entry, &owner, 2, Some(60_000)).await?;
            entry.status = Status::Posted;
            ledger.save(&entry, &owner, 3, None).await
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task").expect("written");
    }
    let stats = ledger.writer_stats();
    assert_eq!(stats.writes.load(Ordering::Relaxed), 600);
    let transactions = stats.transactions.load(Ordering::Relaxed);
    assert!(
        transactions <= 30,
        "600 writes from 200 concurrent workers took {transactions} transactions"
    );
    for i in 0..200 {
        let entry = ledger.get(&format!("alert-{i}")).await.unwrap().unwrap();
        assert_eq!(entry.status, Status::Posted);
        assert_eq!(entry.owner_run, None, "released with the last write");
    }
}

#[tokio::test]
async fn a_claim_is_compare_and_set_within_one_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(&dir).await;
    let (first, second) = (Owner::new("a"), Owner::new("b"));
    let entry = Entry {
        alert_id: "x".into(),
        channel_id: "C1".into(),
        ts: Some("1.0".into()),
        content_hash: String::new(),
        status: Status::Posted,
        attempts: 1,
        error: None,
        version: Default::default(),
        occurrence: 1,
        updated_at: 0,
        owner: None,
        owner_run: None,
        lease_until: None,
        alert_status: Default::default(),
        thread_ts: None,
        reply_key: None,
        reply_ts: None,
        reply_pending: None,
    };
    let answers = batch(
        &ledger,
        vec![
            claim("x", &first, 10),
            claim("x", &second, 11),
            Op::Save {
                entry: Box::new(entry),
                run: second.run.clone(),
                now_ms: 12,
                lease_until: None,
            },
        ],
    )
    .await;
    assert_eq!(
        ledger.writer_stats().transactions.load(Ordering::Relaxed),
        1
    );
    assert_eq!(run_of(&answers[0]), Some(first.run.clone()));
    assert_eq!(
        run_of(&answers[1]),
        Some(first.run.clone()),
        "the second claim sees the first one's row and does not take it"
    );
    assert!(matches!(answers[2], Ok(Outcome::Rows(0))), "fenced out");
    let row = ledger.get("x").await.unwrap().unwrap();
    assert_eq!(row.owner_run, Some(first.run));
    assert_eq!(row.status, Status::New);
}

#[tokio::test]
async fn a_failing_statement_fails_only_its_submitter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(&dir).await;
    let (first, second) = (Owner::new("a"), Owner::new("b"));
    let answers = batch(
        &ledger,
        vec![
            claim("x", &first, 10),
            Op::Invalid,
            claim("x", &second, 11),
            claim("y", &second, 12),
        ],
    )
    .await;
    let stats = ledger.writer_stats();
    assert_eq!(stats.retried_batches.load(Ordering::Relaxed), 1);
    assert_eq!(
        stats.transactions.load(Ordering::Relaxed),
        5,
        "the batch, then each write alone"
    );
    assert!(matches!(answers[1], Err(LedgerError::Database(_))));
    assert_eq!(run_of(&answers[0]), Some(first.run.clone()));
    assert_eq!(run_of(&answers[2]), Some(first.run.clone()), "still CAS");
    assert_eq!(run_of(&answers[3]), Some(second.run.clone()));
    let x = ledger.get("x").await.unwrap().unwrap();
    assert_eq!(x.owner_run, Some(first.run));
    let y = ledger.get("y").await.unwrap().unwrap();
    assert_eq!(y.owner_run, Some(second.run));
}

fn fresh(alert_id: &str, owner: &Owner, now_ms: i64) -> Op {
    let lease_until = now_ms + 60_000;
    Op::ClaimFresh {
        fresh: Box::new(Entry::claimed_new(
            alert_id,
            "C1",
            owner,
            now_ms,
            lease_until,
        )),
        now_ms,
        lease_until,
    }
}

fn posted(alert_id: &str, owner: &Owner) -> Box<Entry> {
    let mut entry = Entry::claimed_new(alert_id, "C1", owner, 2, 60_002);
    entry.status = Status::Posted;
    entry.ts = Some("1.0".into());
    Box::new(entry)
}

/// Fresh claims and entry writes of alerts named once in a batch run as
/// one statement each kind; every submitter gets what its write alone
/// would have given, also when the batch fails and runs again one by one.
async fn merged_batch(failing: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(&dir).await;
    let (first, second) = (Owner::new("a"), Owner::new("b"));
    for alert in ["c", "d", "e", "f"] {
        batch(&ledger, vec![claim(alert, &first, 1)]).await;
    }
    let mut ops = vec![
        fresh("a", &second, 2),
        fresh("b", &second, 2),
        fresh("c", &second, 2),
        Op::Save {
            entry: posted("d", &first),
            run: first.run.clone(),
            now_ms: 2,
            lease_until: None,
        },
        Op::SaveThen {
            entry: posted("e", &second),
            run: second.run.clone(),
            now_ms: 2,
            lease_until: None,
            then: Statement {
                sql: "DELETE FROM alert_states WHERE alert_id = $1",
                args: vec![Arg::Text(Some("e".into()))],
            },
        },
        Op::SaveThen {
            entry: posted("f", &first),
            run: first.run.clone(),
            now_ms: 2,
            lease_until: Some(60_002),
            then: Statement {
                sql: "DELETE FROM alert_states WHERE alert_id = $1",
                args: vec![Arg::Text(Some("f".into()))],
            },
        },
    ];
    if failing {
        ops.push(Op::Invalid);
    }
    let answers = batch(&ledger, ops).await;
    let stats = ledger.writer_stats();
    assert_eq!(stats.merged_writes.load(Ordering::Relaxed), 6);
    assert_eq!(
        stats.retried_batches.load(Ordering::Relaxed),
        u64::from(failing)
    );
    for answer in &answers[..2] {
        let Ok(Outcome::Inserted(entry)) = answer else {
            panic!("not inserted");
        };
        assert_eq!(entry.owner_run, Some(second.run.clone()));
    }
    assert_eq!(
        run_of(&answers[2]),
        Some(first.run.clone()),
        "a row already there is claimed, not overwritten"
    );
    assert!(matches!(answers[3], Ok(Outcome::Rows(1))));
    assert!(
        matches!(
            answers[4],
            Ok(Outcome::Saved {
                rows: 0,
                then: None
            })
        ),
        "fenced out, no follow-up"
    );
    assert!(matches!(
        answers[5],
        Ok(Outcome::Saved {
            rows: 1,
            then: Some(0)
        })
    ));
    let get = |alert: &'static str| {
        let ledger = ledger.clone();
        async move { ledger.get(alert).await.unwrap().unwrap() }
    };
    assert_eq!(get("a").await.owner_run, Some(second.run.clone()));
    assert_eq!(get("c").await.owner_run, Some(first.run.clone()));
    let d = get("d").await;
    assert_eq!((d.status, d.owner_run), (Status::Posted, None));
    let e = get("e").await;
    assert_eq!(
        (e.status, e.owner_run),
        (Status::New, Some(first.run.clone()))
    );
    let f = get("f").await;
    assert_eq!(
        (f.status, f.owner_run, f.lease_until),
        (Status::Posted, Some(first.run.clone()), Some(60_002))
    );
}

#[tokio::test]
async fn merged_writes_answer_each_submitter_as_alone() {
    merged_batch(false).await;
}

#[tokio::test]
async fn a_failing_batch_with_merged_writes_runs_them_one_by_one() {
    merged_batch(true).await;
}
