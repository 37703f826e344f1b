ALTER TABLE replicas DROP COLUMN IF EXISTS aborted_txns, DROP COLUMN IF EXISTS fenced_writes,
    DROP COLUMN IF EXISTS txn_open_since, DROP COLUMN IF EXISTS mode;
ALTER TABLE shard_leases DROP COLUMN IF EXISTS generation;
