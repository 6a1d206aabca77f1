// Command fake-firecracker is a test double of the firecracker binary; see
// package fcdouble.
package main

import (
	"os"

	"github.com/hearthvm/hearth/internal/fcdouble"
)

func main() {
	os.Exit(fcdouble.Main(os.Args[1:]))
}
