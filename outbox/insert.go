package outbox

import (
	"bytes"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// The insert statement adapts to the events of one call: a column whose value is the
// table's default in every row is left out, a column with one value for all rows is
// sent once as a scalar, and only the columns that differ are sent as arrays for
// unnest. Most calls send a few arrays instead of fifteen, which is most of the cost
// of a many-event insert. Statement texts are cached per shape (at most 3^15, in
// practice a handful), and pgx prepares each once per connection.

type column struct {
	name, typ string
	def       bool // the table's default equals the zero value here ('' or '{}')
	get       func(*row) any
	equal     func(a, b *row) bool
	array     func(rows []row) any
}

func col[T any](name, typ string, def bool, f func(*row) T, eq func(a, b T) bool) column {
	return column{name: name, typ: typ, def: def,
		get:   func(r *row) any { return f(r) },
		equal: func(a, b *row) bool { return eq(f(a), f(b)) },
		array: func(rows []row) any {
			out := make([]T, len(rows))
			for i := range rows {
				out[i] = f(&rows[i])
			}
			return out
		}}
}

func same[T comparable](a, b T) bool { return a == b }

func textCol(name string, def bool, f func(*row) string) column {
	return col(name, "text", def, f, same[string])
}

var columns = []column{
	col("event_id", "uuid", false, func(r *row) uuid.UUID { return r.id }, same[uuid.UUID]),
	textCol("topic", false, func(r *row) string { return r.topic }),
	textCol("key", false, func(r *row) string { return r.key }),
	textCol("event_type", false, func(r *row) string { return r.typ }),
	textCol("aggregate_type", true, func(r *row) string { return r.aggType }),
	textCol("subject", false, func(r *row) string { return r.subject }),
	col("schema_fingerprint", "bytea", false, func(r *row) []byte { return r.fp[:] }, bytes.Equal),
	col("payload", "bytea", false, func(r *row) []byte { return r.payload }, bytes.Equal),
	col("headers", "jsonb", true, func(r *row) string { return r.headers }, same[string]),
	col("occurred_at", "timestamptz", false, func(r *row) time.Time { return r.occurred }, time.Time.Equal),
	textCol("correlation_id", true, func(r *row) string { return r.corr }),
	textCol("causation_id", true, func(r *row) string { return r.caus }),
	textCol("source", true, func(r *row) string { return r.source }),
	textCol("traceparent", true, func(r *row) string { return r.traceparent }),
	textCol("tracestate", true, func(r *row) string { return r.tracestate }),
}

const (
	colOmit   = 0
	colScalar = 1
	colArray  = 2
)

// insertStatement returns the statement for rows and its arguments. Unless notify is
// disabled, the same statement also sends the NOTIFY (a materialized CTE, evaluated
// once): one statement per call instead of two.
func (w *Writer) insertStatement(rows []row) (string, []any) {
	var shape uint32 // 2 bits per column
	for i, c := range columns {
		kind := colScalar
		first := &rows[0]
		for j := 1; j < len(rows); j++ {
			if !c.equal(first, &rows[j]) {
				kind = colArray
				break
			}
		}
		if kind == colScalar && c.def && isDefault(c, first) {
			kind = colOmit
		}
		shape |= uint32(kind) << (2 * i)
	}
	var args []any
	for i, c := range columns {
		switch shape >> (2 * i) & 3 {
		case colScalar:
			args = append(args, c.get(&rows[0]))
		case colArray:
			args = append(args, c.array(rows))
		}
	}
	notify := !w.cfg.DisableNotify
	if notify {
		args = append(args, w.cfg.Channel, shardList(rows))
	}
	if s, ok := w.shapes.Load(shape); ok {
		return s.(string), args
	}
	var names, exprs, arrays, aliases []string
	p := 0
	for i, c := range columns {
		kind := shape >> (2 * i) & 3
		if kind == colOmit {
			continue
		}
		p++
		names = append(names, c.name)
		ph := "$" + strconv.Itoa(p) + "::" + c.typ
		if kind == colScalar {
			exprs = append(exprs, ph)
			continue
		}
		alias := "c" + strconv.Itoa(i)
		arrays, aliases = append(arrays, ph+"[]"), append(aliases, alias)
		exprs = append(exprs, alias)
	}
	var s, from string
	if notify {
		s = `WITH n AS MATERIALIZED (SELECT pg_notify($` + strconv.Itoa(p+1) + `::text, $` + strconv.Itoa(p+2) + `::text)) `
		from = "n"
	}
	s += `INSERT INTO ` + w.outboxT + ` (` + strings.Join(names, ", ") + `) `
	switch {
	case len(arrays) > 0:
		if from != "" {
			from += ", "
		}
		s += `SELECT ` + strings.Join(exprs, ", ") + ` FROM ` + from + `unnest(` + strings.Join(arrays, ", ") + `) AS u(` + strings.Join(aliases, ", ") + `)`
	case from != "":
		s += `SELECT ` + strings.Join(exprs, ", ") + ` FROM ` + from
	default:
		s += `VALUES (` + strings.Join(exprs, ", ") + `)`
	}
	w.shapes.Store(shape, s)
	return s, args
}

func isDefault(c column, r *row) bool {
	switch v := c.get(r).(type) {
	case string:
		return v == "" || (c.typ == "jsonb" && v == "{}")
	}
	return false
}
