// Package cli implements the relaybox command: relay, migrate, status, parked, dlq,
// demo. cmd/relaybox/main.go only calls Main.
//
// Every flag has an environment variable (shown in -help); a flag given on the command
// line wins over the variable. Errors print as one line: "relaybox: <what failed>".
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, out io.Writer) error
}

func commands() []command {
	return []command{
		{"relay", "publish the outbox to Kafka (the daemon)", runRelay},
		{"migrate", "apply or roll back relaybox's tables: migrate up|down|status", runMigrate},
		{"status", "backlog, oldest age, leases and owners, parked events by reason", runStatus},
		{"parked", "parked events: parked list|retry|skip", runParked},
		{"dlq", "dead letters: dlq redrive", runDLQ},
		{"demo", "run the whole flow in one process on embedded defaults", runDemo},
		{"version", "print the version and commit of this binary", runVersion},
	}
}

// Main runs the command line and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) < 1 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) < 1 {
			return 2
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(ctx, args[1:], stdout)
			if err == nil || errors.Is(err, flag.ErrHelp) {
				return 0
			}
			fmt.Fprintln(stderr, "relaybox: "+oneLine(err))
			var ee exitError
			if errors.As(err, &ee) {
				return int(ee)
			}
			return 1
		}
	}
	fmt.Fprintf(stderr, "relaybox: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

type exitError int

func (e exitError) Error() string { return "exit " + strconv.Itoa(int(e)) }

func usage(w io.Writer) {
	fmt.Fprintln(w, "relaybox: transactional outbox relay and idempotent consumer for Postgres, Kafka and Avro")
	fmt.Fprintln(w, "\nusage: relaybox <command> [flags]   (relaybox <command> -help for its flags)")
	fmt.Fprintln(w, "\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
}

// oneLine flattens an error to one line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

var (
	envMu   sync.Mutex
	envSeen = map[string]bool{}
)

// EnvVars lists every environment variable a relaybox command reads.
func EnvVars() []string {
	registerAll() // variables are recorded as flag sets are defined
	envMu.Lock()
	defer envMu.Unlock()
	out := make([]string, 0, len(envSeen))
	for k := range envSeen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

type flags struct {
	*flag.FlagSet
	envErr []error
}

func newFlags(name string) *flags {
	fs := flag.NewFlagSet("relaybox "+name, flag.ContinueOnError)
	return &flags{FlagSet: fs}
}

func seen(env string) {
	envMu.Lock()
	envSeen[env] = true
	envMu.Unlock()
}

func (f *flags) str(p *string, name, env, def, usage string) {
	seen(env)
	if v, ok := os.LookupEnv(env); ok {
		def = v
	}
	f.StringVar(p, name, def, usage+" [$"+env+"]")
}

func (f *flags) secret(p *string, name, env, usage string) {
	seen(env)
	f.StringVar(p, name, os.Getenv(env), usage+" [$"+env+"] (prefer the variable: flags show in ps)")
}

func (f *flags) dur(p *time.Duration, name, env string, def time.Duration, usage string) {
	seen(env)
	if v, ok := os.LookupEnv(env); ok {
		if d, err := time.ParseDuration(v); err == nil {
			def = d
		} else {
			f.envErr = append(f.envErr, fmt.Errorf("$%s: %q is not a duration (e.g. 500ms, 15s)", env, v))
		}
	}
	f.DurationVar(p, name, def, usage+" [$"+env+"]")
}

func (f *flags) num(p *int, name, env string, def int, usage string) {
	seen(env)
	if v, ok := os.LookupEnv(env); ok {
		if n, err := strconv.Atoi(v); err == nil {
			def = n
		} else {
			f.envErr = append(f.envErr, fmt.Errorf("$%s: %q is not an integer", env, v))
		}
	}
	f.IntVar(p, name, def, usage+" [$"+env+"]")
}

func (f *flags) boolean(p *bool, name, env string, def bool, usage string) {
	seen(env)
	if v, ok := os.LookupEnv(env); ok {
		if b, err := strconv.ParseBool(v); err == nil {
			def = b
		} else {
			f.envErr = append(f.envErr, fmt.Errorf("$%s: %q is not a boolean", env, v))
		}
	}
	f.BoolVar(p, name, def, usage+" [$"+env+"]")
}

func (f *flags) parse(args []string) error {
	if err := f.Parse(args); err != nil {
		return err
	}
	if len(f.envErr) > 0 {
		return errors.Join(f.envErr...)
	}
	return nil
}

// common holds what most commands share.
type common struct {
	databaseURL string
	schema      string
	logFormat   string
	logLevel    string
}

func (f *flags) common(c *common) {
	f.str(&c.databaseURL, "database-url", "DATABASE_URL", "", "Postgres URL of the database holding the outbox (TLS via sslmode in the URL)")
	f.str(&c.schema, "schema", "RELAYBOX_SCHEMA", "relaybox", "Postgres schema of relaybox's tables")
	f.str(&c.logFormat, "log-format", "RELAYBOX_LOG_FORMAT", "json", "log format: json or text")
	f.str(&c.logLevel, "log-level", "RELAYBOX_LOG_LEVEL", "info", "log level: debug, info, warn, error")
}

func (c *common) logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", c.logLevel)
	}
	o := &slog.HandlerOptions{Level: lvl}
	switch c.logFormat {
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want json or text", c.logFormat)
}

func (c *common) pool(ctx context.Context, maxConns int32) (*pgxpool.Pool, error) {
	return c.poolPing(ctx, maxConns, true)
}

// poolPing builds the pool; with ping it fails at once when Postgres does not answer
// (one-shot commands), without it the pool connects lazily (daemons that wait).
func (c *common) poolPing(ctx context.Context, maxConns int32, ping bool) (*pgxpool.Pool, error) {
	if c.databaseURL == "" {
		return nil, errors.New("no database: set DATABASE_URL or --database-url")
	}
	cfg, err := pgxpool.ParseConfig(c.databaseURL)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(pctx, cfg)
	if err == nil && ping {
		err = pool.Ping(pctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		return nil, fmt.Errorf("postgres unreachable: %w", err)
	}
	return pool, nil
}
