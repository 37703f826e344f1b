// Command inventory is the inventory example consumer. See README.md.
package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/examples/inventory/inventorysvc"
	"github.com/relaybox/relaybox/examples/orders/ordersvc"
	"github.com/relaybox/relaybox/metrics"
	"github.com/relaybox/relaybox/migrations"
)

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log); err != nil {
		log.Error("inventory stopped", "err", err)
		os.Exit(1)
	}
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func run(ctx context.Context, log *slog.Logger) error {
	for _, k := range []string{"DATABASE_URL", "KAFKA_BROKERS", "SCHEMA_REGISTRY_URL"} {
		if os.Getenv(k) == "" {
			return errors.New("set " + k)
		}
	}
	relaySchema := env("RELAYBOX_SCHEMA", "relaybox")
	appSchema := env("INVENTORY_SCHEMA", "inventory")
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := migrations.Migrate(ctx, pool, &migrations.Options{Schema: relaySchema}); err != nil {
		return err
	}
	svc := inventorysvc.New(pool, appSchema)
	if err := svc.Migrate(ctx, appSchema); err != nil {
		return err
	}
	cfg := &consumer.Config{
		Group: env("INVENTORY_GROUP", "inventory"), Topics: []string{env("INVENTORY_TOPIC", ordersvc.Topic)},
		Brokers: strings.Split(os.Getenv("KAFKA_BROKERS"), ","), RegistryURL: os.Getenv("SCHEMA_REGISTRY_URL"),
		Schema: relaySchema, Logger: log,
	}
	// The consumer's metrics (records by outcome, lag, handler latency, dead
	// letters, ...) on GET /metrics: the dashboard and alerts of deploy/ read them.
	m, err := metrics.NewConsumer(nil)
	if err != nil {
		return err
	}
	m.Install(cfg)
	c, err := consumer.New(pool, cfg)
	if err != nil {
		return err
	}
	svc.Register(c)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	mux.Handle("/", svc.Handler(nil))
	srv := &http.Server{Addr: env("INVENTORY_ADDR", ":8081"), Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
			log.Error("http", "err", err)
		}
	}()
	log.Info("inventory consuming", "topic", env("INVENTORY_TOPIC", ordersvc.Topic), "addr", srv.Addr)
	err = c.Run(ctx)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	return err
}
