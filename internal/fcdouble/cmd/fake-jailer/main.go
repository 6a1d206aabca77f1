// Command fake-jailer is a test double of Firecracker's jailer; see
// package fcdouble.
package main

import (
	"os"

	"github.com/hearthvm/hearth/internal/fcdouble"
)

func main() {
	os.Exit(fcdouble.JailerMain(os.Args[1:]))
}
