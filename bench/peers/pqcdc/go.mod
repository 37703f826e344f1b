module github.com/relaybox/relaybox/bench/peers/pqcdc

go 1.26

// github.com/Trendyol/go-pq-cdc-kafka and github.com/Trendyol/go-pq-cdc are added by
// run.sh --prepare-only in a build copy under the cache dir (a replace to the sources in
// ../shared/peers when present, else PQCDC_VERSION from the module proxy), so this go.mod
// and the repo stay free of them.
require github.com/segmentio/kafka-go v0.4.47
