// Package ordersvc is the orders example: an HTTP service whose every change writes the
// order row and its event (OrderCreated, OrderModified, OrderDeleted) in ONE Postgres
// transaction through relaybox's outbox writer. Nothing on the request path talks to
// Kafka; the relay publishes the events.
package ordersvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/relaybox/relaybox/outbox"
)

// Service serves /orders.
type Service struct {
	pool   *pgxpool.Pool
	w      *outbox.Writer
	table  string
	log    *slog.Logger
	async  chan func()
	Events func(eventType string) // optional hook: called after each committed event
	// Topic is where events go. Defaults to "orders".
	Topic string
	// TracerProvider makes the span of each HTTP request, a child of the request's
	// W3C traceparent header; the outbox writer's span (and so the events' trace
	// context) nests under it. Defaults to the global provider.
	TracerProvider trace.TracerProvider
}

// New returns the service; relaySchema is where relaybox's outbox lives, appSchema is
// where the orders table is created (by Migrate).
func New(pool *pgxpool.Pool, relaySchema, appSchema string, log *slog.Logger) (*Service, error) {
	// Three event types share the topic: each gets its own subject ("orders-orders.v1.OrderCreated",
	// ...). Under the default TopicName strategy a registry enforcing compatibility refuses
	// the second record type on "orders-value", and the relay parks those events.
	w, err := outbox.New(pool, &outbox.Config{Schema: relaySchema, Source: "orders-service", SubjectStrategy: outbox.TopicRecordName})
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	s := &Service{pool: pool, w: w, table: pgx.Identifier{appSchema, "orders"}.Sanitize(), log: log, async: make(chan func(), 1024), Topic: Topic}
	go func() {
		for f := range s.async {
			f()
		}
	}()
	return s, nil
}

// Migrate creates the service's own table.
func (s *Service) Migrate(ctx context.Context, appSchema string) error {
	_, err := s.pool.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{appSchema}.Sanitize()+`;
		CREATE TABLE IF NOT EXISTS `+s.table+` (
			id uuid PRIMARY KEY, customer text NOT NULL, lines jsonb NOT NULL, version bigint NOT NULL,
			created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now())`)
	return err
}

// Order is the resource.
type Order struct {
	ID       string    `json:"id"`
	Customer string    `json:"customer"`
	Lines    []Line    `json:"lines"`
	Version  int64     `json:"version"`
	Updated  time.Time `json:"updated_at"`
}

type input struct {
	Customer *string `json:"customer"`
	Lines    *[]Line `json:"lines"`
}

// Handler routes the API.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /orders", s.create)
	mux.HandleFunc("GET /orders/{id}", s.get)
	mux.HandleFunc("PATCH /orders/{id}", s.patch)
	mux.HandleFunc("DELETE /orders/{id}", s.delete)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.pool.Ping(r.Context()); err != nil {
			problem(w, http.StatusServiceUnavailable, "database unreachable", err.Error())
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return s.traced(mux)
}

// traced serves each request in a server span, a child of the request's traceparent
// (the otel API only; a service would often use otelhttp instead).
func (s *Service) traced(next http.Handler) http.Handler {
	prop := propagation.TraceContext{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tp := s.TracerProvider
		if tp == nil {
			tp = otel.GetTracerProvider()
		}
		ctx := prop.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := tp.Tracer("github.com/relaybox/relaybox/examples/orders").Start(ctx, r.Method,
			trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("url.path", r.URL.Path)))
		defer span.End()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r.WithContext(ctx))
		span.SetAttributes(attribute.Int("http.response.status_code", sw.status))
		if sw.status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(sw.status))
		}
	})
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// problem writes an RFC 9457 problem+json answer.
func problem(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"type": "about:blank", "title": title, "status": status, "detail": detail})
}

func correlation(w http.ResponseWriter, r *http.Request) string {
	id := r.Header.Get("X-Correlation-ID")
	if id == "" || len(id) > 128 {
		id = uuid.NewString()
	}
	w.Header().Set("X-Correlation-ID", id)
	return id
}

func validLines(lines []Line) error {
	if len(lines) == 0 || len(lines) > 100 {
		return errors.New("an order has 1 to 100 lines")
	}
	for _, l := range lines {
		if l.SKU == "" || len(l.SKU) > 64 || l.Qty <= 0 || l.Qty > 10000 {
			return fmt.Errorf("line %+v: sku 1-64 characters, qty 1-10000", l)
		}
	}
	return nil
}

func decode(w http.ResponseWriter, r *http.Request, in *input) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(in); err != nil {
		problem(w, http.StatusBadRequest, "malformed JSON body", err.Error())
		return false
	}
	return true
}

func (s *Service) create(w http.ResponseWriter, r *http.Request) {
	corr := correlation(w, r)
	var in input
	if !decode(w, r, &in) {
		return
	}
	if in.Customer == nil || *in.Customer == "" || in.Lines == nil {
		problem(w, http.StatusUnprocessableEntity, "invalid order", "customer and lines are required")
		return
	}
	if err := validLines(*in.Lines); err != nil {
		problem(w, http.StatusUnprocessableEntity, "invalid order", err.Error())
		return
	}
	o := Order{ID: uuid.NewString(), Customer: *in.Customer, Lines: *in.Lines, Version: 1, Updated: time.Now().UTC()}
	loc := "/orders/" + o.ID
	write := func(ctx context.Context) error {
		return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			lines, _ := json.Marshal(o.Lines)
			if _, err := tx.Exec(ctx, `INSERT INTO `+s.table+` (id, customer, lines, version) VALUES ($1, $2, $3, 1)`, o.ID, o.Customer, lines); err != nil {
				return err
			}
			return s.w.Write(ctx, tx, outbox.Event{Topic: s.Topic, Key: o.ID, Type: "OrderCreated", AggregateType: "Order", CorrelationID: corr,
				Value: OrderCreated{OrderID: o.ID, Customer: o.Customer, Lines: o.Lines, Version: 1, At: o.Updated}})
		})
	}
	if strings.Contains(r.Header.Get("Prefer"), "respond-async") {
		// The async style: accepted now, the order appears at Location once written.
		s.async <- func() {
			if err := write(context.WithoutCancel(r.Context())); err != nil { // the request's trace, not its end
				s.log.Error("async create failed", "order", o.ID, "err", err)
				return
			}
			s.hook("OrderCreated")
		}
		w.Header().Set("Location", loc)
		w.Header().Set("Preference-Applied", "respond-async")
		w.WriteHeader(http.StatusAccepted)
		return
	}
	if err := write(r.Context()); err != nil {
		problem(w, http.StatusInternalServerError, "order not created", err.Error())
		return
	}
	s.hook("OrderCreated")
	w.Header().Set("Location", loc)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(o)
}

func (s *Service) hook(t string) {
	if s.Events != nil {
		s.Events(t)
	}
}

func (s *Service) load(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, id string, lock bool) (*Order, error) {
	if _, err := uuid.Parse(id); err != nil {
		return nil, pgx.ErrNoRows
	}
	sql := `SELECT id::text, customer, lines, version, updated_at FROM ` + s.table + ` WHERE id = $1`
	if lock {
		sql += ` FOR UPDATE` // serializes writers of one order: its events commit in order
	}
	var o Order
	var lines []byte
	if err := q.QueryRow(ctx, sql, id).Scan(&o.ID, &o.Customer, &lines, &o.Version, &o.Updated); err != nil {
		return nil, err
	}
	return &o, json.Unmarshal(lines, &o.Lines)
}

func (s *Service) get(w http.ResponseWriter, r *http.Request) {
	o, err := s.load(r.Context(), s.pool, r.PathValue("id"), false)
	if errors.Is(err, pgx.ErrNoRows) {
		problem(w, http.StatusNotFound, "order not found", r.PathValue("id"))
		return
	}
	if err != nil {
		problem(w, http.StatusInternalServerError, "reading order failed", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("ETag", fmt.Sprintf(`"%d"`, o.Version))
	json.NewEncoder(w).Encode(o)
}

var errNotFound = errors.New("not found")

func (s *Service) patch(w http.ResponseWriter, r *http.Request) {
	corr := correlation(w, r)
	var in input
	if !decode(w, r, &in) {
		return
	}
	if in.Customer == nil && in.Lines == nil {
		problem(w, http.StatusUnprocessableEntity, "nothing to change", "give customer and/or lines")
		return
	}
	if in.Lines != nil {
		if err := validLines(*in.Lines); err != nil {
			problem(w, http.StatusUnprocessableEntity, "invalid order", err.Error())
			return
		}
	}
	if in.Customer != nil && *in.Customer == "" {
		problem(w, http.StatusUnprocessableEntity, "invalid order", "customer must not be empty")
		return
	}
	var out *Order
	err := pgx.BeginFunc(r.Context(), s.pool, func(tx pgx.Tx) error {
		o, err := s.load(r.Context(), tx, r.PathValue("id"), true)
		if errors.Is(err, pgx.ErrNoRows) {
			return errNotFound
		}
		if err != nil {
			return err
		}
		if in.Customer != nil {
			o.Customer = *in.Customer
		}
		if in.Lines != nil {
			o.Lines = *in.Lines
		}
		o.Version++
		o.Updated = time.Now().UTC()
		lines, _ := json.Marshal(o.Lines)
		if _, err := tx.Exec(r.Context(), `UPDATE `+s.table+` SET customer = $2, lines = $3, version = $4, updated_at = now() WHERE id = $1`,
			o.ID, o.Customer, lines, o.Version); err != nil {
			return err
		}
		out = o
		return s.w.Write(r.Context(), tx, outbox.Event{Topic: s.Topic, Key: o.ID, Type: "OrderModified", AggregateType: "Order", CorrelationID: corr,
			Value: OrderModified{OrderID: o.ID, Customer: in.Customer, Lines: in.Lines, Version: o.Version, At: o.Updated}})
	})
	switch {
	case errors.Is(err, errNotFound):
		problem(w, http.StatusNotFound, "order not found", r.PathValue("id"))
	case err != nil:
		problem(w, http.StatusInternalServerError, "order not changed", err.Error())
	default:
		s.hook("OrderModified")
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(out)
	}
}

func (s *Service) delete(w http.ResponseWriter, r *http.Request) {
	corr := correlation(w, r)
	err := pgx.BeginFunc(r.Context(), s.pool, func(tx pgx.Tx) error {
		o, err := s.load(r.Context(), tx, r.PathValue("id"), true)
		if errors.Is(err, pgx.ErrNoRows) {
			return errNotFound
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(r.Context(), `DELETE FROM `+s.table+` WHERE id = $1`, o.ID); err != nil {
			return err
		}
		return s.w.Write(r.Context(), tx, outbox.Event{Topic: s.Topic, Key: o.ID, Type: "OrderDeleted", AggregateType: "Order", CorrelationID: corr,
			Value: OrderDeleted{OrderID: o.ID, Version: o.Version + 1, At: time.Now().UTC()}})
	})
	switch {
	case errors.Is(err, errNotFound):
		problem(w, http.StatusNotFound, "order not found", r.PathValue("id"))
	case err != nil:
		problem(w, http.StatusInternalServerError, "order not deleted", err.Error())
	default:
		s.hook("OrderDeleted")
		w.WriteHeader(http.StatusNoContent)
	}
}

// ReservedBySKU computes, from the orders table, the quantity each SKU has reserved by
// live orders: what the inventory consumer's state must equal.
func (s *Service) ReservedBySKU(ctx context.Context) (map[string]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT l->>'sku', sum((l->>'qty')::bigint) FROM `+s.table+`, jsonb_array_elements(lines) l GROUP BY 1`)
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
