//go:build !linux

package fcdouble

import (
	"fmt"
	"os"
)

// Main reports that the double needs Linux.
func Main(args []string) int {
	fmt.Fprintln(os.Stderr, "fake-firecracker runs only on Linux")
	return 1
}

// JailerMain reports that the double needs Linux.
func JailerMain(args []string) int { return Main(args) }
