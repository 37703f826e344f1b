// Package doctest holds the test that checks the code blocks of README.md and
// docs/*.md against the code: the Go blocks compile, and every `relaybox` command line
// of a shell block names a command and flags the binary has, checked through its -h
// without services. docs/testing.md ("Code blocks in the docs") states the convention.
package doctest
