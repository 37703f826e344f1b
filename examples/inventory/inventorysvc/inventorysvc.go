// Package inventorysvc is the inventory example: a relaybox consumer that reserves and
// releases stock from the orders service's events, idempotently (each event's effects
// commit exactly once, in the same transaction as its processed_events row), and serves
// stock over GET /stock/{sku}.
//
// It declares its own, narrower reader types: Avro schema resolution maps the orders
// service's records onto them, so fields it does not need (customer) are skipped.
package inventorysvc

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/relaybox/relaybox/consumer"
)

// Line is a reserved product line.
type Line struct {
	SKU string `avro:"sku"`
	Qty int32  `avro:"qty"`
}

// OrderCreated is the inventory's view of the event (no customer).
type OrderCreated struct {
	OrderID string `avro:"order_id"`
	Lines   []Line `avro:"lines"`
	Version int64  `avro:"version"`
}

// OrderModified: Lines is nil when the lines did not change.
type OrderModified struct {
	OrderID string  `avro:"order_id"`
	Lines   *[]Line `avro:"lines"`
	Version int64   `avro:"version"`
}

// OrderDeleted releases the order's reservations.
type OrderDeleted struct {
	OrderID string `avro:"order_id"`
	Version int64  `avro:"version"`
}

// AvroNamespace matches the writer's records ("orders.v1").
func (OrderCreated) AvroNamespace() string  { return "orders.v1" }
func (OrderModified) AvroNamespace() string { return "orders.v1" }
func (OrderDeleted) AvroNamespace() string  { return "orders.v1" }

// Service holds the inventory tables and counts what it applied.
type Service struct {
	pool                            *pgxpool.Pool
	stock, reservations, v, applied string
	// TracerProvider makes the handlers' own spans ("inventory apply <type>"), which
	// nest under the consumer's span of the record. Defaults to the global provider.
	TracerProvider trace.TracerProvider
}

// span starts a handler's span under ctx (the consumer's record span).
func (s *Service) span(ctx context.Context, eventType string) (context.Context, trace.Span) {
	tp := s.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return tp.Tracer("github.com/relaybox/relaybox/examples/inventory").Start(ctx, "inventory apply "+eventType)
}

// New returns the service with its tables in appSchema.
func New(pool *pgxpool.Pool, appSchema string) *Service {
	q := func(t string) string { return pgx.Identifier{appSchema, t}.Sanitize() }
	return &Service{pool: pool, stock: q("stock"), reservations: q("reservations"), v: q("order_versions"), applied: q("applied")}
}

// Migrate creates the inventory's tables.
func (s *Service) Migrate(ctx context.Context, appSchema string) error {
	_, err := s.pool.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{appSchema}.Sanitize()+`;
		CREATE TABLE IF NOT EXISTS `+s.stock+` (sku text PRIMARY KEY, on_hand bigint NOT NULL DEFAULT 1000000, reserved bigint NOT NULL DEFAULT 0);
		CREATE TABLE IF NOT EXISTS `+s.reservations+` (order_id text NOT NULL, sku text NOT NULL, qty bigint NOT NULL, PRIMARY KEY (order_id, sku));
		CREATE TABLE IF NOT EXISTS `+s.v+` (order_id text PRIMARY KEY, version bigint NOT NULL);
		CREATE TABLE IF NOT EXISTS `+s.applied+` (event_id text NOT NULL, order_id text NOT NULL, version bigint NOT NULL, prev bigint NOT NULL)`)
	return err
}

// Register installs the handlers on c.
func (s *Service) Register(c *consumer.Consumer) {
	consumer.Handle(c, "OrderCreated", func(ctx context.Context, tx pgx.Tx, ev consumer.Event[OrderCreated]) error {
		ctx, span := s.span(ctx, "OrderCreated")
		defer span.End()
		if err := s.version(ctx, tx, ev.ID, ev.Value.OrderID, ev.Value.Version); err != nil {
			return err
		}
		return s.reserve(ctx, tx, ev.Value.OrderID, ev.Value.Lines)
	})
	consumer.Handle(c, "OrderModified", func(ctx context.Context, tx pgx.Tx, ev consumer.Event[OrderModified]) error {
		ctx, span := s.span(ctx, "OrderModified")
		defer span.End()
		if err := s.version(ctx, tx, ev.ID, ev.Value.OrderID, ev.Value.Version); err != nil {
			return err
		}
		if ev.Value.Lines == nil {
			return nil
		}
		if err := s.release(ctx, tx, ev.Value.OrderID); err != nil {
			return err
		}
		return s.reserve(ctx, tx, ev.Value.OrderID, *ev.Value.Lines)
	})
	consumer.Handle(c, "OrderDeleted", func(ctx context.Context, tx pgx.Tx, ev consumer.Event[OrderDeleted]) error {
		ctx, span := s.span(ctx, "OrderDeleted")
		defer span.End()
		if err := s.version(ctx, tx, ev.ID, ev.Value.OrderID, ev.Value.Version); err != nil {
			return err
		}
		return s.release(ctx, tx, ev.Value.OrderID)
	})
}

// version logs the applied event (event id, order version, previous version) in the
// handler's transaction: the log is the record of effects that committed.
func (s *Service) version(ctx context.Context, tx pgx.Tx, eventID, order string, v int64) error {
	_, err := tx.Exec(ctx, `WITH prev AS (SELECT coalesce((SELECT version FROM `+s.v+` WHERE order_id = $2), 0) AS v),
		up AS (INSERT INTO `+s.v+` (order_id, version) VALUES ($2, $3) ON CONFLICT (order_id) DO UPDATE SET version = excluded.version)
		INSERT INTO `+s.applied+` (event_id, order_id, version, prev) SELECT $1, $2, $3, v FROM prev`, eventID, order, v)
	return err
}

// Stats is what the applied log says.
type Stats struct {
	Effects          int64 // handler runs whose effects committed
	DuplicateEffects int64 // event ids applied more than once (must be 0)
	OrderViolations  int64 // events applied with a version not above the previous (must be 0)
}

// Stats reads the applied log.
func (s *Service) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	err := s.pool.QueryRow(ctx, `SELECT count(*), count(*) - count(DISTINCT event_id), count(*) FILTER (WHERE version <= prev) FROM `+s.applied).
		Scan(&st.Effects, &st.DuplicateEffects, &st.OrderViolations)
	return st, err
}

func (s *Service) reserve(ctx context.Context, tx pgx.Tx, order string, lines []Line) error {
	// Lock stock rows in SKU order: concurrent partitions never deadlock on them.
	lines = append([]Line(nil), lines...)
	sort.Slice(lines, func(i, j int) bool { return lines[i].SKU < lines[j].SKU })
	for _, l := range lines {
		if _, err := tx.Exec(ctx, `INSERT INTO `+s.reservations+` (order_id, sku, qty) VALUES ($1, $2, $3)
			ON CONFLICT (order_id, sku) DO UPDATE SET qty = `+s.reservations+`.qty + excluded.qty`, order, l.SKU, l.Qty); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+s.stock+` (sku, reserved) VALUES ($1, $2)
			ON CONFLICT (sku) DO UPDATE SET reserved = `+s.stock+`.reserved + excluded.reserved`, l.SKU, l.Qty); err != nil {
			return err
		}
	}
	return nil
}

func (s *Service) release(ctx context.Context, tx pgx.Tx, order string) error {
	rows, err := tx.Query(ctx, `DELETE FROM `+s.reservations+` WHERE order_id = $1 RETURNING sku, qty`, order)
	if err != nil {
		return err
	}
	gone, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Line])
	if err != nil {
		return err
	}
	sort.Slice(gone, func(i, j int) bool { return gone[i].SKU < gone[j].SKU }) // lock order, as reserve
	for _, l := range gone {
		if _, err := tx.Exec(ctx, `UPDATE `+s.stock+` SET reserved = reserved - $2 WHERE sku = $1`, l.SKU, l.Qty); err != nil {
			return err
		}
	}
	return nil
}

// Reserved returns the reserved quantity per SKU (non-zero only).
func (s *Service) Reserved(ctx context.Context) (map[string]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT sku, reserved FROM `+s.stock+` WHERE reserved <> 0`)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for rows.Next() {
		var sku string
		var n int64
		if err := rows.Scan(&sku, &n); err != nil {
			return nil, err
		}
		out[sku] = n
	}
	return out, rows.Err()
}

// Handler serves GET /stock/{sku} and /healthz.
func (s *Service) Handler(ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stock/{sku}", func(w http.ResponseWriter, r *http.Request) {
		var onHand, reserved int64
		err := s.pool.QueryRow(r.Context(), `SELECT on_hand, reserved FROM `+s.stock+` WHERE sku = $1`, r.PathValue("sku")).Scan(&onHand, &reserved)
		if err == pgx.ErrNoRows {
			onHand, err = 1000000, nil // every SKU starts with the default stock
		}
		if err != nil {
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusInternalServerError)
			json.NewEncoder(w).Encode(map[string]any{"title": "reading stock failed", "status": 500, "detail": err.Error()})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"sku": r.PathValue("sku"), "on_hand": onHand, "reserved": reserved, "available": onHand - reserved})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if ready != nil {
			if err := ready(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}
