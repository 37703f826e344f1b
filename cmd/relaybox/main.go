// Command relaybox runs the relay and operates relaybox's tables. See `relaybox help`.
package main

import (
	"os"

	"github.com/relaybox/relaybox/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr)) }
