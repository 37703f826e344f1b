package consumer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ExecDeferred executes sql in tx, the transaction a handler was given, as
// tx.Exec does, except that it may send the statement later instead of waiting for
// its result: in batch mode every statement the batch's handlers defer goes to
// Postgres in one round trip before the batch commits, instead of one round trip
// each; in single-record mode the record's deferred statements go with its COMMIT.
// Use it for statements whose outcome the handler does not look at (an insert, an
// update whose row count does not matter).
//
// An error of a deferred statement therefore fails the record or the batch rather
// than the call (which returns nil). In single-record mode it counts as the
// handler's error: rolled back, retried, dead-lettered after MaxAttempts. In batch
// mode the batch's transaction is rolled back and its records run again one by
// one, each under its savepoint, where ExecDeferred executes at once, so the
// failing record is retried and dead-lettered alone and the others are applied.
//
// Statements a handler runs through tx afterwards (Exec, Query, QueryRow,
// SendBatch, CopyFrom, Prepare, Begin) see the deferred ones' effects: the
// deferred statements are sent first, and their error, if any, is that call's.
// With a transaction the consumer did not give (a handler called outside the
// consumer, a tx wrapped by middleware), it is tx.Exec.
func ExecDeferred(ctx context.Context, tx pgx.Tx, sql string, args ...any) error {
	if h, ok := tx.(handlerTx); ok && h.q != nil {
		h.q.statement(sql, args)
		return nil
	}
	_, err := tx.Exec(ctx, sql, args...)
	return err
}

// InsertDeferred inserts one row into table in tx, the transaction a handler was
// given: values are those of columns, in order. Like [ExecDeferred] it may send the
// row later, and more cheaply: in batch mode the rows that the batch's handlers
// insert one after another into the same table and columns go to Postgres as one
// COPY before the batch commits (Postgres writes them as one multi-row insert),
// instead of a statement each. In single-record mode, under a batch's savepoints
// and with a transaction the consumer did not give, the row is an INSERT statement
// (deferred as ExecDeferred's are, or executed at once).
//
// Use it for effects that are plain inserts: COPY has no ON CONFLICT (use
// ExecDeferred for an upsert), and the row's failure (a constraint, a value of the
// wrong type) fails the record or the batch as a deferred statement's does: the
// batch then runs record by record under savepoints, where the row is an INSERT of
// its own, so the failing record alone is retried and dead-lettered. Columns left
// out get their defaults, as with INSERT; COPY fires the table's triggers too.
//
// The order of the deferred work is kept: rows and ExecDeferred statements are sent
// in the order the handlers deferred them, a run of rows for one table as one COPY.
// table is quoted (pgx.Identifier); InsertDeferred keeps columns and a copy of
// values until the row is sent. A mismatch between columns and values is an error
// at once.
func InsertDeferred(ctx context.Context, tx pgx.Tx, table pgx.Identifier, columns []string, values ...any) error {
	switch {
	case len(table) == 0 || len(columns) == 0:
		return errors.New("consumer: InsertDeferred needs a table and at least one column")
	case len(values) != len(columns):
		return fmt.Errorf("consumer: InsertDeferred into %s: %d values for %d columns", table.Sanitize(), len(values), len(columns))
	}
	if h, ok := tx.(handlerTx); ok && h.q != nil {
		h.q.row(table, columns, slices.Clone(values))
		return nil
	}
	_, err := tx.Exec(ctx, insertSQL(table, columns), values...)
	return err
}

// insertSQL is the INSERT of one row of columns into table.
func insertSQL(table pgx.Identifier, columns []string) string {
	var b strings.Builder
	b.WriteString("INSERT INTO ")
	b.WriteString(table.Sanitize())
	b.WriteString(" (")
	for i, c := range columns {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(pgx.Identifier{c}.Sanitize())
	}
	b.WriteString(") VALUES (")
	for i := range columns {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("$" + strconv.Itoa(i+1))
	}
	b.WriteString(")")
	return b.String()
}

// deferredQueue is what the handlers of a transaction deferred, in order: runs of
// statements (one pgx batch each) and runs of rows into one table and columns.
type deferredQueue struct {
	copyRows bool // rows go by COPY (batch mode); otherwise each is an INSERT statement
	runs     []deferredRun
}

// deferredRun is a run of statements (stmts set) or of rows (table, cols, rows).
type deferredRun struct {
	stmts *pgx.Batch
	table pgx.Identifier
	cols  []string
	rows  [][]any
}

func (q *deferredQueue) statement(sql string, args []any) {
	if n := len(q.runs); n == 0 || q.runs[n-1].stmts == nil {
		q.runs = append(q.runs, deferredRun{stmts: &pgx.Batch{}})
	}
	q.runs[len(q.runs)-1].stmts.Queue(sql, args...)
}

func (q *deferredQueue) row(table pgx.Identifier, cols []string, values []any) {
	if !q.copyRows {
		q.statement(insertSQL(table, cols), values)
		return
	}
	if n := len(q.runs); n > 0 {
		if r := &q.runs[n-1]; r.stmts == nil && slices.Equal(r.table, table) && slices.Equal(r.cols, cols) {
			r.rows = append(r.rows, values)
			return
		}
	}
	q.runs = append(q.runs, deferredRun{table: table, cols: cols, rows: [][]any{values}})
}

// statements is the queue of a single-record transaction (no COPY runs) as one
// batch, for commitAfter.
func (q *deferredQueue) statements() *pgx.Batch {
	if len(q.runs) == 0 {
		return &pgx.Batch{}
	}
	return q.runs[0].stmts
}

// commitAfter sends b's statements and COMMIT in one round trip. stmtErr is the
// failure of one of b's statements (the transaction is then left failed, for the
// caller's Rollback); err the COMMIT's.
func (t *connTx) commitAfter(ctx context.Context, b *pgx.Batch) (stmtErr, err error) {
	n := b.Len()
	if n == 0 {
		return nil, t.Commit(ctx)
	}
	if t.closed {
		return nil, pgx.ErrTxClosed
	}
	b.Queue("commit")
	br := t.conn.SendBatch(ctx, b)
	for range n {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			return err, nil
		}
	}
	t.closed = true
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err == nil && tag.String() == "ROLLBACK" { // the transaction had failed
		err = pgx.ErrTxCommitRollback
	}
	return nil, err
}

// flush sends the deferred work, if any, in order, and returns the first error.
func (h handlerTx) flush(ctx context.Context) error {
	if h.q == nil || len(h.q.runs) == 0 {
		return nil
	}
	runs := h.q.runs
	h.q.runs = nil
	for _, r := range runs {
		if r.stmts == nil {
			if _, err := h.Tx.CopyFrom(ctx, r.table, r.cols, pgx.CopyFromRows(r.rows)); err != nil {
				return err
			}
			continue
		}
		br := h.Tx.SendBatch(ctx, r.stmts)
		var err error
		for i := 0; i < r.stmts.Len() && err == nil; i++ {
			_, err = br.Exec()
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// The handler transaction's statements go after the deferred ones.

func (h handlerTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := h.flush(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return h.Tx.Exec(ctx, sql, args...)
}

func (h handlerTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := h.flush(ctx); err != nil {
		return nil, err
	}
	return h.Tx.Query(ctx, sql, args...)
}

func (h handlerTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := h.flush(ctx); err != nil {
		return errRow{err}
	}
	return h.Tx.QueryRow(ctx, sql, args...)
}

func (h handlerTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if err := h.flush(ctx); err != nil {
		return errBatchResults{err}
	}
	return h.Tx.SendBatch(ctx, b)
}

func (h handlerTx) CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	if err := h.flush(ctx); err != nil {
		return 0, err
	}
	return h.Tx.CopyFrom(ctx, table, cols, src)
}

func (h handlerTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := h.flush(ctx); err != nil {
		return nil, err
	}
	return h.Tx.Prepare(ctx, name, sql)
}

func (h handlerTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := h.flush(ctx); err != nil {
		return nil, err
	}
	return h.Tx.Begin(ctx)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

type errBatchResults struct{ err error }

func (r errBatchResults) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, r.err }
func (r errBatchResults) Query() (pgx.Rows, error)         { return nil, r.err }
func (r errBatchResults) QueryRow() pgx.Row                { return errRow(r) }
func (r errBatchResults) Close() error                     { return r.err }
func (r errBatchResults) Tx() pgx.Tx                       { return nil }
