package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"

	"github.com/relaybox/relaybox/consumer"
)

type dlqOpts struct {
	kafka kafkaOpts
	group string
}

func defineDLQ(f *flags) *dlqOpts {
	o := &dlqOpts{}
	f.kafka(&o.kafka)
	f.str(&o.group, "group", "RELAYBOX_REDRIVE_GROUP", consumer.DefaultRedriveGroup, "consumer group that remembers what was redriven")
	return o
}

func runDLQ(ctx context.Context, args []string, s *stdio) error {
	out := s.out
	f := newFlags("dlq", s)
	o := defineDLQ(f)
	topic := f.String("topic", "", "dead-letter topic to redrive, e.g. orders.dlq (required)")
	to := f.String("to", "", "topic to redrive every record to (default: the topic its header names, if this is that topic's dead-letter topic)")
	suffix := f.String("dlq-suffix", consumer.DefaultDeadLetterSuffix, "dead-letter suffix of the consumers (which topic a dead-letter topic belongs to)")
	f.Usage = func() {
		fmt.Fprintln(f.Output(), "usage: relaybox dlq redrive --topic <topic>.dlq [flags]")
		f.PrintDefaults()
	}
	if len(args) > 0 && isHelp(args[0]) {
		f.Usage()
		return flag.ErrHelp
	}
	if len(args) == 0 || args[0] != "redrive" {
		f.Usage()
		return errors.New("dlq: say redrive")
	}
	if err := f.parse(args[1:]); err != nil {
		return err
	}
	if *topic == "" {
		return errors.New("dlq redrive: --topic is required")
	}
	kopts, err := o.kafka.opts()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(s.err, &slog.HandlerOptions{Level: slog.LevelWarn}))
	n, err := consumer.Redrive(ctx, *topic, &consumer.RedriveOptions{KafkaOpts: kopts, Group: o.group, Logger: log,
		To: *to, DeadLetterSuffix: *suffix})
	var refused *consumer.RedriveRefusedError
	if err != nil && !errors.As(err, &refused) {
		return err
	}
	dest := "their original topics"
	if *to != "" {
		dest = *to
	}
	fmt.Fprintf(out, "redrove %d record(s) from %s to %s\n", n, *topic, dest)
	return err // the refusals, if any: exit 1
}
