// Package wire implements the Confluent Schema Registry wire format: a zero magic byte,
// the schema id as a 4-byte big-endian integer, then the serialized (Avro) body.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Magic is the first byte of every framed message.
const Magic byte = 0

// HeaderLen is the number of bytes the framing adds before the body.
const HeaderLen = 5

var (
	// ErrTruncated: fewer than HeaderLen bytes.
	ErrTruncated = errors.New("wire: message shorter than the 5-byte header")
	// ErrBadMagic: the first byte is not Magic.
	ErrBadMagic = errors.New("wire: unknown magic byte")
)

// Append appends the framed message (header then body) to dst.
func Append(dst []byte, schemaID uint32, body []byte) []byte {
	dst = append(dst, Magic, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(dst[len(dst)-4:], schemaID)
	return append(dst, body...)
}

// PutHeader writes the header for schemaID into b[:HeaderLen] (b holds the body
// from b[HeaderLen:]).
func PutHeader(b []byte, schemaID uint32) {
	b[0] = Magic
	binary.BigEndian.PutUint32(b[1:HeaderLen], schemaID)
}

// Frame returns a new framed message.
func Frame(schemaID uint32, body []byte) []byte {
	return Append(make([]byte, 0, HeaderLen+len(body)), schemaID, body)
}

// Parse splits a framed message into its schema id and body. The body aliases b.
func Parse(b []byte) (schemaID uint32, body []byte, err error) {
	if len(b) < HeaderLen {
		return 0, nil, fmt.Errorf("%w (got %d bytes)", ErrTruncated, len(b))
	}
	if b[0] != Magic {
		return 0, nil, fmt.Errorf("%w 0x%02x", ErrBadMagic, b[0])
	}
	return binary.BigEndian.Uint32(b[1:5]), b[HeaderLen:], nil
}
