package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"
)

// DefaultRedriveGroup is the consumer group under which Redrive records its progress.
const DefaultRedriveGroup = "relaybox-redrive"

// RedriveOptions configures [Redrive]. Brokers (or KafkaOpts) are required.
type RedriveOptions struct {
	// Brokers are the Kafka seed brokers. Required unless KafkaOpts sets them.
	Brokers []string
	// KafkaOpts are appended to the client's options (TLS, SASL, ...).
	KafkaOpts []kgo.Opt
	// Group is the consumer group whose committed offsets on the dead-letter topic
	// say what was already redriven. Defaults to DefaultRedriveGroup.
	Group string
	// IdleTimeout ends a redrive that has not reached the end offsets (taken when it
	// started) after this long without a record. Defaults to 10s.
	IdleTimeout time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger

	// To, when set, is the topic every record is redriven to, whatever its
	// relaybox.dlq.topic header says.
	To string
	// DeadLetterTopic names the dead-letter topic of a topic, as the consumer's
	// Config.DeadLetterTopic: without To, a record is redriven to the topic its header
	// names only if that topic's dead-letter topic is the one being redriven.
	// Defaults to [DeadLetterTopicName] with DeadLetterSuffix.
	DeadLetterTopic func(topic string) string
	// DeadLetterSuffix is used by the default DeadLetterTopic. Defaults to ".dlq".
	DeadLetterSuffix string
}

// RedriveRefusedError reports the records Redrive did not produce because their
// relaybox.dlq.topic header names a topic the dead-letter topic does not belong
// to: anyone who can write to a dead-letter topic could otherwise make a redrive
// publish forged events to any topic. They are skipped (the redrive's progress
// moves past them); redrive them with RedriveOptions.To if they are genuine.
type RedriveRefusedError struct {
	DeadLetterTopic string
	// Refused counts the refused records by the topic their header names.
	Refused map[string]int
}

func (e *RedriveRefusedError) Error() string {
	names := make([]string, 0, len(e.Refused))
	total := 0
	for t, n := range e.Refused {
		names = append(names, fmt.Sprintf("%q (%d)", t, n))
		total += n
	}
	sort.Strings(names)
	return fmt.Sprintf("consumer: redrive refused %d record(s) of %s whose header names a topic it is not the dead-letter topic of: %s",
		total, e.DeadLetterTopic, strings.Join(names, ", "))
}

// Redrive moves the records of dlqTopic back to the topics they were dead-lettered
// from (the relaybox.dlq.topic header), with their key, value and headers but
// without the relaybox.dlq.* headers, and returns how many it moved. Only a topic
// whose dead-letter topic is dlqTopic is a destination (or RedriveOptions.To, for
// all): records naming another are refused, skipped and reported by a
// *RedriveRefusedError, returned with the count of those moved. It reads from
// where the previous redrive of the same Group stopped up to the end of the topic as
// it was when Redrive started, committing its progress after each produced batch, so
// running it twice does not send a record twice (short of a crash between produce
// and commit). Records without the header are skipped, with a warning.
//
// A redriven event keeps its event id. Dead-lettered events are not recorded in
// processed_events, so the group that failed applies it (once); groups that applied
// it already see a duplicate. Records without an event id are deduplicated by
// topic/partition/offset by default, which a redriven copy does not share: they are
// applied again by every group.
func Redrive(ctx context.Context, dlqTopic string, opts *RedriveOptions) (int, error) {
	o := RedriveOptions{}
	if opts != nil {
		o = *opts
	}
	if o.Group == "" {
		o.Group = DefaultRedriveGroup
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.DeadLetterSuffix == "" {
		o.DeadLetterSuffix = ".dlq"
	}
	if o.DeadLetterTopic == nil {
		suffix := o.DeadLetterSuffix
		o.DeadLetterTopic = func(topic string) string { return DeadLetterTopicName(topic, suffix) }
	}
	refused := map[string]int{}
	if len(o.Brokers) == 0 && len(o.KafkaOpts) == 0 {
		return 0, errors.New("consumer: RedriveOptions.Brokers is required")
	}
	base := []kgo.Opt{kgo.WithLogger(kslog.New(o.Logger.With("component", "kafka"))), kgo.ClientID("relaybox-redrive")}
	if len(o.Brokers) > 0 {
		base = append(base, kgo.SeedBrokers(o.Brokers...))
	}
	base = append(base, o.KafkaOpts...)
	admCl, err := kgo.NewClient(base...)
	if err != nil {
		return 0, fmt.Errorf("consumer: kafka client: %w", err)
	}
	defer admCl.Close()
	adm := kadm.NewClient(admCl)

	// Where to start and where to stop, per partition.
	ends, err := adm.ListEndOffsets(ctx, dlqTopic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return 0, fmt.Errorf("consumer: listing end offsets of %s: %w", dlqTopic, err)
	}
	if len(ends[dlqTopic]) == 0 {
		return 0, fmt.Errorf("consumer: dead-letter topic %q does not exist", dlqTopic)
	}
	starts, err := adm.ListStartOffsets(ctx, dlqTopic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return 0, fmt.Errorf("consumer: listing start offsets of %s: %w", dlqTopic, err)
	}
	committed, err := adm.FetchOffsetsForTopics(ctx, o.Group, dlqTopic)
	if err == nil {
		err = committed.Error()
	}
	if err != nil {
		return 0, fmt.Errorf("consumer: fetching offsets of group %s: %w", o.Group, err)
	}
	from := map[int32]kgo.Offset{}
	end := map[int32]int64{}
	for p, e := range ends[dlqTopic] {
		at := int64(0)
		if s, ok := starts.Lookup(dlqTopic, p); ok {
			at = s.Offset
		}
		if c, ok := committed.Lookup(dlqTopic, p); ok && c.At > at {
			at = c.At
		}
		if at < e.Offset {
			from[p] = kgo.NewOffset().At(at)
			end[p] = e.Offset
		}
	}
	if len(from) == 0 {
		return 0, nil
	}

	cl, err := kgo.NewClient(append(base, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{dlqTopic: from}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))...)
	if err != nil {
		return 0, fmt.Errorf("consumer: kafka client: %w", err)
	}
	defer cl.Close()

	moved := 0
	for len(end) > 0 {
		pctx, cancel := context.WithTimeout(ctx, o.IdleTimeout)
		fs := cl.PollFetches(pctx)
		cancel()
		if ctx.Err() != nil {
			return moved, ctx.Err()
		}
		if fs.Empty() && pctx.Err() != nil {
			o.Logger.Warn("redrive stopped before the end offsets: no record for the idle timeout", "topic", dlqTopic, "idle_timeout", o.IdleTimeout)
			return moved, nil
		}
		if err := fatalFetchErr(fs); err != nil {
			return moved, fmt.Errorf("consumer: reading %s: %w", dlqTopic, err)
		}
		var out []*kgo.Record
		progress := kadm.Offsets{}
		fs.EachRecord(func(r *kgo.Record) {
			e, ok := end[r.Partition]
			if !ok || r.Offset >= e {
				return // written after the redrive started
			}
			progress.Add(kadm.NewOffsetFromRecord(r))
			if r.Offset+1 >= e {
				delete(end, r.Partition)
			}
			orig := ""
			hs := make([]kgo.RecordHeader, 0, len(r.Headers))
			for _, h := range r.Headers {
				if h.Key == HeaderDLQTopic {
					orig = string(h.Value)
				}
				if !strings.HasPrefix(h.Key, HeaderDLQPrefix) {
					hs = append(hs, h)
				}
			}
			switch {
			case o.To != "":
				orig = o.To
			case orig == "":
				o.Logger.Warn("dead letter without a "+HeaderDLQTopic+" header; skipped", "topic", dlqTopic, "partition", r.Partition, "offset", r.Offset)
				return
			case orig == dlqTopic || o.DeadLetterTopic(orig) != dlqTopic:
				refused[orig]++
				o.Logger.Warn("dead letter names a topic this is not the dead-letter topic of; refused (redrive it with To if genuine)",
					"topic", dlqTopic, "partition", r.Partition, "offset", r.Offset, "names", orig)
				return
			}
			out = append(out, &kgo.Record{Topic: orig, Key: r.Key, Value: r.Value, Headers: hs})
		})
		if len(out) > 0 {
			if err := cl.ProduceSync(ctx, out...).FirstErr(); err != nil {
				return moved, fmt.Errorf("consumer: producing redriven records: %w", err)
			}
		}
		if len(progress) > 0 {
			resp, err := adm.CommitOffsets(ctx, o.Group, progress)
			if err == nil {
				err = resp.Error()
			}
			if err != nil {
				return moved + len(out), fmt.Errorf("consumer: committing redrive progress (the %d records just moved will be moved again by the next redrive): %w", len(out), err)
			}
		}
		moved += len(out)
	}
	o.Logger.Info("redrive done", "topic", dlqTopic, "moved", moved, "refused", len(refused))
	if len(refused) > 0 {
		return moved, &RedriveRefusedError{DeadLetterTopic: dlqTopic, Refused: refused}
	}
	return moved, nil
}

func fatalFetchErr(fs kgo.Fetches) error {
	var first error
	fs.EachError(func(_ string, _ int32, err error) {
		if first == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			first = err
		}
	})
	return first
}
