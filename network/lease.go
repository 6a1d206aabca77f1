package network

import (
	"fmt"
	"net"
)

// Lease is one sandbox's claim on a guest address and its TAP device.
type Lease struct {
	// SandboxID is the sandbox the lease belongs to.
	SandboxID string
	// IP is the guest's address.
	IP net.IP
	// Gateway is the host's address on the TAP and the guest's default
	// route.
	Gateway net.IP
	// Netmask and Prefix describe the pool network the lease came from.
	Netmask net.IPMask
	Prefix  int
	// TAP is the host TAP device's name.
	TAP string
	// MAC is the guest's MAC address (see MACAddress).
	MAC net.HardwareAddr
	// Owner is the process whose exit ends the lease.
	Owner Owner
	// NetNSPath is the network namespace the TAP lives in. Empty means the
	// namespace of the process that created it.
	NetNSPath string
}

// KernelArg returns the guest kernel argument that carries the address, in
// the kernel's ip= syntax: "ip=<guest>::<gateway>:<netmask>::eth0:off",
// for example "ip=172.20.0.2::172.20.0.1:255.255.0.0::eth0:off".
func (l Lease) KernelArg() string {
	return fmt.Sprintf("ip=%s::%s:%s::eth0:off", l.IP, l.Gateway, net.IP(l.Netmask))
}

// Owner identifies the process that holds a lease. A lease whose owner has
// exited is stale: the next allocation reclaims it and deletes its TAP.
//
// The owner should be the process whose exit means the TAP is no longer in
// use. That is the acquiring process for a one-shot run. A daemon whose VMs
// outlive it should hand each lease to the VMM process once it runs, or
// take the leases over with Pool.SetOwner when it restarts.
//
// Owners are compared by PID and start time so that a reused PID does not
// keep a lease alive. PIDs are those of the host's PID namespace as seen
// through /proc, so every process sharing a data directory must see the
// same /proc.
type Owner struct {
	// PID is the owner's process ID.
	PID int
	// StartTime is the owner's start time in clock ticks after boot, field
	// 22 of /proc/<pid>/stat.
	StartTime uint64
}

// CurrentOwner returns the Owner for the calling process.
func CurrentOwner() (Owner, error) {
	return ProcessOwner(selfPID())
}
