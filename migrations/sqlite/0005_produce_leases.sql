-- produce, second form. A run holds a lease on its job: `owner` names the
-- process, and nobody else starts the job before `lease_until` (epoch ms)
-- has passed; the holder keeps renewing it. A record left by an older
-- version has no lease (0): it is a dead run, recovered by the next one.
-- `ledger_from`: the checkpoint value from which the emitted-event ledger
-- holds every event emitted (a lookback never reaches below it). NULL, as
-- for jobs checkpointed by an older version: from the checkpoint itself.
ALTER TABLE produce_runs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE produce_runs ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
ALTER TABLE produce_checkpoints ADD COLUMN ledger_from TEXT;
