package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Clean deletes this group's processed_events rows older than olderThan, batch rows
// per statement (batch <= 0 means Config.CleanBatch) until none are left, and returns
// how many it deleted. Each statement is its own short transaction, so cleaning a
// large backlog neither holds locks for long nor bloats one transaction.
//
// Cleaning opens a duplicate window: an event redelivered after its row is gone
// (a consumer group reset to an old offset, a redrive of an old dead letter, the
// relay republishing after a very long outage) is applied again. Choose olderThan
// well beyond the longest redelivery you can get, see "Retention" in the package doc.
func (c *Consumer) Clean(ctx context.Context, olderThan time.Duration, batch int) (int64, error) {
	if olderThan <= 0 {
		return 0, errors.New("consumer: Clean needs a positive age")
	}
	if batch <= 0 {
		batch = c.cfg.CleanBatch
	}
	age := fmt.Sprintf("%d microseconds", olderThan.Microseconds())
	var total int64
	for {
		tag, err := c.pool.Exec(ctx, c.cleanSQL, c.cfg.Group, age, batch)
		if err != nil {
			return total, fmt.Errorf("consumer: cleaning processed_events: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(batch) {
			return total, nil
		}
	}
}

// CleanCommitted is [Consumer.Clean] that also keeps every row whose record Kafka
// could still deliver to this group: it deletes a row only when it is older than
// olderThan AND the group's committed offset of the row's topic and partition is
// past the row's offset. Rows of a partition without a committed offset stay.
//
// Age alone deletes rows of records processed but whose offsets were never
// committed (commits failing for longer than the age, a partition lost before its
// commit, a group rewound to an earlier offset): when such a record comes again,
// its row is gone and it is applied twice. The committed-offset condition closes
// that window; what it cannot see is a copy of an event at another offset (a relay
// republishing after a crash, a redrive), which only the age covers.
//
// It reads the group's committed offsets from Kafka once per call (a Kafka client
// built from Config.Brokers and Config.KafkaOpts).
func (c *Consumer) CleanCommitted(ctx context.Context, olderThan time.Duration, batch int) (int64, error) {
	if olderThan <= 0 {
		return 0, errors.New("consumer: CleanCommitted needs a positive age")
	}
	if batch <= 0 {
		batch = c.cfg.CleanBatch
	}
	var opts []kgo.Opt
	if len(c.cfg.Brokers) > 0 {
		opts = append(opts, kgo.SeedBrokers(c.cfg.Brokers...))
	}
	kc, err := kgo.NewClient(append(opts, c.cfg.KafkaOpts...)...)
	if err != nil {
		return 0, fmt.Errorf("consumer: kafka client: %w", err)
	}
	defer kc.Close()
	offs, err := kadm.NewClient(kc).FetchOffsets(ctx, c.cfg.Group)
	if err == nil {
		err = offs.Error()
	}
	if err != nil {
		return 0, fmt.Errorf("consumer: fetching the committed offsets of group %s: %w", c.cfg.Group, err)
	}
	var topics []string
	var parts []int32
	var committed []int64
	offs.Each(func(o kadm.OffsetResponse) {
		if o.At >= 0 {
			topics, parts, committed = append(topics, o.Topic), append(parts, o.Partition), append(committed, o.At)
		}
	})
	if len(topics) == 0 {
		return 0, nil
	}
	age := fmt.Sprintf("%d microseconds", olderThan.Microseconds())
	var total int64
	for {
		tag, err := c.pool.Exec(ctx, c.cleanCommittedSQL, c.cfg.Group, age, batch, topics, parts, committed)
		if err != nil {
			return total, fmt.Errorf("consumer: cleaning processed_events: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(batch) {
			return total, nil
		}
	}
}

func (c *Consumer) cleanLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.CleanInterval)
	defer t.Stop()
	clean := c.Clean
	if c.cfg.CleanCommittedOnly {
		clean = c.CleanCommitted
	}
	for {
		n, err := clean(ctx, c.cfg.CleanAfter, c.cfg.CleanBatch)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			c.hookErr(ErrorPostgres, err)
			c.log.Warn("cleaning processed_events failed", "err", err)
		case n > 0:
			c.log.Info("cleaned processed_events", "deleted", n, "older_than", c.cfg.CleanAfter)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
