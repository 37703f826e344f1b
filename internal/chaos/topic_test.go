package chaos

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// topicRead is what a topic read back holds, for the guarantees.
type topicRead struct {
	seen    map[string]bool // "key/seq" of every decoded record
	records int64           // data records read (control markers not counted)
	// dups: records whose key/seq was seen before. violations: first occurrences of
	// a key whose seq is not above the key's previous first occurrence. stale:
	// records (first occurrences or not) landing after a newer record of their key.
	dups, violations, stale int64
	// undecodable: records that do not parse as Confluent-framed Avro against the
	// registry's schema of their id, or whose value's key is not the record key.
	undecodable int64
	examples    []string          // a few undecodable, stale or duplicate records, for the log
	at          map[string]string // "key/seq" -> where it was first read, partition/offset
}

// readTopic reads a topic from its start to the end offsets listed when it begins,
// with a client of its own, and decodes each value independently of the project's
// code: the 5-byte Confluent header by hand, the schema text fetched from the
// registry over plain HTTP (GET /schemas/ids/{id}), the body with hamba/avro against
// it. committed reads read_committed: records of aborted transactions are not part
// of the topic. Control records (transaction markers) are kept, so that a partition
// whose last offsets are markers is still read to its end.
func readTopic(ctx context.Context, brokers, regURL, name string, committed bool) (*topicRead, error) {
	opts := []kgo.Opt{kgo.SeedBrokers(brokers), kgo.ConsumeTopics(name), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.KeepControlRecords()}
	if committed {
		opts = append(opts, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("listing end offsets of %s: %w", name, err)
	}
	if err := ends.Error(); err != nil {
		return nil, fmt.Errorf("listing end offsets of %s: %w", name, err)
	}
	remaining := map[int32]int64{} // partition -> end offset still to reach
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			remaining[o.Partition] = o.Offset
		}
	})
	schemas := newSchemaSource(regURL)
	tr := &topicRead{seen: map[string]bool{}, at: map[string]string{}}
	first := map[string]int64{} // key -> seq of its last first occurrence
	newest := map[string]int64{}
	lso := map[int32]int64{}
	for len(remaining) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("reading %s: %w; partitions not read to their end (partition: end offset): %v, last stable offsets seen: %v", name, ctx.Err(), remaining, lso)
		}
		var ferr error
		fs.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				ferr = fmt.Errorf("fetching %s/%d: %w", t, p, err)
			}
		})
		if ferr != nil {
			return nil, ferr
		}
		var derr error
		fs.EachPartition(func(fp kgo.FetchTopicPartition) {
			lso[fp.Partition] = fp.LastStableOffset
			for _, r := range fp.Records {
				// The position: every offset up to this one is read (or aborted and
				// skipped by read_committed); markers count, so a partition ending in
				// one is done.
				if end, ok := remaining[r.Partition]; ok && r.Offset+1 >= end {
					delete(remaining, r.Partition)
				}
				if r.Attrs.IsControl() {
					continue
				}
				tr.records++
				key, seq, err := decodeTick(ctx, schemas, r)
				if errors.Is(err, errUndecodable) {
					tr.undecodable++
					if len(tr.examples) < 5 {
						tr.examples = append(tr.examples, fmt.Sprintf("%d/%d: %v", r.Partition, r.Offset, err))
					}
					continue
				}
				if err != nil {
					derr = err
					return
				}
				k := fmt.Sprintf("%s/%d", key, seq)
				if seq < newest[key] {
					tr.stale++
					if len(tr.examples) < 5 {
						tr.examples = append(tr.examples, fmt.Sprintf("stale %s at %d/%d after seq %d", k, r.Partition, r.Offset, newest[key]))
					}
				}
				newest[key] = max(newest[key], seq)
				if tr.seen[k] {
					tr.dups++
					if len(tr.examples) < 12 {
						tr.examples = append(tr.examples, fmt.Sprintf("duplicate %s at %d/%d, first at %s (event id %s)",
							k, r.Partition, r.Offset, tr.at[k], recordHeader(r, "relaybox.event_id")))
					}
					continue
				}
				tr.seen[k] = true
				tr.at[k] = fmt.Sprintf("%d/%d", r.Partition, r.Offset)
				if seq <= first[key] {
					tr.violations++
				}
				first[key] = seq
			}
		})
		if derr != nil {
			return nil, derr
		}
	}
	return tr, nil
}

var errUndecodable = errors.New("undecodable")

// decodeTick decodes one record's value: the Confluent framing (magic byte 0, a
// big-endian schema id), then Avro against the writer schema the registry holds for
// that id. The value's key must be the record's key.
func decodeTick(ctx context.Context, schemas *schemaSource, r *kgo.Record) (string, int64, error) {
	if len(r.Value) < 5 || r.Value[0] != 0 {
		return "", 0, fmt.Errorf("%w: not Confluent-framed (%d bytes)", errUndecodable, len(r.Value))
	}
	id := binary.BigEndian.Uint32(r.Value[1:5])
	s, err := schemas.get(ctx, id)
	if err != nil {
		return "", 0, err
	}
	var v map[string]any
	if err := avro.Unmarshal(s, r.Value[5:], &v); err != nil {
		return "", 0, fmt.Errorf("%w: schema id %d: %v", errUndecodable, id, err)
	}
	key, ok1 := v["key"].(string)
	seq, ok2 := v["seq"].(int64)
	if !ok1 || !ok2 {
		return "", 0, fmt.Errorf("%w: schema id %d: value %v has no string key and long seq", errUndecodable, id, v)
	}
	if key != string(r.Key) {
		return "", 0, fmt.Errorf("%w: value key %q on a record keyed %q", errUndecodable, key, r.Key)
	}
	return key, seq, nil
}

// schemaSource fetches writer schemas by id from the registry's Confluent-compatible
// API with plain HTTP, and caches them. An id the registry does not know, or whose
// schema does not parse, is an error wrapping errUndecodable.
type schemaSource struct {
	url   string
	http  *http.Client
	cache map[uint32]avro.Schema
	bad   map[uint32]error
}

func newSchemaSource(url string) *schemaSource {
	return &schemaSource{url: url, http: &http.Client{Timeout: 10 * time.Second}, cache: map[uint32]avro.Schema{}, bad: map[uint32]error{}}
}

func (s *schemaSource) get(ctx context.Context, id uint32) (avro.Schema, error) {
	if sc, ok := s.cache[id]; ok {
		return sc, nil
	}
	if err := s.bad[id]; err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/schemas/ids/%d", s.url, id), nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching schema %d: %w", id, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("fetching schema %d: %w", id, err)
	}
	if resp.StatusCode == http.StatusNotFound {
		s.bad[id] = fmt.Errorf("%w: schema id %d unknown to the registry", errUndecodable, id)
		return nil, s.bad[id]
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching schema %d: %s: %s", id, resp.Status, body)
	}
	var doc struct {
		Schema string `json:"schema"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("schema %d: %w", id, err)
	}
	// A cache of its own per schema: every version is a record named Tick.
	sc, err := avro.ParseWithCache(doc.Schema, "", &avro.SchemaCache{})
	if err != nil {
		s.bad[id] = fmt.Errorf("%w: the registry's schema %d does not parse: %v", errUndecodable, id, err)
		return nil, s.bad[id]
	}
	s.cache[id] = sc
	return sc, nil
}

// recordHeader is the value of r's header k, or "".
func recordHeader(r *kgo.Record, k string) string {
	for _, h := range r.Headers {
		if h.Key == k {
			return string(h.Value)
		}
	}
	return ""
}
