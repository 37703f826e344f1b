package schemacheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// GitVersions returns file as it stood at ref in the git repository holding dir: one
// Version, or none when the file did not exist there (a new schema has nothing to be
// compatible with). With history, it returns every distinct version the file had in
// ref's history, oldest first (for the _TRANSITIVE levels). file is relative to dir, or
// absolute. It runs the git command.
func GitVersions(ctx context.Context, dir, ref, file string, history bool) ([]Version, error) {
	top, err := git(ctx, dir, "rev-parse", "--show-toplevel")
	if err != nil {
		return nil, err
	}
	abs := file
	if !filepath.IsAbs(abs) {
		if abs, err = filepath.Abs(filepath.Join(dir, file)); err != nil {
			return nil, err
		}
	}
	// git prints the top level with symlinks resolved; resolve the file's directory too.
	if d, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
		abs = filepath.Join(d, filepath.Base(abs))
	}
	rel, err := filepath.Rel(strings.TrimSpace(top), abs)
	if err != nil || strings.HasPrefix(rel, "..") {
		return nil, fmt.Errorf("%s is not inside the git repository at %s", file, strings.TrimSpace(top))
	}
	rel = filepath.ToSlash(rel)
	if _, err := git(ctx, dir, "rev-parse", "--verify", "--quiet", ref+"^{commit}"); err != nil {
		return nil, fmt.Errorf("git ref %q: not a commit in %s", ref, dir)
	}
	commits := []string{ref}
	if history {
		out, err := git(ctx, dir, "log", "--format=%H", ref, "--", ":/"+rel)
		if err != nil {
			return nil, err
		}
		commits = strings.Fields(out)
		for i, j := 0, len(commits)-1; i < j; i, j = i+1, j-1 {
			commits[i], commits[j] = commits[j], commits[i]
		}
	}
	var vs []Version
	for _, c := range commits {
		text, err := git(ctx, dir, "show", c+":"+rel)
		if err != nil {
			continue // absent at that commit (not yet created, or deleted there)
		}
		if len(vs) > 0 && vs[len(vs)-1].Text == text {
			continue
		}
		label := ref + ":" + rel
		if history {
			label = shortRef(c) + ":" + rel
		}
		vs = append(vs, Version{Label: label, Text: text})
	}
	return vs, nil
}

func shortRef(c string) string {
	if len(c) > 12 {
		return c[:12]
	}
	return c
}

func git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("git %s: %s", strings.Join(args, " "), strings.TrimSpace(stderr.String()))
		}
		return "", fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
	}
	return stdout.String(), nil
}
