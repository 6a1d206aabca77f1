// Package sandbox is hearth's sandbox manager: it owns the lifecycle of
// every sandbox (create, wait until the agent replies, run commands,
// stop, remove) and ties together a VMM driver (package vmm), the network
// pool (package network) and the agent (packages agentlink, agentclient).
//
// It is the embeddable Go API: a program can create a Manager and run
// sandboxes in-process without the daemon. The daemon and the CLI are
// clients of this package.
package sandbox

import (
	"errors"
	"fmt"
	"regexp"
	"time"
	"unicode"
)

// State is a sandbox's lifecycle state, spelled as in the sandbox.v1 API.
type State string

// Sandbox states.
const (
	StateStarting State = "starting"
	StateReady    State = "ready"
	StateRunning  State = "running"
	StateStopping State = "stopping"
	StateStopped  State = "stopped"
	StateFailed   State = "failed"
)

// Network modes.
const (
	NetworkTAP  = "tap"
	NetworkNone = "none"
)

// Error kinds. Errors returned by the manager wrap one of these, so callers
// (the gRPC layer in particular) can map them with errors.Is.
var (
	ErrNotFound          = errors.New("not found")
	ErrAlreadyExists     = errors.New("already exists")
	ErrWrongState        = errors.New("wrong state")
	ErrInvalidArgument   = errors.New("invalid argument")
	ErrResourceExhausted = errors.New("resource exhausted")
	ErrUnavailable       = errors.New("unavailable")
)

// MinMemoryMiB is the smallest guest memory accepted. The Debian cloud
// kernel with hearth's initramfs does not reach the agent below it.
const MinMemoryMiB = 64

// MaxVCPUs is the largest vCPU count accepted (Firecracker's limit).
const MaxVCPUs = 32

// idPattern is what both Firecracker and its jailer accept as an ID
// (alphanumerics and '-', at most 64), further limited to start with an
// alphanumeric so an ID is never mistaken for a flag.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,63}$`)

// ValidateID checks a caller-supplied sandbox ID.
func ValidateID(id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("%w: sandbox id %q: use 1 to 64 letters, digits or '-', starting with a letter or digit",
			ErrInvalidArgument, id)
	}
	return nil
}

// Label and name limits. Labels and snapshot names are printed in tables
// and logs, so control characters are rejected rather than escaped.
const (
	MaxLabelKeyLen   = 128
	MaxLabelValueLen = 1024
	MaxLabels        = 64
	MaxNameLen       = 256
)

// ValidateLabels checks label keys and values for length and control
// characters.
func ValidateLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("%w: %d labels, at most %d are allowed", ErrInvalidArgument, len(labels), MaxLabels)
	}
	for k, v := range labels {
		if k == "" || len(k) > MaxLabelKeyLen {
			return fmt.Errorf("%w: label key %q: use 1 to %d bytes", ErrInvalidArgument, truncate(k), MaxLabelKeyLen)
		}
		if len(v) > MaxLabelValueLen {
			return fmt.Errorf("%w: label %q: the value has %d bytes, at most %d are allowed",
				ErrInvalidArgument, k, len(v), MaxLabelValueLen)
		}
		if hasControl(k) || hasControl(v) {
			return fmt.Errorf("%w: label %q: keys and values must not contain control characters",
				ErrInvalidArgument, truncate(k))
		}
	}
	return nil
}

// validateName checks a snapshot name.
func validateName(name string) error {
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: name has %d bytes, at most %d are allowed", ErrInvalidArgument, len(name), MaxNameLen)
	}
	if hasControl(name) {
		return fmt.Errorf("%w: name %q must not contain control characters", ErrInvalidArgument, truncate(name))
	}
	return nil
}

func hasControl(s string) bool {
	for _, r := range s {
		if unicode.IsControl(r) {
			return true
		}
	}
	return false
}

func truncate(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}

// CreateOptions describes a sandbox to create. Zero values take the
// manager's defaults.
type CreateOptions struct {
	ID        string
	Labels    map[string]string
	VCPUs     int
	MemoryMiB int
	Kernel    string
	Initrd    string
	RootFS    string
	BootArgs  string
	// Network is "tap" (default) or "none".
	Network string
	// TTL removes the sandbox this long after its creation; 0 means never.
	TTL time.Duration

	// Cmd, when set, runs once the sandbox is ready, with Env, WorkingDir
	// and User. Its output goes to the file init-cmd.log in the sandbox's
	// directory and its exit is reported like any workload's.
	Cmd        []string
	Env        map[string]string
	WorkingDir string
	User       string
}

// Info is a snapshot of a sandbox's record.
type Info struct {
	ID        string
	State     State
	Labels    map[string]string
	VCPUs     int
	MemoryMiB int
	Network   NetworkInfo
	CreatedAt time.Time
	ReadyAt   time.Time
	// LastExitedAt and LastExitCode describe the most recent workload to
	// end; LastExitedAt is zero while none has.
	LastExitedAt time.Time
	LastExitCode int32
	// Workloads is the number of commands running now.
	Workloads int
	// ExpiresAt is when the TTL removes the sandbox; zero means never.
	ExpiresAt time.Time
	Error     string
	// Dir is the sandbox's state directory on the host.
	Dir string
	// ConsolePath is the file capturing the guest's serial console.
	ConsolePath string
}

// NetworkInfo is the network identity of a sandbox; empty for mode none.
type NetworkInfo struct {
	IP      string
	Gateway string
	TAP     string
	MAC     string
}
