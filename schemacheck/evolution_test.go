package schemacheck_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/schemacheck"
)

// orderV1 is the first version the evolutions cases start from.
const orderV1 = `{"type":"record","name":"Order","namespace":"shop.v1","fields":[
	{"name":"id","type":"string"},
	{"name":"qty","type":"int"},
	{"name":"amount","type":"long"},
	{"name":"status","type":{"type":"enum","name":"Status","symbols":["NEW","PAID"]}},
	{"name":"note","type":["null","string","long"],"default":null},
	{"name":"legacy","type":"string","default":""}]}`

// evolve returns orderV1 with replacements applied (old → new, in order).
func evolve(t testing.TB, pairs ...string) string {
	t.Helper()
	s := orderV1
	for i := 0; i < len(pairs); i += 2 {
		if !strings.Contains(s, pairs[i]) {
			t.Fatalf("evolve: %q not in orderV1", pairs[i])
		}
		s = strings.Replace(s, pairs[i], pairs[i+1], 1)
	}
	return s
}

type evolution struct {
	name string
	v1   string // orderV1 when empty
	v2   string
	// backward, forward: Apache Avro's verdict (which the registry enforces) for each
	// direction; FULL is both.
	backward, forward bool
}

func evolutions(t testing.TB) []evolution {
	return []evolution{
		{"add field with default", "", evolve(t, `{"name":"legacy"`, `{"name":"tier","type":"int","default":0},{"name":"legacy"`), true, true},
		{"add field without default", "", evolve(t, `{"name":"legacy"`, `{"name":"tier","type":"int"},{"name":"legacy"`), false, true},
		{"remove field with default", "", evolve(t, `,
	{"name":"legacy","type":"string","default":""}`, ``), true, true},
		{"remove field without default", "", evolve(t, `
	{"name":"qty","type":"int"},`, ``), true, false},
		{"rename field with alias", "", evolve(t, `{"name":"qty","type":"int"}`, `{"name":"quantity","aliases":["qty"],"type":"int"}`), true, false},
		{"promote int to long", "", evolve(t, `{"name":"qty","type":"int"}`, `{"name":"qty","type":"long"}`), true, false},
		{"narrow long to int", "", evolve(t, `{"name":"amount","type":"long"}`, `{"name":"amount","type":"int"}`), false, true},
		{"add enum symbol", "", evolve(t, `["NEW","PAID"]`, `["NEW","PAID","SHIPPED"]`), true, false},
		{"remove enum symbol", "", evolve(t, `["NEW","PAID"]`, `["NEW"]`), false, true},
		{"add enum symbol, enum has a default", "", evolve(t, `"symbols":["NEW","PAID"]}`, `"symbols":["NEW","PAID","SHIPPED"],"default":"NEW"}`), true, false},
		{"widen union", "", evolve(t, `["null","string","long"]`, `["null","string","long","double"]`), true, false},
		{"narrow union", "", evolve(t, `["null","string","long"]`, `["null","string"]`), false, true},
		{"change namespace", "", evolve(t, `"namespace":"shop.v1"`, `"namespace":"shop.v2"`), true, true},
		{"change a field's doc only", "", evolve(t, `{"name":"id","type":"string"}`, `{"name":"id","type":"string","doc":"the order id"}`), true, true},
		{"rename record without alias", "", evolve(t, `"name":"Order"`, `"name":"Purchase"`), false, false},
		{"rename record with alias", "", evolve(t, `"name":"Order"`, `"name":"Purchase","aliases":["shop.v1.Order"]`), true, false},
		{"reorder union branches", "", evolve(t, `["null","string","long"]`, `["null","long","string"]`), true, true},
		{"change string to bytes", "", evolve(t, `{"name":"id","type":"string"}`, `{"name":"id","type":"bytes"}`), true, true},
		{"promote int to float", "", evolve(t, `{"name":"qty","type":"int"}`, `{"name":"qty","type":"float"}`), true, false},
		{"make a field nullable", "", evolve(t, `{"name":"id","type":"string"}`, `{"name":"id","type":["null","string"],"default":null}`), true, false},
		{"remove enum symbol, enum has a default", "", evolve(t, `"symbols":["NEW","PAID"]}`, `"symbols":["NEW"],"default":"NEW"}`), true, true},
		{"add a logical type", "", evolve(t, `{"name":"amount","type":"long"}`, `{"name":"amount","type":{"type":"long","logicalType":"timestamp-millis"}}`), true, true},
	}
}

// rec is a record R in namespace x with the given fields.
func rec(fields string) string {
	return `{"type":"record","name":"R","namespace":"x","fields":[` + fields + `]}`
}

const (
	list   = `{"type":"record","name":"L","fields":[{"name":"v","type":"int"},{"name":"next","type":["null","L"],"default":null}]}`
	nested = `{"type":"record","name":"N","fields":[{"name":"a","type":"int"}]}`
)

// moreEvolutions are changes of nested, recursive, named and logical types.
func moreEvolutions() []evolution {
	return []evolution{
		{"change a fixed's size", rec(`{"name":"f","type":{"type":"fixed","name":"F","size":16}}`), rec(`{"name":"f","type":{"type":"fixed","name":"F","size":32}}`), false, false},
		{"rename a fixed with an alias", rec(`{"name":"f","type":{"type":"fixed","name":"F","size":4}}`), rec(`{"name":"f","type":{"type":"fixed","name":"F2","aliases":["x.F"],"size":4}}`), true, false},
		{"rename an enum with an alias", rec(`{"name":"e","type":{"type":"enum","name":"E","symbols":["A"]}}`), rec(`{"name":"e","type":{"type":"enum","name":"E2","aliases":["x.E"],"symbols":["A"]}}`), true, false},
		{"change an enum to a string", rec(`{"name":"e","type":{"type":"enum","name":"E","symbols":["A"]}}`), rec(`{"name":"e","type":"string"}`), false, false},
		{"promote array items int to long", rec(`{"name":"a","type":{"type":"array","items":"int"}}`), rec(`{"name":"a","type":{"type":"array","items":"long"}}`), true, false},
		{"narrow map values long to int", rec(`{"name":"m","type":{"type":"map","values":"long"}}`), rec(`{"name":"m","type":{"type":"map","values":"int"}}`), false, true},
		{"promote int to double", rec(`{"name":"i","type":"int"}`), rec(`{"name":"i","type":"double"}`), true, false},
		{"change a field's default", rec(`{"name":"i","type":"int","default":1}`), rec(`{"name":"i","type":"int","default":2}`), true, true},
		{"add a field alias only", rec(`{"name":"a","type":"int"}`), rec(`{"name":"a","aliases":["z"],"type":"int"}`), true, true},
		{"reorder fields", rec(`{"name":"a","type":"int"},{"name":"b","type":"string"}`), rec(`{"name":"b","type":"string"},{"name":"a","type":"int"}`), true, true},
		{"single-branch union to its type", rec(`{"name":"s","type":["string"]}`), rec(`{"name":"s","type":"string"}`), true, true},
		{"change int to long inside a union", rec(`{"name":"u","type":["int","string"]}`), rec(`{"name":"u","type":["long","string"]}`), true, false},
		{"nested record: add a field without a default", rec(`{"name":"n","type":` + nested + `}`), rec(`{"name":"n","type":{"type":"record","name":"N","fields":[{"name":"a","type":"int"},{"name":"b","type":"int"}]}}`), false, true},
		{"nested record in a union: add a field without a default", rec(`{"name":"u","type":["null",` + nested + `],"default":null}`), rec(`{"name":"u","type":["null",{"type":"record","name":"N","fields":[{"name":"a","type":"int"},{"name":"b","type":"int"}]}],"default":null}`), false, true},
		{"make a nested record nullable", rec(`{"name":"n","type":` + nested + `}`), rec(`{"name":"n","type":["null",` + nested + `],"default":null}`), true, false},
		{"replace a nested record by another name", rec(`{"name":"n","type":{"type":"record","name":"A","fields":[{"name":"a","type":"int"}]}}`), rec(`{"name":"n","type":{"type":"record","name":"B","fields":[{"name":"a","type":"int"}]}}`), false, false},
		{"recursive record: add a field with a default", list, `{"type":"record","name":"L","fields":[{"name":"v","type":"int"},{"name":"w","type":"int","default":0},{"name":"next","type":["null","L"],"default":null}]}`, true, true},
		{"recursive record: add a field without a default", list, `{"type":"record","name":"L","fields":[{"name":"v","type":"int"},{"name":"w","type":"int"},{"name":"next","type":["null","L"],"default":null}]}`, false, true},
		{"top-level string to bytes", `"string"`, `"bytes"`, true, true},
		{"top-level int to a record", `"int"`, rec(`{"name":"a","type":"int"}`), false, false},
		// Avro ignores logical types when resolving: these pass everywhere, and the
		// values are misread (a scale of 2 read as 4; milliseconds read as microseconds).
		{"change a decimal's precision and scale", rec(`{"name":"d","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}}`), rec(`{"name":"d","type":{"type":"bytes","logicalType":"decimal","precision":12,"scale":4}}`), true, true},
		{"timestamp-millis to timestamp-micros", rec(`{"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}}`), rec(`{"name":"t","type":{"type":"long","logicalType":"timestamp-micros"}}`), true, true},
		{"string to uuid", rec(`{"name":"t","type":"string"}`), rec(`{"name":"t","type":{"type":"string","logicalType":"uuid"}}`), true, true},
		// Apache Avro reads attribute names exactly: "Default" and "Aliases" are custom
		// properties to it (hamba/avro alone would honour them).
		{"add a field with \"Default\" (wrong case)", rec(`{"name":"a","type":"int"}`), rec(`{"name":"a","type":"int"},{"name":"b","type":"int","Default":0}`), false, true},
		{"rename a field with \"Aliases\" (wrong case)", rec(`{"name":"a","type":"int"}`), rec(`{"name":"b","Aliases":["a"],"type":"int"}`), false, false},
	}
}

// The registry refuses these as invalid Avro; the offline check must not pass them.
func TestParse_RefusesWhatTheRegistryRefuses(t *testing.T) {
	url := testenv.RegistryURL(t)
	reg := registry.New(url, registry.Options{Timeout: time.Minute})
	ctx := context.Background()
	v1 := rec(`{"name":"a","type":"int"}`)
	for name, v2 := range map[string]string{
		"record \"Name\"":            `{"type":"record","Name":"R","namespace":"x","fields":[{"name":"a","type":"int"}]}`,
		"field \"Type\"":             rec(`{"name":"a","Type":"int"}`),
		"enum \"Symbols\"":           rec(`{"name":"a","type":"int"},{"name":"e","type":{"type":"enum","name":"E","Symbols":["A"]},"default":"A"}`),
		"empty union with a default": rec(`{"name":"a","type":"int"},{"name":"b","type":[],"default":""}`),
		"not JSON":                   `{"type":"record",`,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := schemacheck.Parse(v2); !errors.Is(err, schemacheck.ErrInvalidSchema) {
				t.Errorf("offline: %v, want ErrInvalidSchema", err)
			}
			subject := testenv.Name(t, "invalid") + "-value"
			if _, err := reg.ID(ctx, subject, v1, true); err != nil {
				t.Fatal(err)
			}
			// Apicurio 2.4.2 answers 422 (or 400 for broken JSON); the empty union with
			// a default makes it fail with a 500, as it makes hamba/avro panic.
			if res, err := reg.CheckCompatibility(ctx, subject, v2); err == nil {
				t.Errorf("registry: %+v, want it refused", res)
			}
		})
	}
}

func allEvolutions(t testing.TB) []evolution {
	evs := append(evolutions(t), moreEvolutions()...)
	for i := range evs {
		if evs[i].v1 == "" {
			evs[i].v1 = orderV1
		}
	}
	return evs
}

func verdict(backward, forward bool, l schemacheck.Level) bool {
	return (!l.Backward() || backward) && (!l.Forward() || forward)
}

// The offline verdict equals Apicurio's on every evolution case and level: Apicurio is
// set to the level on a fresh subject, given v1, and asked about v2.
func TestCompare_AgreesWithTheRegistry(t *testing.T) {
	url := testenv.RegistryURL(t)
	reg := registry.New(url, registry.Options{Timeout: time.Minute})
	for _, ev := range allEvolutions(t) {
		for _, level := range []schemacheck.Level{schemacheck.Backward, schemacheck.Forward, schemacheck.Full} {
			t.Run(fmt.Sprintf("%s/%s", ev.name, level), func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				want := verdict(ev.backward, ev.forward, level)
				problems, err := schemacheck.Compare([]schemacheck.Version{{Label: "v1", Text: ev.v1}}, ev.v2, level)
				if err != nil {
					t.Fatal(err)
				}
				offline := len(problems) == 0

				subject := testenv.Name(t, "evo") + "-value"
				if err := reg.SetCompatibility(ctx, subject, string(level)); err != nil {
					t.Fatal(err)
				}
				if _, err := reg.ID(ctx, subject, ev.v1, true); err != nil {
					t.Fatal(err)
				}
				res, err := reg.CheckCompatibility(ctx, subject, ev.v2)
				if err != nil {
					t.Fatal(err)
				}
				if res.NoVersion {
					t.Fatal("registry says the subject holds no version after registering v1")
				}
				if offline != res.Compatible {
					t.Errorf("offline compatible=%v (%v), registry compatible=%v (%v)", offline, problems, res.Compatible, res.Messages)
				}
				if res.Compatible != want {
					t.Errorf("registry compatible=%v, Avro's rules say %v (%v)", res.Compatible, want, res.Messages)
				}
				// The registry enforces what it answered: registering v2 fails exactly
				// when it said incompatible.
				_, err = reg.ID(ctx, subject, ev.v2, true)
				if res.Compatible != (err == nil) || (err != nil && !registry.IsIncompatible(err)) {
					t.Errorf("registering v2: %v, after the registry said compatible=%v", err, res.Compatible)
				}
				for _, p := range problems {
					if p.Level != level || p.Against != "v1" || !strings.HasSuffix(p.Message, " under "+string(level)) {
						t.Errorf("problem %+v lacks its level or version", p)
					}
				}
			})
		}
	}
}

// The offline check agrees with Avro's rules without a registry too (this runs
// everywhere, the registry comparison above where Apicurio runs).
func TestCompare_EvolutionCases(t *testing.T) {
	for _, ev := range allEvolutions(t) {
		for _, level := range []schemacheck.Level{schemacheck.Backward, schemacheck.Forward, schemacheck.Full, schemacheck.None} {
			problems, err := schemacheck.Compare([]schemacheck.Version{{Label: "v1", Text: ev.v1}}, ev.v2, level)
			if err != nil {
				t.Fatal(err)
			}
			want := level == schemacheck.None || verdict(ev.backward, ev.forward, level)
			if got := len(problems) == 0; got != want {
				t.Errorf("%s under %s: compatible=%v, want %v (%v)", ev.name, level, got, want, problems)
			}
		}
	}
}

// The offline check accepts a schema exactly when the registry accepts it, with one
// known exception where it follows the Avro specification and Apicurio does not.
func TestParse_ValidExactlyWhereTheRegistryAccepts(t *testing.T) {
	reg := registry.New(testenv.RegistryURL(t), registry.Options{Timeout: time.Minute})
	for name, c := range map[string]struct {
		text  string
		valid bool
	}{
		"no fields":                           {rec(``), true},
		"float default 1":                     {rec(`{"name":"d","type":"float","default":1}`), true},
		"bytes default":                       {rec(`{"name":"b","type":"bytes","default":"\u00ff"}`), true},
		"long default 1.5":                    {rec(`{"name":"b","type":"long","default":1.5}`), false},
		"long default 1.0":                    {rec(`{"name":"b","type":"long","default":1.0}`), false},
		"long default 1e3":                    {rec(`{"name":"b","type":"long","default":1e3}`), false},
		"int default over 32 bits":            {rec(`{"name":"b","type":"int","default":3000000000}`), false},
		"union of int first, default 1.5":     {rec(`{"name":"b","type":["int","null"],"default":1.5}`), false},
		"timestamp default 1.5":               {rec(`{"name":"b","type":{"type":"long","logicalType":"timestamp-millis"},"default":1.5}`), false},
		"union default for the second branch": {rec(`{"name":"b","type":["string","null"],"default":null}`), false},
		"int default null":                    {rec(`{"name":"a","type":"int","default":null}`), false},
		"enum default not a symbol":           {rec(`{"name":"e","type":{"type":"enum","name":"E","symbols":["A"],"default":"Z"}}`), false},
		"duplicate field":                     {rec(`{"name":"a","type":"int"},{"name":"a","type":"long"}`), false},
		"named type defined twice":            {rec(`{"name":"a","type":{"type":"fixed","name":"F","size":1}},{"name":"b","type":{"type":"fixed","name":"F","size":2}}`), false},
		"union inside a union":                {rec(`{"name":"u","type":["int",["string"]]}`), false},
		"unknown type":                        {rec(`{"name":"d","type":"foo"}`), false},
	} {
		_, perr := schemacheck.Parse(c.text)
		_, rerr := reg.ID(context.Background(), testenv.Name(t, "valid")+"-value", c.text, true)
		if (perr == nil) != c.valid || (rerr == nil) != c.valid {
			t.Errorf("%s: offline %v, registry %v; want valid=%v", name, perr, rerr, c.valid)
		}
	}
	// Known: Avro names start with a letter or _, in every namespace part too; Apicurio
	// 2.4.2 accepts a namespace "1x", relaybox refuses it.
	ns := `{"type":"record","name":"R","namespace":"1x","fields":[]}`
	if _, err := schemacheck.Parse(ns); !errors.Is(err, schemacheck.ErrInvalidSchema) {
		t.Errorf("namespace 1x: %v", err)
	}
}
