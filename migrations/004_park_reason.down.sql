-- Back to "<reason>: <detail>" in last_error for the rows parked now.
UPDATE outbox SET last_error = park_reason || ': ' || coalesce(last_error, '')
WHERE parked_at IS NOT NULL AND park_reason IS NOT NULL AND park_reason <> 'unknown';
ALTER TABLE outbox DROP COLUMN IF EXISTS park_reason;
