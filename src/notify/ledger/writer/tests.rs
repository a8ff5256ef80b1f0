use super::*;
use crate::notify::ledger::{Claim, Ledger, Owner, Status};

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
    run_batch(&ledger.pool, &mut requests, &ledger.writer.stats).await;
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
