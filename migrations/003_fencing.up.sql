-- relaybox 003: lease generations (fencing) and what each replica reports of itself.
--
-- generation is bumped by every claim of a shard. Every write a relay makes about the
-- shard's rows (delete, mark published, park, attempts) names the owner and the
-- generation it claimed under, so a replica that lost the lease changes nothing, even if
-- it wakes up believing it still holds it.
ALTER TABLE shard_leases ADD COLUMN generation bigint NOT NULL DEFAULT 0;

-- mode: 'at-least-once' or 'exactly-once' (replicas of different modes do not share
-- the shards). txn_open_since: the oldest Kafka transaction this replica has open (exactly-once mode);
-- fenced_writes / aborted_txns: counters since the replica started. Read by
-- `relaybox status`, which only reads Postgres.
ALTER TABLE replicas
    ADD COLUMN mode           text        NOT NULL DEFAULT 'at-least-once',
    ADD COLUMN txn_open_since timestamptz,
    ADD COLUMN fenced_writes  bigint      NOT NULL DEFAULT 0,
    ADD COLUMN aborted_txns   bigint      NOT NULL DEFAULT 0;
