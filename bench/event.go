package main

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/hamba/avro/v2"
)

// The one event every system carries. Kafka values are either this record's Avro
// binary (Watermill, go-pq-cdc-kafka, Debezium) or the Confluent wire format
// 0x00 + 4-byte schema id + the same Avro binary (relaybox). The Avro binary starts
// with the length of event_id (36, zigzag 0x48), never 0x00, so the consumer can tell
// the two apart.
const benchSchemaText = `{"type":"record","name":"BenchEvent","namespace":"relaybox.bench","fields":[` +
	`{"name":"event_id","type":"string"},` +
	`{"name":"key","type":"string"},` +
	`{"name":"seq","type":"long"},` +
	`{"name":"written_unix_nanos","type":"long"},` +
	`{"name":"pad","type":"bytes"}]}`

var benchSchema = avro.MustParse(benchSchemaText)

// BenchEvent is the Go form of the record.
type BenchEvent struct {
	EventID       string `avro:"event_id"`
	Key           string `avro:"key"`
	Seq           int64  `avro:"seq"`
	WrittenUnixNs int64  `avro:"written_unix_nanos"`
	Pad           []byte `avro:"pad"`
}

// Events are numbered 0, 1, 2, ... in generation order. Event i has key i mod keys and
// per-key sequence i / keys: a key's events are generated, committed and expected in
// sequence order.
type eventSpace struct {
	keys int
	pad  []byte
}

func newEventSpace(keys, eventBytes int) eventSpace {
	es := eventSpace{keys: keys}
	// Size the pad so that a typical event encodes to eventBytes.
	probe := BenchEvent{EventID: uuid.New().String(), Key: es.key(keys - 1), Seq: 100, WrittenUnixNs: time.Now().UnixNano()}
	b, _ := avro.Marshal(benchSchema, probe)
	padLen := max(eventBytes-len(b)-2, 0)
	es.pad = make([]byte, padLen)
	for i := range es.pad {
		es.pad[i] = byte('a' + i%26)
	}
	return es
}

func (es eventSpace) key(k int) string { return "key-" + strconv.Itoa(k) }

func (es eventSpace) event(i int64, id uuid.UUID, written time.Time) BenchEvent {
	return BenchEvent{EventID: id.String(), Key: es.key(int(i % int64(es.keys))), Seq: i / int64(es.keys),
		WrittenUnixNs: written.UnixNano(), Pad: es.pad}
}

// index inverts (key, seq) to the event number; -1 if the key is not one of ours.
func (es eventSpace) index(key string, seq int64) int64 {
	if len(key) < 5 || key[:4] != "key-" {
		return -1
	}
	k, err := strconv.Atoi(key[4:])
	if err != nil || k < 0 || k >= es.keys || seq < 0 {
		return -1
	}
	return seq*int64(es.keys) + int64(k)
}

// indexBytes is index for a key still in the record's bytes (no allocation).
func (es eventSpace) indexBytes(key []byte, seq int64) int64 {
	if len(key) < 5 || len(key) > 24 || string(key[:4]) != "key-" || seq < 0 {
		return -1
	}
	k := 0
	for _, c := range key[4:] {
		if c < '0' || c > '9' {
			return -1
		}
		k = k*10 + int(c-'0')
	}
	if k >= es.keys {
		return -1
	}
	return seq*int64(es.keys) + int64(k)
}

// decodeKeySeq reads from a value (framed or bare) only what the measuring consumer
// needs: the key and the per-key sequence, the record's second and third fields (Avro
// strings are a zigzag-varint length and the bytes; longs a zigzag varint, as Go's
// binary.Varint reads them). The event id before them is skipped and the pad after
// them never read, so the observer spends little of the CPU it shares with the
// system it measures.
func decodeKeySeq(v []byte) (key []byte, seq int64, err error) {
	if len(v) > 0 && v[0] == 0 {
		if len(v) < 5 {
			return nil, 0, fmt.Errorf("short framed value (%d bytes)", len(v))
		}
		v = v[5:]
	}
	str := func() ([]byte, error) {
		n, w := binary.Varint(v)
		if w <= 0 || n < 0 || n > int64(len(v)-w) {
			return nil, fmt.Errorf("bad Avro string at %d bytes left", len(v))
		}
		s := v[w : w+int(n)]
		v = v[w+int(n):]
		return s, nil
	}
	if _, err := str(); err != nil { // event_id
		return nil, 0, err
	}
	if key, err = str(); err != nil {
		return nil, 0, err
	}
	seq, w := binary.Varint(v)
	if w <= 0 {
		return nil, 0, fmt.Errorf("bad Avro long (seq)")
	}
	return key, seq, nil
}

func encodeEvent(e *BenchEvent) ([]byte, error) { return avro.Marshal(benchSchema, e) }

// decodeValue parses a Kafka value: Confluent-framed or bare Avro.
func decodeValue(v []byte, e *BenchEvent) error {
	if len(v) > 0 && v[0] == 0 {
		if len(v) < 5 {
			return fmt.Errorf("short framed value (%d bytes)", len(v))
		}
		v = v[5:]
	}
	return avro.Unmarshal(benchSchema, v, e)
}

func timeUnix(ns int64) time.Time { return time.Unix(0, ns) }

func sha256sum(s string) []byte {
	b := sha256.Sum256([]byte(s))
	return b[:]
}
