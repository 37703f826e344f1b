-- relaybox 004: why an event is parked, as a column of its own.
--
-- Until now a parked row's last_error held "<reason>: <detail>" and readers parsed the
-- reason back from that prefix. park_reason holds the reason (incompatible_schema,
-- schema_not_registered, too_large, topic_missing, invalid; unknown when none was
-- recorded) and last_error the detail only. NULL while the row is not parked.
ALTER TABLE outbox ADD COLUMN park_reason text;

-- Rows parked before this migration: the reason moves out of last_error's prefix. A
-- prefix that names no known reason (a row parked by hand) keeps its whole text in
-- last_error, with reason 'unknown'.
UPDATE outbox SET
    park_reason = CASE WHEN split_part(last_error, ':', 1) IN
                       ('incompatible_schema', 'schema_not_registered', 'too_large', 'topic_missing', 'invalid')
                  THEN split_part(last_error, ':', 1) ELSE 'unknown' END,
    last_error  = CASE WHEN split_part(last_error, ':', 1) IN
                       ('incompatible_schema', 'schema_not_registered', 'too_large', 'topic_missing', 'invalid')
                  THEN ltrim(substr(last_error, strpos(last_error, ':') + 1)) ELSE last_error END
WHERE parked_at IS NOT NULL;
