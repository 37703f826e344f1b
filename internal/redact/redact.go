// Package redact keeps secrets out of text: the password in a URL's userinfo, a
// "password=" setting of a Postgres connection string, and any literal secret
// value registered in a Set (scrubbed from errors, logs, usage and HTTP answers).
package redact

import (
	"fmt"
	"io"
	"net/url"
	"regexp"
	"strings"
	"sync"
)

// Mask replaces a secret.
const Mask = "xxxxx"

// urlUserinfo matches "scheme://user:password@" (the password part optional).
var urlUserinfo = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#@\s:]*):([^/?#@\s]*)@`)

// dsnPassword matches password=... in a key/value Postgres connection string or a
// URL query.
var dsnPassword = regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)`)

// URL returns s with the password of every URL userinfo in it, and every
// "password=" setting, replaced by Mask. The user name stays (it says who).
func URL(s string) string {
	s = urlUserinfo.ReplaceAllString(s, "${1}${2}:"+Mask+"@")
	return dsnPassword.ReplaceAllString(s, "${1}"+Mask)
}

// MinSecret is the shortest value a Set scrubs: shorter ones would mangle every
// text while hiding nothing a reader could not guess.
const MinSecret = 4

// Set is a set of secret values scrubbed from text; the zero value is empty and
// ready. Safe for concurrent use.
type Set struct {
	mu      sync.RWMutex
	secrets []string
}

// Add registers secrets (values shorter than MinSecret are ignored), with their
// URL-escaped forms.
func (s *Set) Add(secrets ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range secrets {
		for _, form := range []string{v, url.QueryEscape(v), url.PathEscape(v), escapeAll(v)} {
			if len(form) >= MinSecret && !contains(s.secrets, form) {
				s.secrets = append(s.secrets, form)
			}
		}
	}
}

// escapeAll percent-encodes every byte but the unreserved ones (RFC 3986).
func escapeAll(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// String returns text with URL passwords and every registered secret masked.
func (s *Set) String(text string) string {
	text = URL(text)
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, v := range s.secrets {
		text = strings.ReplaceAll(text, v, Mask)
	}
	return text
}

// Error returns err's text, scrubbed ("" for nil).
func (s *Set) Error(err error) string {
	if err == nil {
		return ""
	}
	return s.String(err.Error())
}

// Writer returns a writer that scrubs each Write before passing it to w. A secret
// split across two writes is not caught: give it whole lines (slog handlers, fmt
// calls and the flag package write one line or more at a time).
func (s *Set) Writer(w io.Writer) io.Writer { return &writer{s: s, w: w} }

type writer struct {
	s *Set
	w io.Writer
}

func (w *writer) Write(p []byte) (int, error) {
	if _, err := io.WriteString(w.w, w.s.String(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}
