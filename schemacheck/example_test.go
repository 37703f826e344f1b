package schemacheck_test

import (
	"fmt"

	"github.com/relaybox/relaybox/schemacheck"
)

func ExampleCompare() {
	v1 := `{"type":"record","name":"Order","fields":[{"name":"id","type":"string"}]}`
	v2 := `{"type":"record","name":"Order","fields":[{"name":"id","type":"string"},{"name":"tier","type":"int"}]}`
	for _, level := range []schemacheck.Level{schemacheck.Forward, schemacheck.Full} {
		problems, err := schemacheck.Compare([]schemacheck.Version{{Label: "main:order.avsc", Text: v1}}, v2, level)
		if err != nil {
			panic(err)
		}
		fmt.Printf("%s: %d problem(s)\n", level, len(problems))
		for _, p := range problems {
			fmt.Println(p)
		}
	}
	// Output:
	// FORWARD: 0 problem(s)
	// FULL: 1 problem(s)
	// field `tier` added without a default: new readers cannot read old events under FULL [against main:order.avsc]
}
