package testenv

import (
	"io"
	"log/slog"
	"os"
	"testing"
)

// Logger logs warnings and errors to t.Log; with RELAYBOX_TEST_LOG=1, everything at
// debug level to stderr; with RELAYBOX_TEST_LOG=debug, everything to t.Log.
func Logger(t testing.TB) *slog.Logger {
	switch os.Getenv("RELAYBOX_TEST_LOG") {
	case "1":
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	case "debug": // the test's own log, every level
		return slog.New(slog.NewTextHandler(tbWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(tbWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// Writer returns an io.Writer whose writes go to t.Log (e.g. a child process's stderr).
func Writer(t testing.TB) io.Writer { return tbWriter{t} }

type tbWriter struct{ t testing.TB }

func (w tbWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
