//go:build !linux

package qemu

import (
	"errors"
	"os"
	"syscall"
)

// The driver runs only on Linux; these stubs let the package build
// elsewhere, and New rejects the other systems before any is called.
const supported = false

var errNotLinux = errors.New("the qemu driver runs only on Linux")

func hostTSCKHz() (int, string, error)   { return 0, "", errNotLinux }
func hostKernelRelease() (string, error) { return "", errNotLinux }
func openKVM() error                     { return errNotLinux }
func checkTun() error                    { return errNotLinux }
func processAttr() *syscall.SysProcAttr  { return nil }
func killProcessGroup(pid int) error     { return errNotLinux }

func newGuestMemory(id string, mib int) (*os.File, error)   { return nil, errNotLinux }
func copyFile(src *os.File, dst string, reflink bool) error { return errNotLinux }
