#!/usr/bin/env bash
# relaybox's real environment: PostgreSQL (Debian packages), Apache Kafka (KRaft, jars
# from Maven Central via mvn) and Apicurio Registry (from Maven Central), on 127.0.0.1.
#
#   scripts/env.sh up     install what is missing, start what is not running, print exports
#   scripts/env.sh down   stop what this script started
#   scripts/env.sh print  print the exports only
#
# Idempotent: a second `up` with everything running returns in seconds.
# Settings (environment variables, with defaults):
#   RELAYBOX_ENV_DIR        <repo>/.relaybox-env   data and logs (git-ignored)
#   RELAYBOX_CACHE_DIR      ~/.cache/relaybox      Kafka jars and the registry jar, shared by clones
#   RELAYBOX_PG_PORT        55432
#   RELAYBOX_PG_PASSWORD    relaybox
#   RELAYBOX_KAFKA_PORT     19092    (controller on RELAYBOX_KAFKA_PORT+1)
#   RELAYBOX_REGISTRY_PORT  18081
#   RELAYBOX_KAFKA_VERSION  see scripts/kafka/pom.xml
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
ENV_DIR="${RELAYBOX_ENV_DIR:-$repo/.relaybox-env}"
PG_PORT="${RELAYBOX_PG_PORT:-55432}"
PG_PASSWORD="${RELAYBOX_PG_PASSWORD:-relaybox}"
PG_VERSION="${RELAYBOX_PG_VERSION:-}"
PG_CLUSTER="${RELAYBOX_PG_CLUSTER:-relaybox${PG_PORT}}"
KAFKA_PORT="${RELAYBOX_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="$((KAFKA_PORT + 1))"
REGISTRY_PORT="${RELAYBOX_REGISTRY_PORT:-18081}"
# The broker's JVM heap and collector (its collections are logged to logs/kafka-gc.log).
KAFKA_HEAP_OPTS="${RELAYBOX_KAFKA_HEAP_OPTS:--Xmx768m -Xms256m}"
KAFKA_GC_OPTS="${RELAYBOX_KAFKA_GC_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20}"
LOG_DIR="$ENV_DIR/logs"
CACHE_DIR="${RELAYBOX_CACHE_DIR:-$HOME/.cache/relaybox}"

log() { echo "env: $*" >&2; }
die() { echo "env: error: $*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds what logfile
	local i
	for ((i = 0; i < $2 * 4; i++)); do
		port_open "$1" && return 0
		sleep 0.25
	done
	[ -n "${4:-}" ] && [ -f "$4" ] && tail -n 30 "$4" >&2
	die "$3 did not open 127.0.0.1:$1 within $2 s (log: ${4:-none})"
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=
apt_install() {
	if [ -z "$apt_updated" ]; then
		log "apt-get update"
		as_root apt-get update -qq >"$LOG_DIR/apt.log" 2>&1 || die "apt-get update failed (see $LOG_DIR/apt.log)"
		apt_updated=1
	fi
	log "apt-get install $*"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$LOG_DIR/apt.log" 2>&1 ||
		die "apt-get install $* failed (see $LOG_DIR/apt.log)"
}

database_url() { echo "postgres://postgres:${PG_PASSWORD}@127.0.0.1:${PG_PORT}/postgres?sslmode=disable"; }

# ---------------------------------------------------------------- PostgreSQL
pg_up() {
	if port_open "$PG_PORT"; then
		log "postgres already listening on 127.0.0.1:$PG_PORT"
		return
	fi
	if ! command -v pg_createcluster >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
		apt_install postgresql
	fi
	[ -n "$PG_VERSION" ] || PG_VERSION="$(ls /usr/lib/postgresql | sort -n | tail -n 1)"
	local datadir="$ENV_DIR/postgres" existing
	existing="$(pg_lsclusters -h | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1 == v && $2 == c {print $6}')"
	if [ -n "$existing" ] && [ ! -f "$existing/PG_VERSION" ]; then
		log "cluster $PG_VERSION/$PG_CLUSTER lost its data directory ($existing): recreating it"
		as_root pg_dropcluster "$PG_VERSION" "$PG_CLUSTER" >/dev/null 2>&1 || true
	fi
	if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$PG_VERSION $PG_CLUSTER"; then
		log "creating cluster $PG_VERSION/$PG_CLUSTER in $datadir"
		mkdir -p "$datadir"
		as_root chown postgres:postgres "$datadir"
		chmod o+x "$ENV_DIR" 2>/dev/null || true
		as_root pg_createcluster "$PG_VERSION" "$PG_CLUSTER" -p "$PG_PORT" -d "$datadir/data" \
			-l "$LOG_DIR/postgres.log" -- --auth-host=scram-sha-256 --auth-local=peer >"$LOG_DIR/pg_createcluster.log" 2>&1 ||
			die "pg_createcluster failed (see $LOG_DIR/pg_createcluster.log)"
		local conf="/etc/postgresql/$PG_VERSION/$PG_CLUSTER/conf.d/relaybox.conf"
		as_root tee "$conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_connections = 300
shared_buffers = 512MB
# An outbox database writes and deletes every event: with the 1 GB default, checkpoints
# (and the full-page writes after each) came every 15-60 s under the benchmark's load.
max_wal_size = 4GB
CONF
		touch "$ENV_DIR/.pg-new"
	fi
	log "starting postgres $PG_VERSION/$PG_CLUSTER on 127.0.0.1:$PG_PORT"
	as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start >&2 || die "pg_ctlcluster start failed (see $LOG_DIR/postgres.log)"
	wait_port "$PG_PORT" 30 postgres "$LOG_DIR/postgres.log"
	# Always (idempotent): the cluster may have been created by another clone's env.sh,
	# whose first start set the password on another data directory.
	as_root runuser -u postgres -- psql -q -p "$PG_PORT" -c "ALTER USER postgres PASSWORD '$PG_PASSWORD'" >/dev/null ||
		die "setting the postgres password failed"
	rm -f "$ENV_DIR/.pg-new"
}

pg_down() {
	command -v pg_lsclusters >/dev/null || return 0
	pg_lsclusters -h 2>/dev/null | awk -v c="$PG_CLUSTER" '$2 == c {print $1}' | while read -r v; do
		log "stopping postgres $v/$PG_CLUSTER"
		as_root pg_ctlcluster "$v" "$PG_CLUSTER" stop -m fast || true
	done
}

# ---------------------------------------------------------------- Prometheus
# promtool and prometheus: deploy/'s tests run them (alert rule tests; a live scrape).
need_prometheus() {
	command -v promtool >/dev/null && command -v prometheus >/dev/null && return
	apt_install --no-install-recommends prometheus
}

# ---------------------------------------------------------------- Python CloudEvents SDK
# relay/cloudevents_test.go reads relaybox records with the CloudEvents project's Python
# SDK: a venv in CACHE_DIR/py-cloudevents from scripts/cloudevents/requirements.txt
# (PyPI), rebuilt when that file changes (its stamp is written last); flock keeps
# concurrent callers apart.
need_python_cloudevents() {
	local req="$here/cloudevents/requirements.txt" dir="$CACHE_DIR/py-cloudevents" sum
	sum="$(sha256sum "$req" | cut -d' ' -f1)"
	[ "$(cat "$dir/.req.sha" 2>/dev/null)" = "$sum" ] && return
	command -v python3 >/dev/null || apt_install python3
	python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
	mkdir -p "$CACHE_DIR"
	(
		flock 9
		[ "$(cat "$dir/.req.sha" 2>/dev/null)" = "$sum" ] && exit 0
		log "installing the Python CloudEvents SDK into $dir (pip)"
		rm -rf "$dir" && python3 -m venv "$dir" &&
			"$dir/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >"$LOG_DIR/pip-cloudevents.log" 2>&1 ||
			die "pip install -r $req failed (see $LOG_DIR/pip-cloudevents.log)"
		echo "$sum" >"$dir/.req.sha" # last: a broken install is redone
	) 9>"$CACHE_DIR/py-cloudevents.lock"
}

# ---------------------------------------------------------------- Kafka (KRaft)
need_java_mvn() {
	command -v java >/dev/null || apt_install openjdk-17-jre-headless
	command -v mvn >/dev/null || apt_install maven
}

# mvn_libs POMDIR LIBDIR: resolve the pom's runtime jars into LIBDIR (cached in ~/.m2).
mvn_libs() {
	local pomdir="$1" lib="$2" stamp="$2/.pom.sha"
	local sum
	sum="$(sha256sum "$pomdir/pom.xml" | cut -d' ' -f1)"
	if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then return; fi
	need_java_mvn
	rm -rf "$lib"
	mkdir -p "$lib"
	log "resolving $(basename "$pomdir") jars from Maven Central (mvn)"
	mvn -q -B -f "$pomdir/pom.xml" dependency:copy-dependencies -DoutputDirectory="$lib" -DincludeScope=runtime \
		>"$LOG_DIR/mvn-$(basename "$pomdir").log" 2>&1 || die "mvn could not resolve $pomdir/pom.xml (see $LOG_DIR/mvn-$(basename "$pomdir").log)"
	echo "$sum" >"$stamp"
}

kafka_up() {
	if port_open "$KAFKA_PORT"; then
		log "kafka already listening on 127.0.0.1:$KAFKA_PORT"
		return
	fi
	local kdir="$ENV_DIR/kafka" lib="$CACHE_DIR/kafka-lib"
	mkdir -p "$kdir"
	cat >"$kdir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$kdir/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.flush.interval.messages=9223372036854775807
# Exactly-once mode: a transaction's first produce to a partition waits while the
# previous transaction's markers are written; the broker retries that check after
# this backoff (default 20 ms, which each transaction then paid; see
# docs/operations.md#exactly-once-broker-settings).
add.partitions.to.txn.retry.backoff.ms=1
PROPS
	if [ ! -f "$kdir/data/meta.properties" ]; then
		log "formatting kafka storage in $kdir/data"
		local cid
		cid="$(java -cp "$lib/*" kafka.tools.StorageTool random-uuid 2>/dev/null)"
		java -Dlog4j2.configurationFile="$here/kafka/tools-log4j2.xml" -cp "$lib/*" kafka.tools.StorageTool \
			format --standalone -t "$cid" -c "$kdir/server.properties" >"$LOG_DIR/kafka-format.log" 2>&1 ||
			die "kafka storage format failed (see $LOG_DIR/kafka-format.log)"
	fi
	log "starting kafka on 127.0.0.1:$KAFKA_PORT"
	nohup java $KAFKA_HEAP_OPTS $KAFKA_GC_OPTS -Xlog:gc:file="$LOG_DIR/kafka-gc.log" -Djava.awt.headless=true \
		-Dlog4j2.configurationFile="$here/kafka/log4j2.xml" \
		-cp "$lib/*" kafka.Kafka "$kdir/server.properties" >"$LOG_DIR/kafka.log" 2>&1 </dev/null &
	echo $! >"$kdir/kafka.pid"
	wait_port "$KAFKA_PORT" 90 kafka "$LOG_DIR/kafka.log"
}

stop_pidfile() { # pidfile name
	[ -f "$1" ] || return 0
	local pid
	pid="$(cat "$1")"
	if kill -0 "$pid" 2>/dev/null; then
		log "stopping $2 (pid $pid)"
		kill "$pid" 2>/dev/null || true
		for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
		kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$1"
}

kafka_down() { stop_pidfile "$ENV_DIR/kafka/kafka.pid" kafka; }

# ---------------------------------------------------------------- Apicurio Registry
# Apicurio publishes only the thin Quarkus app jar to Maven Central; scripts/registry/pom.xml
# runs the Quarkus build step over it to produce a runnable uber-jar (cached by pom hash).
# Jars are built into CACHE_DIR even when the services run already: tests that own a
# broker or a registry start their own from them.
ensure_jars() {
	mvn_libs "$here/kafka" "$CACHE_DIR/kafka-lib"
	local sum build="$CACHE_DIR/registry-build"
	sum="$(cat "$here/registry/pom.xml" "$here/registry/settings.xml" | sha256sum | cut -d' ' -f1)"
	if [ ! -f "$CACHE_DIR/registry.jar" ] || [ "$(cat "$CACHE_DIR/registry.sha" 2>/dev/null)" != "$sum" ]; then
		need_java_mvn
		rm -rf "$build"
		mkdir -p "$build"
		cp "$here/registry/pom.xml" "$here/registry/settings.xml" "$build/"
		log "building Apicurio Registry from Maven Central artifacts (first time: about a minute)"
		(cd "$build" && mvn -q -B -s settings.xml package -DskipTests -Dquarkus.package.type=uber-jar) \
			>"$LOG_DIR/mvn-registry.log" 2>&1 || die "Apicurio build failed (see $LOG_DIR/mvn-registry.log)"
		cp "$build/target/"*-runner.jar "$CACHE_DIR/registry.jar"
		rm -rf "$build"
		echo "$sum" >"$CACHE_DIR/registry.sha"
	fi
}

registry_up() {
	if port_open "$REGISTRY_PORT"; then
		log "registry already listening on 127.0.0.1:$REGISTRY_PORT"
		return
	fi
	local rdir="$ENV_DIR/registry"
	mkdir -p "$rdir"
	# In-memory storage (Apicurio's default): its file-backed H2 store stalls for tens of
	# seconds on table locks when many tests register at once right after a cold start.
	log "starting Apicurio Registry on 127.0.0.1:$REGISTRY_PORT (in-memory, global compatibility BACKWARD)"
	nohup java -Xmx1g -Xlog:gc:file="$LOG_DIR/registry-gc.log" -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$REGISTRY_PORT" \
		-Dregistry.rules.global.compatibility=BACKWARD \
		-jar "$CACHE_DIR/registry.jar" >"$LOG_DIR/registry.log" 2>&1 </dev/null &
	echo $! >"$rdir/registry.pid"
	wait_port "$REGISTRY_PORT" 120 registry "$LOG_DIR/registry.log"
	local i
	for ((i = 0; i < 120; i++)); do
		if curl -fsS -o /dev/null "http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7/subjects" 2>/dev/null; then
			# One registration warms the storage and the JIT before tests register in parallel.
			curl -fsS -o /dev/null -X POST -H 'Content-Type: application/vnd.schemaregistry.v1+json' \
				--data '{"schema":"{\"type\":\"record\",\"name\":\"Warmup\",\"fields\":[]}"}' \
				"http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7/subjects/relaybox-env-warmup-value/versions" 2>/dev/null || true
			return 0
		fi
		sleep 0.5
	done
	die "registry on 127.0.0.1:$REGISTRY_PORT does not answer /apis/ccompat/v7/subjects (log: $LOG_DIR/registry.log)"
}

registry_down() { stop_pidfile "$ENV_DIR/registry/registry.pid" registry; }

# ---------------------------------------------------------------- main
print_exports() {
	echo "export DATABASE_URL='$(database_url)' KAFKA_BROKERS='127.0.0.1:$KAFKA_PORT' SCHEMA_REGISTRY_URL='http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7' RELAYBOX_CACHE_DIR='$CACHE_DIR'"
}

cmd="${1:-up}"
mkdir -p "$LOG_DIR"
case "$cmd" in
up)
	start=$(date +%s)
	mkdir -p "$CACHE_DIR"
	ensure_jars
	need_prometheus
	need_python_cloudevents
	pg_up
	kafka_up
	registry_up
	log "ready in $(($(date +%s) - start)) s; logs in $LOG_DIR"
	print_exports
	;;
down)
	registry_down
	kafka_down
	pg_down
	;;
print) print_exports ;;
pg) pg_up ;;
cloudevents) need_python_cloudevents ;;
kafka) mkdir -p "$CACHE_DIR"; ensure_jars; kafka_up ;;
registry) mkdir -p "$CACHE_DIR"; ensure_jars; registry_up ;;
*) die "usage: $0 up|down|print" ;;
esac
