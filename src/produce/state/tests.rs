use super::*;

async fn store() -> (tempfile::TempDir, StateStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("state.db").display()
    );
    let store = StateStore::connect(&url, 2).await.expect("connect");
    store.migrate().await.expect("migrate");
    (dir, store)
}

fn record(run_id: &str, now: i64, until: i64) -> UnfinishedRun {
    UnfinishedRun {
        run_id: run_id.into(),
        owner: format!("host-{run_id}"),
        topic: "events".into(),
        start_offsets: BTreeMap::from([(0, 10 * now), (1, 20)]),
        started_at_ms: now,
        last_active_ms: now,
        lease_until_ms: until,
    }
}

#[tokio::test]
async fn one_run_holds_a_job_until_its_lease_lapses() {
    let (_dir, state) = store().await;
    let a = record("a", 1_000, 2_000);
    assert_eq!(
        state.acquire("job", &a, 1_000).await.unwrap(),
        Acquire::Started
    );
    // Another run, while a holds: told who, and nothing changes.
    let b = record("b", 1_500, 2_500);
    assert_eq!(
        state.acquire("job", &b, 1_500).await.unwrap(),
        Acquire::Held(a.clone())
    );
    assert!(!state.renew("job", "b", 1_500, 2_500).await.unwrap());
    // a renews: still held past its first lease.
    assert!(state.renew("job", "a", 1_800, 2_800).await.unwrap());
    let renewed = UnfinishedRun {
        last_active_ms: 1_800,
        lease_until_ms: 2_800,
        ..a.clone()
    };
    assert_eq!(
        state.acquire("job", &b, 2_500).await.unwrap(),
        Acquire::Held(renewed.clone())
    );
    // a stops renewing: its lease lapses and one run takes over.
    assert_eq!(
        state.acquire("job", &b, 2_800).await.unwrap(),
        Acquire::Lapsed(renewed.clone())
    );
    assert!(state
        .take_over("job", &renewed, "b", "host-b", 2_800, 3_800)
        .await
        .unwrap());
    assert!(!state
        .take_over("job", &renewed, "c", "host-c", 2_800, 3_800)
        .await
        .unwrap());
    // The taken-over record keeps the dead run's offsets.
    let taken = state.run_record("job").await.unwrap().unwrap();
    assert_eq!(
        (
            taken.run_id.as_str(),
            taken.owner.as_str(),
            &taken.start_offsets
        ),
        ("b", "host-b", &a.start_offsets)
    );
    // a, back to life, can neither renew nor finish.
    assert!(!state.renew("job", "a", 2_900, 3_900).await.unwrap());
    let checkpoint = StoredCheckpoint {
        checkpoint: "7".into(),
        ledger_from: Some("2".into()),
    };
    let prune = || Prune::BelowPosition {
        floor: String::new(),
        checkpoint: String::new(),
    };
    assert!(!state
        .finish_run("job", "a", Some(&checkpoint), prune(), 2_900)
        .await
        .unwrap());
    assert_eq!(state.checkpoint("job").await.unwrap(), None);
    assert!(state
        .restart_run("job", "b", "events", &BTreeMap::from([(0, 99)]), 2_900)
        .await
        .unwrap());
    assert!(state
        .finish_run("job", "b", Some(&checkpoint), prune(), 3_000)
        .await
        .unwrap());
    assert_eq!(state.checkpoint("job").await.unwrap(), Some(checkpoint));
    assert_eq!(state.run_record("job").await.unwrap(), None);
    let c = record("c", 3_000, 4_000);
    assert_eq!(
        state.acquire("job", &c, 3_000).await.unwrap(),
        Acquire::Started
    );
    // Jobs do not share leases.
    assert_eq!(
        state.acquire("other", &b, 3_000).await.unwrap(),
        Acquire::Started
    );
}

#[tokio::test]
async fn a_released_lease_is_taken_over_at_once() {
    let (_dir, state) = store().await;
    let a = record("a", 1_000, 31_000);
    assert_eq!(
        state.acquire("job", &a, 1_000).await.unwrap(),
        Acquire::Started
    );
    state.release("job", "a", 5_000).await.unwrap();
    let released = UnfinishedRun {
        lease_until_ms: 5_000,
        ..a
    };
    assert_eq!(
        state
            .acquire("job", &record("b", 5_001, 35_000), 5_001)
            .await
            .unwrap(),
        Acquire::Lapsed(released)
    );
}

#[tokio::test]
async fn the_ledger_is_pruned_below_the_next_window_only() {
    let (_dir, state) = store().await;
    let marks: Vec<(String, String)> = [
        ("early", "10"),
        ("edge", "20"),
        ("late", "30"),
        ("no position", ""),
    ]
    .iter()
    .map(|(id, position)| (id.to_string(), position.to_string()))
    .collect();
    state.mark_emitted("job", &marks, 1).await.unwrap();
    state.acquire("job", &record("a", 1, 100), 1).await.unwrap();
    let prune = Prune::BelowPosition {
        floor: "20".into(),
        checkpoint: "35".into(),
    };
    assert!(state.finish_run("job", "a", None, prune, 2).await.unwrap());
    assert_eq!(
        state.emitted_ids("job").await.unwrap(),
        HashSet::from(["edge", "late", "no position"].map(str::to_owned))
    );
    // Placed at that run's checkpoint, it goes once the window passes it.
    state.acquire("job", &record("b", 3, 100), 3).await.unwrap();
    let prune = Prune::BelowPosition {
        floor: "36".into(),
        checkpoint: "50".into(),
    };
    assert!(state.finish_run("job", "b", None, prune, 4).await.unwrap());
    assert_eq!(state.emitted_ids("job").await.unwrap(), HashSet::new());
}
