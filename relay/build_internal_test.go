package relay

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/relaybox/relaybox/internal/wire"
)

func TestAppendUUID_MatchesCanonicalForm(t *testing.T) {
	for range 100 {
		u := uuid.New()
		if got := string(appendUUID([]byte("x"), u)); got != "x"+u.String() {
			t.Fatalf("appendUUID = %q, want %q", got, "x"+u.String())
		}
	}
}

func TestFramedPayload_LeavesRoomForTheWireHeader(t *testing.T) {
	var f framedPayload
	src := []byte("avro body")
	if err := f.ScanBytes(src); err != nil {
		t.Fatal(err)
	}
	src[0] = 'X' // driver memory is reused after the scan: the payload must be a copy
	if len(f.b) != 5+len("avro body") || string(f.b[wire.HeaderLen:]) != "avro body" {
		t.Fatalf("framed = %q", f.b)
	}
	if err := f.ScanBytes(nil); err == nil {
		t.Fatal("NULL payload scanned without error")
	}
}

func TestConfig_CompressionIsCheckedAndDefaultsToSnappy(t *testing.T) {
	base := Config{Brokers: []string{"127.0.0.1:1"}, RegistryURL: "http://127.0.0.1:1"}
	c := base.WithDefaults()
	if err := base.Validate(); err != nil || c.Compression != "snappy" || c.Linger != 2*time.Millisecond {
		t.Fatalf("defaults: compression %q, linger %s, err %v", c.Compression, c.Linger, err)
	}
	for _, ok := range []string{"lz4", "ZSTD", "gzip", "none"} {
		base.Compression = ok
		if err := base.Validate(); err != nil {
			t.Errorf("compression %q refused: %v", ok, err)
		}
	}
	base.Compression = "brotli"
	if err := base.Validate(); err == nil || !strings.Contains(err.Error(), "brotli") {
		t.Fatalf("compression brotli: err %v, want a clear refusal", err)
	}
}

func TestSlab_HandsOutDisjointSlicesAndReusesItsChunks(t *testing.T) {
	var s slab
	var got [][]byte
	for i := range 1000 {
		b := s.alloc(1 + i%1500)
		if len(b) != 1+i%1500 || cap(b) != len(b) {
			t.Fatalf("alloc(%d): len %d cap %d", 1+i%1500, len(b), cap(b))
		}
		for j := range b {
			b[j] = byte(i)
		}
		got = append(got, b)
	}
	for i, b := range got { // no slice overlaps another
		for _, c := range b {
			if c != byte(i) {
				t.Fatalf("slice %d overwritten", i)
			}
		}
	}
	n := len(s.chunks)
	s.reset()
	for i := range 1000 {
		s.alloc(1 + i%1500)
	}
	if len(s.chunks) != n {
		t.Fatalf("%d chunks after a reset and the same allocations, want %d", len(s.chunks), n)
	}
	if big := s.alloc(slabChunk); len(big) != slabChunk || len(s.chunks) != n {
		t.Fatalf("a large alloc took slab memory: %d chunks", len(s.chunks))
	}
	var none *slab
	if b := none.alloc(10); len(b) != 10 {
		t.Fatal("nil slab")
	}
}
