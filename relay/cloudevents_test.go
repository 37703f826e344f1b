package relay_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"

	"github.com/relaybox/relaybox/internal/envelope"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/internal/wire"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relay"
)

// pythonCloudEvents returns the python of the venv holding the CloudEvents project's
// SDK (scripts/cloudevents/requirements.txt), installing it if missing: `make env`
// does it too, and a second call returns at once.
func pythonCloudEvents(t *testing.T) string {
	t.Helper()
	cache := testenv.CacheDir(t)
	cmd := exec.Command("bash", filepath.Join("..", "scripts", "env.sh"), "cloudevents")
	cmd.Env = append(os.Environ(), "RELAYBOX_CACHE_DIR="+cache)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("installing the Python CloudEvents SDK: %v\n%s", err, out)
	}
	return filepath.Join(cache, "py-cloudevents", "bin", "python")
}

// sdkEvent is one record as the Python SDK parsed it (scripts/cloudevents/read.py).
type sdkEvent struct {
	Partition  int32             `json:"partition"`
	Offset     int64             `json:"offset"`
	Attributes map[string]string `json:"attributes"`
	Data       string            `json:"data"`
}

// readWithPythonSDK reads n records of topic with kafka-python and the CloudEvents
// SDK's Kafka binding, which refuses a record that is not a valid CloudEvent.
func readWithPythonSDK(t *testing.T, topic string, n int) []sdkEvent {
	t.Helper()
	py := pythonCloudEvents(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, py, filepath.Join("..", "scripts", "cloudevents", "read.py"),
		strings.Join(testenv.Brokers(t), ","), topic, strconv.Itoa(n), "90")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("read.py: %v\n%s", err, stderr.String())
	}
	var evs []sdkEvent
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e sdkEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("read.py printed %q: %v", sc.Text(), err)
		}
		evs = append(evs, e)
	}
	if len(evs) != n {
		t.Fatalf("read.py returned %d events, want %d", len(evs), n)
	}
	return evs
}

// The relay writes the CloudEvents Kafka binary-mode headers on the topics it is told
// to, and a CloudEvents SDK nobody here wrote (the Python `cloudevents` package, its
// Kafka binding) reads every record as a valid CloudEvent: id, type, source (the
// event's, else the default), time, subject = the aggregate key, content-type, and a
// dataschema without credentials that the registry answers with the schema the
// value's wire-format header names. Other topics get no ce_ header.
func TestRelay_CloudEventsHeadersAreReadByThePythonSDK(t *testing.T) {
	e := newEnv(t)
	ceTopic, plainTopic := testenv.Topic(t, 3), testenv.Topic(t, 1)
	reg, err := url.Parse(e.registry)
	if err != nil {
		t.Fatal(err)
	}
	// The schema URL as an operator might paste it: userinfo, a token in the query.
	withCreds := *reg
	withCreds.User = url.UserPassword("ops", "ce-s3cret-pw")
	withCreds.RawQuery = "token=ce-s3cret-token"
	e.relay(t, func(c *relay.Config) {
		c.CloudEvents = relay.CloudEvents{Topics: []string{ceTopic}, SchemaURL: withCreds.String()}
	})

	occurred := time.Date(2026, 3, 4, 5, 6, 7, 123456000, time.UTC)
	type written struct {
		key, source string
		seq         int64
	}
	var want []written
	var evs []outbox.Event
	for i := range 12 {
		w := written{key: "order-" + strconv.Itoa(i%4), seq: int64(i + 1)}
		ev := outbox.Event{Topic: ceTopic, Key: w.key, Type: "OrderPlaced", Value: Seq{Key: w.key, Seq: w.seq},
			OccurredAt: occurred.Add(time.Duration(i) * time.Second),
			// An extension attribute passes; a writer's ce_type does not override the relay's.
			Headers: map[string]string{"ce_tenant": "acme", "ce_type": "forged"}}
		if i%2 == 0 {
			w.source = "/orders-service"
			ev.Source = w.source
		}
		want = append(want, w)
		evs = append(evs, ev)
	}
	evs = append(evs, outbox.Event{Topic: plainTopic, Key: "k", Type: "OrderPlaced", Value: Seq{Key: "k", Seq: 1}})
	ctx := context.Background()
	if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error { return e.w.Write(ctx, tx, evs...) }); err != nil {
		t.Fatal(err)
	}

	// The topic without CloudEvents: relaybox headers only.
	plain := readBack(t, plainTopic, 1, time.Minute)
	if plain.distinct != 1 {
		t.Fatalf("plain topic: %d records", plain.distinct)
	}
	for _, h := range plain.records[0].Headers {
		if strings.HasPrefix(h.Key, "ce_") || h.Key == envelope.ContentType {
			t.Errorf("topic without CloudEvents carries header %s=%q", h.Key, h.Value)
		}
	}

	got := readWithPythonSDK(t, ceTopic, len(want))
	defaultSource := "/relaybox/" + e.schema
	bySeq := map[int64]bool{}
	for _, g := range got {
		a := g.Attributes
		data, err := hex.DecodeString(g.Data)
		if err != nil {
			t.Fatal(err)
		}
		id, body, err := wire.Parse(data)
		if err != nil {
			t.Fatalf("data is not in the Confluent wire format: %v", err)
		}
		// ce_dataschema: the registry's URL of that very id, without credentials.
		ds := a["dataschema"]
		if strings.Contains(ds, "s3cret") || strings.Contains(ds, "ops@") {
			t.Fatalf("dataschema %q carries credentials", ds)
		}
		if wantDS := strings.TrimRight(reg.String(), "/") + "/schemas/ids/" + strconv.Itoa(int(id)); ds != wantDS {
			t.Fatalf("dataschema %q, want %q", ds, wantDS)
		}
		sch := fetchSchema(t, ds)
		var v Seq
		if err := avro.Unmarshal(sch, body, &v); err != nil {
			t.Fatalf("data does not decode with the schema at its dataschema: %v", err)
		}
		if v.Seq < 1 || int(v.Seq) > len(want) || bySeq[v.Seq] {
			t.Fatalf("unexpected or repeated event seq %d", v.Seq)
		}
		bySeq[v.Seq] = true
		w := want[v.Seq-1]
		wantSource := w.source
		if wantSource == "" {
			wantSource = defaultSource
		}
		evTime, err := time.Parse(time.RFC3339Nano, a["time"])
		if err != nil {
			t.Fatalf("time %q: %v", a["time"], err)
		}
		checks := []struct{ attr, got, want string }{
			{"specversion", a["specversion"], "1.0"},
			{"type", a["type"], "OrderPlaced"},
			{"source", a["source"], wantSource},
			{"subject", a["subject"], w.key},
			{"datacontenttype", a["datacontenttype"], relay.ContentTypeAvro},
			{"tenant", a["tenant"], "acme"},
			{"partitionkey (the record key)", a["partitionkey"], w.key},
			{"time", evTime.UTC().Format(time.RFC3339Nano), occurred.Add(time.Duration(v.Seq-1) * time.Second).Format(time.RFC3339Nano)},
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("seq %d: %s = %q, want %q", v.Seq, c.attr, c.got, c.want)
			}
		}
		if len(a["id"]) != 36 {
			t.Errorf("seq %d: id %q is not the event's UUID", v.Seq, a["id"])
		}
	}
	// ce_id is relaybox.event_id: compare through a read of the same records.
	back := readBack(t, ceTopic, len(want), time.Minute)
	ids := map[string]bool{}
	for _, rec := range back.records {
		for _, h := range rec.Headers {
			if h.Key == envelope.EventID {
				ids[string(h.Value)] = true
			}
		}
	}
	for _, g := range got {
		if !ids[g.Attributes["id"]] {
			t.Errorf("ce_id %q is no record's relaybox.event_id", g.Attributes["id"])
		}
	}
}

// fetchSchema GETs a ce_dataschema URL (Confluent API: {"schema": "..."}).
func fetchSchema(t *testing.T, u string) avro.Schema {
	t.Helper()
	resp, err := http.Get(u) //nolint:gosec // the test's own registry
	if err != nil {
		t.Fatalf("GET dataschema: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", u, resp.Status, b)
	}
	var doc struct {
		Schema string `json:"schema"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("GET %s: %v: %s", u, err, b)
	}
	sch, err := avro.Parse(doc.Schema)
	if err != nil {
		t.Fatalf("GET %s: schema: %v", u, err)
	}
	return sch
}
