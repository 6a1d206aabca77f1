package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/hearthvm/hearth/config"
	"github.com/hearthvm/hearth/network"
	"github.com/hearthvm/hearth/sandbox"
	"github.com/hearthvm/hearth/vmm"
	"github.com/hearthvm/hearth/vmm/firecracker"
	"github.com/hearthvm/hearth/vmm/qemu"
)

// NewManager builds the sandbox manager that cfg describes: the VMM
// driver, the network pool of [network] and the defaults of [defaults].
// It needs root, as the TAP devices and the data directory do.
func NewManager(cfg config.Config, log *slog.Logger) (*sandbox.Manager, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("hearth serve needs root to create TAP devices and to write its data directory; run it as root")
	}
	driver, err := NewDriver(cfg, log)
	if err != nil {
		return nil, err
	}

	pool, err := network.NewPool(network.Config{
		CIDR: cfg.Network.CIDR, Gateway: cfg.Network.Gateway, DataDir: cfg.Hearth.DataDir, Logger: log,
	})
	if err != nil {
		return nil, fmt.Errorf("[network]: %w", err)
	}
	alloc, err := network.NewAllocator(pool, network.AllocatorConfig{})
	if err != nil {
		return nil, fmt.Errorf("network allocator: %w", err)
	}

	d := cfg.Defaults
	return sandbox.New(sandbox.Config{
		DataDir: cfg.Hearth.DataDir,
		Driver:  driver,
		Network: alloc,
		Defaults: sandbox.Defaults{
			VCPUs:     int(d.VCPUs),
			MemoryMiB: int(d.MemoryMiB),
			Kernel:    cfg.KernelPath(),
			Initrd:    cfg.InitramfsPath(),
			RootFS:    cfg.RootFSPath(),
			BootArgs:  d.BootArgs,
			DNS:       cfg.Network.DNS,
		},
		Logger: log,
	})
}

// NewDriver returns the VMM driver of [hearth].driver. For "auto" it
// picks firecracker when its binary is found and KVM works, else qemu,
// and logs why.
func NewDriver(cfg config.Config, log *slog.Logger) (vmm.Driver, error) {
	name := cfg.Hearth.Driver
	if name == "auto" {
		sel := firecracker.SelectDriver(cfg.Firecracker.Binary, nil)
		log.Info("driver selected", "driver", sel.Driver, "reason", sel.Reason)
		name = sel.Driver
	}
	switch name {
	case "qemu":
		return qemu.New(qemu.Config{
			QEMU:   cfg.QEMU.Binary,
			Accel:  qemu.Accel(cfg.QEMU.Accel),
			Logger: log,
		})
	case "firecracker":
		return firecracker.New(firecrackerConfig(cfg.Firecracker), log)
	default:
		return nil, fmt.Errorf("invalid [hearth].driver = %q: want auto, qemu or firecracker", name)
	}
}

func firecrackerConfig(f config.Firecracker) firecracker.Config {
	fc := firecracker.Config{
		Binary:                f.Binary,
		DataDir:               f.DataDir,
		LogLevel:              f.LogLevel,
		NoSeccomp:             f.NoSeccomp,
		SeccompFilter:         f.SeccompFilter,
		HTTPAPIMaxPayloadSize: int(f.HTTPAPIMaxPayloadSize),
		MMDSSizeLimit:         int(f.MMDSSizeLimit),
		SocketTimeout:         time.Duration(f.SocketTimeoutSecs) * time.Second,
	}
	if j := f.Jailer; j != nil {
		// config.Validate accepts only "", "1" and "2".
		cgroupVersion := 0
		switch j.CgroupVersion {
		case "1":
			cgroupVersion = 1
		case "2":
			cgroupVersion = 2
		}
		fc.Jailer = &firecracker.JailerConfig{
			Binary:         j.Binary,
			UID:            uint32(j.UID),
			GID:            uint32(j.GID),
			ChrootBaseDir:  j.ChrootBaseDir,
			NetNS:          j.NetNS,
			NewPIDNS:       j.NewPIDNS,
			CgroupVersion:  cgroupVersion,
			ParentCgroup:   j.ParentCgroup,
			ResourceLimits: j.ResourceLimits,
		}
	}
	return fc
}
