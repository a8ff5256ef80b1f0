-- produce's state: per-job checkpoints, emitted event ids, and the run in
-- progress (its start offsets let a re-run find what a crashed run sent).
CREATE TABLE IF NOT EXISTS produce_checkpoints (
    job         TEXT PRIMARY KEY NOT NULL,
    checkpoint  TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS produce_emitted (
    job         TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    -- The event's checkpoint value as a sortable string ('' without one).
    position    TEXT NOT NULL,
    emitted_at  BIGINT NOT NULL,
    PRIMARY KEY (job, event_id)
);
CREATE INDEX IF NOT EXISTS produce_emitted_position ON produce_emitted (job, position);
CREATE INDEX IF NOT EXISTS produce_emitted_time ON produce_emitted (job, emitted_at);

CREATE TABLE IF NOT EXISTS produce_runs (
    job            TEXT PRIMARY KEY NOT NULL,
    run_id         TEXT NOT NULL,
    topic          TEXT NOT NULL,
    -- JSON object: partition → end offset when the run began.
    start_offsets  TEXT NOT NULL,
    started_at     BIGINT NOT NULL,
    -- Refreshed while the run is alive: a re-run lets the records a dead
    -- run had in flight settle before reading the topic back.
    last_active_at BIGINT NOT NULL
);
