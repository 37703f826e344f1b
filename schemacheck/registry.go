package schemacheck

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/relaybox/relaybox/internal/registry"
)

// RegistryOptions configures a Registry. A nil *RegistryOptions is the defaults.
type RegistryOptions struct {
	// Username and Password for HTTP basic auth. Never logged.
	Username, Password string
	// Timeout bounds every HTTP call. Defaults to 10s.
	Timeout time.Duration
	// Transport overrides the HTTP transport (e.g. for TLS settings).
	Transport http.RoundTripper
}

// Registry asks a Confluent-compatible schema registry (Confluent Schema Registry,
// Apicurio's /apis/ccompat/v7) about compatibility. Safe for concurrent use. Every
// call is bound to its context.
type Registry struct {
	c *registry.Client
}

// NewRegistry returns a Registry for the registry at url (e.g. http://host:8081, or
// Apicurio's http://host:8080/apis/ccompat/v7).
func NewRegistry(url string, o *RegistryOptions) *Registry {
	if o == nil {
		o = &RegistryOptions{}
	}
	return &Registry{c: registry.New(url, registry.Options{Username: o.Username, Password: o.Password, Timeout: o.Timeout, Transport: o.Transport})}
}

// Check asks the registry whether schema (Avro text) may be registered under subject,
// under the level the subject has there (the registry's own compatibility endpoint).
// It returns the problems, none when compatible or when the subject holds no version
// yet. When the registry refuses, Check walks the schema against the subject's latest
// version (every version for a _TRANSITIVE level) to name the field and what changed,
// as the offline check does; the registry's own reasons are kept when that walk finds
// nothing.
func (r *Registry) Check(ctx context.Context, subject, schema string) ([]Problem, error) {
	if _, err := Parse(schema); err != nil {
		return nil, err
	}
	res, err := r.c.CheckCompatibility(ctx, subject, schema)
	if err != nil {
		return nil, err
	}
	if res.Compatible {
		return nil, nil
	}
	level, _, err := r.Level(ctx, subject)
	if err != nil {
		level = "" // the verdict stands; only the explanation lacks the level
	}
	var out []Problem
	if level != "" && level != None {
		older, err := r.versions(ctx, subject, level.Transitive())
		if err == nil {
			if ps, err := Compare(older, schema, level); err == nil {
				out = ps
			}
		}
	}
	if len(out) == 0 {
		msg := "the registry refuses it"
		if level != "" {
			msg += " under " + string(level)
		}
		if len(res.Messages) > 0 {
			msg += ": " + strings.Join(res.Messages, "; ")
		}
		out = []Problem{{Level: level, Against: "latest registered version", Message: msg}}
	}
	for i := range out {
		out[i].Subject = subject
	}
	return out, nil
}

// versions returns the subject's latest version, or all of them, oldest first.
func (r *Registry) versions(ctx context.Context, subject string, all bool) ([]Version, error) {
	vs, err := r.c.Versions(ctx, subject)
	if err != nil || len(vs) == 0 {
		return nil, err
	}
	sort.Ints(vs)
	if !all {
		vs = vs[len(vs)-1:]
	}
	out := make([]Version, 0, len(vs))
	for _, v := range vs {
		text, err := r.c.SchemaVersion(ctx, subject, v)
		if err != nil {
			return nil, err
		}
		out = append(out, Version{Label: fmt.Sprintf("registered version %d", v), Text: text})
	}
	return out, nil
}

// Level returns the subject's compatibility level: its own, else the registry's global
// one (global is then true). Apicurio 2.4 answers NONE for a subject without its own
// rule even when a global rule is set by configuration.
func (r *Registry) Level(ctx context.Context, subject string) (level Level, global bool, err error) {
	s, global, err := r.c.SubjectCompatibility(ctx, subject)
	if err != nil {
		return "", false, err
	}
	l, err := ParseLevel(s)
	if err != nil {
		return "", false, fmt.Errorf("registry answered for %s: %w", subject, err)
	}
	return l, global, nil
}

// SetLevel sets the subject's compatibility level. Apicurio 2.4 accepts it for a subject
// with no version yet, and the level then applies to its first registrations.
func (r *Registry) SetLevel(ctx context.Context, subject string, level Level) error {
	if _, err := ParseLevel(string(level)); err != nil {
		return err
	}
	return r.c.SetCompatibility(ctx, subject, string(level))
}

// Versions lists the versions the subject holds, sorted; none (and no error) for a
// subject the registry does not know.
func (r *Registry) Versions(ctx context.Context, subject string) ([]int, error) {
	vs, err := r.c.Versions(ctx, subject)
	if registry.IsNotFound(err) {
		return nil, nil
	}
	sort.Ints(vs)
	return vs, err
}

// Subject is one registry subject as Subjects lists it.
type Subject struct {
	Name     string `json:"subject"`
	Versions []int  `json:"versions"`
	Level    Level  `json:"level"`
	// GlobalLevel is true when Level is the registry's global level (the subject has
	// none of its own).
	GlobalLevel bool `json:"global_level,omitempty"`
}

// Subjects lists the registry's subjects whose names start with prefix ("" for all),
// sorted, with their versions and levels.
func (r *Registry) Subjects(ctx context.Context, prefix string) ([]Subject, error) {
	names, err := r.c.Subjects(ctx)
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	var out []Subject
	for _, n := range names {
		if !strings.HasPrefix(n, prefix) {
			continue
		}
		s := Subject{Name: n}
		if s.Versions, err = r.Versions(ctx, n); err != nil {
			return nil, err
		}
		if s.Level, s.GlobalLevel, err = r.Level(ctx, n); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}
