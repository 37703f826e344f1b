package chaos

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/internal/testenv"
)

// The suite's own checks, each against input that must trip it.

// TestReadTopic_CountsWhatIsWrongAndStopsAtTrailingAbortMarker writes a topic by
// hand: good records, a duplicate, a stale record, three undecodable ones, then a
// transaction that is aborted, so the partition's last offset is an abort marker.
// read_committed must not see the aborted records and must still end; a plain read
// sees them.
func TestReadTopic_CountsWhatIsWrongAndStopsAtTrailingAbortMarker(t *testing.T) {
	regURL := testenv.RegistryURL(t)
	brokers := testenv.Brokers(t)
	name := testenv.Topic(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	id := registerSchema(t, regURL, name+"-value", schemaText(3))
	s := avro.MustParse(schemaText(3))
	framed := func(schemaID uint32, key string, seq int64) []byte {
		body, err := avro.Marshal(s, Tick{Key: key, Seq: seq})
		if err != nil {
			t.Fatal(err)
		}
		return append(binary.BigEndian.AppendUint32([]byte{0}, schemaID), body...)
	}
	rec := func(key string, value []byte) *kgo.Record {
		return &kgo.Record{Topic: name, Key: []byte(key), Value: value}
	}
	plain := testenv.Client(t)
	if err := plain.ProduceSync(ctx,
		rec("k", framed(id, "k", 1)),
		rec("k", framed(id, "k", 2)),
		rec("k", framed(id, "k", 2)), // duplicate of the newest: not stale
		rec("k", framed(id, "k", 1)), // duplicate and stale
		rec("j", framed(id, "j", 1)),
		rec("k", []byte("not avro")),         // undecodable: no framing
		rec("k", framed(1<<30, "k", 3)),      // undecodable: unknown schema id
		rec("k", framed(id, "other-key", 3)), // undecodable: value of another key
		rec("k", framed(id, "k", 3)),
	).FirstErr(); err != nil {
		t.Fatal(err)
	}
	txn := testenv.Client(t, kgo.TransactionalID(name+"-txn"))
	if err := txn.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := txn.ProduceSync(ctx, rec("k", framed(id, "k", 2)), rec("z", framed(id, "z", 1))).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if err := txn.EndTransaction(ctx, kgo.TryAbort); err != nil {
		t.Fatal(err)
	}

	committed, err := readTopic(ctx, brokers[0], regURL, name, true)
	if err != nil {
		t.Fatalf("read_committed: %v", err)
	}
	if got := keysOf(committed.seen); !slices.Equal(got, []string{"j/1", "k/1", "k/2", "k/3"}) {
		t.Errorf("read_committed saw %v, want j/1 k/1 k/2 k/3 (not the aborted z/1)", got)
	}
	if committed.records != 9 || committed.dups != 2 || committed.stale != 1 || committed.undecodable != 3 || committed.violations != 0 {
		t.Errorf("read_committed: records %d dups %d stale %d undecodable %d violations %d, want 9 2 1 3 0 (%v)",
			committed.records, committed.dups, committed.stale, committed.undecodable, committed.violations, committed.examples)
	}
	all, err := readTopic(ctx, brokers[0], regURL, name, false)
	if err != nil {
		t.Fatalf("read_uncommitted: %v", err)
	}
	if !all.seen["z/1"] || all.records != 11 || all.stale != 2 {
		t.Errorf("read_uncommitted: z/1 seen %v, records %d, stale %d; want true, 11, 2 (the aborted records)", all.seen["z/1"], all.records, all.stale)
	}
}

func keysOf(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// registerSchema registers schema under subject over plain HTTP and returns its id.
func registerSchema(t *testing.T, regURL, subject, schema string) uint32 {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"schema": schema})
	resp, err := http.Post(regURL+"/subjects/"+subject+"/versions", "application/vnd.schemaregistry.v1+json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		ID uint32 `json:"id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("registering %s: %s %v", subject, resp.Status, err)
	}
	return out.ID
}

// TestRegistryProxy_CountsRequestsUnansweredDuringAWindow: an upstream that does not
// answer (a frozen registry) makes a client give up; the proxy counts that request in
// the open window, and not a request answered, nor one outside a window.
func TestRegistryProxy_CountsRequestsUnansweredDuringAWindow(t *testing.T) {
	release := make(chan struct{})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/apis/ccompat/v7/slow" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		fmt.Fprintln(w, "{}")
	}))
	defer upstream.Close()
	defer close(release)
	p := newRegistryProxy(t, upstream.URL+"/apis/ccompat/v7")
	client := &http.Client{Timeout: 200 * time.Millisecond}
	get := func(path string) error {
		resp, err := client.Get(p.url + path)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	if err := get("/slow"); err == nil {
		t.Fatal("the slow request was answered")
	}
	win := p.open()
	if err := get("/fast"); err != nil {
		t.Fatal(err)
	}
	if err := get("/slow"); err == nil {
		t.Fatal("the slow request was answered")
	}
	deadline := time.Now().Add(10 * time.Second)
	for (win.inflight.Load() > 0 || win.refused.Load() == 0) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	p.close()
	if win.arrived.Load() != 2 || win.refused.Load() != 1 {
		t.Errorf("window: arrived %d refused %d, want 2 1", win.arrived.Load(), win.refused.Load())
	}
	if p.failed.Load() != 2 {
		t.Errorf("failed over the run %d, want 2", p.failed.Load())
	}
}

// TestVerdict_ModeAndFaultKinds: stale records and duplicates on the topic fail an
// exactly-once run only; a kind never effective fails a full run.
func TestVerdict_ModeAndFaultKinds(t *testing.T) {
	rep := &Report{StaleAfterNewer: 3, DuplicatesOnTopic: 5, Faults: map[string]int{}, FaultsEffective: map[string]int{}}
	for _, k := range kinds {
		rep.Faults[k], rep.FaultsEffective[k] = 2, 1
	}
	if got := verdict(rep, plan{mode: atLeastOnce, requireEveryKind: true}); len(got) != 0 {
		t.Errorf("at-least-once: %v, want nothing", got)
	}
	if got := verdict(rep, plan{mode: exactlyOnce}); len(got) != 2 {
		t.Errorf("exactly-once: %v, want duplicates and stale", got)
	}
	rep.FaultsEffective["registry_pause"] = 0
	delete(rep.Faults, "slow_network")
	if got := verdict(rep, plan{mode: atLeastOnce, requireEveryKind: true}); len(got) != 2 {
		t.Errorf("kinds: %v, want registry_pause never effective and slow_network never injected", got)
	}
	if got := verdict(rep, plan{mode: atLeastOnce}); len(got) != 0 {
		t.Errorf("short run: %v, want nothing", got)
	}
	rep.Undecodable = 1
	if got := verdict(rep, plan{mode: atLeastOnce}); len(got) != 1 {
		t.Errorf("undecodable: %v, want it", got)
	}
}

// TestRegistryProxy_PauseHoldsRequests: during a pause no request reaches the
// registry; a client that gives up is counted as refused, one that waits is answered
// once the pause ends.
func TestRegistryProxy_PauseHoldsRequests(t *testing.T) {
	var reached atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		fmt.Fprintln(w, "{}")
	}))
	defer upstream.Close()
	p := newRegistryProxy(t, upstream.URL+"/apis/ccompat/v7")
	win, end := p.startPause()
	impatient := &http.Client{Timeout: 100 * time.Millisecond}
	if resp, err := impatient.Get(p.url + "/subjects"); err == nil {
		resp.Body.Close()
		t.Fatal("answered during the pause")
	}
	patient := make(chan error, 1)
	go func() {
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Get(p.url + "/subjects")
		if err == nil {
			resp.Body.Close()
		}
		patient <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for win.arrived.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	end()
	if err := <-patient; err != nil {
		t.Errorf("a client waiting through the pause: %v", err)
	}
	if win.arrived.Load() != 2 || win.refused.Load() != 1 || reached.Load() != 1 {
		t.Errorf("arrived %d refused %d reached the registry %d, want 2 1 1", win.arrived.Load(), win.refused.Load(), reached.Load())
	}
}

// Every fault kind gets a moment in the first third of the writing window, whatever
// the seed: a kind drawn only late can queue behind faults on its target past the
// writers and never bite.
func TestSchedule_EveryKindEarly(t *testing.T) {
	const writeFor = 133 * time.Second
	for seed := range uint64(300) {
		first := map[string]time.Duration{}
		for _, f := range schedule(rand.New(rand.NewPCG(seed, seed)), 60, writeFor) {
			if at, ok := first[f.kind]; !ok || f.at < at {
				first[f.kind] = f.at
			}
		}
		for _, k := range kinds {
			if at, ok := first[k]; !ok || at > writeFor/3 {
				t.Fatalf("seed %d: %s first at %v, want within %v", seed, k, at, writeFor/3)
			}
		}
	}
}
