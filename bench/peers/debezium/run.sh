#!/usr/bin/env bash
# Benchmark peer: Debezium PostgreSQL connector + Outbox Event Router (embedded engine, Kafka sink).
#   run.sh --prepare-only   build the runner (Maven Central), cached; fast when cached
#   run.sh                  stream BENCH_SLOT -> BENCH_TOPIC until SIGTERM/SIGINT
# Contract and env: bench/peers/README.md. Tuning overrides: DBZ_* (see Main.java), DBZ_JAVA_OPTS.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${RELAYBOX_CACHE_DIR:-$HOME/.cache/relaybox}/bench/debezium"

die() { echo "debezium runner: $*" >&2; exit 1; }

stamp() { # content hash of everything that goes into the build
	(cd "$here" && cat pom.xml $(find src -type f | LC_ALL=C sort) | sha256sum | cut -c1-16)
}

prepare() {
	command -v java >/dev/null || die "java not found (needs Java 17+)"
	local want
	want="$(stamp)"
	if [ -f "$cache/stamp" ] && [ "$(cat "$cache/stamp")" = "$want" ] && [ -f "$cache/app.jar" ]; then
		return 0
	fi
	command -v mvn >/dev/null || die "mvn not found (needs Maven 3.8+ with access to Maven Central)"
	echo "debezium runner: building into $cache (Maven Central)" >&2
	rm -rf "$cache/lib" "$cache/target" "$cache/app.jar" "$cache/stamp"
	mkdir -p "$cache"
	if ! mvn -B -q -f "$here/pom.xml" -Dbench.build.dir="$cache/target" \
		package dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$cache/lib" \
		>"$cache/build.log" 2>&1; then
		tail -n 40 "$cache/build.log" >&2
		die "maven build failed (log: $cache/build.log)"
	fi
	cp "$cache/target/bench-peer-debezium-1.0.jar" "$cache/app.jar"
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

# exec: SIGTERM/SIGINT go straight to the JVM, whose shutdown hook stops the engine (<= 8 s).
# shellcheck disable=SC2086
exec java ${DBZ_JAVA_OPTS:--Xms1g -Xmx2g} -cp "$cache/app.jar:$cache/lib/*" dev.relaybox.bench.debezium.Main
