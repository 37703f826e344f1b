// Package k8stest holds no code: its tests render the Helm chart in ../helm/relaybox
// with the pinned helm (go.mod's tool directive) and strictly decode every object into
// its Kubernetes type. It is its own module so that k8s.io/api and helm stay out of
// relaybox's dependencies; the Makefile's test target runs it.
package k8stest
