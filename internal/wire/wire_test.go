package wire

import (
	"bytes"
	"errors"
	"testing"
)

func TestFrameParseRoundTrip(t *testing.T) {
	body := []byte("hello avro")
	f := Frame(0x01020304, body)
	if !bytes.Equal(f[:5], []byte{0, 1, 2, 3, 4}) {
		t.Fatalf("header = % x", f[:5])
	}
	id, got, err := Parse(f)
	if err != nil || id != 0x01020304 || !bytes.Equal(got, body) {
		t.Fatalf("Parse = %d %q %v", id, got, err)
	}
}

func TestParseRejectsBadInput(t *testing.T) {
	if _, _, err := Parse([]byte{0, 1}); !errors.Is(err, ErrTruncated) {
		t.Fatalf("short: %v", err)
	}
	if _, _, err := Parse([]byte{7, 0, 0, 0, 1, 9}); !errors.Is(err, ErrBadMagic) {
		t.Fatalf("magic: %v", err)
	}
	if id, body, err := Parse([]byte{0, 0, 0, 0, 9}); err != nil || id != 9 || len(body) != 0 {
		t.Fatalf("empty body: %d %v %v", id, body, err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 1, 2, 3})
	f.Add([]byte{1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		id, body, err := Parse(b)
		if err != nil {
			return
		}
		if !bytes.Equal(Frame(id, body), b) {
			t.Fatalf("re-frame differs for % x", b)
		}
	})
}

func TestPutHeader_WritesMagicAndIDInFrontOfTheBody(t *testing.T) {
	b := append(make([]byte, HeaderLen), "body"...)
	PutHeader(b, 0x01020304)
	if want := Frame(0x01020304, []byte("body")); string(b) != string(want) {
		t.Fatalf("PutHeader gave % x, Frame gives % x", b, want)
	}
}
