# relaybox — see README.md.
SHELL := /bin/bash
GO ?= go
ENV := bash scripts/env.sh

.PHONY: help env env-down test unit lint fmt-check build demo bench bench-writer bench-status eos-kills chaos fuzz

# staticcheck is pinned in go.mod (`tool` directive): `go tool staticcheck`. bench/ is
# its own module, so it runs the same binary (`go tool -n` prints its path).
STATICCHECK := $(GO) tool staticcheck

## env: install what is missing, start Postgres, Kafka and Apicurio on 127.0.0.1, print exports
env:
	@$(ENV) up

## env-down: stop them
env-down:
	@$(ENV) down

## test: the project's test command (what .ci/run calls): env, format check, vet, staticcheck, all tests
## (the root module's, bench/'s and deploy/k8stest/'s: the Helm chart, its own module)
test:
	@exports="$$($(ENV) up)" && eval "$$exports" && echo "$$exports" && \
	$(MAKE) --no-print-directory lint && \
	RELAYBOX_REQUIRE_SERVICES=1 $(GO) test -count=1 -timeout 25m ./... && \
	(cd bench && RELAYBOX_REQUIRE_SERVICES=1 $(GO) test -count=1 -timeout 10m ./...) && \
	cd deploy/k8stest && $(GO) test -count=1 -timeout 15m ./...

## unit: tests without services (integration tests skip, naming the missing variable)
unit:
	env -u DATABASE_URL -u KAFKA_BROKERS -u SCHEMA_REGISTRY_URL $(GO) test ./...

fmt-check:
	@out="$$(gofmt -l $$(git ls-files '*.go'))"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## lint: go vet and staticcheck, on the root module, bench/ and deploy/k8stest/
lint: fmt-check
	$(GO) vet ./...
	$(STATICCHECK) ./...
	sc="$$($(GO) tool -n staticcheck)" && cd bench && $(GO) vet ./... && "$$sc" ./...
	sc="$$($(GO) tool -n staticcheck)" && cd deploy/k8stest && $(GO) vet ./... && "$$sc" ./...

# relaybox version prints these (internal/cli/version.go).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/relaybox/relaybox/internal/cli.version=$(VERSION) -X github.com/relaybox/relaybox/internal/cli.commit=$(COMMIT)

## build: the relaybox binary, stamped with VERSION and COMMIT (relaybox version)
build:
	$(GO) build -ldflags '$(LDFLAGS)' -o relaybox ./cmd/relaybox

## demo: the whole flow in one process (examples/demo; DEMO_ARGS=--json for the summary as JSON)
demo:
	$(GO) run ./examples/demo $(DEMO_ARGS)

FUZZTIME ?= 5m
## fuzz: run every fuzz target for FUZZTIME each (default 5m)
fuzz:
	$(GO) test ./internal/wire -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./consumer -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME)
	$(GO) test ./outbox -run '^$$' -fuzz '^FuzzValidate$$' -fuzztime $(FUZZTIME)
	$(GO) test ./consumer -run '^$$' -fuzz '^FuzzMessageHeaders$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/cli -run '^$$' -fuzz '^FuzzRelayConfig$$' -fuzztime $(FUZZTIME)

BENCH_OUT ?= $(CURDIR)/bench-out/bench.json
## bench: the comparative benchmark (bench/, its own module; docs/benchmarks.md). BENCH_QUICK=1 for a
## ~5 min smoke run; BENCH_SYSTEMS, BENCH_SCENARIOS, BENCH_N, BENCH_LARGE=1, BENCH_RATES, BENCH_DURATION, ...
bench:
	@mkdir -p $(dir $(BENCH_OUT))
	@exports="$$($(ENV) up)" && eval "$$exports" && \
	cd bench && BENCH_OUT=$(BENCH_OUT) $(GO) run . $(BENCH_ARGS)
	@$(MAKE) --no-print-directory bench-writer

BENCH_WRITER_OUT ?= $(CURDIR)/bench-out/writer.json
BENCH_WRITER_ARGS ?= $(if $(filter 1,$(BENCH_QUICK)),-iterations 200,)
## bench-writer: the writer against plain SQL and Watermill's SQL publisher, and the outbox table's
## floor (bench/writer; ~20 min on a busy 2-core machine); BENCH_WRITER_ARGS, e.g. "-iterations 300 -commit off"
bench-writer:
	@mkdir -p $(dir $(BENCH_WRITER_OUT))
	@exports="$$($(ENV) up)" && eval "$$exports" && \
	cd bench && $(GO) run ./cmd/writer-bench -out $(BENCH_WRITER_OUT) $(BENCH_WRITER_ARGS)

STATUS_ROWS ?= 5000000
## bench-status: time the status query (/metrics, relaybox status) with STATUS_ROWS pending rows
## (default 5000000; filling takes minutes) against the unbounded aggregate it replaced
bench-status:
	@exports="$$($(ENV) up)" && eval "$$exports" && \
	RELAYBOX_STATUS_ROWS=$(STATUS_ROWS) $(GO) test ./relay -run '^$$' -bench '^BenchmarkReadStatus$$' -benchtime 5x -timeout 60m

EOS_KILLS_COUNT ?= 3
## eos-kills: exactly-once under broker kills (TestRelay_ExactlyOnceResumesAfterKafkaKills), EOS_KILLS_COUNT runs;
## each run kills its own broker three times (about 100 s): its own target, not `make test` (docs/fault-suite.md)
eos-kills:
	@exports="$$($(ENV) up)" && eval "$$exports" && \
	RELAYBOX_REQUIRE_SERVICES=1 RELAYBOX_EOS_KILLS=1 $(GO) test -count=$(EOS_KILLS_COUNT) -v -timeout 60m ./relay -run '^TestRelay_ExactlyOnceResumesAfterKafkaKills$$'

CHAOS_OUT ?= $(CURDIR)/bench-out/chaos-report.json
## chaos: the long fault run (CHAOS_EVENTS=200000 CHAOS_FAULTS=60 CHAOS_SEED=...); report in CHAOS_OUT
chaos:
	@mkdir -p $(dir $(CHAOS_OUT))
	@exports="$$($(ENV) up)" && eval "$$exports" && \
	CHAOS=1 CHAOS_OUT=$(CHAOS_OUT) $(GO) test -count=1 -run '^TestChaos$$' -v -timeout 90m ./internal/chaos

## help: this list
help:
	@awk '/^## [a-z-]+:/ { sub(/^## /, ""); print "  " $$0; next } /^## / { sub(/^## /, ""); print "        " $$0 }' $(MAKEFILE_LIST)
