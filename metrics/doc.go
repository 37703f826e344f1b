// Package metrics turns the hooks of a relay ([relay.Hooks]) and of a consumer
// ([consumer.Hooks]) into Prometheus collectors, so that a service embedding the
// relay or the consumer exposes the same metrics as `relaybox relay`, and the
// dashboard and alerts of deploy/ work on it unchanged. The core packages import no
// metrics library; this one imports client_golang (franz-go's plugin/kprom is the
// model).
//
// # Relay
//
//	m, err := metrics.NewRelay(&metrics.RelayOpts{Pool: pool}) // Pool: the status collector
//	if err != nil { ... }
//	m.Install(&cfg) // before relay.New(pool, &cfg)
//	http.Handle("/metrics", m.Handler())
//
// Series (with the default namespace "relaybox"):
//
//	relaybox_relay_published_total                   counter
//	relaybox_relay_publish_latency_seconds           histogram: created_at to Kafka ack
//	relaybox_relay_batch_size                        histogram: rows read per batch
//	relaybox_relay_read_seconds, _batch_seconds      histograms
//	relaybox_relay_errors_total{kind}                kafka, registry, postgres, lease
//	relaybox_relay_parked_events_total{reason}       counter
//	relaybox_relay_owned_shards                      gauge: leases this replica holds
//	relaybox_relay_leases_lost_total                 counter
//	relaybox_relay_fenced_writes_total{op}           counter
//	relaybox_relay_transactions_total{outcome}       exactly-once: committed, aborted, fenced
//	relaybox_relay_transaction_seconds               histogram
//	relaybox_relay_mode{mode}                        1 for the replica's mode
//
// With RelayOpts.Pool, the status collector reads Postgres at each scrape (one
// query), so that every replica reports the same figures:
//
//	relaybox_outbox_backlog{shard}                     gauge
//	relaybox_outbox_oldest_unpublished_seconds{shard}  gauge
//	relaybox_outbox_parked{reason}                     gauge
//	relaybox_relay_live_replicas                       gauge
//	relaybox_scrape_error                              1 when the query failed
//
// A failed status query costs only its own series: the scrape succeeds, with
// relaybox_scrape_error 1 and every hook-fed series.
//
// # Consumer
//
//	m, err := metrics.NewConsumer(nil)
//	if err != nil { ... }
//	m.Install(cfg) // before consumer.New(pool, cfg); once per consumer
//	http.Handle("/metrics", m.Handler())
//
// Every series carries the consumer's group:
//
//	relaybox_consumer_records_total{group,topic,outcome}       applied, duplicate, skipped, dead_letter
//	relaybox_consumer_dead_letters_total{group,topic,reason}   the consumer.Reason* constants
//	relaybox_consumer_retries_total{group,topic,event_type}    counter
//	relaybox_consumer_handler_duration_seconds{group,topic,event_type}  histogram
//	relaybox_consumer_lag{group,topic,partition}               gauge, records; dropped when the partition goes
//	relaybox_consumer_batch_size{group,topic}                  histogram: records per batch-mode transaction
//	relaybox_consumer_errors_total{group,kind}                 postgres, registry, kafka, commit
//
// The records consumed are the sum of relaybox_consumer_records_total over its
// outcomes.
//
// # Registries
//
// By default a Relay or a Consumer registers into a registry of its own, which its
// Handler serves. To serve several (with the Go runtime's collectors, say), give
// them one Registerer:
//
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(collectors.NewGoCollector())
//	rm, _ := metrics.NewRelay(&metrics.RelayOpts{Registerer: reg})
//	cm, _ := metrics.NewConsumer(&metrics.ConsumerOpts{Registerer: reg})
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// docs/operations.md ("Observing relaybox") describes the dashboard and the alerts
// built on these series.
package metrics
