package schemacheck_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/hamba/avro/v2"

	"github.com/relaybox/relaybox/schemacheck"
)

func TestCompare_MessageNamesFieldChangeAndWhoBreaks(t *testing.T) {
	v2 := evolve(t, `{"name":"legacy"`, `{"name":"tier","type":"int"},{"name":"legacy"`)
	problems, err := schemacheck.Compare([]schemacheck.Version{{Label: "HEAD~1:order.avsc", Text: orderV1}}, v2, schemacheck.Full)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) != 1 {
		t.Fatalf("problems = %v, want one", problems)
	}
	p := problems[0]
	p.Subject, p.File = "orders-value", "schemas/order.avsc"
	want := "subject orders-value, schemas/order.avsc: field `tier` added without a default: new readers cannot read old events under FULL [against HEAD~1:order.avsc]"
	if p.String() != want || p.Path != "tier" || p.Direction != schemacheck.DirBackward {
		t.Fatalf("got %q (%+v)\nwant %q", p.String(), p, want)
	}
}

func TestCompare_MessagesPerChange(t *testing.T) {
	for _, c := range []struct{ name, v2, want string }{
		{"remove field", evolve(t, `
	{"name":"qty","type":"int"},`, ``), "field `qty` removed, and the old schema gives it no default: old readers cannot read new events under FULL"},
		{"long to int", evolve(t, `{"name":"amount","type":"long"}`, `{"name":"amount","type":"int"}`), "type of `amount` changed from long to int: new readers cannot read old events under FULL"},
		{"int to long", evolve(t, `{"name":"qty","type":"int"}`, `{"name":"qty","type":"long"}`), "type of `qty` changed from int to long: old readers cannot read new events under FULL"},
		{"add symbol", evolve(t, `["NEW","PAID"]`, `["NEW","PAID","SHIPPED"]`), "symbol `SHIPPED` added to enum `status`, whose old version has no default: old readers cannot read new events under FULL"},
		{"remove symbol", evolve(t, `["NEW","PAID"]`, `["NEW"]`), "symbol `PAID` removed from enum `status` (which has no default): new readers cannot read old events under FULL"},
		{"narrow union", evolve(t, `["null","string","long"]`, `["null","string"]`), "union `note` lost branch long (was [null, string, long], now [null, string]): new readers cannot read old events under FULL"},
		{"widen union", evolve(t, `["null","string","long"]`, `["null","string","long","double"]`), "union `note` gained branch double (was [null, string, long], now [null, string, long, double]): old readers cannot read new events under FULL"},
	} {
		problems, err := schemacheck.Compare([]schemacheck.Version{{Label: "v1", Text: orderV1}}, c.v2, schemacheck.Full)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, p := range problems {
			got = append(got, p.Message)
		}
		if len(got) != 1 || got[0] != c.want {
			t.Errorf("%s: got %q\nwant %q", c.name, got, c.want)
		}
	}
}

// Each version is parsed with its own cache: a new version that names a type only the
// old one defines does not parse (Apicurio refuses it as invalid too: 422), where
// hamba/avro's default cache, keyed by name and shared by the process, would resolve it
// from whichever definition the process parsed before.
func TestCompare_VersionsDoNotShareNames(t *testing.T) {
	if _, err := avro.Parse(orderV1); err != nil { // the process has seen v1 (a decoder, a writer)
		t.Fatal(err)
	}
	v2 := `{"type":"record","name":"Order","namespace":"shop.v1","fields":[{"name":"status","type":"Status"}]}`
	_, err := schemacheck.Compare([]schemacheck.Version{{Label: "v1", Text: orderV1}}, v2, schemacheck.Full)
	if !errors.Is(err, schemacheck.ErrInvalidSchema) || !strings.Contains(err.Error(), "new version") {
		t.Fatalf("err = %v, want the new version invalid", err)
	}
}

func TestCompare_TransitiveChecksEveryOlderVersion(t *testing.T) {
	v1 := `{"type":"record","name":"A","fields":[{"name":"a","type":"string"}]}`
	v2 := `{"type":"record","name":"A","fields":[{"name":"a","type":"string"},{"name":"b","type":"int","default":0}]}`
	v3 := `{"type":"record","name":"A","fields":[{"name":"b","type":"int","default":0}]}` // drops a, which v1 and v2 give no default
	older := []schemacheck.Version{{Label: "v1", Text: v1}, {Label: "v2", Text: v2}}
	for _, c := range []struct {
		level schemacheck.Level
		want  []string
	}{
		{schemacheck.Backward, nil},
		{schemacheck.Forward, []string{"v2"}},
		{schemacheck.ForwardTransitive, []string{"v1", "v2"}},
		{schemacheck.FullTransitive, []string{"v1", "v2"}},
	} {
		problems, err := schemacheck.Compare(older, v3, c.level)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, p := range problems {
			got = append(got, p.Against)
		}
		if strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("%s: problems against %v, want %v (%v)", c.level, got, c.want, problems)
		}
	}
}

func TestParseLevel(t *testing.T) {
	if l, err := schemacheck.ParseLevel("full_transitive"); err != nil || l != schemacheck.FullTransitive {
		t.Fatalf("%v %v", l, err)
	}
	if _, err := schemacheck.ParseLevel("STRICT"); err == nil || !strings.Contains(err.Error(), "BACKWARD") {
		t.Fatalf("err = %v", err)
	}
}

// A change inside a union branch or a recursive type is reported where it is, once, not
// as a lost branch.
func TestCompare_NamesTheFieldInsideUnionsAndRecursiveTypes(t *testing.T) {
	for _, name := range []string{"nested record in a union: add a field without a default", "recursive record: add a field without a default", "nested record: add a field without a default"} {
		var ev *evolution
		for _, e := range moreEvolutions() {
			if e.name == name {
				ev = &e
			}
		}
		if ev == nil {
			t.Fatalf("no evolution %q", name)
		}
		problems, err := schemacheck.Compare([]schemacheck.Version{{Label: "v1", Text: ev.v1}}, ev.v2, schemacheck.Full)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{
			"nested record in a union: add a field without a default": "field `u.b` added without a default",
			"recursive record: add a field without a default":         "field `w` added without a default",
			"nested record: add a field without a default":            "field `n.b` added without a default",
		}[name] + ": new readers cannot read old events under FULL"
		if len(problems) != 1 || problems[0].Message != want {
			t.Errorf("%s: %v\nwant one: %q", name, problems, want)
		}
	}
}
