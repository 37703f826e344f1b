package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaybox/relaybox/migrations"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relay"
)

type adminOpts struct {
	common
	json bool
}

func defineAdmin(f *flags) *adminOpts {
	o := &adminOpts{}
	f.common(&o.common)
	f.BoolVar(&o.json, "json", false, "print JSON")
	return o
}

func runMigrate(ctx context.Context, args []string, s *stdio) error {
	out := s.out
	f := newFlags("migrate", s)
	o := defineAdmin(f)
	target := f.Int("target", 0, "up: last version to apply (0: latest); down: version to roll back to (0: all)")
	force := f.Bool("force", false, "down to 0: drop the outbox even with unpublished events in it (they are lost)")
	f.Usage = func() {
		fmt.Fprintln(f.Output(), "usage: relaybox migrate up|down|status [flags]")
		f.PrintDefaults()
	}
	if len(args) == 0 {
		f.Usage()
		return errors.New("migrate: say up, down or status")
	}
	if isHelp(args[0]) {
		f.Usage()
		return flag.ErrHelp
	}
	sub := args[0]
	if err := f.parse(args[1:]); err != nil {
		return err
	}
	pool, err := o.pool(ctx, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	switch sub {
	case "up", "down":
		dir := migrations.Up
		if sub == "down" {
			dir = migrations.Down
			if *target == 0 && !*force {
				if err := refuseDropWithPending(ctx, pool, o.schema); err != nil {
					return err
				}
			}
		}
		res, err := migrations.Migrate(ctx, pool, &migrations.Options{Schema: o.schema, Direction: dir, TargetVersion: *target})
		if err != nil {
			return err
		}
		if o.json {
			return json.NewEncoder(out).Encode(res)
		}
		if len(res.Versions) == 0 {
			fmt.Fprintf(out, "schema %q: nothing to do\n", o.schema)
		}
		for _, v := range res.Versions {
			fmt.Fprintf(out, "schema %q: %s %03d\n", o.schema, map[bool]string{true: "applied", false: "rolled back"}[dir == migrations.Up], v)
		}
		return nil
	case "status":
		st, err := migrations.Status(ctx, pool, &migrations.Options{Schema: o.schema})
		if err != nil {
			return err
		}
		if o.json {
			return json.NewEncoder(out).Encode(st)
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tNAME\tAPPLIED")
		for _, s := range st {
			at := "no"
			if s.Applied {
				at = s.AppliedAt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%03d\t%s\t%s\n", s.Version, s.Name, at)
		}
		return tw.Flush()
	}
	return fmt.Errorf("migrate %q: say up, down or status", sub)
}

// refuseDropWithPending fails while schema's outbox holds events not yet published
// (parked ones included): rolling back every migration drops the table with them.
func refuseDropWithPending(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	table := pgx.Identifier{schema, "outbox"}.Sanitize()
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, table).Scan(&exists); err != nil {
		return fmt.Errorf("migrate down: checking the outbox: %w", err)
	}
	if !exists {
		return nil
	}
	var pending, parked int64
	if err := pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE parked_at IS NOT NULL) FROM `+table+` WHERE published_at IS NULL`).
		Scan(&pending, &parked); err != nil {
		return fmt.Errorf("migrate down: counting unpublished events: %w", err)
	}
	if pending > 0 {
		return fmt.Errorf("migrate down: schema %q has %d unpublished event(s) (%d of them parked) that dropping the outbox would lose; "+
			"let the relay publish them (relaybox status), skip the parked ones, or pass --force", schema, pending, parked)
	}
	return nil
}

func runStatus(ctx context.Context, args []string, s *stdio) error {
	out := s.out
	f := newFlags("status", s)
	o := defineAdmin(f)
	if err := f.parse(args); err != nil {
		return err
	}
	pool, err := o.pool(ctx, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := migrations.Check(ctx, pool, &migrations.Options{Schema: o.schema}); err != nil {
		return err
	}
	admin, err := relay.NewAdmin(pool, &relay.AdminConfig{Schema: o.schema})
	if err != nil {
		return err
	}
	st, err := admin.Status(ctx)
	if err != nil {
		return err
	}
	if o.json {
		return json.NewEncoder(out).Encode(st)
	}
	fmt.Fprintf(out, "backlog %s, oldest unpublished %s, parked %d, live replicas %d\n",
		approx(st.Backlog, st.BacklogEstimated), st.OldestAge.Round(time.Millisecond), st.Parked, len(st.Replicas))
	for reason, n := range st.ParkedByReason {
		fmt.Fprintf(out, "  parked %-22s %d\n", reason, n)
	}
	owners := map[string][]string{}
	for _, s := range st.Shards {
		if s.Owner != "" && s.LeaseExpires.After(time.Now()) {
			owners[s.Owner] = append(owners[s.Owner], strconv.Itoa(s.Shard))
		}
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REPLICA\tMODE\tOPEN TXN\tFENCED\tABORTED\tSHARDS\tHELD")
	for _, r := range st.ReplicaDetails {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", r.ID, r.Mode, r.OpenTxnAge.Round(time.Millisecond), r.FencedWrites, r.AbortedTxns,
			len(owners[r.ID]), strings.Join(owners[r.ID], ","))
	}
	tw.Flush()
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tBACKLOG\tOLDEST\tOWNER")
	for _, s := range st.Shards {
		if s.Backlog > 0 {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", s.Shard, approx(s.Backlog, s.Estimated), s.OldestAge.Round(time.Millisecond), s.Owner)
		}
	}
	return tw.Flush()
}

// approx prints n, marked "~" when it is an estimate (relay.StatusExactBacklog).
func approx(n int64, estimated bool) string {
	if estimated {
		return "~" + strconv.FormatInt(n, 10)
	}
	return strconv.FormatInt(n, 10)
}

func runParked(ctx context.Context, args []string, s *stdio) error {
	out := s.out
	f := newFlags("parked", s)
	o := defineAdmin(f)
	ids := f.String("id", "", "outbox row ids, comma-separated")
	eventIDs := f.String("event-id", "", "event ids (UUID), comma-separated")
	key := f.String("key", "", "event key")
	reason := f.String("reason", "", "parking reason: "+reasonList())
	all := f.Bool("all", false, "every parked event (retry/skip need this or a filter)")
	limit := f.Int("limit", 100, "list: most rows shown")
	var channel string
	f.str(&channel, "channel", "RELAYBOX_CHANNEL", outbox.DefaultChannel, "retry: the relays' LISTEN channel, notified so that they publish at once")
	f.Usage = func() {
		fmt.Fprintln(f.Output(), "usage: relaybox parked list|retry|skip [--id N,..|--event-id U,..|--key K|--reason R|--all]")
		f.PrintDefaults()
	}
	if len(args) == 0 {
		f.Usage()
		return errors.New("parked: say list, retry or skip")
	}
	if isHelp(args[0]) {
		f.Usage()
		return flag.ErrHelp
	}
	sub := args[0]
	if err := f.parse(args[1:]); err != nil {
		return err
	}
	filter := relay.ParkedFilter{Key: *key, Reason: relay.ParkReason(*reason), All: *all}
	if *reason != "" && !slices.Contains(relay.ParkReasons(), filter.Reason) {
		return fmt.Errorf("--reason %q: want one of %s", *reason, reasonList())
	}
	for _, s := range splitList(*ids) {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("--id %q: not a number", s)
		}
		filter.IDs = append(filter.IDs, n)
	}
	for _, s := range splitList(*eventIDs) {
		u, err := uuid.Parse(s)
		if err != nil {
			return fmt.Errorf("--event-id %q: not a UUID", s)
		}
		filter.EventIDs = append(filter.EventIDs, u)
	}
	pool, err := o.pool(ctx, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	admin, err := relay.NewAdmin(pool, &relay.AdminConfig{Schema: o.schema, Channel: channel})
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		got, err := admin.ParkedList(ctx, &relay.ParkedListParams{ParkedFilter: filter, Limit: *limit})
		if err != nil {
			return err
		}
		if o.json {
			return json.NewEncoder(out).Encode(got)
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tEVENT ID\tTOPIC\tKEY\tTYPE\tPARKED AT\tREASON\tDETAIL")
		for _, p := range got {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.EventID, p.Topic, p.Key, p.Type, p.ParkedAt.UTC().Format(time.RFC3339), p.Reason, p.Detail)
		}
		return tw.Flush()
	case "retry":
		n, err := admin.ParkedRetry(ctx, &filter)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "unparked %d event(s); the relay publishes them next, in key order\n", n)
		return nil
	case "skip":
		n, err := admin.ParkedSkip(ctx, &filter)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "skipped (deleted) %d parked event(s); their keys flow again\n", n)
		return nil
	}
	return fmt.Errorf("parked %q: say list, retry or skip", sub)
}

// reasonList is the park reasons, comma-separated.
func reasonList() string {
	var r []string
	for _, p := range relay.ParkReasons() {
		r = append(r, string(p))
	}
	return strings.Join(r, ", ")
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
