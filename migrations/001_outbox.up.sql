-- relaybox 001: the outbox, its schema store, the shard leases and the replicas.
--
-- Table names are unqualified: relaybox's Go API sets search_path to the configured
-- schema (default "relaybox") before running this file. With goose or golang-migrate,
-- put search_path in the connection URL, e.g. ?search_path=relaybox.

-- Avro schemas referenced by outbox rows, stored once per fingerprint: the SHA-256 of
-- the schema text exactly as stored (full text, with defaults: the registry checks
-- compatibility on it).
CREATE TABLE schemas (
    fingerprint bytea       PRIMARY KEY CHECK (octet_length(fingerprint) = 32),
    schema      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per event to publish. The relay deletes a row once Kafka acked it
-- (or, in retention mode, sets published_at and purges it later).
CREATE TABLE outbox (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id           uuid        NOT NULL,
    -- Kafka topic names: 1-249 of [a-zA-Z0-9._-] (the writer checks the characters; a row
    -- with others is parked by the relay as invalid).
    topic              text        NOT NULL CHECK (octet_length(topic) BETWEEN 1 AND 249),
    key                text        NOT NULL CHECK (octet_length(key) BETWEEN 1 AND 1024),
    -- The shard is part of the table contract: the first 4 bytes of md5(key), read as a
    -- big-endian unsigned 32-bit integer, modulo 64. Computed here, so every writer
    -- (Go, plain SQL, any language) gets the same value.
    shard              integer     NOT NULL GENERATED ALWAYS AS
                           ((('x' || substr(md5(key), 1, 8))::bit(32)::bigint % 64)::integer) STORED,
    event_type         text        NOT NULL CHECK (event_type <> ''),
    aggregate_type     text        NOT NULL DEFAULT '',
    subject            text        NOT NULL CHECK (subject <> ''),
    -- The schemas row this payload was written with. No foreign key: it would cost a
    -- lookup per inserted row; the relay parks a row whose schema is missing.
    schema_fingerprint bytea       NOT NULL,
    payload            bytea       NOT NULL,
    headers            jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(headers) = 'object'),
    occurred_at        timestamptz NOT NULL DEFAULT now(),
    created_at         timestamptz NOT NULL DEFAULT now(),
    correlation_id     text        NOT NULL DEFAULT '',
    causation_id       text        NOT NULL DEFAULT '',
    source             text        NOT NULL DEFAULT '',
    traceparent        text        NOT NULL DEFAULT '',
    tracestate         text        NOT NULL DEFAULT '',
    attempts           integer     NOT NULL DEFAULT 0,
    last_error         text,
    parked_at          timestamptz,
    published_at       timestamptz
);

-- The relay's read path: oldest unpublished rows of one shard.
CREATE INDEX outbox_pending_idx ON outbox (shard, id) WHERE published_at IS NULL;
-- Keys blocked behind a parked event (few rows; keeps the blocked-key probe cheap).
CREATE INDEX outbox_parked_idx ON outbox (shard, key) WHERE parked_at IS NOT NULL;
-- Retention mode purge.
CREATE INDEX outbox_published_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Live relay replicas: each heartbeats its row; a row past expires_at is dead.
CREATE TABLE replicas (
    id           text        PRIMARY KEY,
    hostname     text        NOT NULL DEFAULT '',
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

-- One lease per shard. A shard is drained only by its owner, and only while
-- expires_at (database time) is in the future.
CREATE TABLE shard_leases (
    shard       integer     PRIMARY KEY CHECK (shard >= 0 AND shard < 64),
    owner       text,
    acquired_at timestamptz,
    expires_at  timestamptz
);
INSERT INTO shard_leases (shard) SELECT generate_series(0, 63);
