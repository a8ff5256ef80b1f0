-- `alertsvc dlq replay`: one row per dead letter re-produced to its source
-- topic, written after the broker acknowledged it, so a re-run skips it.
-- Keyed by the dead letter's position: a DLQ topic deleted and re-created
-- restarts its offsets, and its rows here must then be deleted too.
CREATE TABLE IF NOT EXISTS dlq_replays (
    dlq_topic     TEXT NOT NULL,
    dlq_partition BIGINT NOT NULL,
    dlq_offset    BIGINT NOT NULL,
    target_topic  TEXT NOT NULL,
    replayed_at   BIGINT NOT NULL,
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);
