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
	Mode string // ModeAtLeastOnce, or ModeExactlyOnce and its group size ("exactly-once/16")
	// OpenTxnAge is the age of its oldest open Kafka transaction at its last
	// heartbeat (exactly-once mode; 0 when none).
	OpenTxnAge   time.Duration
	FencedWrites int64 // writes refused because a lease was lost, since it started
	AbortedTxns  int64 // Kafka transactions aborted, since it started
}

// Status is what [Admin.Status] reads (and `relaybox status` shows).
type Status struct {
	Backlog int64
	// BacklogEstimated: some shard's backlog is estimated (ShardStatus.Estimated).
	BacklogEstimated bool
	OldestAge        time.Duration
	Shards           []ShardStatus
	Replicas         []string
	ReplicaDetails   []ReplicaStatus
	Parked           int64 // exact
	ParkedByReason   map[ParkReason]int64
}

// StatusExactBacklog is the per-shard backlog that Admin.Status always counts exactly;
// above it, in an outbox table larger than StatusSamplePages, a shard's backlog is
// estimated, so that reading the status costs about the same with millions of rows
// waiting as with thousands (docs/operations.md, "What the status query costs").
const StatusExactBacklog = 1000

// StatusSamplePages is how many pages of the outbox table Admin.Status reads to count
// the backlog: all of a table that small (exact counts), a block sample of that many
// pages of a larger one.
const StatusSamplePages = 2000

// AdminConfig configures an [Admin]. The zero value is usable.
type AdminConfig struct {
	// Schema holds relaybox's tables. Defaults to "relaybox" (migrations.DefaultSchema).
	Schema string
	// Channel is the relays' LISTEN channel (their Config.Channel): ParkedRetry
	// notifies it so that they publish the events at once rather than at their next
	// poll. Defaults to outbox.DefaultChannel.
	Channel string
}

// WithDefaults returns a copy of c (nil: the zero AdminConfig) with every unset field
// given its default.
func (c *AdminConfig) WithDefaults() *AdminConfig {
	r := AdminConfig{}
	if c != nil {
		r = *c
	}
	defaultPlace(&r.Schema, &r.Channel)
	return &r
}

// defaultPlace fills an unset schema and channel (Config's and AdminConfig's).
func defaultPlace(schema, channel *string) {
	if *schema == "" {
		*schema = migrations.DefaultSchema
	}
	if *channel == "" {
		*channel = outbox.DefaultChannel
	}
}

// validPlace checks the schema and the channel of config (its type name).
func validPlace(config, schema, channel string) error {
	if err := validSchema("relay: "+config+".Schema", schema); err != nil {
		return err
	}
	return validChannel("relay: "+config+".Channel", channel)
}

// Validate returns an error naming the first field that cannot work. Unset fields
// are valid: they take their defaults.
func (c *AdminConfig) Validate() error {
	if c == nil {
		return nil
	}
	return validPlace("AdminConfig", c.Schema, c.Channel)
}

// validSchema checks a schema name ("" means the default). A name longer than
// Postgres's 63 bytes is truncated the same way everywhere, so it is allowed.
func validSchema(field, v string) error {
	if strings.ContainsRune(v, 0) {
		return fmt.Errorf("%s must not contain NUL", field)
	}
	return nil
}

// maxChannel is Postgres's limit on a NOTIFY channel (NAMEDATALEN - 1 bytes):
// pg_notify refuses a longer one, while LISTEN truncates it.
const maxChannel = 63

// validChannel checks a LISTEN/NOTIFY channel name ("" means the default).
func validChannel(field, v string) error {
	switch {
	case len(v) > maxChannel:
		return fmt.Errorf("%s is %d bytes; Postgres allows %d for a channel", field, len(v), maxChannel)
	case strings.ContainsRune(v, 0):
		return fmt.Errorf("%s must not contain NUL", field)
	}
	return nil
}

// Admin reads and repairs the state of an outbox: what `relaybox status` and
// `relaybox parked` do. It reads Postgres only (no Kafka, no registry), and any
// number of Admins may run beside the relays.
type Admin struct {
	pool *pgxpool.Pool
	cfg  AdminConfig
}

// NewAdmin returns an Admin over pool, the database holding the outbox.
func NewAdmin(pool *pgxpool.Pool, cfg *AdminConfig) (*Admin, error) {
	if pool == nil {
		return nil, errors.New("relay: NewAdmin: nil pool")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Admin{pool: pool, cfg: *cfg.WithDefaults()}, nil
}

func (a *Admin) table(name string) string { return pgx.Identifier{a.cfg.Schema, name}.Sanitize() }

// Status reads the backlog, its oldest age, the leases, the live replicas and the
// parked events. Its cost is bounded whatever the backlog: per shard, the oldest
// pending row is one index probe; the backlog is counted by reading StatusSamplePages
// pages of the outbox (all of a smaller table: exact; a block sample of a larger one,
// scaled), and a shard the sample puts under StatusExactBacklog is counted exactly
// through the (shard, id) index instead. Parked counts are exact (parked rows have
// their own index).
func (a *Admin) Status(ctx context.Context) (*Status, error) {
	q, pool := a.table, a.pool
	st := &Status{ParkedByReason: map[ParkReason]int64{}}
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

// ParkedFilter selects parked events: the params of ParkedRetry and ParkedSkip (at
// least one field must be set, or All) and of ParkedList. Fields combine with AND.
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

func (f *ParkedFilter) where(args *[]any) (string, error) {
	if f == nil {
		f = &ParkedFilter{}
	}
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

// ParkedListParams are the params of ParkedList.
type ParkedListParams struct {
	// ParkedFilter selects the events; empty lists every parked event.
	ParkedFilter
	// Limit is the most events returned. Defaults to 1000.
	Limit int
}

// ParkedList lists the parked events params select, oldest first. nil params list
// every parked event, at most 1000.
func (a *Admin) ParkedList(ctx context.Context, params *ParkedListParams) ([]ParkedEvent, error) {
	var p ParkedListParams
	if params != nil {
		p = *params
	}
	limit := p.Limit
	if limit <= 0 {
		limit = 1000
	}
	f := p.ParkedFilter
	f.All = true
	var args []any
	where, _ := f.where(&args)
	args = append(args, limit)
	rows, err := a.pool.Query(ctx, fmt.Sprintf(`SELECT id, event_id, topic, key, event_type, coalesce(park_reason, '%s'),
		coalesce(last_error, ''), attempts, parked_at, created_at
		FROM %s WHERE %s ORDER BY id LIMIT $%d`, ParkUnknown, a.table("outbox"), where, len(args)), args...)
	if err != nil {
		return nil, fmt.Errorf("listing parked events: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (ParkedEvent, error) {
		var p ParkedEvent
		err := row.Scan(&p.ID, &p.EventID, &p.Topic, &p.Key, &p.Type, &p.Reason, &p.Detail, &p.Attempts, &p.ParkedAt, &p.CreatedAt)
		return p, err
	})
}

// ParkedRetry unparks the events f selects: the relays publish them again, each first
// in its key's order, and are notified on AdminConfig.Channel. It returns how many
// were unparked. last_error keeps "retried: <reason>: <detail>".
func (a *Admin) ParkedRetry(ctx context.Context, f *ParkedFilter) (int64, error) {
	var args []any
	where, err := f.where(&args)
	if err != nil {
		return 0, err
	}
	tag, err := a.pool.Exec(ctx, fmt.Sprintf(`UPDATE %s SET parked_at = NULL, park_reason = NULL,
		last_error = 'retried: ' || coalesce(park_reason, '%s') || ': ' || coalesce(last_error, '') WHERE %s`,
		a.table("outbox"), ParkUnknown, where), args...)
	if err != nil {
		return 0, fmt.Errorf("retrying parked events: %w", err)
	}
	if n := tag.RowsAffected(); n > 0 {
		_, _ = a.pool.Exec(ctx, `SELECT pg_notify($1, '')`, a.cfg.Channel)
	}
	return tag.RowsAffected(), nil
}

// ParkedSkip deletes the parked events f selects: they will never be published, and
// the events behind them on their keys flow again. It returns how many were removed.
func (a *Admin) ParkedSkip(ctx context.Context, f *ParkedFilter) (int64, error) {
	var args []any
	where, err := f.where(&args)
	if err != nil {
		return 0, err
	}
	tag, err := a.pool.Exec(ctx, fmt.Sprintf(`DELETE FROM %s WHERE %s`, a.table("outbox"), where), args...)
	if err != nil {
		return 0, fmt.Errorf("skipping parked events: %w", err)
	}
	return tag.RowsAffected(), nil
}
