package relayboxtest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relaybox/relaybox/consumer"
)

// Consumer is a consumer.Consumer a [Harness] built and runs: register handlers on
// its embedded *consumer.Consumer (consumer.Handle(c.Consumer, ...)), call Start,
// then wait with AwaitApplied.
type Consumer struct {
	*consumer.Consumer
	h           *Harness
	group       string
	topics      []string
	maxAttempts int

	once   sync.Once
	run    *runner // set by Start
	mu     sync.Mutex
	failed map[string]handlerFailure // event id -> the handler's last failure
}

type handlerFailure struct {
	err      error
	attempts int
	final    bool // dead-lettered: Permanent, or MaxAttempts reached
}

// Consumer builds a consumer on the harness: cfg's Brokers, RegistryURL (unless
// Registry is set), Schema and Logger (unless set) are the harness's. cfg.Group
// defaults to "relayboxtest"; on real Kafka it gets a suffix unique to the test, as
// [Harness.Topic] names do ([Consumer.Group] returns it). The consumer does not run
// until Start.
func (h *Harness) Consumer(cfg *consumer.Config) *Consumer {
	h.t.Helper()
	c := consumer.Config{}
	if cfg != nil {
		c = *cfg
	}
	if c.Group == "" {
		c.Group = "relayboxtest"
	}
	if !h.inProcess {
		c.Group += "-" + h.suffix
	}
	c.Brokers = h.brokers
	if c.Registry == nil {
		c.RegistryURL = h.registry
	}
	c.Schema = h.schema
	if c.Logger == nil {
		c.Logger = h.log
	}
	inner, err := consumer.New(h.pool, &c)
	if err != nil {
		h.t.Fatalf("relayboxtest: consumer: %v", err)
	}
	hc := &Consumer{
		Consumer: inner, h: h, group: c.Group, topics: c.Topics, maxAttempts: c.WithDefaults().MaxAttempts,
		failed: map[string]handlerFailure{},
	}
	// Handler failures are remembered per event, so that AwaitApplied says why an
	// event is not applied (and returns at once for one that was dead-lettered).
	inner.Use(func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, tx pgx.Tx, m *consumer.Message) error {
			err := next.Handle(ctx, tx, m)
			if err != nil {
				hc.mu.Lock()
				f := hc.failed[m.ID]
				f.attempts++
				f.err = err
				f.final = consumer.IsPermanent(err) || f.attempts >= hc.maxAttempts
				hc.failed[m.ID] = f
				hc.mu.Unlock()
			}
			return err
		})
	})
	return hc
}

// Group is the consumer group: the consumer_group of its processed_events rows.
func (c *Consumer) Group() string { return c.group }

// Start runs the consumer until the test ends. Register its handlers first.
func (c *Consumer) Start() {
	c.once.Do(func() {
		run := startRunner(c.h.t, "consumer "+c.group, c.Run)
		c.mu.Lock()
		c.run = run
		c.mu.Unlock()
	})
}

// started returns the consumer's runner, nil before Start.
func (c *Consumer) started() *runner {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.run
}

// AwaitApplied returns nil once the consumer has applied (or, for event types it
// has no handler for, recorded) every event of eventIDs: each has its row in
// processed_events for the consumer's group, committed with the handler's effects.
// Without eventIDs it waits for every event the outbox holds for the consumer's
// topics (the harness's relay keeps published rows), which also waits for them to
// be published.
//
// It returns an error at once when an awaited event was parked by the relay or
// dead-lettered by the consumer (with the handler's error), when the consumer
// stopped, and when ctx ends first (with the events missing and the last handler
// error of each); without a deadline on ctx, it waits at most DefaultAwaitTimeout.
func (c *Consumer) AwaitApplied(ctx context.Context, eventIDs ...string) error {
	return c.h.await(ctx, c.group, c.topics, c, eventIDs)
}

// AwaitApplied is [Consumer.AwaitApplied] for a consumer the harness did not build
// (one the service's own main starts, on [Harness.Brokers], [Harness.RegistryURL]
// and [Harness.Schema]): it waits until group has recorded eventIDs in
// processed_events, or, without eventIDs, every event of the outbox. It cannot see
// the consumer's handler errors, so a dead-lettered event shows only as missing
// when ctx ends.
func (h *Harness) AwaitApplied(ctx context.Context, group string, eventIDs ...string) error {
	return h.await(ctx, group, nil, nil, eventIDs)
}

// await waits until group has recorded eventIDs (or every event of the outbox on
// topics; any topic when topics is nil). c, when not nil, gives handler failures and
// whether the consumer stopped.
func (h *Harness) await(ctx context.Context, group string, topics []string, c *Consumer, eventIDs []string) error {
	ctx, cancel := withDefaultDeadline(ctx)
	defer cancel()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	var missing []missingEvent // as last read: a read cut short by ctx keeps the previous
	for {
		m, err := h.missing(ctx, group, topics, eventIDs)
		switch {
		case err == nil && len(m) == 0:
			return nil
		case err == nil:
			missing = m
		case ctx.Err() == nil:
			return fmt.Errorf("relayboxtest: AwaitApplied: %w", err)
		}
		var problems []string
		for _, m := range missing {
			if f, ok := c.failure(m.id); ok && f.final {
				problems = append(problems, fmt.Sprintf("event %s dead-lettered after %d attempt(s): %v", m.id, f.attempts, f.err))
			}
			if m.parked {
				problems = append(problems, fmt.Sprintf("event %s (%s) parked by the relay: %s", m.id, m.typ, m.reason))
			}
		}
		if len(problems) > 0 {
			return fmt.Errorf("relayboxtest: AwaitApplied: %s", strings.Join(problems, "; "))
		}
		if c != nil {
			run := c.started()
			if run == nil {
				return fmt.Errorf("relayboxtest: AwaitApplied: consumer %s not started (call Start)", c.group)
			}
			if stopped, err := run.stopped(); stopped {
				return fmt.Errorf("relayboxtest: AwaitApplied: the consumer stopped (%v) with %d event(s) not applied", err, len(missing))
			}
		}
		if stopped, err := h.relayRun.stopped(); stopped {
			return fmt.Errorf("relayboxtest: AwaitApplied: the relay stopped (%v) with %d event(s) not applied", err, len(missing))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("relayboxtest: AwaitApplied: %w; %s", ctx.Err(), describeMissing(group, missing, c))
		case <-tick.C:
		}
	}
}

// failure returns the handler's last failure on event id (none for a nil c).
func (c *Consumer) failure(id string) (handlerFailure, bool) {
	if c == nil {
		return handlerFailure{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.failed[id]
	return f, ok
}

type missingEvent struct {
	id, typ, reason       string
	inOutbox, pub, parked bool
}

// missing returns the awaited events the group has not recorded.
func (h *Harness) missing(ctx context.Context, group string, topics []string, ids []string) ([]missingEvent, error) {
	outboxT := pgx.Identifier{h.schema, "outbox"}.Sanitize()
	processedT := pgx.Identifier{h.schema, "processed_events"}.Sanitize()
	var rows pgx.Rows
	var err error
	if len(ids) == 0 {
		rows, err = h.pool.Query(ctx, `SELECT o.event_id::text, o.event_type, true, o.published_at IS NOT NULL, o.parked_at IS NOT NULL, coalesce(o.last_error, '')
			FROM `+outboxT+` o WHERE ($1::text[] IS NULL OR o.topic = ANY($1)) AND NOT EXISTS (
			SELECT 1 FROM `+processedT+` p WHERE p.consumer_group = $2 AND p.event_id = o.event_id::text) ORDER BY o.id`, topics, group)
	} else {
		rows, err = h.pool.Query(ctx, `SELECT w.id, coalesce(o.event_type, ''), o.event_id IS NOT NULL, coalesce(o.published_at IS NOT NULL, false),
			coalesce(o.parked_at IS NOT NULL, false), coalesce(o.last_error, '')
			FROM unnest($1::text[]) WITH ORDINALITY AS w(id, n)
			LEFT JOIN `+outboxT+` o ON o.event_id::text = w.id
			WHERE NOT EXISTS (SELECT 1 FROM `+processedT+` p WHERE p.consumer_group = $2 AND p.event_id = w.id) ORDER BY w.n`, ids, group)
	}
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (missingEvent, error) {
		var m missingEvent
		err := r.Scan(&m.id, &m.typ, &m.inOutbox, &m.pub, &m.parked, &m.reason)
		return m, err
	})
}

func describeMissing(group string, ms []missingEvent, c *Consumer) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d event(s) not applied by group %s:", len(ms), group)
	for i, m := range ms {
		if i == maxListed {
			fmt.Fprintf(&b, "\n  ... and %d more", len(ms)-maxListed)
			break
		}
		state := "not in the outbox (deleted after publishing, or never written)"
		switch {
		case m.inOutbox && m.pub:
			state = "published"
		case m.inOutbox:
			state = "waiting in the outbox"
		}
		fmt.Fprintf(&b, "\n  %s %s: %s", m.typ, m.id, state)
		if f, ok := c.failure(m.id); ok {
			fmt.Fprintf(&b, "; handler failed %d time(s), last: %v", f.attempts, f.err)
		}
	}
	return b.String()
}
