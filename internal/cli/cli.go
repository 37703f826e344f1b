// Package cli implements the relaybox command: relay, migrate, status, parked, dlq,
// schema, version. cmd/relaybox/main.go only calls Main. (The demo is a program of
// its own, examples/demo, so that this binary links none of its fakes.)
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

	"github.com/relaybox/relaybox/internal/redact"
	"github.com/relaybox/relaybox/migrations"
)

type command struct {
	name, summary string
	// subs are the subcommands, if any (the secret-leak test runs each).
	subs []string
	run  func(ctx context.Context, args []string, s *stdio) error
}

func commands() []command {
	return []command{
		{"relay", "publish the outbox to Kafka (the daemon)", nil, runRelay},
		{"migrate", "apply or roll back relaybox's tables: migrate up|down|status", []string{"up", "down", "status"}, runMigrate},
		{"status", "backlog, oldest age, leases and owners, parked events by reason", nil, runStatus},
		{"parked", "parked events: parked list|retry|skip", []string{"list", "retry", "skip"}, runParked},
		{"dlq", "dead letters: dlq redrive", []string{"redrive"}, runDLQ},
		{"schema", "schema governance: schema check|compat|list", []string{"check", "compat", "list"}, runSchema},
		{"version", "print the version and commit of this binary", nil, runVersion},
	}
}

// stdio is one invocation's output. Everything written through it, logs and usage
// included, is scrubbed of the secrets its flags and environment carry (passwords,
// URL userinfo), so that no secret reaches a terminal or a pod's log.
type stdio struct {
	out, err io.Writer
	secrets  *redact.Set
}

// Main runs the command line and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return mainContext(ctx, args, stdout, stderr)
}

// mainContext is Main under ctx.
func mainContext(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	secrets := &redact.Set{}
	for _, env := range secretEnvVars() { // before anything can print them
		secrets.Add(os.Getenv(env))
	}
	s := &stdio{out: secrets.Writer(stdout), err: secrets.Writer(stderr), secrets: secrets}
	if len(args) < 1 || args[0] == "help" || isHelp(args[0]) {
		usage(s.err)
		if len(args) < 1 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(ctx, args[1:], s)
			if err == nil || errors.Is(err, flag.ErrHelp) {
				return 0
			}
			fmt.Fprintln(s.err, "relaybox: "+oneLine(err))
			var ee exitError
			if errors.As(err, &ee) {
				return int(ee)
			}
			return 1
		}
	}
	fmt.Fprintf(s.err, "relaybox: unknown command %q\n", args[0])
	usage(s.err)
	return 2
}

// isHelp reports whether arg asks for help the way the flag package understands it
// (-h, -help, --h, --help).
func isHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--h", "--help":
		return true
	}
	return false
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
	envMu     sync.Mutex
	envSeen   = map[string]bool{}
	envSecret = map[string]bool{} // variables whose values are secrets
)

// secretEnvVars lists the variables holding secrets (passwords). The passwords in
// connection URLs are masked by pattern (redact.URL), not as literal values: a
// development password such as "relaybox" would mask every mention of the name.
func secretEnvVars() []string { return envNames(envSecret) }

// EnvVars lists every environment variable a relaybox command reads.
func EnvVars() []string { return envNames(envSeen) }

// envNames returns the sorted keys of set, once every flag set has been defined
// (variables are recorded as flag sets are defined).
func envNames(set map[string]bool) []string {
	registerAll()
	envMu.Lock()
	defer envMu.Unlock()
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// flags is a command's flag set. A flag's default is the built-in one, never a
// value from the environment: the flag package prints defaults in usage (-h, a bad
// flag), and an environment value may be a password. Variables are applied by
// parse, to the flags the command line did not set.
type flags struct {
	*flag.FlagSet
	s        *stdio
	bindings []binding
}

// binding ties a flag to its environment variable.
type binding struct {
	flag, env string
	want      string // what a bad value is not, e.g. "a duration (e.g. 500ms, 15s)"
	secret    bool   // the value is a secret (a password)
}

// newFlags returns the flag set of a command; s (nil only when the set is defined
// to list variables) receives its usage and learns its secrets.
func newFlags(name string, s *stdio) *flags {
	fs := flag.NewFlagSet("relaybox "+name, flag.ContinueOnError)
	if s != nil {
		fs.SetOutput(s.err)
	}
	return &flags{FlagSet: fs, s: s}
}

func (f *flags) bind(name, env, want string, secret bool) {
	envMu.Lock()
	envSeen[env] = true
	if secret {
		envSecret[env] = true
	}
	envMu.Unlock()
	f.bindings = append(f.bindings, binding{flag: name, env: env, want: want, secret: secret})
}

func (f *flags) str(p *string, name, env, def, usage string) {
	f.bind(name, env, "", false)
	f.StringVar(p, name, def, usage+" [$"+env+"]")
}

// conn defines a connection URL flag: its password is masked in every output by
// pattern (redact.URL), and its default is never taken from the environment.
func (f *flags) conn(p *string, name, env, usage string) {
	f.bind(name, env, "", false)
	f.StringVar(p, name, "", usage+" [$"+env+"]")
}

func (f *flags) secret(p *string, name, env, usage string) {
	f.bind(name, env, "", true)
	f.StringVar(p, name, "", usage+" [$"+env+"] (prefer the variable: flags show in ps)")
}

func (f *flags) dur(p *time.Duration, name, env string, def time.Duration, usage string) {
	f.bind(name, env, "a duration (e.g. 500ms, 15s)", false)
	f.DurationVar(p, name, def, usage+" [$"+env+"]")
}

func (f *flags) num(p *int, name, env string, def int, usage string) {
	f.bind(name, env, "an integer", false)
	f.IntVar(p, name, def, usage+" [$"+env+"]")
}

func (f *flags) boolean(p *bool, name, env string, def bool, usage string) {
	f.bind(name, env, "a boolean", false)
	f.BoolVar(p, name, def, usage+" [$"+env+"]")
}

// parse parses args, then applies the environment to the flags args did not set,
// and registers the secrets among the values with the invocation's output.
func (f *flags) parse(args []string) error {
	if err := f.Parse(args); err != nil {
		return err
	}
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	var errs []error
	for _, b := range f.bindings {
		// An empty variable sets a string flag to "" (RELAYBOX_METRICS_ADDR= turns the
		// endpoint off) and leaves any other flag at its default.
		if v, ok := os.LookupEnv(b.env); ok && !set[b.flag] && (v != "" || b.want == "") {
			if err := f.Set(b.flag, v); err != nil {
				if b.secret {
					errs = append(errs, fmt.Errorf("$%s: not a valid value", b.env))
				} else {
					errs = append(errs, fmt.Errorf("$%s: %q is not %s", b.env, v, b.want))
				}
			}
		}
		if b.secret && f.s != nil {
			f.s.secrets.Add(f.Lookup(b.flag).Value.String())
		}
	}
	return errors.Join(errs...)
}

// common holds what most commands share.
type common struct {
	databaseURL string
	schema      string
	logFormat   string
	logLevel    string
}

func (f *flags) common(c *common) {
	f.conn(&c.databaseURL, "database-url", "DATABASE_URL", "Postgres URL of the database holding the outbox (TLS via sslmode in the URL: verify-full in production)")
	f.str(&c.schema, "schema", "RELAYBOX_SCHEMA", migrations.DefaultSchema, "Postgres schema of relaybox's tables")
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
