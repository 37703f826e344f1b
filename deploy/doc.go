// Package deploy holds no code: its tests check the deployment files beside it
// (prometheus/alerts.yml, grafana/relaybox.json, helm/relaybox) against the real
// tools: promtool, a running Prometheus scraping a running relay, and helm.
package deploy
