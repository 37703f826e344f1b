package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// This file holds the calls srclient does not make the way relaybox needs them (the
// verbose compatibility check, a subject's level with its 404s): plain HTTP through the
// same transport (normalizer, basic auth, timeout), bound to the caller's context.

const contentType = "application/vnd.schemaregistry.v1+json"

// do sends one request and decodes a 2xx JSON answer into out (when out is not nil).
// A non-2xx answer is an *Error (via classify); a 5xx is retried like srclient calls.
func (c *Client) do(ctx context.Context, op, subject, method, path string, body, out any) error {
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return err
		}
	}
	hc := &http.Client{Timeout: c.timeout, Transport: c.transport}
	_, err := retry(ctx, func() (struct{}, error) {
		req, err := http.NewRequestWithContext(ctx, method, c.url+path, bytes.NewReader(payload))
		if err != nil {
			return struct{}{}, err
		}
		req.Header.Set("Content-Type", contentType)
		req.Header.Set("Accept", contentType+", application/json")
		if c.user != "" {
			req.SetBasicAuth(c.user, c.pass)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return struct{}{}, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
		if err != nil {
			return struct{}{}, err
		}
		if resp.StatusCode/100 != 2 {
			var e httpError // the normalizer made the body {"error_code":n,"message":...}
			_ = json.Unmarshal(b, &e)
			return struct{}{}, &Error{Op: op, Subject: subject, Code: e.Code, Message: e.Message}
		}
		if out == nil {
			return struct{}{}, nil
		}
		if err := json.Unmarshal(b, out); err != nil {
			return struct{}{}, fmt.Errorf("answer is not the expected JSON: %w", err)
		}
		return struct{}{}, nil
	})
	if err != nil {
		return classify(ctx, op, subject, err)
	}
	return nil
}

// Compatibility is the registry's verdict on a schema against a subject's latest
// version, under the subject's configured level.
type Compatibility struct {
	// Compatible is the verdict. True when the subject holds no version yet (nothing to
	// be compatible with): NoVersion then says so.
	Compatible bool
	NoVersion  bool
	// Messages are the registry's reasons (Confluent's verbose "messages", Apicurio's
	// "reason"), when it gives any.
	Messages []string
}

// CheckCompatibility asks the registry whether schema (Avro text) may be registered
// under subject: POST /compatibility/subjects/{subject}/versions/latest?verbose=true.
// A subject with no version (404: 40401 or 40402, as Confluent and Apicurio 2.4 answer)
// is compatible. The call is bound to ctx.
func (c *Client) CheckCompatibility(ctx context.Context, subject, schema string) (Compatibility, error) {
	var ans struct {
		IsCompatible bool     `json:"is_compatible"`
		Messages     []string `json:"messages"`
		Reason       *string  `json:"reason"`
	}
	err := c.do(ctx, "check compatibility", subject, http.MethodPost,
		"/compatibility/subjects/"+url.PathEscape(subject)+"/versions/latest?verbose=true",
		map[string]string{"schema": schema, "schemaType": "AVRO"}, &ans)
	if IsNotFound(err) {
		return Compatibility{Compatible: true, NoVersion: true}, nil
	}
	if err != nil {
		return Compatibility{}, err
	}
	r := Compatibility{Compatible: ans.IsCompatible, Messages: ans.Messages}
	if ans.Reason != nil && *ans.Reason != "" {
		r.Messages = append(r.Messages, *ans.Reason)
	}
	return r, nil
}

// SubjectCompatibility returns the subject's compatibility level: its own (GET
// /config/{subject}), else the registry's global one (GET /config; global is then
// true). Apicurio 2.4's Confluent API answers NONE for a subject without a rule of its
// own, and for the global level, even when a global rule is configured; for an
// Apicurio ccompat URL, a NONE is therefore checked against Apicurio's own rules API
// (the artifact's COMPATIBILITY rule, then the global one), which is what Apicurio
// enforces. The call is bound to ctx.
func (c *Client) SubjectCompatibility(ctx context.Context, subject string) (level string, global bool, err error) {
	level, err = c.config(ctx, subject)
	if IsNotFound(err) {
		global = true
		level, err = c.config(ctx, "")
	}
	if err != nil {
		return "", false, err
	}
	if native := c.apicurioNative(); level == "NONE" && native != "" {
		if l, err := c.apicurioRule(ctx, native+"/groups/default/artifacts/"+url.PathEscape(subject)+"/rules/COMPATIBILITY"); err == nil {
			return l, false, nil
		}
		if l, err := c.apicurioRule(ctx, native+"/admin/rules/COMPATIBILITY"); err == nil {
			return l, true, nil
		}
	}
	return level, global, nil
}

// config reads GET /config/{subject}, or GET /config for subject "".
func (c *Client) config(ctx context.Context, subject string) (string, error) {
	var ans struct {
		Level  string `json:"compatibilityLevel"`
		Level2 string `json:"compatibility"`
	}
	path, op := "/config", "get global compatibility"
	if subject != "" {
		path, op = "/config/"+url.PathEscape(subject), "get compatibility"
	}
	if err := c.do(ctx, op, subject, http.MethodGet, path, nil, &ans); err != nil {
		return "", err
	}
	if ans.Level == "" {
		ans.Level = ans.Level2
	}
	return strings.ToUpper(ans.Level), nil
}

// absolute returns a client whose do takes absolute URLs (same transport, auth and
// timeout), for Apicurio's own API next to its Confluent-compatible one.
func (c *Client) absolute() *Client {
	return &Client{timeout: c.timeout, transport: c.transport, user: c.user, pass: c.pass}
}

// apicurioRule reads a rule from Apicurio's own API (an absolute URL).
func (c *Client) apicurioRule(ctx context.Context, url string) (string, error) {
	var ans struct {
		Config string `json:"config"`
	}
	if err := c.absolute().do(ctx, "get apicurio rule", "", http.MethodGet, url, nil, &ans); err != nil {
		return "", err
	}
	if ans.Config == "" {
		return "", errors.New("apicurio rule without config")
	}
	return strings.ToUpper(ans.Config), nil
}

// Subjects lists the registry's subjects. Apicurio 2.4's Confluent API lists 1000
// subjects at most (registry.ccompat.max-subjects): for an Apicurio ccompat URL the
// subjects are read, page by page, from Apicurio's own API (the artifacts of the
// default group) instead. The call is bound to ctx.
func (c *Client) Subjects(ctx context.Context) ([]string, error) {
	if native := c.apicurioNative(); native != "" {
		if out, err := c.apicurioArtifacts(ctx, native); err == nil {
			return out, nil
		}
	}
	var out []string
	err := c.do(ctx, "list subjects", "", http.MethodGet, "/subjects", nil, &out)
	return out, err
}

// apicurioNative returns the base URL of Apicurio's own API for an Apicurio
// Confluent-compatible URL (.../apis/ccompat/v7), else "".
func (c *Client) apicurioNative() string {
	if i := strings.Index(c.url, "/apis/ccompat/"); i >= 0 {
		return c.url[:i] + "/apis/registry/v2"
	}
	return ""
}

// apicurioArtifacts lists the ids of the default group's artifacts: in pages of
// 10000, oldest first (a stable order, unlike the names many artifacts share), without
// duplicates.
func (c *Client) apicurioArtifacts(ctx context.Context, native string) ([]string, error) {
	abs := c.absolute()
	const page = 10000
	seen := map[string]bool{}
	var out []string
	for offset := 0; ; offset += page {
		var ans struct {
			Artifacts []struct {
				ID string `json:"id"`
			} `json:"artifacts"`
			Count int `json:"count"`
		}
		path := fmt.Sprintf("%s/groups/default/artifacts?limit=%d&offset=%d&orderby=createdOn&order=asc", native, page, offset)
		if err := abs.do(ctx, "list apicurio artifacts", "", http.MethodGet, path, nil, &ans); err != nil {
			return nil, err
		}
		for _, a := range ans.Artifacts {
			if !seen[a.ID] {
				seen[a.ID] = true
				out = append(out, a.ID)
			}
		}
		if len(ans.Artifacts) < page || offset+page >= ans.Count {
			return out, nil
		}
	}
}

// Versions lists the versions a subject holds. The call is bound to ctx.
func (c *Client) Versions(ctx context.Context, subject string) ([]int, error) {
	var out []int
	err := c.do(ctx, "list versions", subject, http.MethodGet, "/subjects/"+url.PathEscape(subject)+"/versions", nil, &out)
	return out, err
}

// SchemaVersion returns the schema text of a subject's version. The call is bound to
// ctx.
func (c *Client) SchemaVersion(ctx context.Context, subject string, version int) (string, error) {
	var out struct {
		Schema string `json:"schema"`
	}
	err := c.do(ctx, "get version", subject, http.MethodGet, fmt.Sprintf("/subjects/%s/versions/%d", url.PathEscape(subject), version), nil, &out)
	return out.Schema, err
}

type httpError struct {
	Code    int    `json:"error_code"`
	Message string `json:"message"`
}
