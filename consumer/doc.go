// Package consumer is relaybox's idempotent consumer.
package consumer
