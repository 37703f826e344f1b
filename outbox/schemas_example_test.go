package outbox_test

import (
	"context"
	"log"
	"os"

	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/schemacheck"
)

// A service checks the schemas it writes against the registry before it takes traffic.
func ExampleCheckSchemas() {
	events := []outbox.EventSchema{
		{Topic: "orders", Value: OrderCreated{}},
	}
	cfg := &outbox.Config{SubjectStrategy: outbox.TopicRecordName}
	reg := schemacheck.NewRegistry(os.Getenv("SCHEMA_REGISTRY_URL"), nil)
	if err := outbox.CheckSchemas(context.Background(), reg, cfg, events...); err != nil {
		log.Fatalf("not starting: %v", err) // lists subject, field and what changed
	}
}
