//! `alert_states` in notify's ledger database: one row per alert id. Every
//! change is a compare-and-set on the row's `version`, so of two replicas
//! (or two clicks) applying a change to the same state, one wins and the
//! other decides again from what it finds.

use std::sync::LazyLock;

use sqlx::any::AnyRow;
use sqlx::postgres::PgRow;
use sqlx::{AnyPool, Row};

use rows::{row_to_record, row_to_state, COLUMNS, RECORD_COLUMNS};

use super::AlertState;
use crate::notify::ledger::{json_rows, tuples, Arg, InsertRows, Ledger, LedgerError, Statement};

/// Where the state is shown: the alert's message and its content as notify
/// rendered it (without the state's decoration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Place {
    pub channel_id: Option<String>,
    pub message_ts: Option<String>,
    pub pipeline: String,
    /// The alert's group key, when its pipeline groups alerts.
    pub group_key: Option<String>,
    pub text: Option<String>,
    pub blocks: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRow {
    pub alert_id: String,
    pub state: AlertState,
    pub version: i64,
    pub published_version: i64,
    /// The last version shown on the message (or given up on).
    pub shown_version: i64,
    pub place: Place,
}

/// Reads on the pool; writes through the ledger's writer, sharing the
/// delivery writes' transactions (on SQLite, a second writer would wait on
/// the first's lock).
#[derive(Clone)]
pub struct StateStore {
    pool: AnyPool,
    ledger: Ledger,
}

/// A version a row's change has reached: the topic, or the message.
#[derive(Debug, Clone, Copy)]
enum Marker {
    Published,
    Shown,
}

impl Marker {
    fn column(self) -> &'static str {
        match self {
            Marker::Published => "published_version",
            Marker::Shown => "shown_version",
        }
    }

    /// The sweep's query for rows behind this marker (`$1`: how many). Its
    /// condition is the predicate of a partial index on `changed_at`
    /// (migrations 0009, 0011), so the sweep reads only the rows behind,
    /// in order, however many states the retention keeps.
    fn behind_sql(self) -> String {
        format!(
            "SELECT {COLUMNS} FROM alert_states WHERE {} < version \
             ORDER BY changed_at LIMIT $1",
            self.column()
        )
    }
}

/// Snoozes ended by `$1`, oldest first, `$2` of them: read through the
/// partial index of snoozed states (migration 0011).
const SNOOZES_ENDED: &str = "SELECT alert_id FROM alert_states \
     WHERE state = 'snoozed' AND snoozed_until <= $1 ORDER BY snoozed_until LIMIT $2";

/// The shown marker only moves up: an edit shows the row as it was read,
/// and a later version is shown by a later edit.
/// [`StateStore::mark_published_many`]'s update, its rows read from
/// `rows` (columns `column1`…: alert id, version, partition, offset).
fn marks_sql(rows: &str) -> String {
    format!(
        "UPDATE alert_states SET published_version = v.column2, \
         published_partition = v.column3, published_offset = v.column4 \
         FROM {rows} AS v \
         WHERE alert_states.alert_id = v.column1 \
         AND (alert_states.published_offset IS NULL \
           OR alert_states.published_partition <> v.column3 \
           OR alert_states.published_offset < v.column4)"
    )
}

/// [`StateStore::get_records`] on PostgreSQL: the alert ids as one array.
static RECORDS_FROM_ARRAY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {RECORD_COLUMNS} FROM unnest($1::text[]) AS k(id) \
         JOIN alert_states ON alert_states.alert_id = k.id"
    )
});

/// PostgreSQL's: the rows in `$1` (`ledger::json_rows`), one text kept
/// prepared (a `&'static str` is, for the ledger's writer).
static MARKS_FROM_JSON: LazyLock<String> = LazyLock::new(|| {
    marks_sql(
        "(SELECT e->>0 AS column1, (e->>1)::bigint AS column2, \
         (e->>2)::bigint AS column3, (e->>3)::bigint AS column4 \
         FROM jsonb_array_elements($1::jsonb) AS e)",
    )
});

const ADVANCE_SHOWN: &str = "UPDATE alert_states SET shown_version = $2 \
     WHERE alert_id = $1 AND shown_version < $2";

/// The published marker follows the record last on the topic, whatever its
/// version: compaction keeps that one. A replica's publish that lands after
/// a peer's newer one moves the marker back, and the row is published again.
const PUBLISHED_AT: &str = "UPDATE alert_states \
     SET published_version = $2, published_partition = $3, published_offset = $4 \
     WHERE alert_id = $1 AND (published_offset IS NULL \
       OR published_partition <> $3 OR published_offset < $4)";

impl StateStore {
    /// The states in `ledger`'s database (migration 0007).
    pub fn new(ledger: &Ledger) -> StateStore {
        StateStore {
            pool: ledger.pool.clone(),
            ledger: ledger.clone(),
        }
    }

    pub async fn get(&self, alert_id: &str) -> Result<Option<StateRow>, LedgerError> {
        let row: Option<AnyRow> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM alert_states WHERE alert_id = $1"
        )))
        .bind(alert_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_to_state).transpose()
    }

    /// The rows of those of `alert_ids` that have one, in one query,
    /// without the message's content (`place.text` and `place.blocks` are
    /// `None`): what their published records need.
    pub async fn get_records(&self, alert_ids: &[&str]) -> Result<Vec<StateRow>, LedgerError> {
        if alert_ids.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(pg) = self.ledger.postgres_pool() {
            // One text, kept prepared; each alert looked up by key
            // (`ledger::POSTGRES_PLANNING`), where an `IN` list is planned
            // anew for each count and, on a table the planner thinks
            // small, read whole. On PostgreSQL's own pool: this read runs
            // for every batch of posts, and its rows through `Any` cost
            // more than the query (PERFORMANCE.md, notify's fifteenth
            // round).
            let rows: Vec<PgRow> = sqlx::query(sqlx::AssertSqlSafe(RECORDS_FROM_ARRAY.as_str()))
                .bind(alert_ids)
                .fetch_all(pg)
                .await?;
            return rows.iter().map(row_to_record).collect();
        }
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM alert_states WHERE alert_id IN {}",
            tuples(1, alert_ids.len(), false)
        );
        // Not kept prepared: one statement per batch size.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
        for alert_id in alert_ids {
            query = query.bind(*alert_id);
        }
        let rows: Vec<AnyRow> = query.fetch_all(&self.pool).await?;
        rows.iter().map(row_to_record).collect()
    }

    /// Writes `state` (and `place`) if the row is still at `expected`
    /// (`None`: absent); `false` when someone changed it first. `shown`:
    /// the message notify is sending shows this state already (its own post
    /// or edit), so the background sweep has nothing to show.
    pub async fn compare_and_set(
        &self,
        alert_id: &str,
        expected: Option<i64>,
        state: &AlertState,
        place: &Place,
        shown: bool,
    ) -> Result<bool, LedgerError> {
        let statement = set_statement(alert_id, expected, state, place, shown);
        Ok(self.ledger.write(statement.sql, statement.args).await? == 1)
    }

    /// Records where and with what content the alert is shown, without
    /// changing its state (a content edit).
    pub async fn set_place(&self, alert_id: &str, place: &Place) -> Result<(), LedgerError> {
        let args = vec![
            Arg::Text(Some(alert_id.to_owned())),
            Arg::Text(place.channel_id.clone()),
            Arg::Text(place.message_ts.clone()),
            Arg::Text(Some(place.pipeline.clone())),
            Arg::Text(place.text.clone()),
            Arg::Text(place.blocks.clone()),
            Arg::Text(place.group_key.clone()),
        ];
        self.ledger
            .write(
                "UPDATE alert_states SET channel_id = $2, message_ts = $3, pipeline = $4, \
                 base_text = $5, base_blocks = $6, group_key = $7 WHERE alert_id = $1",
                args,
            )
            .await?;
        Ok(())
    }

    /// `version`'s record landed at `offset` of `partition` of the
    /// alert-state topic; the marker moves to it if no record of the alert
    /// is known to be later there.
    pub async fn mark_published(
        &self,
        alert_id: &str,
        version: i64,
        partition: i32,
        offset: i64,
    ) -> Result<(), LedgerError> {
        let args = vec![
            Arg::Text(Some(alert_id.to_owned())),
            Arg::Int(Some(version)),
            Arg::Int(Some(partition.into())),
            Arg::Int(Some(offset)),
        ];
        self.ledger.write(PUBLISHED_AT, args).await?;
        Ok(())
    }

    /// [`Self::mark_published`] for each of `marks` (alert id, version,
    /// partition, offset; each alert once) in one statement.
    pub async fn mark_published_many(
        &self,
        marks: &[(&str, i64, i32, i64)],
    ) -> Result<(), LedgerError> {
        match marks {
            [] => return Ok(()),
            [(alert_id, version, partition, offset)] => {
                return self
                    .mark_published(alert_id, *version, *partition, *offset)
                    .await
            }
            _ => {}
        }
        let mut args = Vec::with_capacity(marks.len() * 4);
        for (alert_id, version, partition, offset) in marks {
            args.extend([
                Arg::Text(Some((*alert_id).to_owned())),
                Arg::Int(Some(*version)),
                Arg::Int(Some((*partition).into())),
                Arg::Int(Some(*offset)),
            ]);
        }
        if self.ledger.is_postgres() {
            let rows = vec![Arg::Text(Some(json_rows(&args, 4)))];
            self.ledger.write(MARKS_FROM_JSON.as_str(), rows).await?;
        } else {
            let sql = marks_sql(&format!("(VALUES {})", tuples(marks.len(), 4, false)));
            self.ledger.write(sql, args).await?;
        }
        Ok(())
    }

    /// `version` is on the alert's message (or will never be); the marker
    /// moves up to it, never back.
    pub async fn mark_shown(&self, alert_id: &str, version: i64) -> Result<(), LedgerError> {
        let args = vec![
            Arg::Text(Some(alert_id.to_owned())),
            Arg::Int(Some(version)),
        ];
        self.ledger.write(ADVANCE_SHOWN, args).await?;
        Ok(())
    }

    /// Up to `limit` rows whose latest change is not known to be on the
    /// alert's message, oldest change first.
    pub async fn unshown(&self, limit: i64) -> Result<Vec<StateRow>, LedgerError> {
        self.behind(Marker::Shown, limit).await
    }

    /// Up to `limit` rows whose latest change is not known to be on the
    /// topic, oldest change first.
    pub async fn unpublished(&self, limit: i64) -> Result<Vec<StateRow>, LedgerError> {
        self.behind(Marker::Published, limit).await
    }

    /// Rows whose `marker` is behind their version.
    async fn behind(&self, marker: Marker, limit: i64) -> Result<Vec<StateRow>, LedgerError> {
        let rows: Vec<AnyRow> = sqlx::query(sqlx::AssertSqlSafe(marker.behind_sql()))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row_to_state).collect()
    }

    /// Up to `limit` snoozed alerts whose snooze ended by `now_ms`.
    pub async fn snoozes_ended(&self, now_ms: i64, limit: i64) -> Result<Vec<String>, LedgerError> {
        let rows: Vec<AnyRow> = sqlx::query(SNOOZES_ENDED)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<String, _>("alert_id"))
            .collect::<Result<_, _>>()?)
    }

    /// Deletes states unchanged since `before_ms` (the ledger's retention);
    /// returns how many.
    pub async fn prune(&self, before_ms: i64) -> Result<u64, LedgerError> {
        let done = sqlx::query(
            "DELETE FROM alert_states WHERE changed_at < $1 AND published_version >= version",
        )
        .bind(before_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// The compare-and-set of [`StateStore::compare_and_set`] as a statement,
/// for the ledger's writer: it changes one row when the row is still at
/// `expected` (`None`: absent), none otherwise; `shown` as there.
pub fn set_statement(
    alert_id: &str,
    expected: Option<i64>,
    state: &AlertState,
    place: &Place,
    shown: bool,
) -> Statement {
    let actor_id = state.actor.as_ref().map(|a| a.id.clone());
    let actor_name = state.actor.as_ref().and_then(|a| a.name.clone());
    let (sql, rows) = match expected {
        None => (INSERT_STATE, Some(&INSERT_STATE_ROWS)),
        Some(_) => (
            "UPDATE alert_states SET state = $2, actor_id = $3, actor_name = $4, \
             changed_at = $5, snoozed_until = $6, occurrence = $7, channel_id = $8, \
             message_ts = $9, pipeline = $10, base_text = $11, base_blocks = $12, \
             group_key = $13, \
             shown_version = CASE WHEN $14 = 1 THEN version + 1 ELSE shown_version END, \
             version = version + 1 \
             WHERE alert_id = $1 AND version = $15",
            None,
        ),
    };
    let text = |v: &Option<String>| Arg::Text(v.clone());
    let mut args = vec![
        Arg::Text(Some(alert_id.to_owned())),
        Arg::Text(Some(state.kind.as_str().to_owned())),
        Arg::Text(actor_id),
        Arg::Text(actor_name),
        Arg::Int(Some(state.at)),
        Arg::Int(state.snoozed_until),
        Arg::Int(Some(state.occurrence)),
        text(&place.channel_id),
        text(&place.message_ts),
        Arg::Text(Some(place.pipeline.clone())),
        text(&place.text),
        text(&place.blocks),
        text(&place.group_key),
        Arg::Int(Some(i64::from(shown))),
    ];
    if let Some(version) = expected {
        args.push(Arg::Int(Some(version)));
    }
    Statement { sql, args, rows }
}

/// The first state of an alert, unless it has a row: [`INSERT_STATE_ROWS`]
/// for one row (a test checks they agree).
const INSERT_STATE: &str = "INSERT INTO alert_states (alert_id, state, actor_id, actor_name, \
     changed_at, snoozed_until, occurrence, channel_id, message_ts, pipeline, base_text, \
     base_blocks, group_key, shown_version, version, published_version) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 1, 0) \
     ON CONFLICT (alert_id) DO NOTHING";

/// [`INSERT_STATE`]'s shape, so that the ledger's writer can insert the
/// first states of several posts in one statement.
static INSERT_STATE_ROWS: InsertRows = InsertRows {
    into: "alert_states (alert_id, state, actor_id, actor_name, \
     changed_at, snoozed_until, occurrence, channel_id, message_ts, pipeline, base_text, \
     base_blocks, group_key, shown_version, version, published_version)",
    fixed: "1, 0",
    key: "alert_id",
};

mod rows;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::ledger::testing::{assert_looks_up_by_key, kept_plan, postgres_ledger};
    use crate::notify::state::{Actor, StateKind};

    /// The sweeps' queries and the partial index each must read through.
    fn sweeps() -> [(String, &'static str, usize); 3] {
        [
            (
                Marker::Published.behind_sql(),
                "alert_states_unpublished",
                1,
            ),
            (Marker::Shown.behind_sql(), "alert_states_unshown", 1),
            (SNOOZES_ENDED.to_owned(), "alert_states_snoozed", 2),
        ]
    }

    /// `sql`'s plan on `ledger`, as text; PostgreSQL is told to avoid
    /// sequential scans, so that an empty table does not hide which index
    /// the query could use.
    async fn plan(ledger: &Ledger, sql: &str, params: usize) -> String {
        let mut conn = ledger.pool.acquire().await.expect("a connection");
        let (explain, column) = if ledger.is_postgres() {
            sqlx::query("SET enable_seqscan = off")
                .execute(&mut *conn)
                .await
                .expect("set");
            ("EXPLAIN", "QUERY PLAN")
        } else {
            ("EXPLAIN QUERY PLAN", "detail")
        };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!("{explain} {sql}")));
        for _ in 0..params {
            query = query.bind(0_i64);
        }
        let rows = query.fetch_all(&mut *conn).await.expect("explain");
        rows.iter()
            .map(|row| row.try_get::<String, _>(column).expect("plan line"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every sweep reads only the rows it acts on, in the order it asks
    /// for: through its partial index, with nothing filtered or sorted
    /// after (a sweep that read the whole table ran every 5 s per replica).
    async fn sweeps_read_through_their_indexes(ledger: &Ledger) {
        for (sql, index, params) in sweeps() {
            let plan = plan(ledger, &sql, params).await;
            let (uses, leftover): (&str, &[&str]) = if ledger.is_postgres() {
                (
                    &format!("Index Scan using {index} on alert_states"),
                    &["Filter", "Sort"],
                )
            } else {
                (&format!("USING INDEX {index}"), &["TEMP B-TREE"])
            };
            assert!(plan.contains(uses), "{sql}\nwants {index}:\n{plan}");
            for word in leftover {
                assert!(!plan.contains(word), "{sql}\n{word} in:\n{plan}");
            }
        }
    }

    #[tokio::test]
    async fn sweeps_read_through_their_indexes_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("l.db").display());
        let ledger = Ledger::connect(&url, 2).await.expect("ledger");
        ledger.migrate().await.expect("migrate");
        sweeps_read_through_their_indexes(&ledger).await;
    }

    #[tokio::test]
    async fn sweeps_read_through_their_indexes_postgres() {
        sweeps_read_through_their_indexes(&postgres_ledger(2).await).await;
    }

    /// The publisher's read and its marks find each alert by key, in the
    /// plan a new ledger's connection keeps (made while the table is empty
    /// and never analyzed) as in any later one (`ledger::POSTGRES_PLANNING`).
    #[tokio::test]
    async fn publishes_look_alerts_up_by_key_postgres() {
        let ledger = postgres_ledger(2).await;
        for sql in [&*RECORDS_FROM_ARRAY, &*MARKS_FROM_JSON] {
            assert_looks_up_by_key(&kept_plan(&ledger, sql).await, "alert_states");
        }
        // The records' read runs on PostgreSQL's own pool: planned alike.
        let own = ledger.postgres_pool().expect("PostgreSQL's own pool");
        for setting in ["enable_hashjoin", "enable_mergejoin"] {
            let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
                .fetch_one(own)
                .await
                .expect("SHOW");
            assert_eq!(value, "off", "{setting}");
        }
    }

    /// The publisher's read on PostgreSQL's own pool gives each row as the
    /// shared pool's read of the same columns does.
    #[tokio::test]
    async fn records_read_on_postgres_own_pool_match_the_shared_pools() {
        let ledger = postgres_ledger(3).await;
        let store = StateStore::new(&ledger);
        let place = |n: u8| Place {
            channel_id: n.is_multiple_of(2).then(|| format!("C{n}")),
            message_ts: n.is_multiple_of(3).then(|| format!("17000.{n}")),
            pipeline: format!("p{n}"),
            group_key: (n % 2 == 1).then(|| format!("g\"{n}")),
            text: Some("t".into()),
            blocks: Some("[]".into()),
        };
        let ids: Vec<String> = (0..6u8).map(|n| format!("alert-{n}")).collect();
        for (n, id) in (0..6u8).zip(&ids) {
            let state = AlertState {
                kind: if n % 2 == 0 {
                    StateKind::Firing
                } else {
                    StateKind::Snoozed
                },
                actor: (n % 3 == 1).then(|| Actor {
                    id: format!("U{n}"),
                    name: (n > 2).then(|| format!("name {n}")),
                }),
                at: 1_700_000_000_000 + i64::from(n),
                snoozed_until: (n % 2 == 1).then_some(1_800_000_000_000),
                occurrence: i64::from(n) + 1,
            };
            assert!(store
                .compare_and_set(id, None, &state, &place(n), n % 2 == 0)
                .await
                .expect("set"));
        }
        let asked: Vec<&str> = ids.iter().map(String::as_str).chain(["absent"]).collect();
        let mut own = store.get_records(&asked).await.expect("records");
        own.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        assert_eq!(own.len(), 6);
        for record in &own {
            let mut shared = store
                .get(&record.alert_id)
                .await
                .expect("get")
                .expect("row");
            shared.place.text = None;
            shared.place.blocks = None;
            assert_eq!(record, &shared);
        }
    }

    #[test]
    fn the_first_state_insert_has_the_shape_the_writer_merges() {
        let one = INSERT_STATE_ROWS.sql(1, 14, true);
        assert_eq!(one, format!("{INSERT_STATE} RETURNING alert_id"));
        let state = AlertState {
            kind: StateKind::Firing,
            actor: None,
            at: 1,
            snoozed_until: None,
            occurrence: 1,
        };
        let statement = set_statement("a", None, &state, &Place::default(), true);
        assert_eq!(statement.args.len(), 14, "the bound values of one row");
        assert!(matches!(statement.args[0], Arg::Text(Some(ref key)) if key == "a"));
        assert!(statement.rows.is_some());
        assert!(set_statement("a", Some(1), &state, &Place::default(), true)
            .rows
            .is_none());
    }
}
