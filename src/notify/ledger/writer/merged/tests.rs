use super::*;
use crate::notify::ledger::Owner;

fn renew(alert: &str) -> Op {
    Op::Renew {
        alert_id: alert.into(),
        run: "r".into(),
        lease_until: 1,
    }
}

#[test]
fn placeholders_are_numbered_row_by_row() {
    assert_eq!(tuples(2, 3, true), "($1, $2, $3), ($4, $5, $6)");
    assert_eq!(tuples(1, 1, true), "($1)");
    assert_eq!(tuples(2, 2, false), "(?, ?), (?, ?)");
}

fn fresh(alert: &str) -> Op {
    let owner = Owner::new("i");
    Op::ClaimFresh {
        fresh: Box::new(Entry::claimed_new(alert, "C1", &owner, 1, 2)),
        now_ms: 1,
        lease_until: 2,
    }
}

fn save(alert: &str) -> Op {
    let owner = Owner::new("i");
    Op::Save {
        entry: Box::new(Entry::claimed_new(alert, "C1", &owner, 1, 2)),
        run: owner.run,
        now_ms: 1,
        lease_until: None,
    }
}

#[test]
fn only_writes_of_alerts_named_once_are_merged() {
    let ops = [
        fresh("a"),
        save("b"),
        fresh("c"),
        renew("c"),
        save("d"),
        fresh("e"),
        save("f"),
        save("f"),
        Op::Statement {
            sql: "UPDATE alert_states SET version = 1".into(),
            args: Vec::new(),
        },
    ];
    assert_eq!(
        plan(ops.iter()),
        Plan {
            fresh: vec![0, 5],
            saves: vec![1, 4],
            thens: vec![],
        }
    );
}

static ROWS: InsertRows = InsertRows {
    into: "t (k, v)",
    fixed: "0",
    key: "k",
};
static OTHER_ROWS: InsertRows = InsertRows {
    into: "u (k, v)",
    fixed: "0",
    key: "k",
};

fn save_then(alert: &str, key: &str, rows: Option<&'static InsertRows>, width: usize) -> Op {
    let Op::Save {
        entry,
        run,
        now_ms,
        lease_until,
    } = save(alert)
    else {
        unreachable!("save() makes a Save");
    };
    let mut args = vec![Arg::Text(Some(key.into()))];
    args.resize_with(width, || Arg::Int(Some(1)));
    Op::SaveThen {
        entry,
        run,
        now_ms,
        lease_until,
        then: Statement {
            sql: "INSERT INTO t (k, v) VALUES ($1, 0) ON CONFLICT (k) DO NOTHING",
            args,
            rows,
        },
    }
}

fn thens(ops: &[Op]) -> Vec<Vec<usize>> {
    plan(ops.iter()).thens
}

#[test]
fn follow_ups_merge_in_segments_between_their_tables_other_writes() {
    let merged = |a: &str, key: &str| save_then(a, key, Some(&ROWS), 1);
    let none: Vec<Vec<usize>> = Vec::new();
    assert_eq!(
        thens(&[merged("a", "a"), renew("x"), merged("b", "b"), save("c")]),
        [vec![0, 2]],
        "writes to deliveries between them"
    );
    let statement = || Op::Statement {
        sql: "UPDATE t SET v = 1".into(),
        args: Vec::new(),
    };
    assert_eq!(
        thens(&[
            merged("a", "a"),
            merged("b", "b"),
            statement(),
            merged("c", "c"),
            renew("x"),
            merged("d", "d"),
        ]),
        [vec![0, 1], vec![3, 5]],
        "another write to their table ends a segment"
    );
    assert_eq!(
        thens(&[merged("a", "a"), statement(), merged("b", "b")]),
        none,
        "segments of one run in place"
    );
    assert_eq!(
        thens(&[
            merged("a", "a"),
            merged("b", "b"),
            merged("c", "c"),
            renew("c"),
            merged("d", "d"),
        ]),
        [vec![0, 1]],
        "c's entry write runs in place, and so its follow-up, between the segments"
    );
    assert_eq!(
        thens(&[merged("a", "k"), merged("b", "k")]),
        none,
        "one key twice: the second starts a segment"
    );
    assert_eq!(
        thens(&[
            merged("a", "k"),
            merged("b", "j"),
            merged("c", "k"),
            merged("d", "i")
        ]),
        [vec![0, 1], vec![2, 3]],
        "the key's second insert runs after its first"
    );
    assert_eq!(
        thens(&[
            merged("a", "a"),
            merged("b", "b"),
            save_then("c", "c", None, 1)
        ]),
        [vec![0, 1]],
        "a follow-up of no known shape runs in place after the segment"
    );
    assert_eq!(
        thens(&[
            merged("a", "a"),
            merged("b", "b"),
            save_then("c", "c", Some(&OTHER_ROWS), 1),
            save_then("d", "d", Some(&OTHER_ROWS), 1),
        ]),
        [vec![0, 1], vec![2, 3]],
        "two shapes"
    );
    assert_eq!(
        thens(&[merged("a", "a"), save_then("b", "b", Some(&ROWS), 2)]),
        none,
        "two arities"
    );
    assert_eq!(
        thens(&[merged("a", "a"), save("b")]),
        none,
        "one follow-up runs as before"
    );
}

#[test]
fn merged_rows_take_the_fixed_values_after_the_bound_ones() {
    assert_eq!(
        ROWS.sql(2, 1, true),
        "INSERT INTO t (k, v) VALUES ($1, 0), ($2, 0) ON CONFLICT (k) DO NOTHING RETURNING k"
    );
    assert_eq!(
        ROWS.sql(2, 2, false),
        "INSERT INTO t (k, v) VALUES (?, ?, 0), (?, ?, 0) ON CONFLICT (k) DO NOTHING RETURNING k"
    );
}

#[test]
fn sqlite_rows_go_in_power_of_two_chunks_postgres_rows_in_one() {
    assert_eq!(chunks(1, false), [1]);
    assert_eq!(chunks(200, false), [128, 64, 8]);
    assert_eq!(chunks(511, false), [256, 128, 64, 32, 16, 8, 4, 2, 1]);
    assert_eq!(chunks(512, false), [512]);
    assert!(chunks(0, false).is_empty());
    assert_eq!(chunks(200, true), [200]);
    for rows in 0..=super::super::MAX_BATCH {
        let sizes = chunks(rows, false);
        assert_eq!(sizes.iter().sum::<usize>(), rows);
        assert!(sizes.iter().all(|size| size.is_power_of_two()));
    }
}

#[test]
fn kinds_of_fewer_than_two_writes_run_unmerged() {
    let ops = [renew("a"), renew("b")];
    assert_eq!(plan(ops.iter()), Plan::default());
}

/// A merged entry write finds each of its rows in `deliveries` by key, in
/// the plan a new ledger's connection keeps (made while the table is empty
/// and never analyzed) as in any later one: PostgreSQL would otherwise
/// hash the whole table in every batch (`ledger::POSTGRES_PLANNING`).
#[tokio::test]
async fn merged_entry_writes_look_rows_up_by_key_postgres() {
    use crate::notify::ledger::testing::{assert_looks_up_by_key, kept_plan, postgres_ledger};
    let ledger = postgres_ledger(2).await;
    let owner = Owner::new("i");
    let entry = Entry::claimed_new("a", "C1", &owner, 1, 2);
    let saves = [Save {
        entry: &entry,
        run: &owner.run,
        now_ms: 1,
        lease_until: None,
    }];
    let args = save_args(&saves);
    let rows = Rows::of(&args, 20, true);
    let plan = kept_plan(&ledger, &save_entries_sql(&rows.joined(1))).await;
    assert_looks_up_by_key(&plan, "deliveries");
}
