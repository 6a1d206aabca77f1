// Command hearth creates microVM sandboxes and runs commands in them.
package main

import (
	"os"

	"github.com/hearthvm/hearth/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
