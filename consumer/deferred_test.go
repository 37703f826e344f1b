package consumer_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/internal/envelope"
)

// deferSeq is a handler that applies its effect with ExecDeferred, then reads it
// back through tx: the read must see the deferred row.
func (e *env) deferSeq(name string, seen *[]int) func(context.Context, pgx.Tx, consumer.Event[Seq]) error {
	q := `INSERT INTO ` + e.table("effects") + ` (consumer, event_id, key, seq) VALUES ($1, $2, $3, $4)`
	return func(ctx context.Context, tx pgx.Tx, ev consumer.Event[Seq]) error {
		if err := consumer.ExecDeferred(ctx, tx, q, name, ev.ID, ev.Key, ev.Value.Seq); err != nil {
			return err
		}
		if seen == nil {
			return nil
		}
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+e.table("effects")+` WHERE event_id = $1`, ev.ID).Scan(&n); err != nil {
			return err
		}
		*seen = append(*seen, n)
		return nil
	}
}

// failOnSeq makes the effect of seq's events fail, at the database (a CHECK).
func (e *env) failOnSeq(t *testing.T, seq int) {
	t.Helper()
	q := fmt.Sprintf(`ALTER TABLE %s ADD CONSTRAINT fail_on_seq CHECK (seq <> %d)`, e.table("effects"), seq)
	if _, err := e.pool.Exec(context.Background(), q); err != nil {
		t.Fatal(err)
	}
}

// appliedSeqs is the seq of every effect row, in the order applied.
func (e *env) appliedSeqs(t *testing.T) string {
	t.Helper()
	rows, _ := e.pool.Query(context.Background(), `SELECT seq FROM `+e.table("effects")+` ORDER BY applied`)
	seqs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(seqs)
}

func TestExecDeferred_BatchAppliesEveryEffectOnceInOneTransaction(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	produce(t, seqRecords(t, e, topic, []string{"k"}, 30)...)
	var n counters
	cfg := e.config(t, topic)
	cfg.BatchMode, cfg.Hooks = true, n.hooks()
	c := e.newConsumer(t, cfg)
	var seen []int // one partition: the handler runs on one goroutine
	consumer.Handle(c, "Seq", e.deferSeq("c", &seen))
	stop := run(t, c)
	waitFor(t, 60*time.Second, "30 applied", func() bool { return n.processed.Load() == 30 })
	stop()
	if got := e.count(t, `SELECT count(DISTINCT event_id) FROM `+e.table("effects")+` WHERE consumer = 'c'`); got != 30 {
		t.Errorf("%d distinct effects, want 30", got)
	}
	if got := e.count(t, `SELECT count(*) FROM `+e.table("effects")); got != 30 {
		t.Errorf("%d effect rows, want 30 (each once)", got)
	}
	if txs := e.count(t, `SELECT count(DISTINCT txid) FROM `+e.table("effects")); txs != 1 {
		t.Errorf("30 records took %d transactions; one batch should apply them in 1", txs)
	}
	for i, v := range seen {
		if v != 1 {
			t.Fatalf("record %d: the handler's read after ExecDeferred saw %d rows of its effect, want 1", i+1, v)
		}
	}
}

// A deferred statement or row that fails is only known when the batch sends it:
// the batch then runs record by record under savepoints, where the failing record
// is retried and dead-lettered alone and every other record applied, in order.
func TestDeferred_FailingEffectIsIsolatedAndDeadLettered(t *testing.T) {
	t.Parallel()
	for _, via := range []string{"ExecDeferred", "InsertDeferred"} {
		t.Run(via, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.failOnSeq(t, 7)
			topic := e.topic(t, 1)
			produce(t, seqRecords(t, e, topic, []string{"k"}, 20)...)
			var n counters
			cfg := e.config(t, topic)
			cfg.BatchMode, cfg.MaxAttempts, cfg.Hooks = true, 2, n.hooks()
			c := e.newConsumer(t, cfg)
			if via == "ExecDeferred" {
				consumer.Handle(c, "Seq", e.deferSeq("c", nil))
			} else {
				consumer.Handle(c, "Seq", e.insertSeq("c", false))
			}
			run(t, c)
			waitFor(t, 60*time.Second, "19 applied and 1 dead-lettered", func() bool {
				return n.processed.Load() == 19 && n.dead.Load() == 1
			})
			if got, want := e.appliedSeqs(t), "[1 2 3 4 5 6 8 9 10 11 12 13 14 15 16 17 18 19 20]"; got != want {
				t.Errorf("applied %s, want %s (all but 7, once each, in order)", got, want)
			}
			if got := e.count(t, `SELECT count(*) FROM `+e.table("processed_events")); got != 19 {
				t.Errorf("processed_events: %d rows, want 19", got)
			}
			dlq := readTopic(t, topic+".dlq", 1, 30*time.Second)
			if id := header(dlq[0], envelope.EventID); id != "k-7" {
				t.Errorf("dead letter %s, want k-7", id)
			}
		})
	}
}

// In single-record mode the deferred statement goes with the COMMIT; its failure
// is the handler's: retried, then dead-lettered, the other records applied.
func TestExecDeferred_SingleModeSendsWithTheCommitAndFailsTheRecord(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.failOnSeq(t, 3)
	topic := e.topic(t, 1)
	produce(t, seqRecords(t, e, topic, []string{"k"}, 5)...)
	var n counters
	cfg := e.config(t, topic)
	cfg.MaxAttempts, cfg.Hooks = 2, n.hooks()
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.deferSeq("c", nil))
	stop := run(t, c)
	waitFor(t, 60*time.Second, "4 applied and 1 dead-lettered", func() bool {
		return n.processed.Load() == 4 && n.dead.Load() == 1
	})
	stop()
	if got := e.appliedSeqs(t); got != "[1 2 4 5]" {
		t.Errorf("applied %s, want [1 2 4 5]", got)
	}
	if txs := e.count(t, `SELECT count(DISTINCT txid) FROM `+e.table("effects")); txs != 4 {
		t.Errorf("%d transactions, want 4 (one per record)", txs)
	}
	if got := e.count(t, `SELECT count(*) FROM `+e.table("processed_events")); got != 4 {
		t.Errorf("processed_events: %d rows, want 4 (not the dead-lettered record)", got)
	}
	if got := n.retry.Load(); got != 1 {
		t.Errorf("%d retries, want 1 (MaxAttempts 2)", got)
	}
}

// insertSeq is a handler that applies its effect with InsertDeferred. With around,
// it also inserts a row noted 'before' with an ExecDeferred INSERT first, and
// marks its row with an ExecDeferred UPDATE after: each must find the other in place.
func (e *env) insertSeq(name string, around bool) func(context.Context, pgx.Tx, consumer.Event[Seq]) error {
	table := pgx.Identifier{e.schema, "effects"}
	cols := []string{"consumer", "event_id", "key", "seq"}
	before := `INSERT INTO ` + e.table("effects") + ` (consumer, event_id, key, seq, note) VALUES ($1, $2, $3, $4, 'before')`
	mark := `UPDATE ` + e.table("effects") + ` SET note = 'marked' WHERE event_id = $1 AND note = ''`
	return func(ctx context.Context, tx pgx.Tx, ev consumer.Event[Seq]) error {
		if around {
			if err := consumer.ExecDeferred(ctx, tx, before, name, ev.ID, ev.Key, ev.Value.Seq); err != nil {
				return err
			}
		}
		if err := consumer.InsertDeferred(ctx, tx, table, cols, name, ev.ID, ev.Key, ev.Value.Seq); err != nil {
			return err
		}
		if around {
			return consumer.ExecDeferred(ctx, tx, mark, ev.ID)
		}
		return nil
	}
}

// countStatements makes every statement that inserts into the effects table (an
// INSERT, or a COPY) add a row to effects_statements.
func (e *env) countStatements(t *testing.T) {
	t.Helper()
	q := fmt.Sprintf(`CREATE TABLE %[1]s (at timestamptz DEFAULT clock_timestamp());
		CREATE FUNCTION %[2]s() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO %[1]s DEFAULT VALUES; RETURN NULL; END $$;
		CREATE TRIGGER count_statements AFTER INSERT ON %[3]s FOR EACH STATEMENT EXECUTE FUNCTION %[2]s();`,
		e.table("effects_statements"), e.table("count_statement"), e.table("effects"))
	if _, err := e.pool.Exec(context.Background(), q); err != nil {
		t.Fatal(err)
	}
}

func TestInsertDeferred_BatchSendsItsRowsAsOneStatement(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.countStatements(t)
	topic := e.topic(t, 1)
	produce(t, seqRecords(t, e, topic, []string{"k"}, 30)...)
	var n counters
	cfg := e.config(t, topic)
	cfg.BatchMode, cfg.Hooks = true, n.hooks()
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.insertSeq("c", false))
	stop := run(t, c)
	waitFor(t, 60*time.Second, "30 applied", func() bool { return n.processed.Load() == 30 })
	stop()
	want := make([]int, 30)
	for i := range want {
		want[i] = i + 1
	}
	if got := e.appliedSeqs(t); got != fmt.Sprint(want) {
		t.Errorf("applied %s, want 1..30 once each, in order", got)
	}
	if txs := e.count(t, `SELECT count(DISTINCT txid) FROM `+e.table("effects")); txs != 1 {
		t.Errorf("30 records took %d transactions; one batch should apply them in 1", txs)
	}
	if got := e.count(t, `SELECT count(*) FROM `+e.table("effects_statements")); got != 1 {
		t.Errorf("the batch's 30 rows took %d statements, want 1 (one COPY)", got)
	}
}

// Rows and statements deferred in turn are sent in that order: the rows come
// between the statement before them and the one after.
func TestInsertDeferred_KeepsItsOrderWithDeferredStatements(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	produce(t, seqRecords(t, e, topic, []string{"k"}, 20)...)
	var want strings.Builder
	for i := 1; i <= 20; i++ {
		fmt.Fprintf(&want, "%d before,%d marked,", i, i)
	}
	for _, batch := range []bool{true, false} {
		var n counters
		cfg := e.config(t, topic)
		cfg.Group += fmt.Sprint(batch)
		cfg.BatchMode, cfg.Hooks = batch, n.hooks()
		c := e.newConsumer(t, cfg)
		consumer.Handle(c, "Seq", e.insertSeq(cfg.Group, true))
		stop := run(t, c)
		waitFor(t, 60*time.Second, "20 applied", func() bool { return n.processed.Load() == 20 })
		stop()
		var got string
		q := `SELECT string_agg(seq || ' ' || note, ',' ORDER BY applied) || ',' FROM ` + e.table("effects") + ` WHERE consumer = $1`
		if err := e.pool.QueryRow(context.Background(), q, cfg.Group).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want.String() {
			t.Errorf("batch mode %v: rows in the order %s\nwant %s", batch, got, want.String())
		}
	}
}

func TestInsertDeferred_ValuesMustMatchColumns(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		table  pgx.Identifier
		cols   []string
		values []any
		want   string
	}{
		{pgx.Identifier{"s", "effects"}, []string{"a", "b"}, []any{1}, `consumer: InsertDeferred into "s"."effects": 1 values for 2 columns`},
		{pgx.Identifier{"effects"}, nil, nil, "consumer: InsertDeferred needs a table and at least one column"},
		{nil, []string{"a"}, []any{1}, "consumer: InsertDeferred needs a table and at least one column"},
	} {
		err := consumer.InsertDeferred(ctx, nil, c.table, c.cols, c.values...)
		if err == nil || err.Error() != c.want {
			t.Errorf("InsertDeferred(%v, %v, %v) = %v, want %q", c.table, c.cols, c.values, err, c.want)
		}
	}
}
