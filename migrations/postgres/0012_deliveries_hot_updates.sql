-- Every post writes its ledger row twice (the claim, then `posted`), and
-- an index on `updated_at` made the second write a new row version with a
-- new entry in every index of the table. Retention now finds its
-- rows by `created_at`, which no write changes (`updated_at` is never
-- older than `created_at`, so the rows it deletes are among them), and
-- half of each page is left free, so a row's next version can stay on its
-- page and touch no index (a heap-only tuple; with a fifth free, fewer
-- than half of the `posted` updates found room in the notify bench).
CREATE INDEX deliveries_created_at ON deliveries (created_at);
DROP INDEX IF EXISTS deliveries_updated_at;
ALTER TABLE deliveries SET (fillfactor = 50);
-- Alert ids are opaque keys: byte order is all their indexes need, and a
-- linguistic collation (the database's default, often en_US.UTF-8) costs
-- a locale-aware comparison at every step down each index. Equality is
-- unchanged: deterministic collations compare equal only the same bytes.
ALTER TABLE deliveries ALTER COLUMN alert_id SET DATA TYPE TEXT COLLATE "C";
ALTER TABLE alert_states ALTER COLUMN alert_id SET DATA TYPE TEXT COLLATE "C";
