package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/schemacheck"
)

// runSchema is `relaybox schema check|compat|list`: schema governance (issue 19).
func runSchema(ctx context.Context, args []string, s *stdio) error {
	out := s.out
	usage := "usage: relaybox schema check|compat|list [flags] (relaybox schema <sub> -help for its flags)"
	if len(args) == 0 {
		return errors.New("schema: say check, compat or list; " + usage)
	}
	switch args[0] {
	case "check":
		return runSchemaCheck(ctx, args[1:], s)
	case "compat":
		return runSchemaCompat(ctx, args[1:], s)
	case "list":
		return runSchemaList(ctx, args[1:], s)
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(out, usage)
		return nil
	}
	return fmt.Errorf("schema %q: %s", args[0], usage)
}

// parseInterspersed parses flags that may come before, between or after the
// positional arguments, and returns the positional ones.
func parseInterspersed(f *flags, args []string) ([]string, error) {
	var pos []string
	for {
		if err := f.parse(args); err != nil {
			return nil, err
		}
		args = f.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func (r registryOpts) schemaRegistry() (*schemacheck.Registry, error) {
	if r.url == "" {
		return nil, errors.New("no schema registry: set SCHEMA_REGISTRY_URL or --registry-url")
	}
	return schemacheck.NewRegistry(r.url, &schemacheck.RegistryOptions{Username: r.user, Password: r.password, Timeout: r.timeout}), nil
}

type schemaCheckOpts struct {
	registry                 registryOpts
	against, level           string
	subject, topic, strategy string
	json                     bool
}

// schemaFileResult is one file's outcome, as --json prints it.
type schemaFileResult struct {
	File       string                `json:"file"`
	Subject    string                `json:"subject,omitempty"`
	Compatible bool                  `json:"compatible"`
	Level      schemacheck.Level     `json:"level,omitempty"`
	Against    []string              `json:"against"`
	Note       string                `json:"note,omitempty"`
	Problems   []schemacheck.Problem `json:"problems"`
}

type schemaCheckReport struct {
	Compatible bool               `json:"compatible"`
	Mode       string             `json:"mode"` // "git" or "registry"
	Files      []schemaFileResult `json:"files"`
}

// errIncompatible is a break found by schema check: exit status 1, one line on stderr
// after the report.
type errIncompatible struct{ problems, files, total int }

func (e errIncompatible) Error() string {
	return fmt.Sprintf("schema check: %d incompatible change(s) in %d of %d schema file(s)", e.problems, e.files, e.total)
}

func runSchemaCheck(ctx context.Context, args []string, s *stdio) error {
	out := s.out
	f := newFlags("schema check", s)
	o := &schemaCheckOpts{}
	f.registry(&o.registry)
	f.StringVar(&o.against, "against", "", "offline: check each file against the same file at this git ref (e.g. origin/main); no registry needed")
	f.StringVar(&o.level, "level", string(schemacheck.DefaultLevel), "offline: compatibility level: BACKWARD, FORWARD, FULL, their _TRANSITIVE forms (against every version in the ref's history), NONE")
	f.StringVar(&o.subject, "subject", "", "registry subject (registry mode needs it, or --topic)")
	f.StringVar(&o.topic, "topic", "", "topic the schemas are written to: the subject follows from --strategy")
	f.StringVar(&o.strategy, "strategy", "topic", "subject strategy of the writer: topic (<topic>-value), record (<record full name>), topic-record (<topic>-<record full name>)")
	f.BoolVar(&o.json, "json", false, "print a JSON report")
	f.Usage = func() {
		fmt.Fprintln(f.Output(), "usage: relaybox schema check --against <git ref> [--level FULL] file.avsc...")
		fmt.Fprintln(f.Output(), "       relaybox schema check --registry-url URL (--subject S | --topic T [--strategy topic]) file.avsc...")
		fmt.Fprintln(f.Output(), "exit status 1 when a schema breaks compatibility")
		f.PrintDefaults()
	}
	files, err := parseInterspersed(f, args)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return errors.New("schema check: no schema files given (e.g. schemas/*.avsc)")
	}
	level, err := schemacheck.ParseLevel(o.level)
	if err != nil {
		return fmt.Errorf("--level: %w", err)
	}
	strategy, err := outbox.ParseSubjectStrategy(o.strategy)
	if err != nil {
		return fmt.Errorf("--strategy: %w", err)
	}
	if o.subject != "" && o.topic != "" {
		return errors.New("schema check: give --subject or --topic, not both")
	}
	levelSet := false
	f.Visit(func(fl *flag.Flag) { levelSet = levelSet || fl.Name == "level" })
	rep := schemaCheckReport{Mode: "git"}
	var reg *schemacheck.Registry
	if o.against == "" {
		rep.Mode = "registry"
		if levelSet {
			return errors.New("schema check: --level is for --against; the registry applies the subject's own level (see relaybox schema compat)")
		}
		if o.subject == "" && o.topic == "" {
			return errors.New("schema check: registry mode needs the subject: --subject, or --topic with --strategy (or --against <git ref> to check offline)")
		}
		if reg, err = o.registry.schemaRegistry(); err != nil {
			return err
		}
	}
	broken, nproblems := 0, 0
	for _, file := range files {
		res, err := checkSchemaFile(ctx, o, reg, level, strategy, file)
		if err != nil {
			return err
		}
		if !res.Compatible {
			broken++
			nproblems += len(res.Problems)
		}
		rep.Files = append(rep.Files, res)
	}
	rep.Compatible = broken == 0
	if o.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		for _, r := range rep.Files {
			if r.Compatible {
				fmt.Fprintf(out, "ok     %s: %s\n", r.File, r.Note)
				continue
			}
			for _, p := range r.Problems {
				fmt.Fprintf(out, "BREAKS %s\n", p)
			}
		}
	}
	if broken > 0 {
		return errIncompatible{problems: nproblems, files: broken, total: len(files)}
	}
	return nil
}

func checkSchemaFile(ctx context.Context, o *schemaCheckOpts, reg *schemacheck.Registry, level schemacheck.Level, strategy outbox.SubjectStrategy, file string) (schemaFileResult, error) {
	res := schemaFileResult{File: file, Against: []string{}, Problems: []schemacheck.Problem{}}
	b, err := os.ReadFile(file)
	if err != nil {
		return res, fmt.Errorf("schema check: %w", err)
	}
	text := string(b)
	if _, err := schemacheck.Parse(text); err != nil {
		return res, fmt.Errorf("schema check: %s: %w", file, err)
	}
	res.Subject = o.subject
	if o.topic != "" {
		if res.Subject, _, err = (outbox.EventSchema{Topic: o.topic, Schema: text}).Subject(&outbox.Config{SubjectStrategy: strategy}); err != nil {
			return res, fmt.Errorf("schema check: %s: %w", file, err)
		}
	}
	var problems []schemacheck.Problem
	if reg == nil {
		res.Level = level
		older, err := schemacheck.GitVersions(ctx, ".", o.against, file, level.Transitive())
		if err != nil {
			return res, fmt.Errorf("schema check: %s: %w", file, err)
		}
		for _, v := range older {
			res.Against = append(res.Against, v.Label)
		}
		if problems, err = schemacheck.Compare(older, text, level); err != nil {
			return res, fmt.Errorf("schema check: %s: %w", file, err)
		}
		switch {
		case len(older) == 0:
			res.Note = fmt.Sprintf("new: absent at %s, nothing to check", o.against)
		case level == schemacheck.None:
			res.Note = "level NONE: nothing to check"
		default:
			res.Note = fmt.Sprintf("%s compatible with %s", level, strings.Join(res.Against, ", "))
		}
	} else {
		if problems, err = reg.Check(ctx, res.Subject, text); err != nil {
			return res, fmt.Errorf("schema check: %s: %w", file, err)
		}
		res.Against = append(res.Against, "subject "+res.Subject)
		versions, err := reg.Versions(ctx, res.Subject)
		if err != nil {
			return res, fmt.Errorf("schema check: %s: %w", file, err)
		}
		if res.Level, _, err = reg.Level(ctx, res.Subject); err != nil {
			return res, fmt.Errorf("schema check: %s: %w", file, err)
		}
		res.Note = fmt.Sprintf("%s compatible with subject %s (versions %s)", res.Level, res.Subject, strings.Trim(fmt.Sprint(versions), "[]"))
		if len(versions) == 0 {
			res.Note = fmt.Sprintf("new: subject %s holds no version, nothing to check", res.Subject)
		}
	}
	for i := range problems {
		problems[i].File = file
		if problems[i].Subject == "" {
			problems[i].Subject = res.Subject
		}
	}
	res.Problems = append(res.Problems, problems...)
	res.Compatible = len(problems) == 0
	return res, nil
}

func runSchemaCompat(ctx context.Context, args []string, s *stdio) error {
	out := s.out
	f := newFlags("schema compat", s)
	var r registryOpts
	f.registry(&r)
	asJSON := f.Bool("json", false, "print JSON")
	f.Usage = func() {
		fmt.Fprintln(f.Output(), "usage: relaybox schema compat <subject> [LEVEL]   read, or set, a subject's compatibility level")
		fmt.Fprintln(f.Output(), "LEVEL: BACKWARD, FORWARD, FULL (advised for production topics), their _TRANSITIVE forms, NONE")
		f.PrintDefaults()
	}
	pos, err := parseInterspersed(f, args)
	if err != nil {
		return err
	}
	if len(pos) < 1 || len(pos) > 2 {
		return errors.New("schema compat: usage: relaybox schema compat <subject> [LEVEL]")
	}
	subject := pos[0]
	reg, err := r.schemaRegistry()
	if err != nil {
		return err
	}
	type answer struct {
		Subject     string            `json:"subject"`
		Level       schemacheck.Level `json:"level"`
		GlobalLevel bool              `json:"global_level,omitempty"`
		Previous    schemacheck.Level `json:"previous,omitempty"`
	}
	var a answer
	if len(pos) == 2 {
		level, err := schemacheck.ParseLevel(pos[1])
		if err != nil {
			return err
		}
		prev, _, err := reg.Level(ctx, subject)
		if err != nil {
			return err
		}
		if err := reg.SetLevel(ctx, subject, level); err != nil {
			return err
		}
		a = answer{Subject: subject, Previous: prev}
	} else {
		a.Subject = subject
	}
	if a.Level, a.GlobalLevel, err = reg.Level(ctx, subject); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(out).Encode(a)
	}
	line := fmt.Sprintf("%s: %s", subject, a.Level)
	if a.Previous != "" {
		line += fmt.Sprintf(" (was %s)", a.Previous)
	}
	if a.GlobalLevel {
		line += " (the registry's global level: the subject has none of its own)"
	}
	fmt.Fprintln(out, line)
	return nil
}

func runSchemaList(ctx context.Context, args []string, s *stdio) error {
	out := s.out
	f := newFlags("schema list", s)
	var r registryOpts
	f.registry(&r)
	prefix := f.String("prefix", "", "only subjects whose names start with this")
	asJSON := f.Bool("json", false, "print JSON")
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() > 0 {
		return fmt.Errorf("schema list: unexpected argument %q (use --prefix)", f.Arg(0))
	}
	reg, err := r.schemaRegistry()
	if err != nil {
		return err
	}
	subjects, err := reg.Subjects(ctx, *prefix)
	if err != nil {
		return err
	}
	if *asJSON {
		if subjects == nil {
			subjects = []schemacheck.Subject{}
		}
		return json.NewEncoder(out).Encode(subjects)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SUBJECT\tVERSIONS\tLEVEL")
	for _, s := range subjects {
		vs := make([]string, len(s.Versions))
		for i, v := range s.Versions {
			vs[i] = fmt.Sprint(v)
		}
		level := string(s.Level)
		if s.GlobalLevel {
			level += " (global)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, strings.Join(vs, ","), level)
	}
	return tw.Flush()
}
