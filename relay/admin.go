package relay

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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
	Shard int
	// Backlog is the shard's pending rows (neither published nor parked): exact up to
	// StatusExactBacklog, or for a small outbox table; else estimated (Estimated).
	Backlog int64
	// Estimated: Backlog is estimated from a block sample of the outbox.
	Estimated bool
	// OldestAge is the age (created_at) of the shard's first pending row in id order,
	// the one the relay reads next: exact.
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
	Backlog int64
	// BacklogEstimated: some shard's backlog is estimated (ShardStatus.Estimated).
	BacklogEstimated bool
	OldestAge        time.Duration
	Shards           []ShardStatus
	Replicas         []string
	ReplicaDetails   []ReplicaStatus
	Parked           int64 // exact
	ParkedByReason   map[string]int64
}

// StatusExactBacklog is the per-shard backlog that ReadStatus always counts exactly;
// above it, in an outbox table larger than StatusSamplePages, a shard's backlog is
// estimated, so that reading the status costs about the same with millions of rows
// waiting as with thousands (docs/operations.md, "What the status query costs").
const StatusExactBacklog = 1000

// StatusSamplePages is how many pages of the outbox table ReadStatus reads to count
// the backlog: all of a table that small (exact counts), a block sample of that many
// pages of a larger one.
const StatusSamplePages = 2000

func schemaOr(s string) string {
	if s == "" {
		return migrations.DefaultSchema
	}
	return s
}

// ReadStatus reads backlog, oldest age, leases and parked events from the database.
// Its cost is bounded whatever the backlog: per shard, the oldest pending row is one
// index probe; the backlog is counted by reading StatusSamplePages pages of the
// outbox (all of a smaller table: exact; a block sample of a larger one, scaled),
// and a shard the sample puts under StatusExactBacklog is counted exactly through the
// (shard, id) index instead. Parked counts are exact (parked rows have their own
// index).
func ReadStatus(ctx context.Context, pool *pgxpool.Pool, schema string) (*Status, error) {
	q := func(t string) string { return pgx.Identifier{schemaOr(schema), t}.Sanitize() }
	st := &Status{ParkedByReason: map[string]int64{}}
	rows, err := pool.Query(ctx, `SELECT l.shard, coalesce(extract(epoch FROM now() - h.created_at), 0)::float8,
		coalesce(l.owner, ''), coalesce(l.expires_at, 'epoch'), l.generation
		FROM `+q("shard_leases")+` l
		LEFT JOIN LATERAL (SELECT o.created_at FROM `+q("outbox")+` o
			WHERE o.shard = l.shard AND o.published_at IS NULL AND o.parked_at IS NULL ORDER BY o.id LIMIT 1) h ON true
		ORDER BY l.shard`)
	if err != nil {
		return nil, fmt.Errorf("reading status: %w", err)
	}
	for rows.Next() {
		var s ShardStatus
		var age float64
		if err := rows.Scan(&s.Shard, &age, &s.Owner, &s.LeaseExpires, &s.Generation); err != nil {
			return nil, err
		}
		s.OldestAge = time.Duration(age * float64(time.Second))
		st.OldestAge = max(st.OldestAge, s.OldestAge)
		st.Shards = append(st.Shards, s)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if err := countBacklog(ctx, pool, q("outbox"), st.Shards); err != nil {
		return nil, err
	}
	for _, s := range st.Shards {
		st.Backlog += s.Backlog
		st.BacklogEstimated = st.BacklogEstimated || s.Estimated
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
	rows, err = pool.Query(ctx, `SELECT split_part(coalesce(last_error, 'unknown'), ':', 1), count(*) FROM `+q("outbox")+
		` WHERE parked_at IS NOT NULL GROUP BY 1`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var reason string
		var n int64
		if err := rows.Scan(&reason, &n); err != nil {
			return nil, err
		}
		st.ParkedByReason[reason] = n
		st.Parked += n
	}
	return st, rows.Err()
}

// countBacklog sets the backlog of every shard. It reads
// StatusSamplePages pages of the outbox: the whole table when it is no larger
// (exact), else a block sample scaled to the table's size; shards the sample puts
// under StatusExactBacklog are then counted exactly through their index, up to
// StatusExactBacklog+1 rows (more: the estimate stands).
func countBacklog(ctx context.Context, pool *pgxpool.Pool, outboxTable string, shards []ShardStatus) error {
	var pages int64
	if err := pool.QueryRow(ctx, `SELECT pg_relation_size($1::regclass) / current_setting('block_size')::int`,
		outboxTable).Scan(&pages); err != nil {
		return fmt.Errorf("counting the backlog: %w", err)
	}
	sample := ""
	pct := 100.0
	if pages > StatusSamplePages {
		pct = 100 * float64(StatusSamplePages) / float64(pages)
		sample = ` TABLESAMPLE SYSTEM (` + strconv.FormatFloat(pct, 'f', -1, 64) + `)`
	}
	rows, err := pool.Query(ctx, `SELECT shard, count(*) FROM `+outboxTable+sample+`
		WHERE published_at IS NULL AND parked_at IS NULL GROUP BY shard`)
	if err != nil {
		return fmt.Errorf("counting the backlog: %w", err)
	}
	counted := map[int]int64{}
	var shard int
	var n int64
	if _, err := pgx.ForEachRow(rows, []any{&shard, &n}, func() error { counted[shard] = n; return nil }); err != nil {
		return fmt.Errorf("counting the backlog: %w", err)
	}
	var small []int32
	for i := range shards {
		s := &shards[i]
		s.Backlog = int64(float64(counted[s.Shard])*100/pct + 0.5)
		if sample != "" {
			if s.Backlog <= StatusExactBacklog {
				small = append(small, int32(s.Shard))
			} else {
				s.Estimated = true
			}
		}
	}
	if len(small) == 0 {
		return nil
	}
	rows, err = pool.Query(ctx, `SELECT s, (SELECT count(*) FROM (SELECT FROM `+outboxTable+` o
			WHERE o.shard = s AND o.published_at IS NULL AND o.parked_at IS NULL LIMIT $2) x)
		FROM unnest($1::int[]) s`, small, StatusExactBacklog+1)
	if err != nil {
		return fmt.Errorf("counting the backlog: %w", err)
	}
	exact := map[int]int64{}
	if _, err := pgx.ForEachRow(rows, []any{&shard, &n}, func() error { exact[shard] = n; return nil }); err != nil {
		return fmt.Errorf("counting the backlog: %w", err)
	}
	for i := range shards {
		s := &shards[i]
		n, ok := exact[s.Shard]
		switch {
		case !ok:
		case n <= StatusExactBacklog:
			s.Backlog = n
		default: // more than the sample said: not exact, at least n
			s.Backlog, s.Estimated = max(s.Backlog, n), true
		}
	}
	return nil
}

// ParkedFilter selects parked events. At least one field must be set; fields combine
// with AND.
type ParkedFilter struct {
	IDs []int64
	// EventIDs selects by event id.
	EventIDs []uuid.UUID
	Key      string
	// Reason matches a substring of the parking reason (e.g. "too_large").
	Reason string
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
		add("strpos(last_error, $%d) > 0", f.Reason)
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
	Reason    string
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
	rows, err := pool.Query(ctx, fmt.Sprintf(`SELECT id, event_id, topic, key, event_type, coalesce(last_error, ''), attempts, parked_at, created_at
		FROM %s WHERE %s ORDER BY id LIMIT $%d`, pgx.Identifier{schemaOr(schema), "outbox"}.Sanitize(), where, len(args)), args...)
	if err != nil {
		return nil, fmt.Errorf("listing parked events: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (ParkedEvent, error) {
		var p ParkedEvent
		err := row.Scan(&p.ID, &p.EventID, &p.Topic, &p.Key, &p.Type, &p.Reason, &p.Attempts, &p.ParkedAt, &p.CreatedAt)
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
	tag, err := pool.Exec(ctx, fmt.Sprintf(`UPDATE %s SET parked_at = NULL, last_error = 'retried: ' || coalesce(last_error, '') WHERE %s`,
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
