-- Connector status changes that ended in a failure, and recoveries from a
-- failure (Failed → Running), oldest first: one query, so a failure and its
-- recovery keep their order on the topic. Feeds data-notifications-pipeline
-- (keyed by org id), which enrich turns into Slack alerts for connectors
-- that failed while provisioning, resolved when they run again.
-- failed_at is the time of the status change.
-- @checkpoint: the greatest failed_at already emitted.
SELECT
  org_id,
  env_id,
  connector_id,
  connector_name,
  connector_type,
  old_status,
  new_status,
  failure_reason,
  failed_at
FROM ops.connector_status_changes
WHERE (new_status = 'Failed' OR (old_status = 'Failed' AND new_status = 'Running'))
  AND failed_at > @checkpoint
ORDER BY failed_at
