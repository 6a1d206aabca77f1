// Package qemu is the vmm.Driver for QEMU's `microvm` machine type. It
// boots each sandbox in its own qemu-system-x86_64 process with a PVH
// vmlinux, an initramfs holding hearth-agent, a qcow2 overlay on the
// shared root image, and an optional TAP network device. The agent is
// reached through one multiplexed virtio-serial port (agentlink.SerialMux),
// and QEMU itself through QMP (subpackage qmp).
//
// It runs guests under KVM or under TCG software emulation. With accel
// "auto" it uses KVM only after a probe boot under KVM reached the guest's
// /init within a deadline, because a KVM that lacks features may start and
// then run a guest extremely slowly instead of failing.
//
// # Guest memory
//
// A booted guest's RAM is an anonymous memfd that the driver creates and
// QEMU maps shared (memory-backend-file with share=on, named
// /proc/self/fd/3 in QEMU). It has no path, so nothing is left in
// /dev/shm or the sandbox directory when the machine ends: its pages are
// freed once QEMU has exited and Kill closed the driver's descriptor.
//
// # Snapshots
//
// Machine.Checkpoint stops the vCPUs, writes QEMU's migration stream to a
// file through an fd: URI (the descriptor is passed with getfd over
// SCM_RIGHTS), copies the guest RAM and the root disk overlay, and
// resumes the machine, also after a failure. With the x-ignore-shared
// capability the stream leaves out the shared RAM, so it holds only the
// device state (about 63 KB for a 256 MiB guest). The RAM is copied from
// the memfd into a sparse memory file, and the overlay is copied with
// FICLONE where the filesystem can share blocks, else with
// copy_file_range over its data ranges, keeping holes.
//
// Driver.Restore starts QEMU with the same device set under -incoming
// defer, loads the stream with migrate-incoming and runs cont. The new
// machine maps the snapshot's memory file privately (share=off), so its
// writes go to copy-on-write pages: one snapshot restores any number of
// times, clones share the snapshot's unchanged pages in the page cache,
// and the memory file must stay unchanged while any clone runs. Its disk
// is a new qcow2 overlay on the snapshot's disk copy, which stays
// read-only.
//
// A restored machine's private mapping is not skipped by x-ignore-shared,
// so its own checkpoint puts the RAM into the stream (about the size of
// the guest's used memory) and has no memory file. It takes several
// times longer than a checkpoint of a booted machine, and a restore from
// it loads the RAM into a new memfd, after which that machine checkpoints
// the fast way again. The disk copy of a restored machine is rebased onto
// the shared raw image after the machine resumed, so every snapshot
// directory depends only on itself and the raw image.
//
// Measured by TestRealSnapshot on a 2-core Debian 12 VM with QEMU 7.2
// under TCG and a 256 MiB guest using about 68 MiB, with the snapshot on
// ext4: a checkpoint of a booted machine paused it for 44 to 373 ms
// (5 ms for the stream, 38 to 370 ms for the memory copy, which is
// bound by the page cache's write rate of that filesystem, and 1 ms for
// the disk). Restore returned after 41 to 150 ms, and the agent answered
// 150 to 280 ms after Restore began. A checkpoint of a restored machine
// paused it for 0.2 to 0.7 s, and a restore from that snapshot took 0.3
// to 0.9 s.
//
// The package does not create TAP devices, pick addresses or remove the
// sandbox directory; the manager does.
package qemu

import (
	"fmt"
	"log/slog"
	"time"
)

// Accel selects the QEMU accelerator.
type Accel string

// Accelerators.
const (
	// AccelAuto uses KVM when a cached probe boot proved it runs a guest,
	// and TCG otherwise.
	AccelAuto Accel = "auto"
	// AccelKVM always uses KVM, without a probe.
	AccelKVM Accel = "kvm"
	// AccelTCG always uses TCG software emulation.
	AccelTCG Accel = "tcg"
)

// DefaultBootArgs are the kernel arguments used when vmm.Spec.BootArgs is
// empty. panic=-1 turns a guest panic into an immediate reboot, which
// -no-reboot turns into a QEMU exit. cryptomgr.notests skips the crypto
// self-tests, which cost about 0.7 s of guest time under TCG. reboot=k is
// not needed because QEMU never performs the reboot.
const DefaultBootArgs = "console=ttyS0 panic=-1 quiet cryptomgr.notests"

// GuestModules are the kernel modules the agent loads from the initramfs
// for the devices this driver attaches: the virtio-mmio transport, the
// root disk, the network device and the virtio-serial agent port.
const GuestModules = "virtio_mmio,virtio_blk,virtio_net,virtio_console"

// Defaults for Config fields left empty.
const (
	DefaultQEMU         = "qemu-system-x86_64"
	DefaultQEMUImg      = "qemu-img"
	DefaultAgentPort    = "agent0"
	DefaultProbeCache   = "/var/lib/hearth/kvm-probe.json"
	DefaultProbeTimeout = 15 * time.Second
)

// Config configures the driver. The zero value is valid.
type Config struct {
	// QEMU is the qemu-system-x86_64 binary, a path or a name looked up
	// in PATH. Default DefaultQEMU.
	QEMU string
	// QEMUImg is the qemu-img binary that creates disk overlays. Default
	// DefaultQEMUImg.
	QEMUImg string
	// Accel is "auto" (default), "kvm" or "tcg".
	Accel Accel
	// ProbeCache is the file that stores the KVM probe result for accel
	// "auto". Default DefaultProbeCache.
	ProbeCache string
	// ProbeTimeout bounds the KVM probe boot. Default DefaultProbeTimeout.
	ProbeTimeout time.Duration
	// AgentPort is the name of the virtio-serial port the agent serves
	// on. Default DefaultAgentPort.
	AgentPort string
	// TSCKHz is the host TSC frequency in kHz passed to TCG guests as
	// tsc_early_khz. 0 (default) reads it from the host once.
	TSCKHz int
	// ExtraArgs are appended to every QEMU command line.
	ExtraArgs []string
	// Logger receives the driver's log records. Default slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() (Config, error) {
	if c.QEMU == "" {
		c.QEMU = DefaultQEMU
	}
	if c.QEMUImg == "" {
		c.QEMUImg = DefaultQEMUImg
	}
	if c.Accel == "" {
		c.Accel = AccelAuto
	}
	if c.ProbeCache == "" {
		c.ProbeCache = DefaultProbeCache
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = DefaultProbeTimeout
	}
	if c.AgentPort == "" {
		c.AgentPort = DefaultAgentPort
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}

	switch c.Accel {
	case AccelAuto, AccelKVM, AccelTCG:
	default:
		return c, fmt.Errorf("invalid qemu accel %q: want auto, kvm or tcg", c.Accel)
	}
	if c.ProbeTimeout < 0 {
		return c, fmt.Errorf("invalid kvm probe timeout %v: must be positive", c.ProbeTimeout)
	}
	if c.TSCKHz < 0 {
		return c, fmt.Errorf("invalid tsc frequency %d kHz: must be positive", c.TSCKHz)
	}
	return c, nil
}
