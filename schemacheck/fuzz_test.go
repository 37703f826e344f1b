package schemacheck_test

import (
	"testing"

	"github.com/relaybox/relaybox/schemacheck"
)

// Compare reads schema files from pull requests: any text must give problems or an
// error, never a panic, and the verdict must not depend on the messages' walk.
func FuzzCompare(f *testing.F) {
	for _, ev := range append(evolutions(f), moreEvolutions()...) {
		v1 := ev.v1
		if v1 == "" {
			v1 = orderV1
		}
		f.Add(v1, ev.v2)
	}
	f.Add(`"int"`, `["null","int"]`)
	f.Fuzz(func(t *testing.T, old, next string) {
		for _, l := range []schemacheck.Level{schemacheck.Backward, schemacheck.Forward, schemacheck.FullTransitive} {
			problems, err := schemacheck.Compare([]schemacheck.Version{{Label: "old", Text: old}}, next, l)
			if err != nil && len(problems) > 0 {
				t.Fatalf("problems with an error: %v %v", problems, err)
			}
			for _, p := range problems {
				if p.Message == "" || p.Level != l {
					t.Fatalf("problem without message or level: %+v", p)
				}
			}
		}
	})
}
