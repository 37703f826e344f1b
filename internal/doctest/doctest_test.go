package doctest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// block is one fenced code block of a doc.
type block struct {
	file string // relative to the repository root
	line int    // of the first line of code
	lang string
	mark string // the doctest marker on the line before the fence ("skip", "run"), if any
	code []string
}

// markRE is the marker a doc puts on the line before a fence: <!-- doctest: skip -->.
var markRE = regexp.MustCompile(`^<!--\s*doctest:\s*(\w+)\s*-->\s*$`)

func root(t *testing.T) string {
	t.Helper()
	r, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// docs returns the Markdown files the convention covers: README.md and docs/*.md.
func docs(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root(t), "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	return append([]string{filepath.Join(root(t), "README.md")}, files...)
}

// parse returns the fenced blocks of a Markdown file.
func parse(t *testing.T, path string) []block {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rel, _ := filepath.Rel(root(t), path)
	var out []block
	var cur *block
	prev := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &block{file: rel, line: n + 1, lang: strings.TrimSpace(strings.TrimPrefix(line, "```"))}
			if m := markRE.FindStringSubmatch(strings.TrimSpace(prev)); m != nil {
				cur.mark = m[1]
			}
		case cur != nil && strings.HasPrefix(line, "```"):
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.code = append(cur.code, line)
		}
		prev = line
	}
	if cur != nil {
		t.Errorf("%s:%d: code block never closed", rel, cur.line-1)
	}
	return out
}

func allBlocks(t *testing.T) []block {
	var out []block
	for _, d := range docs(t) {
		for _, b := range parse(t, d) {
			switch b.mark {
			case "", "skip", "run":
			default:
				t.Errorf("%s:%d: unknown marker doctest: %s (want skip or run)", b.file, b.line-1, b.mark)
			}
			out = append(out, b)
		}
	}
	return out
}

// relayboxBin builds cmd/relaybox once for the test.
func relayboxBin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "relaybox")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/relaybox")
	cmd.Dir = root(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/relaybox: %v\n%s", err, out)
	}
	return bin
}

// noServices is the environment of the commands: the services' variables unset, so
// that help answers without Postgres, Kafka or a registry.
func noServices() []string {
	var env []string
	for _, kv := range os.Environ() {
		switch strings.SplitN(kv, "=", 2)[0] {
		case "DATABASE_URL", "KAFKA_BROKERS", "SCHEMA_REGISTRY_URL":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// runBin runs the binary with args (no services, 20s at most).
func runBin(bin string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = noServices()
	cmd.WaitDelay = time.Second
	done := make(chan struct{})
	timer := time.AfterFunc(20*time.Second, func() {
		if cmd.Process != nil {
			cmd.Process.Kill()
		}
		close(done)
	})
	out, err := cmd.CombinedOutput()
	if !timer.Stop() {
		<-done
		return string(out), fmt.Errorf("did not answer within 20s (does it need a service?)")
	}
	return string(out), err
}

// words splits a shell line into words: quotes group, a # outside quotes starts a
// comment. Enough for the command lines of the docs.
func words(line string) []string {
	var out []string
	var cur strings.Builder
	in, quote, started := false, byte(0), false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case in && c == quote:
			in = false
		case in:
			cur.WriteByte(c)
		case c == '\'' || c == '"':
			in, quote, started = true, c, true
		case c == '#' && !started:
			return out
		case c == ' ' || c == '\t':
			if started {
				out = append(out, cur.String())
				cur.Reset()
				started = false
			}
		default:
			cur.WriteByte(c)
			started = true
		}
	}
	if started {
		out = append(out, cur.String())
	}
	return out
}

// relayboxLine returns the arguments of a `relaybox ...` (or `./relaybox ...`)
// command line, and whether the line is one.
func relayboxLine(line string) ([]string, bool) {
	w := words(strings.TrimPrefix(strings.TrimSpace(line), "$ "))
	if len(w) == 0 || (w[0] != "relaybox" && w[0] != "./relaybox") {
		return nil, false
	}
	return w[1:], true
}

// Every relaybox command line in a shell block of the docs names a command the
// binary has, and only flags that command has: checked through `-h`, without
// services. A line in a block marked `<!-- doctest: run -->` is also run as written
// and must succeed.
func TestDocs_RelayboxCommandLinesMatchTheBinary(t *testing.T) {
	bin := relayboxBin(t)
	checked := 0
	for _, b := range allBlocks(t) {
		if (b.lang != "sh" && b.lang != "console" && b.lang != "bash") || b.mark == "skip" {
			continue
		}
		for i, line := range b.code {
			args, ok := relayboxLine(line)
			if !ok {
				continue
			}
			where := fmt.Sprintf("%s:%d: %s", b.file, b.line+i, strings.TrimSpace(line))
			checked++
			// The command path: the leading words for which `relaybox <path> -h` answers.
			var path []string
			help, err := runBin(bin, "-h")
			if err != nil {
				t.Errorf("%s\n  relaybox -h: %v\n%s", where, err, help)
				continue
			}
			for _, a := range args {
				if strings.HasPrefix(a, "-") {
					break
				}
				out, err := runBin(bin, append(append(append([]string{}, path...), a), "-h")...)
				if err != nil {
					if len(path) == 0 {
						t.Errorf("%s\n  relaybox %s -h: %v\n%s", where, a, err, out)
					}
					break
				}
				path, help = append(path, a), out
			}
			for _, a := range args[len(path):] {
				if len(path) == 0 || !strings.HasPrefix(a, "-") || a == "-" {
					continue
				}
				name := strings.SplitN(strings.TrimLeft(a, "-"), "=", 2)[0]
				if name == "h" || name == "help" {
					continue
				}
				if !regexp.MustCompile(`(?m)^\s*--?` + regexp.QuoteMeta(name) + `\b`).MatchString(help) {
					t.Errorf("%s\n  flag %s is not in `relaybox %s -h`", where, a, strings.Join(path, " "))
				}
			}
			if b.mark == "run" {
				if out, err := runBin(bin, args...); err != nil {
					t.Errorf("%s\n  run: %v\n%s", where, err, out)
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("no relaybox command line found in the docs: the parser is broken")
	}
	t.Logf("%d relaybox command lines checked", checked)
}

// imports are the packages a Go block may use without importing them (the docs
// leave imports out of fragments).
var imports = map[string]string{
	"context":      "context",
	"errors":       "errors",
	"fmt":          "fmt",
	"log":          "log",
	"os":           "os",
	"strings":      "strings",
	"testing":      "testing",
	"time":         "time",
	"slog":         "log/slog",
	"http":         "net/http",
	"pgx":          "github.com/jackc/pgx/v5",
	"pgxpool":      "github.com/jackc/pgx/v5/pgxpool",
	"kgo":          "github.com/twmb/franz-go/pkg/kgo",
	"prometheus":   "github.com/prometheus/client_golang/prometheus",
	"outbox":       "github.com/relaybox/relaybox/outbox",
	"outboxtest":   "github.com/relaybox/relaybox/outbox/outboxtest",
	"relay":        "github.com/relaybox/relaybox/relay",
	"consumer":     "github.com/relaybox/relaybox/consumer",
	"migrations":   "github.com/relaybox/relaybox/migrations",
	"schemacheck":  "github.com/relaybox/relaybox/schemacheck",
	"relayboxtest": "github.com/relaybox/relaybox/relayboxtest",
}

// snippet is a Go block made into a file: its package clause, imports, top-level
// declarations, and its statements in the body of a function.
type snippet struct {
	b     block
	src   string
	lines map[int]int // line of src -> line of the doc
}

var declRE = regexp.MustCompile(`^(type|func|var|const)\b`)

// goSnippet turns a Go block into a compilable file. A block that starts with a
// package clause is a file already. Otherwise lines from a column-0 `import`, `type`,
// `func`, `var` or `const` up to the next column-0 line that is neither indented nor a
// closing bracket are top-level declarations; every other line is a statement of
// `func _() error { ...; return nil }`. Packages named in imports are imported when the
// block uses them and has no import of its own.
func goSnippet(b block, pkg string) snippet {
	s := snippet{b: b, lines: map[int]int{}}
	var out []string
	emit := func(line string, docLine int) {
		out = append(out, line)
		if docLine > 0 {
			s.lines[len(out)] = docLine
		}
	}
	code := strings.Join(b.code, "\n")
	if strings.HasPrefix(strings.TrimSpace(code), "package ") {
		for i, l := range b.code {
			emit(l, b.line+i)
		}
		s.src = strings.Join(out, "\n") + "\n"
		return s
	}
	emit("package "+pkg, 0)
	if !regexp.MustCompile(`(?m)^import\b`).MatchString(code) {
		var names []string
		for name := range imports {
			if regexp.MustCompile(`\b` + name + `\.`).MatchString(code) {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		for _, n := range names {
			emit(fmt.Sprintf("import %s %q", n, imports[n]), 0)
		}
	}
	var body []int // indexes of body lines
	inDecl := false
	for i, l := range b.code {
		col0 := l != "" && l[0] != ' ' && l[0] != '\t'
		switch {
		case col0 && (declRE.MatchString(l) || strings.HasPrefix(l, "import")):
			inDecl = true
		case col0 && inDecl && (strings.HasPrefix(l, "}") || strings.HasPrefix(l, ")")):
		case col0:
			inDecl = false
		}
		if inDecl {
			emit(l, b.line+i)
		} else {
			body = append(body, i)
		}
	}
	emit("func _() error {", 0)
	for _, i := range body {
		emit(b.code[i], b.line+i)
	}
	emit("return nil", 0)
	emit("}", 0)
	s.src = strings.Join(out, "\n") + "\n"
	return s
}

// ignoredRE matches the compile errors a fragment is allowed: names it uses but the
// docs define elsewhere (pool, ctx, the reader's own types), and what follows from
// leaving them out.
var ignoredRE = regexp.MustCompile(`undefined: \w+$|declared and not used|imported and not used|too many errors|missing return|label \w+ defined and not used`)

// Every Go block of the docs compiles against this module: a block with a package
// clause as it is, a fragment as the declarations and statements of a file (see
// goSnippet), where only names the docs leave to the reader (pool, ctx, ...) may be
// undefined. A block marked `<!-- doctest: skip -->` is not checked.
func TestDocs_GoBlocksCompile(t *testing.T) {
	r := root(t)
	dir := t.TempDir()
	overlay := map[string]map[string]string{"Replace": {}}
	var pkgs []string
	snips := map[string]snippet{}
	for _, b := range allBlocks(t) {
		if b.lang != "go" || b.mark == "skip" {
			continue
		}
		pkg := fmt.Sprintf("s%d", len(pkgs))
		s := goSnippet(b, pkg)
		tmp := filepath.Join(dir, pkg+".go")
		if err := os.WriteFile(tmp, []byte(s.src), 0o644); err != nil {
			t.Fatal(err)
		}
		// The overlay places the file inside the module (so that it may import the
		// module's packages) without writing to the tree.
		virtual := filepath.Join(r, "internal", "doctest", "snippets", pkg, "snippet.go")
		overlay["Replace"][virtual] = tmp
		pkgs = append(pkgs, "./internal/doctest/snippets/"+pkg)
		snips[pkg] = s
	}
	if len(pkgs) == 0 {
		t.Fatal("no Go block found in the docs: the parser is broken")
	}
	ov := filepath.Join(dir, "overlay.json")
	j, _ := json.Marshal(overlay)
	if err := os.WriteFile(ov, j, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", append([]string{"build", "-overlay", ov, "-gcflags=-e", "-o", os.DevNull}, pkgs...)...)
	cmd.Dir = r
	out, _ := cmd.CombinedOutput()
	errRE := regexp.MustCompile(`(?:/|^)(s\d+)(?:\.go|/snippet\.go):(\d+):(\d+): (.*)`)
	for _, line := range strings.Split(string(out), "\n") {
		m := errRE.FindStringSubmatch(line)
		switch {
		case m == nil && strings.TrimSpace(line) != "" && !strings.HasPrefix(line, "#"):
			t.Errorf("go build: %s", line)
			continue
		case m == nil || ignoredRE.MatchString(m[4]):
			continue
		}
		s := snips[m[1]]
		var n int
		fmt.Sscan(m[2], &n)
		where := fmt.Sprintf("%s (block at line %d)", s.b.file, s.b.line)
		if dl, ok := s.lines[n]; ok {
			where = fmt.Sprintf("%s:%d", s.b.file, dl)
		}
		t.Errorf("%s: %s", where, m[4])
	}
	t.Logf("%d Go blocks compiled", len(pkgs))
}
