//go:build !linux

package network

import (
	"fmt"
	"os"
)

func selfPID() int { return os.Getpid() }

// ProcessOwner returns the Owner for the running process pid. Without
// /proc the start time is unknown and stays zero.
func ProcessOwner(pid int) (Owner, error) {
	if pid <= 0 {
		return Owner{}, fmt.Errorf("process owner: invalid pid %d: %w", pid, ErrInvalid)
	}
	return Owner{PID: pid}, nil
}

// Alive reports true for every owner with a PID: this system has no /proc
// to check, and reclaiming a live lease would break a running sandbox, so
// stale leases stay until released.
func (o Owner) Alive() bool {
	return o.PID > 0
}
