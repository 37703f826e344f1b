// Package avrotype gives a Go type its Avro schema: the one the type declares (an
// AvroSchema() string method) or one derived from its fields and `avro:` tags, cached
// per type. Derived schemas match what hamba/avro encodes for the type.
package avrotype

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/hamba/avro/v2"
)

// Schemer is implemented by types that declare their Avro schema (text of an .avsc).
type Schemer interface{ AvroSchema() string }

// Namespacer is implemented by types that give the namespace of their derived record.
type Namespacer interface{ AvroNamespace() string }

var cache sync.Map // reflect.Type -> avro.Schema

// Of returns the Avro schema of t (derived or declared), cached.
func Of(t reflect.Type) (avro.Schema, error) {
	if s, ok := cache.Load(t); ok {
		return s.(avro.Schema), nil
	}
	text, err := Text(t)
	if err != nil {
		return nil, err
	}
	s, err := avro.Parse(text)
	if err != nil {
		return nil, fmt.Errorf("avrotype: schema of %v does not parse: %w", t, err)
	}
	cache.Store(t, s)
	return s, nil
}

// Text returns the schema of t as JSON text.
func Text(t reflect.Type) (string, error) {
	if t == nil {
		return "", fmt.Errorf("avrotype: nil type")
	}
	schemer := reflect.TypeOf((*Schemer)(nil)).Elem()
	if t.Implements(schemer) {
		return reflect.Zero(t).Interface().(Schemer).AvroSchema(), nil
	}
	if reflect.PointerTo(t).Implements(schemer) {
		return reflect.New(t).Interface().(Schemer).AvroSchema(), nil
	}
	d := deriver{defined: map[reflect.Type]string{}}
	v, err := d.schema(t)
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(v)
	return string(b), err
}

type deriver struct{ defined map[reflect.Type]string }

var timeType = reflect.TypeOf(time.Time{})

func (d *deriver) schema(t reflect.Type) (any, error) {
	switch t {
	case timeType:
		return map[string]any{"type": "long", "logicalType": "timestamp-micros"}, nil
	case reflect.TypeOf(time.Duration(0)):
		return "long", nil
	}
	switch t.Kind() {
	case reflect.String:
		return "string", nil
	case reflect.Bool:
		return "boolean", nil
	case reflect.Int8, reflect.Int16, reflect.Int32, reflect.Uint8, reflect.Uint16:
		return "int", nil
	case reflect.Int, reflect.Int64, reflect.Uint32:
		return "long", nil
	case reflect.Float32:
		return "float", nil
	case reflect.Float64:
		return "double", nil
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return "bytes", nil
		}
		items, err := d.schema(t.Elem())
		if err != nil {
			return nil, err
		}
		return map[string]any{"type": "array", "items": items}, nil
	case reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			return map[string]any{"type": "fixed", "name": d.name(t, "Fixed"), "size": t.Len()}, nil
		}
	case reflect.Map:
		if t.Key().Kind() != reflect.String {
			return nil, fmt.Errorf("avrotype: map key of %v must be a string", t)
		}
		values, err := d.schema(t.Elem())
		if err != nil {
			return nil, err
		}
		return map[string]any{"type": "map", "values": values}, nil
	case reflect.Pointer:
		inner, err := d.schema(t.Elem())
		if err != nil {
			return nil, err
		}
		return []any{"null", inner}, nil
	case reflect.Struct:
		return d.record(t)
	}
	return nil, fmt.Errorf("avrotype: cannot derive an Avro schema for %v (kind %s); give the type an AvroSchema() method", t, t.Kind())
}

func (d *deriver) name(t reflect.Type, fallback string) string {
	n := t.Name()
	if n == "" {
		n = fallback
	}
	if i := strings.IndexByte(n, '['); i >= 0 { // generic instantiation
		n = n[:i]
	}
	return n
}

func (d *deriver) record(t reflect.Type) (any, error) {
	if full, ok := d.defined[t]; ok {
		return full, nil // already defined in this schema: refer by name
	}
	if t.Name() == "" {
		return nil, fmt.Errorf("avrotype: anonymous struct %v needs a named type", t)
	}
	name := d.name(t, "")
	ns := ""
	if t.Implements(reflect.TypeOf((*Namespacer)(nil)).Elem()) {
		ns = reflect.Zero(t).Interface().(Namespacer).AvroNamespace()
	}
	full := name
	if ns != "" {
		full = ns + "." + name
	}
	d.defined[t] = full
	fields := []any{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		fname := f.Name
		if tag, ok := f.Tag.Lookup("avro"); ok {
			if tag == "-" {
				continue
			}
			if tag != "" {
				fname = tag
			}
		}
		fs, err := d.schema(f.Type)
		if err != nil {
			return nil, fmt.Errorf("field %s: %w", f.Name, err)
		}
		field := map[string]any{"name": fname, "type": fs}
		if f.Type.Kind() == reflect.Pointer {
			field["default"] = nil
		}
		fields = append(fields, field)
	}
	rec := map[string]any{"type": "record", "name": name, "fields": fields}
	if ns != "" {
		rec["namespace"] = ns
	}
	return rec, nil
}
