package cli

import (
	"context"
	"errors"
	"io"
)

type dlqOpts struct {
	kafka kafkaOpts
}

func defineDLQ(f *flags) *dlqOpts {
	o := &dlqOpts{}
	f.kafka(&o.kafka)
	return o
}

func runDLQ(ctx context.Context, args []string, out io.Writer) error {
	return errors.New("dlq: not built yet")
}

type demoOpts struct{ json bool }

func defineDemo(f *flags) *demoOpts {
	o := &demoOpts{}
	f.BoolVar(&o.json, "json", false, "print the summary as one JSON object")
	return o
}

func runDemo(ctx context.Context, args []string, out io.Writer) error {
	return errors.New("demo: not built yet")
}
