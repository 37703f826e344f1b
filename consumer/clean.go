package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"
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

func (c *Consumer) cleanLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.CleanInterval)
	defer t.Stop()
	for {
		n, err := c.Clean(ctx, c.cfg.CleanAfter, c.cfg.CleanBatch)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			c.hookErr("postgres", err)
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
