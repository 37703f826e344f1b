package consumer

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Dead-letter headers, added to the record's own when it is produced to the
// dead-letter topic (and removed again by [Redrive]).
const (
	// HeaderDLQError is the error text.
	HeaderDLQError = "relaybox.dlq.error"
	// HeaderDLQReason is the reason kind, one of the Reason* constants.
	HeaderDLQReason = "relaybox.dlq.reason"
	// HeaderDLQAttempts is how many times the handler ran ("0" if it never did).
	HeaderDLQAttempts = "relaybox.dlq.attempts"
	// HeaderDLQGroup is the consumer group that gave up.
	HeaderDLQGroup = "relaybox.dlq.group"
	// HeaderDLQTopic is the original record's topic, where Redrive sends it back.
	HeaderDLQTopic = "relaybox.dlq.topic"
	// HeaderDLQPartition is the original record's partition.
	HeaderDLQPartition = "relaybox.dlq.partition"
	// HeaderDLQOffset is the original record's offset.
	HeaderDLQOffset = "relaybox.dlq.offset"
	// HeaderDLQTime is when it was dead-lettered, RFC 3339 (UTC).
	HeaderDLQTime = "relaybox.dlq.time"
)

// HeaderDLQPrefix starts every dead-letter header.
const HeaderDLQPrefix = "relaybox.dlq."

// maxErrorHeader bounds the error text kept in a header.
const maxErrorHeader = 4 << 10

// deadLetterRecord is rec as it goes to the dead-letter topic.
func (c *Consumer) deadLetterRecord(rec *kgo.Record, dl *deadLetter) *kgo.Record {
	msg := dl.err.Error()
	if len(msg) > maxErrorHeader {
		n := maxErrorHeader
		for n > 0 && !utf8.RuneStart(msg[n]) {
			n--
		}
		msg = msg[:n] + "…"
	}
	hs := make([]kgo.RecordHeader, 0, len(rec.Headers)+8)
	for _, h := range rec.Headers {
		if !strings.HasPrefix(h.Key, HeaderDLQPrefix) {
			hs = append(hs, h)
		}
	}
	add := func(k, v string) { hs = append(hs, kgo.RecordHeader{Key: k, Value: []byte(v)}) }
	add(HeaderDLQError, msg)
	add(HeaderDLQReason, dl.reason)
	add(HeaderDLQAttempts, strconv.Itoa(dl.attempts))
	add(HeaderDLQGroup, c.cfg.Group)
	add(HeaderDLQTopic, rec.Topic)
	add(HeaderDLQPartition, strconv.Itoa(int(rec.Partition)))
	add(HeaderDLQOffset, strconv.FormatInt(rec.Offset, 10))
	add(HeaderDLQTime, time.Now().UTC().Format(time.RFC3339Nano))
	return &kgo.Record{Topic: c.cfg.DeadLetterTopic(rec.Topic), Key: rec.Key, Value: rec.Value, Headers: hs}
}

// deadLetterMaxBytes is the max.message.bytes of the dead-letter topics the consumer
// creates: room for a record at the broker's default limit (1 MiB) plus headers.
const deadLetterMaxBytes = 8 << 20

// ensureDeadLetterTopic creates topic, if missing, with room for near-limit records
// plus the dead-letter headers (a topic auto-created by the broker would have the
// default 1 MiB limit, and a record near it would wait forever). An existing topic is
// left as it is; without the rights to create topics this does nothing.
func (c *Consumer) ensureDeadLetterTopic(ctx context.Context, topic string) {
	if _, done := c.dlqMade.Load(topic); done {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	limit := strconv.Itoa(deadLetterMaxBytes)
	resp, err := kadm.NewClient(c.kc).CreateTopic(ctx, -1, -1, map[string]*string{"max.message.bytes": &limit}, topic)
	if err == nil {
		err = resp.Err
	}
	switch {
	case err == nil:
		c.log.Info("dead-letter topic created", "dlq_topic", topic, "max_message_bytes", deadLetterMaxBytes)
	case errors.Is(err, kerr.TopicAlreadyExists):
	default:
		c.log.Debug("dead-letter topic not created; producing to it anyway", "dlq_topic", topic, "err", err)
		return // try again next time
	}
	c.dlqMade.Store(topic, true)
}

// deadLetter produces it to its dead-letter topic, retrying without limit: a
// record is never dropped. It returns false if the partition was stopped first.
// The event is not recorded in processed_events, so that a redrive applies it.
func (p *partition) deadLetter(it *item, dl *deadLetter) bool {
	c := p.c
	out := c.deadLetterRecord(it.rec, dl)
	c.ensureDeadLetterTopic(p.stopCtx, out.Topic)
	for n := 1; ; n++ {
		ctx, cancel := context.WithTimeout(p.stopCtx, 30*time.Second)
		rec := *out // a fresh record per attempt: franz-go keeps the first attempt's context in it
		err := p.kc.ProduceSync(ctx, &rec).FirstErr()
		cancel()
		if err == nil {
			break
		}
		if p.stopped() {
			return false
		}
		c.hookErr(ErrorKafka, err)
		c.log.Warn("producing to the dead-letter topic failed; retrying (the partition waits)", "dlq_topic", out.Topic,
			"topic", it.m.Topic, "partition", it.m.Partition, "offset", it.m.Offset, "err", err)
		if !p.sleep(c.backoff(n)) {
			return false
		}
	}
	it.dead, it.sent = dl, true
	c.log.Warn("record dead-lettered", "dlq_topic", out.Topic, "topic", it.m.Topic, "partition", it.m.Partition,
		"offset", it.m.Offset, "event_type", it.m.Type, "event_id", it.m.ID, "reason", dl.reason, "attempts", dl.attempts, "err", dl.err)
	if h := c.cfg.Hooks.OnDeadLetter; h != nil {
		h(DeadLetterEvent{RecordEvent: recordEvent(it.m), Reason: dl.reason, DeadLetterTopic: out.Topic, Attempts: dl.attempts, Err: dl.err})
	}
	return true
}
