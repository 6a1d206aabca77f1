//go:build !linux

package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/hearthvm/hearth/vmm"
)

// Driver is unavailable outside Linux.
type Driver struct{}

// New reports that Firecracker needs Linux.
func New(cfg Config, log *slog.Logger) (*Driver, error) {
	return nil, fmt.Errorf("firecracker driver: %w: firecracker runs only on Linux", vmm.ErrUnavailable)
}

// Name returns "firecracker".
func (d *Driver) Name() string { return "firecracker" }

// Boot always fails outside Linux.
func (d *Driver) Boot(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	return nil, errors.New("firecracker driver: not supported on this system")
}

// ProbeKVM always fails outside Linux.
func ProbeKVM() error { return errors.New("KVM exists only on Linux") }
