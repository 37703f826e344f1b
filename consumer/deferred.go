package consumer

import (
	"context"

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
		h.q.Queue(sql, args...)
		return nil
	}
	_, err := tx.Exec(ctx, sql, args...)
	return err
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

// flush sends the deferred statements, if any, and returns the first error.
func (h handlerTx) flush(ctx context.Context) error {
	if h.q == nil || h.q.Len() == 0 {
		return nil
	}
	b := *h.q
	*h.q = pgx.Batch{}
	br := h.Tx.SendBatch(ctx, &b)
	var err error
	for i := 0; i < b.Len() && err == nil; i++ {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return err
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
