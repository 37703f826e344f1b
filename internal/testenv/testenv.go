// Package testenv connects tests to the real services that `make env` starts.
//
// A test that needs a service calls the matching helper. When the service's variable
// (DATABASE_URL, KAFKA_BROKERS, SCHEMA_REGISTRY_URL) is unset the test is skipped with a
// message naming the variable, unless RELAYBOX_REQUIRE_SERVICES=1 (set by `make test`),
// under which it fails. A variable that is set but whose service cannot be reached
// always fails the test.
//
// Every helper isolates: each test gets its own Postgres schema and its own topics.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/migrations"
)

// RequireVar is the variable that turns "skip when a service is missing" into "fail".
const RequireVar = "RELAYBOX_REQUIRE_SERVICES"

// Required reports whether missing services fail tests.
func Required() bool { return os.Getenv(RequireVar) == "1" }

// Var returns the value of a service variable, or skips/fails the test if it is unset.
func Var(t testing.TB, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v != "" {
		return v
	}
	msg := fmt.Sprintf("integration test needs %s (run `make env` and export what it prints)", name)
	if Required() {
		t.Fatalf("%s; %s=1 forbids skipping", msg, RequireVar)
	}
	t.Skip(msg)
	return ""
}

// DatabaseURL returns DATABASE_URL.
func DatabaseURL(t testing.TB) string { return Var(t, "DATABASE_URL") }

// Brokers returns KAFKA_BROKERS split on commas.
func Brokers(t testing.TB) []string { return strings.Split(Var(t, "KAFKA_BROKERS"), ",") }

// RegistryURL returns SCHEMA_REGISTRY_URL after checking that it answers.
func RegistryURL(t testing.TB) string {
	t.Helper()
	u := Var(t, "SCHEMA_REGISTRY_URL")
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(strings.TrimRight(u, "/") + "/subjects")
	if err != nil {
		t.Fatalf("schema registry at SCHEMA_REGISTRY_URL unreachable: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("schema registry at SCHEMA_REGISTRY_URL answered GET /subjects with %s", resp.Status)
	}
	return u
}

// Pool returns a pool on DATABASE_URL, closed when the test ends.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return PoolWith(t, nil)
}

// PoolWith is Pool with a hook to adjust the pool config.
func PoolWith(t testing.TB, adjust func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(DatabaseURL(t))
	if err != nil {
		t.Fatalf("DATABASE_URL does not parse: %v", err)
	}
	if adjust != nil {
		adjust(cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		t.Fatalf("postgres at DATABASE_URL unreachable: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

var nameRE = regexp.MustCompile(`[^a-z0-9]+`)

// Name returns a unique lower-case name for the test, usable as a schema or topic.
func Name(t testing.TB, prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	n := strings.Trim(nameRE.ReplaceAllString(strings.ToLower(t.Name()), "_"), "_")
	if len(n) > 30 {
		n = n[len(n)-30:]
	}
	return prefix + "_" + n + "_" + hex.EncodeToString(b[:])
}

// Schema creates a fresh schema for the test, migrates relaybox's tables into it
// and drops it when the test ends (unless RELAYBOX_KEEP_SCHEMAS=1).
func Schema(t testing.TB, pool *pgxpool.Pool) string {
	t.Helper()
	schema := Name(t, "t")
	ctx := context.Background()
	if _, err := migrations.Migrate(ctx, pool, &migrations.Options{Schema: schema}); err != nil {
		t.Fatalf("migrating schema %s: %v", schema, err)
	}
	t.Cleanup(func() {
		if os.Getenv("RELAYBOX_KEEP_SCHEMAS") == "1" {
			return
		}
		_, _ = pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
	})
	return schema
}

// Client returns a franz-go client on KAFKA_BROKERS, closed when the test ends.
func Client(t testing.TB, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(Brokers(t)...)}, opts...)...)
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	t.Cleanup(cl.Close)
	return cl
}

var pingOnce sync.Map

// Topic creates a unique topic with the given partition count, deleted when the test ends.
func Topic(t testing.TB, partitions int32) string {
	t.Helper()
	name := Name(t, "t")
	TopicNamed(t, name, partitions)
	return name
}

// TopicNamed creates the named topic (replication 1), deleted when the test ends.
func TopicNamed(t testing.TB, name string, partitions int32) {
	t.Helper()
	brokers := Brokers(t)
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, seen := pingOnce.Load(strings.Join(brokers, ",")); !seen {
		if _, err := adm.ListBrokers(ctx); err != nil {
			cl.Close()
			t.Fatalf("kafka at KAFKA_BROKERS=%s unreachable: %v", strings.Join(brokers, ","), err)
		}
		pingOnce.Store(strings.Join(brokers, ","), true)
	}
	resp, err := adm.CreateTopic(ctx, partitions, 1, nil, name)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		cl.Close()
		t.Fatalf("creating topic %s: %v", name, err)
	}
	// A created topic is not yet hosted everywhere: metadata can name a leader that
	// still answers UNKNOWN_TOPIC_OR_PARTITION, and a loaded CI machine lets a
	// producer's few retries run out in that window. Wait until every partition's
	// leader answers a ListOffsets for it.
	if err := awaitHosted(ctx, adm, name, partitions); err != nil {
		cl.Close()
		t.Fatalf("topic %s created but not served: %v", name, err)
	}
	t.Cleanup(func() {
		defer cl.Close()
		if os.Getenv("RELAYBOX_KEEP_TOPICS") == "1" {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = adm.DeleteTopics(ctx, name)
	})
}

// awaitHosted polls until every partition of topic has a leader that lists its
// end offset without error.
func awaitHosted(ctx context.Context, adm *kadm.Client, topic string, partitions int32) error {
	for {
		offs, err := adm.ListEndOffsets(ctx, topic)
		if err == nil {
			served := int32(0)
			offs.Each(func(o kadm.ListedOffset) {
				if o.Err == nil {
					served++
				} else {
					err = o.Err
				}
			})
			if served == partitions {
				return nil
			}
			if err == nil {
				err = fmt.Errorf("%d of %d partitions listed", served, partitions)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
