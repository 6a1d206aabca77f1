package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/hearthvm/hearth/network"
	"github.com/hearthvm/hearth/sandbox"
	"github.com/hearthvm/hearth/vmm"
	"github.com/hearthvm/hearth/vmm/firecracker"
	"github.com/hearthvm/hearth/vmm/qemu"
)

// newManager builds an in-process sandbox manager from the global flags.
func newManager(g *globalOptions, driverName string) (*sandbox.Manager, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("hearth needs root to create TAP devices and to write its data directory; run it with sudo")
	}
	assets := g.assets
	if assets == "" {
		assets = filepath.Join(g.dataDir, "assets")
	}
	driver, err := newDriver(driverName)
	if err != nil {
		return nil, err
	}

	pool, err := network.NewPool(network.Config{DataDir: g.dataDir})
	if err != nil {
		return nil, err
	}
	alloc, err := network.NewAllocator(pool, network.AllocatorConfig{})
	if err != nil {
		return nil, err
	}

	return sandbox.New(sandbox.Config{
		DataDir: g.dataDir,
		Driver:  driver,
		Network: alloc,
		Defaults: sandbox.Defaults{
			Kernel: filepath.Join(assets, "vmlinux"),
			Initrd: filepath.Join(assets, "initramfs.cpio"),
			RootFS: filepath.Join(assets, "rootfs.ext4"),
		},
		Logger: slog.Default(),
	})
}

// newDriver returns the VMM driver for name: "qemu", "firecracker", or
// "auto", which picks firecracker when its binary is found
// (HEARTH_FIRECRACKER, else firecracker in PATH) and KVM runs a standard
// guest, and qemu otherwise. The qemu driver's KVM probe result is cached
// host-wide (qemu.DefaultProbeCache), not per data directory, because it
// describes the host.
func newDriver(name string) (vmm.Driver, error) {
	if name == "auto" {
		sel := firecracker.SelectDriver(firecrackerBinary(), nil)
		slog.Info("driver selected", "driver", sel.Driver, "reason", sel.Reason)
		name = sel.Driver
	}
	switch name {
	case "qemu":
		return qemu.New(qemu.Config{})
	case "firecracker":
		bin := firecrackerBinary()
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%w: find firecracker binary %q: %w: install it from a Firecracker release "+
				"or set %s; hearth doctor lists what this host lacks", vmm.ErrUnavailable, bin, err, firecrackerBinaryEnv)
		}
		return firecracker.New(firecracker.Config{Binary: bin}, slog.Default())
	default:
		return nil, fmt.Errorf("invalid --driver %q: use auto, qemu or firecracker", name)
	}
}
