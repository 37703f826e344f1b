package redact

import (
	"bytes"
	"strings"
	"testing"
)

func TestURL_MasksPasswordsKeepsTheRest(t *testing.T) {
	for in, want := range map[string]string{
		`Get "http://user:s3cr3t@host:8081/apis/ccompat/v7/subjects": refused`: `Get "http://user:xxxxx@host:8081/apis/ccompat/v7/subjects": refused`,
		`postgres://relay:p%40ss@db:5432/app?sslmode=verify-full`:              `postgres://relay:xxxxx@db:5432/app?sslmode=verify-full`,
		`host=db user=relay password='a b' dbname=app`:                         `host=db user=relay password=xxxxx dbname=app`,
		`postgres://db/app?user=relay&password=s3cr3t&sslmode=require`:         `postgres://db/app?user=relay&password=xxxxx&sslmode=require`,
		`http://host:8081/no/userinfo`:                                         `http://host:8081/no/userinfo`,
	} {
		if got := URL(in); got != want {
			t.Errorf("URL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSet_ScrubsRegisteredSecretsInEveryForm(t *testing.T) {
	var s Set
	s.Add("p@ss w0rd", "ab", "")
	s.Add("hunter2xyz")
	var b bytes.Buffer
	w := s.Writer(&b)
	for _, line := range []string{"login p@ss w0rd failed", "escaped p%40ss+w0rd and p%40ss%20w0rd", "hunter2xyz", "ab stays"} {
		w.Write([]byte(line + "\n"))
	}
	out := b.String()
	for _, leak := range []string{"p@ss w0rd", "p%40ss+w0rd", "p%40ss%20w0rd", "hunter2xyz"} {
		if strings.Contains(out, leak) {
			t.Errorf("%q leaked: %s", leak, out)
		}
	}
	if !strings.Contains(out, "ab stays") {
		t.Errorf("a value shorter than MinSecret was scrubbed: %s", out)
	}
}
