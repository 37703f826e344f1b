package relay

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/internal/envelope"
	"github.com/relaybox/relaybox/internal/redact"
)

// CloudEvents makes the relay also write the headers of the CloudEvents Kafka protocol
// binding in binary content mode (CloudEvents 1.0), so that CloudEvents SDKs and
// Knative-style consumers read relaybox records unchanged. The record's key, value and
// relaybox.* headers stay as they are. For each event:
//
//	ce_specversion  1.0
//	ce_id           the event id (as relaybox.event_id)
//	ce_type         the event type (as relaybox.event_type)
//	ce_source       the event's source; else Source
//	ce_time         when the event occurred, RFC 3339 (as relaybox.occurred_at)
//	ce_subject      the aggregate key, when the event has one
//	content-type    application/avro (ContentTypeAvro)
//	ce_dataschema   <SchemaURL>/schemas/ids/<id>, the registry schema the value's
//	                Confluent wire-format header names
//
// The value is in the Confluent wire format, as without CloudEvents: a zero byte, the
// schema id (4 bytes, big-endian), then the Avro binary encoding. ce_dataschema is
// the URL of that same id, which a Confluent-compatible registry answers with the
// writer schema (docs/configuration.md, "CloudEvents").
type CloudEvents struct {
	// Enabled writes the headers on every topic.
	Enabled bool
	// Topics writes them on these topics only; use it or Enabled, not both.
	Topics []string
	// Source is ce_source for an event written without a source (outbox.Config.Source
	// and Event.Source set one). Defaults to "/relaybox/<Schema>" (the schema path-escaped). A URI reference.
	Source string
	// SchemaURL is the registry base URL of ce_dataschema, as consumers reach it.
	// Defaults to RegistryURL. Userinfo, query and fragment are dropped: credentials
	// never reach a record. With neither set (a custom Registry), ce_dataschema is
	// left out.
	SchemaURL string

	topics map[string]bool // Topics, as a set; nil: every topic when Enabled
}

// ContentTypeAvro is the content-type header of a relaybox record with CloudEvents on:
// the value is Avro, framed in the Confluent wire format (see CloudEvents).
const ContentTypeAvro = "application/avro"

// on reports whether records of topic carry the CloudEvents headers.
func (c *CloudEvents) on(topic string) bool {
	if c.topics != nil {
		return c.topics[topic]
	}
	return c.Enabled
}

// withDefaults checks c and fills its defaults; schema names the outbox's schema and
// registryURL is Config.RegistryURL.
func (c *CloudEvents) withDefaults(schema, registryURL string) error {
	if c.Enabled && len(c.Topics) > 0 {
		return errors.New("relay: set Config.CloudEvents.Enabled (every topic) or Config.CloudEvents.Topics, not both")
	}
	c.topics = nil
	if !c.Enabled && len(c.Topics) == 0 {
		return nil
	}
	if len(c.Topics) > 0 {
		c.topics = make(map[string]bool, len(c.Topics))
		for _, t := range c.Topics {
			if t == "" {
				return errors.New("relay: Config.CloudEvents.Topics holds an empty topic name")
			}
			c.topics[t] = true
		}
	}
	if c.Source == "" {
		c.Source = "/relaybox/" + url.PathEscape(schema)
	}
	if _, err := url.Parse(c.Source); err != nil || strings.ContainsAny(c.Source, " \t\r\n") {
		return fmt.Errorf("relay: Config.CloudEvents.Source %q is not a URI reference", redact.URL(c.Source))
	}
	base := c.SchemaURL
	if base == "" {
		base = registryURL
	}
	if base == "" {
		return nil
	}
	u, err := url.Parse(base)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		field := "SchemaURL"
		if c.SchemaURL == "" {
			field = "RegistryURL (the default of CloudEvents.SchemaURL)"
		}
		return fmt.Errorf("relay: Config.CloudEvents.%s: want http(s)://host[:port][/path], got %q", field, redact.URL(base))
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	c.SchemaURL = strings.TrimRight(u.String(), "/")
	return nil
}

// headers appends the CloudEvents headers of o to hs. The values that
// relaybox headers carry already (id, type, time) and the record key are shared with
// them; arena grows by the source (when defaulted) and the schema URL. It adds at
// most cloudEventsHeaders.
func (c *CloudEvents) headers(hs []kgo.RecordHeader, arena []byte, o *outboxRow, id, typ, occurred, key []byte, schemaID int) ([]kgo.RecordHeader, []byte) {
	hs = append(hs,
		kgo.RecordHeader{Key: envelope.CloudEventsSpecVersion, Value: specVersion},
		kgo.RecordHeader{Key: envelope.CloudEventsID, Value: id},
		kgo.RecordHeader{Key: envelope.CloudEventsType, Value: typ},
		kgo.RecordHeader{Key: envelope.ContentType, Value: contentTypeAvro},
		kgo.RecordHeader{Key: envelope.CloudEventsTime, Value: occurred})
	source := o.source
	if source == "" {
		source = c.Source
	}
	start := len(arena)
	arena = append(arena, source...)
	hs = append(hs, kgo.RecordHeader{Key: envelope.CloudEventsSource, Value: arena[start:len(arena):len(arena)]})
	if len(key) > 0 {
		hs = append(hs, kgo.RecordHeader{Key: envelope.CloudEventsSubject, Value: key})
	}
	if c.SchemaURL != "" {
		start = len(arena)
		arena = append(arena, c.SchemaURL...)
		arena = append(arena, "/schemas/ids/"...)
		arena = strconv.AppendInt(arena, int64(schemaID), 10)
		hs = append(hs, kgo.RecordHeader{Key: envelope.CloudEventsDataSchema, Value: arena[start:len(arena):len(arena)]})
	}
	return hs, arena
}

// cloudEventsHeaders is the most headers CloudEvents.headers adds.
const cloudEventsHeaders = 8

// Shared, never written to: franz-go does not modify header values.
var (
	specVersion     = []byte("1.0")
	contentTypeAvro = []byte(ContentTypeAvro)
)

// size is an upper bound of what headers adds to the arena.
func (c *CloudEvents) size(o *outboxRow) int {
	return max(len(o.source), len(c.Source)) + len(c.SchemaURL) + len("/schemas/ids/") + 10
}
