-- Connector status changes that ended in a failure, oldest first. Feeds
-- data-notifications-pipeline (keyed by org id), which enrich turns into
-- Slack alerts for connectors that failed while provisioning.
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
WHERE new_status = 'Failed'
  AND failed_at > @checkpoint
ORDER BY failed_at
