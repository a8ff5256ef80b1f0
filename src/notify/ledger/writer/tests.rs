use super::*;
use crate::messages::AlertStatus;
use crate::notify::ledger::testing::postgres_ledger;
use crate::notify::ledger::{Claim, InsertRows, Ledger, Owner, Statement, Status, Version};

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

/// Sends `ops` as one batch, the way the ledger's writer would.
async fn batch(ledger: &Ledger, ops: Vec<Op>) -> Vec<Answer> {
    batch_on(ledger, &ledger.writer.source, ops).await
}

/// Sends `ops` as one batch on a connection from `source`.
async fn batch_on(ledger: &Ledger, source: &Source, ops: Vec<Op>) -> Vec<Answer> {
    let mut requests = Vec::new();
    let mut answers = Vec::new();
    for op in ops {
        let (reply, answer) = oneshot::channel();
        requests.push(Request { op, reply });
        answers.push(answer);
    }
    let mut held = Held::open(source).expect("a writer's connection");
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
    assert!(matches!(&answers[1], Err(e) if e.is_database()));
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

/// [`posted`] with every column set, text that needs escaping in JSON and
/// numbers past a double's exact range: what a merged write carries must
/// land in its own column as it was.
fn posted_in_full(alert_id: &str, owner: &Owner) -> Box<Entry> {
    let mut entry = posted(alert_id, owner);
    entry.channel_id = "D\"quoted\" \\ back\tslash".into();
    entry.content_hash = "h\u{1}é✓".into();
    entry.attempts = 3;
    entry.error = Some("line one\nline two".into());
    entry.version = Version {
        source: "slack-messages/7".into(),
        offset: 9_007_199_254_740_993,
        created_at: -9_007_199_254_740_993,
    };
    entry.occurrence = 4;
    entry.alert_status = AlertStatus::Resolved;
    entry.thread_ts = Some("0.5".into());
    entry.reply_key = Some("resolved".into());
    entry.reply_ts = Some("1.5".into());
    entry.reply_pending = Some("{\"k\": [1, null]}".into());
    entry
}

/// Fresh claims and entry writes of alerts named once in a batch run as
/// one statement each kind; every submitter gets what its write alone
/// would have given, also when the batch fails and runs again one by one.
async fn merged_batch(failing: bool, postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger_on(postgres, &dir).await;
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
                rows: None,
            },
        },
        Op::SaveThen {
            entry: posted_in_full("f", &first),
            run: first.run.clone(),
            now_ms: 2,
            lease_until: Some(60_002),
            then: Statement {
                sql: "DELETE FROM alert_states WHERE alert_id = $1",
                args: vec![Arg::Text(Some("f".into()))],
                rows: None,
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
        (f.status, f.owner_run.clone(), f.lease_until),
        (Status::Posted, Some(first.run.clone()), Some(60_002))
    );
    let mut written = *posted_in_full("f", &first);
    written.updated_at = 2;
    assert_eq!(f, written, "every column as the write gave it");
    let Ok(Outcome::Inserted(a)) = &answers[0] else {
        panic!("not inserted");
    };
    assert_eq!(get("a").await, **a, "the fresh row as its claim gave it");
}

#[tokio::test]
async fn merged_writes_answer_each_submitter_as_alone() {
    merged_batch(false, false).await;
}

#[tokio::test]
async fn a_failing_batch_with_merged_writes_runs_them_one_by_one() {
    merged_batch(true, false).await;
}

/// PostgreSQL takes a merged statement's rows as one `jsonb` value.
#[tokio::test]
async fn merged_writes_answer_each_submitter_as_alone_postgres() {
    merged_batch(false, true).await;
}

#[tokio::test]
async fn a_failing_batch_with_merged_writes_runs_them_one_by_one_postgres() {
    merged_batch(true, true).await;
}

async fn ledger_on(postgres: bool, dir: &tempfile::TempDir) -> Ledger {
    if !postgres {
        return ledger(dir).await;
    }
    postgres_ledger(4).await
}

/// A first state's insert in the shape `alert_states`' writes merge in
/// (the real one is checked against its shape in `state::store`).
static STATE_ROWS: InsertRows = InsertRows {
    into: "alert_states (alert_id, state, changed_at, base_text, version, published_version)",
    fixed: "1, 0",
    key: "alert_id",
};

fn first_state(alert_id: &str, at: i64) -> Statement {
    Statement {
        sql: "INSERT INTO alert_states (alert_id, state, changed_at, base_text, version, \
              published_version) VALUES ($1, $2, $3, $4, 1, 0) ON CONFLICT (alert_id) DO NOTHING",
        args: vec![
            Arg::Text(Some(alert_id.to_owned())),
            Arg::Text(Some("firing".into())),
            Arg::Int(Some(at)),
            Arg::Text(None),
        ],
        rows: Some(&STATE_ROWS),
    }
}

fn posted_then(alert_id: &str, owner: &Owner) -> Op {
    Op::SaveThen {
        entry: posted(alert_id, owner),
        run: owner.run.clone(),
        now_ms: 2,
        lease_until: None,
        then: first_state(alert_id, 2),
    }
}

/// What a batch of first states is tried beside.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Beside {
    /// Only delivery writes.
    Nothing,
    /// Another write to `alert_states`.
    Statement,
    /// A write the database refuses.
    Failure,
}

/// The batch: posts of `a`, `b` (a state row there already), `c`
/// (fenced out: its claim is `first`'s), `d`, a claim of `x`, a plain
/// entry write of `e`, and what `beside` says.
fn first_states_batch(first: &Owner, second: &Owner, beside: Beside) -> Vec<Op> {
    let mut ops = vec![
        posted_then("a", first),
        posted_then("b", first),
        posted_then("c", second),
        claim("x", second, 2),
        posted_then("d", first),
        Op::Save {
            entry: posted("e", first),
            run: first.run.clone(),
            now_ms: 2,
            lease_until: None,
        },
    ];
    match beside {
        Beside::Nothing => {}
        // Between b's follow-up and d's: run in order it finds b's row
        // and not yet d's.
        Beside::Statement => ops.insert(
            2,
            Op::Statement {
                sql: "UPDATE alert_states SET published_version = 1 WHERE alert_id IN ($1, $2)"
                    .into(),
                args: vec![Arg::Text(Some("b".into())), Arg::Text(Some("d".into()))],
            },
        ),
        Beside::Failure => ops.push(Op::Invalid),
    }
    ops
}

/// Every answer, in a form to compare (`run`s as `first`/`second`).
fn describe(answers: &[Answer], first: &Owner, second: &Owner) -> Vec<String> {
    let who = |run: &Option<String>| match run.as_deref() {
        Some(r) if r == first.run => "first",
        Some(r) if r == second.run => "second",
        Some(_) => "other",
        None => "nobody",
    };
    answers
        .iter()
        .map(|answer| match answer {
            Ok(Outcome::Row(Some(e))) => {
                format!("row {} {:?} {}", e.alert_id, e.status, who(&e.owner_run))
            }
            Ok(Outcome::Row(None)) => "no row".into(),
            Ok(Outcome::Rows(n)) => format!("rows {n}"),
            Ok(Outcome::Inserted(e)) => format!("inserted {}", e.alert_id),
            Ok(Outcome::Saved { rows, then }) => format!("saved {rows} then {then:?}"),
            Err(e) if e.is_database() => "database error".into(),
            Err(e) => format!("error {e}"),
        })
        .collect()
}

/// Both tables as rows to compare.
async fn dump(ledger: &Ledger, first: &Owner, second: &Owner) -> Vec<String> {
    use sqlx::Row;
    let mut out = Vec::new();
    for alert in ["a", "b", "c", "d", "e", "x"] {
        let entry = ledger.get(alert).await.expect("read").expect("a row");
        let who = describe(
            &[Ok(Outcome::Row(Some(Box::new(entry.clone()))))],
            first,
            second,
        );
        out.push(format!("{} ts {:?}", who[0], entry.ts));
    }
    let rows = sqlx::query(
        "SELECT alert_id, state, changed_at, base_text, version, published_version \
         FROM alert_states ORDER BY alert_id",
    )
    .fetch_all(&ledger.pool)
    .await
    .expect("states");
    for row in rows {
        out.push(format!(
            "state {} {} {} {:?} {} {}",
            row.get::<String, _>("alert_id"),
            row.get::<String, _>("state"),
            row.get::<i64, _>("changed_at"),
            row.get::<Option<String>, _>("base_text"),
            row.get::<i64, _>("version"),
            row.get::<i64, _>("published_version"),
        ));
    }
    out
}

/// A ledger where `first` holds `a`…`e` and `b` has a state row.
async fn before_first_states(postgres: bool, dir: &tempfile::TempDir, first: &Owner) -> Ledger {
    let ledger = ledger_on(postgres, dir).await;
    for alert in ["a", "b", "c", "d", "e"] {
        batch(&ledger, vec![claim(alert, first, 1)]).await;
    }
    sqlx::query(
        "INSERT INTO alert_states (alert_id, state, changed_at, version, published_version) \
         VALUES ('b', 'acknowledged', 1, 3, 2)",
    )
    .execute(&ledger.pool)
    .await
    .expect("b's state");
    ledger
}

/// The first states of posts in one batch: merged into one insert per
/// segment between the batch's other writes to `alert_states`; either way
/// each submitter gets the answer, and the tables the rows, that running
/// each write alone in submission order gives.
async fn first_states(db: Db, beside: Beside) {
    let postgres = db == Db::Postgres;
    let (first, second) = (Owner::new("a"), Owner::new("b"));
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = before_first_states(postgres, &dir, &first).await;
    let source = db.source(&ledger);
    let answers = batch_on(
        &ledger,
        &source,
        first_states_batch(&first, &second, beside),
    )
    .await;
    let stats = ledger.writer_stats();
    // A failing batch merged them too, before it was rolled back; beside
    // a statement, a's and b's before it and d's after it.
    assert_eq!(
        stats.merged_follow_ups.load(Ordering::Relaxed),
        3,
        "the follow-ups of a, b and d, the saved ones"
    );
    assert_eq!(
        stats.retried_batches.load(Ordering::Relaxed),
        u64::from(beside == Beside::Failure)
    );
    let mut expected: Vec<String> = [
        "saved 1 then Some(1)",
        "saved 1 then Some(0)",
        "saved 0 then None",
        "row x New second",
        "saved 1 then Some(1)",
        "rows 1",
    ]
    .map(String::from)
    .to_vec();
    match beside {
        Beside::Nothing => {}
        Beside::Statement => expected.insert(2, "rows 1".into()),
        Beside::Failure => expected.push("database error".into()),
    }
    assert_eq!(describe(&answers, &first, &second), expected);
    let published_b = if beside == Beside::Statement { 1 } else { 2 };
    let rows = dump(&ledger, &first, &second).await;
    assert_eq!(
        rows,
        [
            "row a Posted nobody ts Some(\"1.0\")".to_owned(),
            "row b Posted nobody ts Some(\"1.0\")".into(),
            "row c New first ts None".into(),
            "row d Posted nobody ts Some(\"1.0\")".into(),
            "row e Posted nobody ts Some(\"1.0\")".into(),
            "row x New second ts None".into(),
            "state a firing 2 None 1 0".into(),
            format!("state b acknowledged 1 None 3 {published_b}"),
            "state d firing 2 None 1 0".into(),
        ]
    );

    // The same writes, each alone.
    let dir = tempfile::tempdir().expect("tempdir");
    let alone = before_first_states(postgres, &dir, &first).await;
    let mut answers_alone = Vec::new();
    let source = db.source(&alone);
    for op in first_states_batch(&first, &second, beside) {
        answers_alone.extend(batch_on(&alone, &source, vec![op]).await);
    }
    assert_eq!(describe(&answers_alone, &first, &second), expected);
    assert_eq!(dump(&alone, &first, &second).await, rows);
}

/// Which database, and on SQLite which kind of writer connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Db {
    /// SQLite, the writer's own connection (a file's ledger).
    Sqlite,
    /// SQLite through the pool (an in-memory ledger's writer).
    SqlitePool,
    Postgres,
}

impl Db {
    fn source(self, ledger: &Ledger) -> Source {
        match self {
            Db::SqlitePool => Source::Pool {
                pool: ledger.pool.clone(),
                keep: false,
            },
            Db::Sqlite | Db::Postgres => ledger.writer.source.clone(),
        }
    }
}

#[tokio::test]
async fn a_file_ledgers_writer_has_its_own_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(&dir).await;
    assert!(matches!(ledger.writer.source, Source::Sqlite(_)));
}

#[tokio::test]
async fn first_states_merge_and_answer_as_alone_sqlite() {
    first_states(Db::Sqlite, Beside::Nothing).await;
}

#[tokio::test]
async fn first_states_merge_and_answer_as_alone_postgres() {
    first_states(Db::Postgres, Beside::Nothing).await;
}

#[tokio::test]
async fn first_states_merge_around_another_state_write_sqlite() {
    first_states(Db::Sqlite, Beside::Statement).await;
}

#[tokio::test]
async fn first_states_merge_around_another_state_write_sqlite_pool() {
    first_states(Db::SqlitePool, Beside::Statement).await;
}

#[tokio::test]
async fn first_states_merge_around_another_state_write_postgres() {
    first_states(Db::Postgres, Beside::Statement).await;
}

#[tokio::test]
async fn a_failing_batch_with_first_states_runs_them_one_by_one_sqlite() {
    first_states(Db::Sqlite, Beside::Failure).await;
}

#[tokio::test]
async fn a_failing_batch_with_first_states_runs_them_one_by_one_sqlite_pool() {
    first_states(Db::SqlitePool, Beside::Failure).await;
}

#[tokio::test]
async fn a_failing_batch_with_first_states_runs_them_one_by_one_postgres() {
    first_states(Db::Postgres, Beside::Failure).await;
}
