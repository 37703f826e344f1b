// Command orders is the orders example service. See README.md.
package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaybox/relaybox/examples/orders/ordersvc"
	"github.com/relaybox/relaybox/migrations"
)

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log); err != nil {
		log.Error("orders service stopped", "err", err)
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
	dbURL := os.Getenv("DATABASE_URL")
	if dbURL == "" {
		return errors.New("set DATABASE_URL")
	}
	relaySchema := env("RELAYBOX_SCHEMA", "relaybox")
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := migrations.Migrate(ctx, pool, &migrations.Options{Schema: relaySchema}); err != nil {
		return err
	}
	svc, err := ordersvc.New(pool, relaySchema, env("ORDERS_SCHEMA", "orders"), log)
	if err != nil {
		return err
	}
	svc.Topic = env("ORDERS_TOPIC", ordersvc.Topic)
	if err := svc.Migrate(ctx, env("ORDERS_SCHEMA", "orders")); err != nil {
		return err
	}
	srv := &http.Server{Addr: env("ORDERS_ADDR", ":8080"), Handler: svc.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Info("orders service listening", "addr", srv.Addr)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
