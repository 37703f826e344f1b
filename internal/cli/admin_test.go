package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
)

// parkOne writes one event into schema's outbox and parks it.
func parkOne(t *testing.T, schema string) {
	t.Helper()
	pool := testenv.Pool(t)
	ctx := context.Background()
	w, err := outbox.New(pool, &outbox.Config{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return outbox.Publish(ctx, w, tx, "orders", "k", "Note", Note{N: 1})
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE `+pgx.Identifier{schema, "outbox"}.Sanitize()+` SET parked_at = now(), park_reason = 'too_large', last_error = 'test'`); err != nil {
		t.Fatal(err)
	}
}

// `parked retry` wakes the relays on their own channel (--channel, RELAYBOX_CHANNEL),
// not on the default one only.
func TestParkedRetry_NotifiesTheRelaysChannel(t *testing.T) {
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	db := testenv.DatabaseURL(t)
	ctx := context.Background()
	for _, viaEnv := range []bool{false, true} {
		parkOne(t, schema)
		channel := testenv.Name(t, "chan")
		conn, err := pgx.Connect(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, `LISTEN `+pgx.Identifier{channel}.Sanitize()); err != nil {
			t.Fatal(err)
		}
		args := []string{"parked", "retry", "--all", "--database-url", db, "--schema", schema}
		if viaEnv {
			t.Setenv("RELAYBOX_CHANNEL", channel)
		} else {
			args = append(args, "--channel", channel)
		}
		if code, out, errs := run(t, args...); code != 0 || !strings.Contains(out, "unparked ") {
			t.Fatalf("parked retry: exit %d %q %q", code, out, errs)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if err != nil || n.Channel != channel {
			t.Fatalf("via env %v: no notification on %s: %v", viaEnv, channel, err)
		}
	}
}

// `migrate down` to nothing drops the outbox: refused while events wait in it,
// saying how many; --force does it.
func TestMigrateDown_RefusesWhileEventsArePending(t *testing.T) {
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	db := testenv.DatabaseURL(t)
	parkOne(t, schema)
	ctx := context.Background()
	w, _ := outbox.New(pool, &outbox.Config{Schema: schema})
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return outbox.Publish(ctx, w, tx, "orders", "k2", "Note", Note{N: 2})
	}); err != nil {
		t.Fatal(err)
	}
	code, _, errs := run(t, "migrate", "down", "--database-url", db, "--schema", schema)
	if code != 1 || !strings.Contains(errs, "2 unpublished event(s) (1 of them parked)") || !strings.Contains(errs, "--force") {
		t.Fatalf("migrate down with 2 pending: exit %d %q; want a refusal counting them", code, errs)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{schema, "outbox"}.Sanitize()).Scan(&n); err != nil || n != 2 {
		t.Fatalf("after the refusal the outbox has %d rows (%v), want 2", n, err)
	}
	if code, out, errs := run(t, "migrate", "down", "--target", "1", "--database-url", db, "--schema", schema); code != 0 {
		t.Fatalf("migrate down --target 1 keeps the outbox, so is allowed: exit %d %q %q", code, out, errs)
	}
	if code, out, errs := run(t, "migrate", "down", "--force", "--database-url", db, "--schema", schema); code != 0 || !strings.Contains(out, "rolled back 001") {
		t.Fatalf("migrate down --force: exit %d %q %q", code, out, errs)
	}
}

// `parked list` filters by the park_reason column and shows the reason and the
// detail apart; a reason that does not exist is refused, naming the valid ones.
func TestParkedList_ByReasonColumn(t *testing.T) {
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	db := testenv.DatabaseURL(t)
	parkOne(t, schema)
	code, out, errs := run(t, "parked", "list", "--reason", "too_large", "--database-url", db, "--schema", schema)
	if code != 0 || !strings.Contains(out, "REASON") || !strings.Contains(out, "too_large") || !strings.Contains(out, "test") {
		t.Fatalf("parked list --reason too_large: exit %d %q %q", code, out, errs)
	}
	if code, out, _ := run(t, "parked", "list", "--reason", "invalid", "--database-url", db, "--schema", schema); code != 0 || strings.Contains(out, "too_large") {
		t.Fatalf("parked list --reason invalid: exit %d, listed %q; want no row", code, out)
	}
	code, _, errs = run(t, "parked", "list", "--reason", "large", "--database-url", db, "--schema", schema)
	if code != 1 || !strings.Contains(errs, `--reason "large"`) || !strings.Contains(errs, "too_large") {
		t.Fatalf("parked list --reason large: exit %d %q; want a refusal listing the reasons", code, errs)
	}
	code, out, errs = run(t, "status", "--json", "--database-url", db, "--schema", schema)
	if code != 0 || !strings.Contains(out, `"ParkedByReason":{"too_large":1}`) {
		t.Fatalf("status --json: exit %d %q %q", code, out, errs)
	}
}
