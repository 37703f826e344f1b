#!/usr/bin/env bash
# Benchmark peer: Trendyol go-pq-cdc-kafka (Go), key = aggregateid, value = payload bytes, acks=all.
#   run.sh --prepare-only   resolve + build, cached; fast when cached
#   run.sh                  stream BENCH_SLOT -> BENCH_TOPIC until SIGTERM/SIGINT
# Contract and env: bench/peers/README.md.
# Sources: the copies in ../shared/peers next to the repository (go-pq-cdc-kafka v1.3.1 and the
# go-pq-cdc v1.10.12 it requires; see their PROVENANCE) when present, through a go.mod replace in
# the build copy only (never in this repository). Override with PQCDC_KAFKA_SRC=/path/to/go-pq-cdc-kafka
# and PQCDC_CORE_SRC=/path/to/go-pq-cdc, or PQCDC_PEERS_DIR; with neither, PQCDC_VERSION (default
# latest) from the Go module proxy (GOPROXY as usual).
# Tuning knobs: PQCDC_BATCH_SIZE, PQCDC_BATCH_BYTES, PQCDC_BATCH_TICKER, PQCDC_COMPRESSION (see main.go).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${RELAYBOX_CACHE_DIR:-$HOME/.cache/relaybox}/bench/pqcdc"
lib=github.com/Trendyol/go-pq-cdc-kafka
core=github.com/Trendyol/go-pq-cdc

die() { echo "pqcdc runner: $*" >&2; exit 1; }

# The shared copies by default (bench/peers/pqcdc -> the repository -> its parent's shared/peers).
peers="${PQCDC_PEERS_DIR:-$(cd "$here/../../.." && pwd)/../shared/peers}"
if [ -z "${PQCDC_KAFKA_SRC:-}" ] && [ -f "$peers/go-pq-cdc-kafka/go.mod" ]; then
	PQCDC_KAFKA_SRC="$(cd "$peers/go-pq-cdc-kafka" && pwd)"
fi
if [ -z "${PQCDC_CORE_SRC:-}" ] && [ -f "$peers/go-pq-cdc/go.mod" ]; then
	PQCDC_CORE_SRC="$(cd "$peers/go-pq-cdc" && pwd)"
fi

prepare() {
	command -v go >/dev/null || die "go not found"
	local want
	want="$( (cat "$here/main.go" "$here/go.mod" "$here/run.sh"; echo "${PQCDC_VERSION:-latest} ${PQCDC_KAFKA_SRC:-} ${PQCDC_CORE_SRC:-}"
		for d in "${PQCDC_KAFKA_SRC:-}" "${PQCDC_CORE_SRC:-}"; do [ -n "$d" ] && cat "$d/go.mod" "$d/PROVENANCE" 2>/dev/null; done) | sha256sum | cut -c1-16)"
	if [ -f "$cache/stamp" ] && [ "$(cat "$cache/stamp")" = "$want" ] && [ -x "$cache/pqcdc" ]; then
		return 0
	fi
	echo "pqcdc runner: building into $cache" >&2
	rm -rf "$cache/src" "$cache/pqcdc" "$cache/stamp"
	mkdir -p "$cache/src"
	cp "$here/main.go" "$here/go.mod" "$cache/src/"
	[ -f "$here/go.sum" ] && cp "$here/go.sum" "$cache/src/"
	local log="$cache/build.log"
	: >"$log"
	(
		set -e
		cd "$cache/src"
		if [ -n "${PQCDC_KAFKA_SRC:-}" ]; then
			go mod edit -replace "$lib=$PQCDC_KAFKA_SRC" -require "$lib@v0.0.0-local"
		else
			go get "$lib@${PQCDC_VERSION:-latest}"
		fi
		if [ -n "${PQCDC_CORE_SRC:-}" ]; then
			go mod edit -replace "$core=$PQCDC_CORE_SRC" -require "$core@v0.0.0-local"
		fi
		go mod tidy
		go build -trimpath -o "$cache/pqcdc" .
	) >>"$log" 2>&1 || {
		tail -n 30 "$log" >&2
		if grep -q -E '403|not available|Forbidden' "$log"; then
			die "cannot fetch $lib (or its dependencies) from the Go module proxy (GOPROXY=$(go env GOPROXY)). Point GOPROXY at a proxy that serves it, or set PQCDC_KAFKA_SRC / PQCDC_CORE_SRC to local checkouts. (log: $log)"
		fi
		die "go build failed (log: $log)"
	}
	echo "$want" >"$cache/stamp"
}

prepare
if [ "${1:-}" = "--prepare-only" ]; then
	exit 0
fi

for v in BENCH_PG_HOST BENCH_PG_PORT BENCH_PG_USER BENCH_PG_DB BENCH_TABLE BENCH_SLOT BENCH_PUBLICATION \
	BENCH_KAFKA_BROKERS BENCH_TOPIC BENCH_RUN_DIR; do
	[ -n "${!v:-}" ] || die "$v is not set"
done
mkdir -p "$BENCH_RUN_DIR"
exec "$cache/pqcdc"
