#!/usr/bin/env bash
# End-to-end check of a peer runner against the contract (bench/peers/README.md).
#   bench/peers/verify.sh debezium [-rows 50000 -keys 1000 -mode drain|steady -partitions 6 ...]
# Uses the running services (scripts/env.sh up), creates and drops its own bench_peer_* objects.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
peer="${1:?usage: verify.sh <peer> [verify flags]}"
shift
eval "$(bash "$here/../../scripts/env.sh" print)"
"$here/$peer/run.sh" --prepare-only
cd "$here/verify"
go build -o "${TMPDIR:-/tmp}/bench-peer-verify" .
exec "${TMPDIR:-/tmp}/bench-peer-verify" -peer "$peer" -runner "$here/$peer/run.sh" "$@"
