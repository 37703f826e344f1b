// Package schemacheck decides whether a new version of an Avro schema is compatible
// with what came before, so that a breaking change fails a pull request instead of
// parking events in production. It answers the same question at three points, all
// agreeing with the registry (which is what enforces):
//
//   - offline, against the schema's older versions (e.g. the same .avsc file at a git
//     ref, see [GitVersions]): [Compare], with hamba/avro's compatibility checker, one
//     direction per call (FULL checks both), each version parsed with its own cache,
//     corrected where it disagrees with the registry (see docs/operations.md);
//   - against a registry: [Registry.Check], the registry's own compatibility endpoint
//     under the subject's configured level;
//   - from Go, at a service's start-up or in its tests: outbox.CheckSchemas and the
//     outbox/outboxtest helpers, built on this package.
//
// The command line is `relaybox schema check|compat|list`.
//
// # Offline
//
//	problems, err := schemacheck.Compare([]string{oldText}, newText, schemacheck.Full)
//	for _, p := range problems {
//		fmt.Println(p.Message)
//		// field `tier` added without a default: new readers cannot read old events under FULL
//	}
//
// # Against a registry
//
//	reg := schemacheck.NewRegistry(url, nil)
//	problems, err := reg.Check(ctx, "orders-value", newText)
package schemacheck
