-- published_partition, published_offset: where the record of
--   published_version landed on the alert-state topic. Replicas publish an
--   alert's state independently, so two publishes can land in either
--   order; the marker follows the record that is last on the topic (the one
--   compaction keeps), and a row whose last record is older than the row is
--   published again. NULL: published before this column, or never.
ALTER TABLE alert_states ADD COLUMN published_partition INTEGER;
ALTER TABLE alert_states ADD COLUMN published_offset INTEGER;
