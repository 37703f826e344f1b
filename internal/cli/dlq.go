package cli

import (
	"context"
	"errors"
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
	f.Usage = func() {
		fmt.Fprintln(f.Output(), "usage: relaybox dlq redrive --topic <topic>.dlq [flags]")
		f.PrintDefaults()
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
	n, err := consumer.Redrive(ctx, *topic, &consumer.RedriveOptions{KafkaOpts: kopts, Group: o.group, Logger: log})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "redrove %d record(s) from %s to their original topics\n", n, *topic)
	return nil
}
