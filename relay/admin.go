package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaybox/relaybox/migrations"
	"github.com/relaybox/relaybox/outbox"
)

// ShardStatus is the backlog of one shard and who leases it.
type ShardStatus struct {
	Shard        int
	Backlog      int64
	OldestAge    time.Duration
	Owner        string
	LeaseExpires time.Time
	Generation   int64 // the lease generation, bumped by every claim
}

// ReplicaStatus is one live replica as it last reported itself.
type ReplicaStatus struct {
	ID   string
	Mode string // ModeAtLeastOnce or ModeExactlyOnce
	// OpenTxnAge is the age of its oldest open Kafka transaction at its last
	// heartbeat (exactly-once mode; 0 when none).
	OpenTxnAge   time.Duration
	FencedWrites int64 // writes refused because a lease was lost, since it started
	AbortedTxns  int64 // Kafka transactions aborted, since it started
}

// Status is what `relaybox status` shows.
type Status struct {
	Backlog        int64
	OldestAge      time.Duration
	Shards         []ShardStatus
	Replicas       []string
	ReplicaDetails []ReplicaStatus
	Parked         int64
	ParkedByReason map[ParkReason]int64
}

func schemaOr(s string) string {
	if s == "" {
		return migrations.DefaultSchema
	}
	return s
}

// ReadStatus reads backlog, oldest age, leases and parked events from the database.
func ReadStatus(ctx context.Context, pool *pgxpool.Pool, schema string) (*Status, error) {
	q := func(t string) string { return pgx.Identifier{schemaOr(schema), t}.Sanitize() }
	st := &Status{ParkedByReason: map[ParkReason]int64{}}
	rows, err := pool.Query(ctx, `SELECT l.shard, coalesce(b.n, 0), coalesce(extract(epoch FROM now() - b.oldest), 0)::float8,
		coalesce(l.owner, ''), coalesce(l.expires_at, 'epoch'), l.generation
		FROM `+q("shard_leases")+` l LEFT JOIN (
			SELECT shard, count(*) n, min(created_at) oldest FROM `+q("outbox")+`
			WHERE published_at IS NULL AND parked_at IS NULL GROUP BY shard) b ON b.shard = l.shard
		ORDER BY l.shard`)
	if err != nil {
		return nil, fmt.Errorf("reading status: %w", err)
	}
	for rows.Next() {
		var s ShardStatus
		var age float64
		if err := rows.Scan(&s.Shard, &s.Backlog, &age, &s.Owner, &s.LeaseExpires, &s.Generation); err != nil {
			return nil, err
		}
		s.OldestAge = time.Duration(age * float64(time.Second))
		st.Backlog += s.Backlog
		st.OldestAge = max(st.OldestAge, s.OldestAge)
		st.Shards = append(st.Shards, s)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows, err = pool.Query(ctx, `SELECT id, mode, coalesce(extract(epoch FROM heartbeat_at - txn_open_since), 0)::float8,
		fenced_writes, aborted_txns FROM `+q("replicas")+` WHERE expires_at > now() ORDER BY id`)
	if err != nil {
		return nil, err
	}
	var rs ReplicaStatus
	var txnAge float64
	if _, err := pgx.ForEachRow(rows, []any{&rs.ID, &rs.Mode, &txnAge, &rs.FencedWrites, &rs.AbortedTxns}, func() error {
		rs.OpenTxnAge = time.Duration(max(txnAge, 0) * float64(time.Second))
		st.Replicas = append(st.Replicas, rs.ID)
		st.ReplicaDetails = append(st.ReplicaDetails, rs)
		return nil
	}); err != nil {
		return nil, err
	}
	rows, err = pool.Query(ctx, `SELECT coalesce(park_reason, $1), count(*) FROM `+q("outbox")+
		` WHERE parked_at IS NOT NULL GROUP BY 1`, string(ParkUnknown))
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var reason ParkReason
		var n int64
		if err := rows.Scan(&reason, &n); err != nil {
			return nil, err
		}
		st.ParkedByReason[reason] = n
		st.Parked += n
	}
	return st, rows.Err()
}

// ParkedFilter selects parked events. At least one field must be set; fields combine
// with AND.
type ParkedFilter struct {
	IDs []int64
	// EventIDs selects by event id.
	EventIDs []uuid.UUID
	Key      string
	// Reason selects the events parked for that reason.
	Reason ParkReason
	// All selects every parked event (for list, or deliberate bulk operations).
	All bool
}

func (f ParkedFilter) where(args *[]any) (string, error) {
	conds := []string{"parked_at IS NOT NULL"}
	add := func(cond string, v any) {
		*args = append(*args, v)
		conds = append(conds, fmt.Sprintf(cond, len(*args)))
	}
	if len(f.IDs) > 0 {
		add("id = ANY($%d)", f.IDs)
	}
	if len(f.EventIDs) > 0 {
		add("event_id = ANY($%d)", f.EventIDs)
	}
	if f.Key != "" {
		add("key = $%d", f.Key)
	}
	if f.Reason != "" {
		add("coalesce(park_reason, '"+string(ParkUnknown)+"') = $%d", string(f.Reason))
	}
	if len(conds) == 1 && !f.All {
		return "", errors.New("relay: select parked events by id, event id, key or reason (or all)")
	}
	return strings.Join(conds, " AND "), nil
}

// ParkedEvent is a parked outbox row.
type ParkedEvent struct {
	ID        int64
	EventID   uuid.UUID
	Topic     string
	Key       string
	Type      string
	Reason    ParkReason
	Detail    string // what failed: the registry's or Kafka's error, the size over the limit
	Attempts  int
	ParkedAt  time.Time
	CreatedAt time.Time
}

// ListParked lists parked events matching f, oldest first, at most limit (0: 1000).
func ListParked(ctx context.Context, pool *pgxpool.Pool, schema string, f ParkedFilter, limit int) ([]ParkedEvent, error) {
	if limit <= 0 {
		limit = 1000
	}
	f.All = true
	var args []any
	where, _ := f.where(&args)
	args = append(args, limit)
	rows, err := pool.Query(ctx, fmt.Sprintf(`SELECT id, event_id, topic, key, event_type, coalesce(park_reason, '`+string(ParkUnknown)+`'),
		coalesce(last_error, ''), attempts, parked_at, created_at
		FROM %s WHERE %s ORDER BY id LIMIT $%d`, pgx.Identifier{schemaOr(schema), "outbox"}.Sanitize(), where, len(args)), args...)
	if err != nil {
		return nil, fmt.Errorf("listing parked events: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (ParkedEvent, error) {
		var p ParkedEvent
		err := row.Scan(&p.ID, &p.EventID, &p.Topic, &p.Key, &p.Type, &p.Reason, &p.Detail, &p.Attempts, &p.ParkedAt, &p.CreatedAt)
		return p, err
	})
}

// RetryParked unparks the events matching f: the relay publishes them again, first
// in their key's order. It returns how many were unparked. It wakes relays that
// listen on outbox.DefaultChannel; see [RetryParkedOn] for another channel.
func RetryParked(ctx context.Context, pool *pgxpool.Pool, schema string, f ParkedFilter) (int64, error) {
	return RetryParkedOn(ctx, pool, schema, outbox.DefaultChannel, f)
}

// RetryParkedOn is [RetryParked] waking the relays that listen on channel (their
// Config.Channel, the CLI's --channel): without the notification a relay on another
// channel publishes the events only at its next poll.
func RetryParkedOn(ctx context.Context, pool *pgxpool.Pool, schema, channel string, f ParkedFilter) (int64, error) {
	var args []any
	where, err := f.where(&args)
	if err != nil {
		return 0, err
	}
	tag, err := pool.Exec(ctx, fmt.Sprintf(`UPDATE %s SET parked_at = NULL, park_reason = NULL,
		last_error = 'retried: ' || coalesce(park_reason, 'unknown') || ': ' || coalesce(last_error, '') WHERE %s`,
		pgx.Identifier{schemaOr(schema), "outbox"}.Sanitize(), where), args...)
	if err != nil {
		return 0, fmt.Errorf("retrying parked events: %w", err)
	}
	if n := tag.RowsAffected(); n > 0 {
		_, _ = pool.Exec(ctx, `SELECT pg_notify($1, '')`, channel)
	}
	return tag.RowsAffected(), nil
}

// SkipParked deletes the parked events matching f: they will never be published, and
// the events behind them on their keys flow again. It returns how many were removed.
func SkipParked(ctx context.Context, pool *pgxpool.Pool, schema string, f ParkedFilter) (int64, error) {
	var args []any
	where, err := f.where(&args)
	if err != nil {
		return 0, err
	}
	tag, err := pool.Exec(ctx, fmt.Sprintf(`DELETE FROM %s WHERE %s`, pgx.Identifier{schemaOr(schema), "outbox"}.Sanitize(), where), args...)
	if err != nil {
		return 0, fmt.Errorf("skipping parked events: %w", err)
	}
	return tag.RowsAffected(), nil
}
