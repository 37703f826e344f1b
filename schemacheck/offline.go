package schemacheck

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/hamba/avro/v2"
)

// Problem is one incompatibility, in words a reviewer understands.
type Problem struct {
	// Subject is the registry subject (registry checks, or when the caller names it).
	Subject string `json:"subject,omitempty"`
	// File is the schema file checked (offline checks of files).
	File string `json:"file,omitempty"`
	// Level is the level that was broken.
	Level Level `json:"level"`
	// Direction is the direction that fails (offline checks only): backward means new
	// readers cannot read old events, forward that old readers cannot read new events.
	Direction Direction `json:"direction,omitempty"`
	// Against names the older version checked against, e.g. "origin/main:schemas/a.avsc"
	// or "latest registered version".
	Against string `json:"against,omitempty"`
	// Path is the field or type that changed, e.g. "OrderCreated.tier" (empty when the
	// registry did not say).
	Path string `json:"path,omitempty"`
	// Message says what changed and who breaks, e.g. "field `tier` added without a
	// default: new readers cannot read old events under FULL".
	Message string `json:"message"`
}

// String is the problem on one line, prefixed with its subject or file.
func (p Problem) String() string {
	var where []string
	if p.Subject != "" {
		where = append(where, "subject "+p.Subject)
	}
	if p.File != "" {
		where = append(where, p.File)
	}
	s := p.Message
	if p.Against != "" {
		s += " [against " + p.Against + "]"
	}
	if len(where) > 0 {
		s = strings.Join(where, ", ") + ": " + s
	}
	return s
}

// Version is an older version of a schema.
type Version struct {
	// Label names it in messages, e.g. "HEAD~1:schemas/orders.avsc".
	Label string
	// Text is the schema (Avro JSON).
	Text string
}

// ErrInvalidSchema is returned (wrapped) for a schema text that does not parse.
var ErrInvalidSchema = errors.New("schema does not parse")

// Parse parses schema text as the registry reads it, with a cache of its own:
// hamba/avro's default cache is keyed by name, so two versions of one record parsed
// with it would see each other's definitions. Two more corrections make hamba/avro
// read what Apache Avro (the registry) reads:
//
//   - hamba/avro matches attribute names case-insensitively ("Default", "Aliases",
//     "Type" work), Apache Avro exactly (it keeps "Default" as a custom property: the
//     field has no default). Parse drops the attributes whose names differ from
//     Avro's only in case before hamba/avro parses the schema.
//   - hamba/avro panics on some invalid schemas (an empty union with a default): Parse
//     returns ErrInvalidSchema instead.
func Parse(text string) (s avro.Schema, err error) {
	var doc any
	d := json.NewDecoder(strings.NewReader(text))
	d.UseNumber()
	if err := d.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSchema, err)
	}
	if d.More() {
		return nil, fmt.Errorf("%w: text after the schema", ErrInvalidSchema)
	}
	if err := integralDefaults(doc); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSchema, err)
	}
	if exactAttributes(doc) {
		b, err := json.Marshal(doc)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidSchema, err)
		}
		text = string(b)
	}
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("%w: %v", ErrInvalidSchema, r)
		}
	}()
	if s, err = avro.ParseWithCache(text, "", &avro.SchemaCache{}); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSchema, err)
	}
	return s, nil
}

// avroAttributes are the attribute names Apache Avro reads, exactly as it spells them.
var avroAttributes = []string{"type", "name", "namespace", "fields", "items", "values", "symbols",
	"size", "default", "aliases", "doc", "order", "logicalType", "precision", "scale"}

// exactAttributes removes, from every schema and field object of a parsed schema
// document, the attributes whose names differ from Avro's only in case (Apache Avro
// ignores them; hamba/avro would read them). It does not enter default values, whose
// keys are field names. It reports whether it removed any.
func exactAttributes(v any) bool {
	changed := false
	switch t := v.(type) {
	case []any: // a union
		for _, b := range t {
			changed = exactAttributes(b) || changed
		}
	case map[string]any:
		changed = dropCaseVariants(t)
		for _, k := range []string{"type", "items", "values"} {
			if c, ok := t[k]; ok {
				changed = exactAttributes(c) || changed
			}
		}
		if fields, ok := t["fields"].([]any); ok {
			for _, f := range fields {
				if fm, ok := f.(map[string]any); ok {
					changed = dropCaseVariants(fm) || changed
					if c, ok := fm["type"]; ok {
						changed = exactAttributes(c) || changed
					}
				}
			}
		}
	}
	return changed
}

// integralDefaults refuses, as Apache Avro does and hamba/avro does not, a default of
// an int or long field (or of a union whose first branch is one) that is not an
// integer literal in the type's range: "default": 1.5 on a long.
func integralDefaults(v any) error {
	switch t := v.(type) {
	case []any:
		for _, b := range t {
			if err := integralDefaults(b); err != nil {
				return err
			}
		}
	case map[string]any:
		for _, k := range []string{"type", "items", "values"} {
			if err := integralDefaults(t[k]); err != nil {
				return err
			}
		}
		fields, _ := t["fields"].([]any)
		for _, f := range fields {
			fm, ok := f.(map[string]any)
			if !ok {
				continue
			}
			if err := integralDefaults(fm["type"]); err != nil {
				return err
			}
			n, ok := fm["default"].(json.Number)
			if !ok {
				continue
			}
			bits := 0
			switch primitive(fm["type"]) {
			case "int":
				bits = 32
			case "long":
				bits = 64
			default:
				continue
			}
			if _, err := strconv.ParseInt(n.String(), 10, bits); err != nil {
				return fmt.Errorf("field %v: default %s is not a %d-bit integer", fm["name"], n, bits)
			}
		}
	}
	return nil
}

// primitive is the primitive type name a field's default is checked against: the
// type's, or its first branch's for a union.
func primitive(t any) string {
	switch v := t.(type) {
	case string:
		return v
	case []any:
		if len(v) > 0 {
			return primitive(v[0])
		}
	case map[string]any:
		if s, ok := v["type"].(string); ok {
			return s
		}
	}
	return ""
}

func dropCaseVariants(m map[string]any) bool {
	changed := false
	for k := range m {
		for _, a := range avroAttributes {
			if k != a && strings.EqualFold(k, a) {
				delete(m, k)
				changed = true
			}
		}
	}
	return changed
}

// Compare checks schema newText against its older versions (oldest first) at level:
// against the last one, or every one for the _TRANSITIVE levels. FULL checks both
// directions, BACKWARD and FORWARD one. It returns the problems found, none when
// compatible; err is for texts that do not parse.
//
// The verdict is hamba/avro's compatibility checker, corrected where it disagrees with
// Apache Avro's (which Apicurio and Confluent enforce with); the messages come from a
// walk of both schemas that names the field and what changed.
func Compare(older []Version, newText string, level Level) ([]Problem, error) {
	if _, err := ParseLevel(string(level)); err != nil {
		return nil, err
	}
	next, err := Parse(newText)
	if err != nil {
		return nil, fmt.Errorf("new version: %w", err)
	}
	if level == None || len(older) == 0 {
		return nil, nil
	}
	against := older[len(older)-1:]
	if level.Transitive() {
		against = older
	}
	var out []Problem
	for _, v := range against {
		prev, err := Parse(v.Text)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", v.Label, err)
		}
		for _, d := range directions(level) {
			reader, writer := next, prev
			if d == DirForward {
				reader, writer = prev, next
			}
			for _, p := range check(reader, writer, d) {
				p.Level, p.Against = level, v.Label
				p.Message += " under " + string(level)
				out = append(out, p)
			}
		}
	}
	return out, nil
}

func directions(l Level) []Direction {
	var ds []Direction
	if l.Backward() {
		ds = append(ds, DirBackward)
	}
	if l.Forward() {
		ds = append(ds, DirForward)
	}
	return ds
}

// check is one direction: can reader read what writer wrote? hamba/avro decides,
// explain says why.
func check(reader, writer avro.Schema, d Direction) []Problem {
	err := avro.NewSchemaCompatibility().Compatible(reader, writer)
	if err == nil {
		return nil
	}
	ps := explain(reader, writer, d)
	if len(ps) == 0 {
		ps = []Problem{{Direction: d, Message: err.Error() + ": " + d.consequence()}}
	}
	return ps
}

// explain walks reader and writer as Avro's schema resolution does and reports each
// place where reader cannot read writer's data, in terms of the old and the new schema.
func explain(reader, writer avro.Schema, d Direction) []Problem {
	w := walker{d: d, seen: map[[2]avro.Schema]bool{}}
	w.walk(reader, writer, "") // paths are relative to the top-level type: `tier`, `address.city`
	return w.out
}

type walker struct {
	d    Direction
	seen map[[2]avro.Schema]bool
	out  []Problem
}

func (w *walker) add(path, change string) {
	w.out = append(w.out, Problem{Direction: w.d, Path: path, Message: change + ": " + w.d.consequence()})
}

// oldNew orders reader and writer as the old and the new schema.
func (w *walker) oldNew(reader, writer avro.Schema) (old, nu avro.Schema) {
	if w.d == DirBackward {
		return writer, reader
	}
	return reader, writer
}

func deref(s avro.Schema) avro.Schema {
	if r, ok := s.(*avro.RefSchema); ok {
		return r.Schema()
	}
	return s
}

// typeName is a short name of a schema for messages.
func typeName(s avro.Schema) string {
	s = deref(s)
	switch t := s.(type) {
	case avro.NamedSchema:
		return t.FullName()
	case *avro.UnionSchema:
		names := make([]string, len(t.Types()))
		for i, b := range t.Types() {
			names[i] = typeName(b)
		}
		return "[" + strings.Join(names, ", ") + "]"
	case *avro.ArraySchema:
		return "array<" + typeName(t.Items()) + ">"
	case *avro.MapSchema:
		return "map<" + typeName(t.Values()) + ">"
	}
	return string(s.Type())
}

func promotes(writer, reader avro.Type) bool {
	switch writer {
	case avro.Int:
		return reader == avro.Long || reader == avro.Float || reader == avro.Double
	case avro.Long:
		return reader == avro.Float || reader == avro.Double
	case avro.Float:
		return reader == avro.Double
	case avro.String:
		return reader == avro.Bytes
	case avro.Bytes:
		return reader == avro.String
	}
	return false
}

// readable reports whether reader reads writer, without recording problems.
func readable(reader, writer avro.Schema) bool {
	return avro.NewSchemaCompatibility().Compatible(reader, writer) == nil
}

func (w *walker) walk(reader, writer avro.Schema, path string) {
	reader, writer = deref(reader), deref(writer)
	k := [2]avro.Schema{reader, writer}
	if w.seen[k] {
		return
	}
	w.seen[k] = true
	at := func() string {
		if path == "" {
			return "the schema"
		}
		return "`" + path + "`"
	}
	if reader.Type() != writer.Type() {
		switch {
		case writer.Type() == avro.Union:
			for _, b := range writer.(*avro.UnionSchema).Types() {
				if readable(reader, b) {
					continue
				}
				if sameKind(reader, b) {
					w.walk(reader, b, path) // the branch itself changed inside
					continue
				}
				w.typeChanged(reader, writer, path, at())
				return
			}
		case reader.Type() == avro.Union:
			for _, b := range reader.(*avro.UnionSchema).Types() {
				if readable(b, writer) {
					return
				}
			}
			if rb := branchLike(reader.(*avro.UnionSchema), writer); rb != nil {
				w.walk(rb, writer, path)
				return
			}
			w.typeChanged(reader, writer, path, at())
		case !promotes(writer.Type(), reader.Type()):
			w.typeChanged(reader, writer, path, at())
		}
		return
	}
	switch r := reader.(type) {
	case *avro.ArraySchema:
		w.walk(r.Items(), writer.(*avro.ArraySchema).Items(), path+"[]")
	case *avro.MapSchema:
		w.walk(r.Values(), writer.(*avro.MapSchema).Values(), path+"{}")
	case *avro.FixedSchema:
		fw := writer.(*avro.FixedSchema)
		if w.named(r, fw, path) && r.Size() != fw.Size() {
			o, n := w.oldNew(r, fw)
			w.add(path, fmt.Sprintf("fixed %s changed size from %d to %d", at(), o.(*avro.FixedSchema).Size(), n.(*avro.FixedSchema).Size()))
		}
	case *avro.EnumSchema:
		ew := writer.(*avro.EnumSchema)
		if !w.named(r, ew, path) || r.HasDefault() {
			return
		}
		for _, s := range ew.Symbols() {
			if slices.Contains(r.Symbols(), s) {
				continue
			}
			if w.d == DirBackward {
				w.add(path, fmt.Sprintf("symbol `%s` removed from enum %s (which has no default)", s, at()))
			} else {
				w.add(path, fmt.Sprintf("symbol `%s` added to enum %s, whose old version has no default", s, at()))
			}
		}
	case *avro.RecordSchema:
		rw := writer.(*avro.RecordSchema)
		if !w.named(r, rw, path) {
			return
		}
		for _, f := range r.Fields() {
			fp := f.Name()
			if path != "" {
				fp = path + "." + f.Name()
			}
			wf := writerField(rw, f)
			if wf == nil {
				if f.HasDefault() {
					continue
				}
				if w.d == DirBackward {
					w.add(fp, fmt.Sprintf("field `%s` added without a default", fp))
				} else {
					w.add(fp, fmt.Sprintf("field `%s` removed, and the old schema gives it no default", fp))
				}
				continue
			}
			w.walk(f.Type(), wf.Type(), fp)
		}
	case *avro.UnionSchema:
		uw := writer.(*avro.UnionSchema)
		for _, b := range uw.Types() {
			if readable(r, b) {
				continue
			}
			if rb := branchLike(r, b); rb != nil {
				w.walk(rb, b, path) // the branch is there, changed inside
				continue
			}
			if w.d == DirBackward {
				w.add(path, fmt.Sprintf("union %s lost branch %s (was %s, now %s)", at(), typeName(b), typeName(uw), typeName(r)))
			} else {
				w.add(path, fmt.Sprintf("union %s gained branch %s (was %s, now %s)", at(), typeName(b), typeName(r), typeName(uw)))
			}
		}
	}
}

// sameKind reports whether a and b are the same type, and for named types have the
// same name: one changed version of the other, to be walked into rather than
// reported as a different type.
func sameKind(a, b avro.Schema) bool {
	a, b = deref(a), deref(b)
	if a.Type() != b.Type() {
		return false
	}
	na, ok := a.(avro.NamedSchema)
	if !ok {
		return true
	}
	nb := b.(avro.NamedSchema)
	return na.Name() == nb.Name() || slices.Contains(na.Aliases(), nb.FullName())
}

// branchLike returns the branch of u that is the same kind as s, or nil.
func branchLike(u *avro.UnionSchema, s avro.Schema) avro.Schema {
	for _, b := range u.Types() {
		if sameKind(b, s) {
			return b
		}
	}
	return nil
}

func (w *walker) typeChanged(reader, writer avro.Schema, path, at string) {
	o, n := w.oldNew(reader, writer)
	w.add(path, fmt.Sprintf("type of %s changed from %s to %s", at, typeName(o), typeName(n)))
}

// named checks the names of two named types as Avro does (the reader's name, without
// namespace, equals the writer's, or the reader has the writer's full name as an
// alias), records a problem if not, and reports whether they matched.
func (w *walker) named(reader, writer avro.NamedSchema, path string) bool {
	if reader.Name() == writer.Name() || slices.Contains(reader.Aliases(), writer.FullName()) {
		return true
	}
	o, n := reader, writer
	if w.d == DirBackward {
		o, n = writer, reader
	}
	if w.d == DirBackward {
		w.add(path, fmt.Sprintf("%s `%s` renamed to `%s` without the alias `%s`", o.Type(), o.FullName(), n.FullName(), o.FullName()))
	} else {
		w.add(path, fmt.Sprintf("%s `%s` renamed to `%s`, a name the old schema does not know", o.Type(), o.FullName(), n.FullName()))
	}
	return false
}

// writerField finds the writer's field for a reader field: by name, then by the reader
// field's aliases.
func writerField(w *avro.RecordSchema, f *avro.Field) *avro.Field {
	for _, wf := range w.Fields() {
		if wf.Name() == f.Name() {
			return wf
		}
	}
	for _, wf := range w.Fields() {
		if slices.Contains(f.Aliases(), wf.Name()) {
			return wf
		}
	}
	return nil
}
