module github.com/relaybox/relaybox/bench/peers/pqcdc

go 1.26

// github.com/Trendyol/go-pq-cdc-kafka is added by run.sh --prepare-only in a build copy under the
// cache dir (PQCDC_VERSION, default latest), so this go.mod and the repo stay free of it.
require (
	github.com/segmentio/kafka-go v0.4.47
	gopkg.in/yaml.v3 v3.0.1
)
