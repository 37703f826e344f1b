package schemacheck

import (
	"fmt"
	"strings"
)

// Level is a compatibility level, as Confluent Schema Registry and Apicurio name them.
type Level string

// The levels. BACKWARD: a reader of the new schema reads events written with the old
// one (upgrade consumers first). FORWARD: a reader of the old schema reads events
// written with the new one (upgrade producers first). FULL: both. The _TRANSITIVE forms
// hold against every older version instead of the latest only.
const (
	None               Level = "NONE"
	Backward           Level = "BACKWARD"
	BackwardTransitive Level = "BACKWARD_TRANSITIVE"
	Forward            Level = "FORWARD"
	ForwardTransitive  Level = "FORWARD_TRANSITIVE"
	Full               Level = "FULL"
	FullTransitive     Level = "FULL_TRANSITIVE"
)

// DefaultLevel is the level the offline check applies when none is given, and the one
// relaybox advises for production topics: old and new readers both keep working, so
// producers and consumers upgrade in any order.
const DefaultLevel = Full

// Levels lists every level.
var Levels = []Level{None, Backward, BackwardTransitive, Forward, ForwardTransitive, Full, FullTransitive}

// ParseLevel parses a level name, case-insensitively.
func ParseLevel(s string) (Level, error) {
	l := Level(strings.ToUpper(strings.TrimSpace(s)))
	for _, k := range Levels {
		if k == l {
			return l, nil
		}
	}
	names := make([]string, len(Levels))
	for i, k := range Levels {
		names[i] = string(k)
	}
	return "", fmt.Errorf("compatibility level %q: want one of %s", s, strings.Join(names, ", "))
}

// Transitive reports whether the level holds against every older version.
func (l Level) Transitive() bool { return strings.HasSuffix(string(l), "_TRANSITIVE") }

// Backward reports whether the level requires new readers to read old events.
func (l Level) Backward() bool {
	return strings.HasPrefix(string(l), "BACKWARD") || strings.HasPrefix(string(l), "FULL")
}

// Forward reports whether the level requires old readers to read new events.
func (l Level) Forward() bool {
	return strings.HasPrefix(string(l), "FORWARD") || strings.HasPrefix(string(l), "FULL")
}

// Direction is one direction of a compatibility check.
type Direction string

const (
	// DirBackward: the new schema reads events written with the old one.
	DirBackward Direction = "backward"
	// DirForward: the old schema reads events written with the new one.
	DirForward Direction = "forward"
)

// consequence says who breaks in a direction, in words a reviewer reads.
func (d Direction) consequence() string {
	if d == DirBackward {
		return "new readers cannot read old events"
	}
	return "old readers cannot read new events"
}
