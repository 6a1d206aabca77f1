// Package vmm defines the interface between the sandbox manager and a
// virtual machine monitor. A Driver boots one Machine per sandbox from a
// Spec; the Machine is then controlled only through this interface, so the
// manager never knows whether QEMU or Firecracker runs underneath.
//
// Drivers live in subpackages (vmm/qemu, vmm/firecracker). This package
// owns no process and opens no socket.
package vmm

import (
	"context"
	"errors"
	"net"
)

// Spec describes one machine to boot. The manager fills it in; drivers
// must not keep references to its slices or maps after Boot returns.
type Spec struct {
	// ID is the sandbox ID. Drivers use it for process names and logs.
	ID string
	// Dir is the sandbox's private state directory. It exists before Boot
	// and is removed by the manager after the machine has exited. Drivers
	// put their sockets, console log and writable disk here.
	Dir string

	// VCPUs is the number of virtual CPUs (at least 1).
	VCPUs int
	// MemoryMiB is the guest memory in MiB.
	MemoryMiB int

	// Kernel is the path of the guest kernel (an uncompressed vmlinux
	// ELF, or a bzImage where the VMM supports it).
	Kernel string
	// Initrd is the path of the initramfs that holds hearth-agent.
	Initrd string
	// RootImage is the shared root filesystem image (raw ext4). A driver
	// never attaches it writable; it gives the guest a private writable
	// child of it (an overlay or a copy) inside Dir.
	RootImage string

	// BootArgs are the caller's kernel arguments. Empty means the
	// driver's defaults (console, reboot and panic behaviour). A caller's
	// arguments replace only those defaults: the driver always appends
	// AgentArgs and what its VMM needs (the agent transport, modules,
	// tsc_early_khz under emulation).
	BootArgs string
	// AgentArgs are hearth's own kernel parameters, built by the manager:
	// hearth_init=1, the address (ip=...), hostname, DNS and root device.
	AgentArgs []string

	// TAP is the host TAP device for eth0, already created and configured.
	// Empty means no network device.
	TAP string
	// MAC is the guest's MAC address for eth0.
	MAC net.HardwareAddr
}

// Driver boots machines of one VMM type. Implementations are safe for
// concurrent use.
type Driver interface {
	// Name returns the driver name used in configuration ("qemu",
	// "firecracker").
	Name() string
	// Boot starts a machine and returns once the VMM runs; the guest may
	// still be booting. On error nothing of the machine is left running.
	// The machine's lifetime is not bound to ctx, which only bounds the
	// start-up itself.
	Boot(ctx context.Context, spec Spec) (Machine, error)
}

// Machine is one running VM.
type Machine interface {
	// DialAgent opens a stream to the agent's port. It retries until the
	// agent listens or ctx ends.
	DialAgent(ctx context.Context, port uint32) (net.Conn, error)
	// Wait blocks until the VMM process has exited and been reaped, or ctx
	// ends. It returns nil for a clean guest-initiated exit.
	Wait(ctx context.Context) error
	// Done is closed once the VMM process has exited and been reaped.
	Done() <-chan struct{}
	// Kill ends the VMM process at once, reaps it, and releases the
	// driver's resources (sockets, files it created). It is idempotent
	// and safe to call concurrently with Wait.
	Kill() error
	// ConsolePath returns the file that captures the guest's serial
	// console.
	ConsolePath() string
	// PID returns the VMM's process ID on the host.
	PID() int
}

// ErrUnavailable reports that a driver cannot run on this host (binary
// missing, no usable KVM). Errors wrapping it say what to install or fix.
var ErrUnavailable = errors.New("vmm unavailable")

// TAPPlacement says where a driver's VMM expects its TAP device: in
// which network namespace, and owned by which user when the VMM does not
// run as root (a jailed Firecracker).
type TAPPlacement struct {
	// NetNSPath is the network namespace, as a path such as
	// /var/run/netns/NAME. Empty means the manager's own namespace.
	NetNSPath string
	// Owner, when set, is the uid and gid that must be able to open the
	// TAP.
	Owner *TAPOwner
}

// TAPOwner is a uid and gid.
type TAPOwner struct {
	UID, GID uint32
}

// TAPPlacer is implemented by drivers whose TAP devices must be created
// somewhere other than the manager's namespace, or for another user.
type TAPPlacer interface {
	TAPPlacement() TAPPlacement
}
