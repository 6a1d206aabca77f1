// Package guestinit performs hearth-agent's duties as PID 1 of a guest:
// mounting the kernel filesystems, loading modules, switching to the root
// drive, configuring the network, and shutting the guest down. It runs
// only inside a VM; the agent calls it only when it is PID 1 and the
// kernel command line carries hearth_init=1. Serving the agent ports and
// reaping orphaned processes belong to the agent, not to this package.
package guestinit

import (
	"errors"
	"fmt"
	"net/netip"
)

// Transports named by hearth.transport.
const (
	// TransportSerial is a multiplexed virtio-serial port (QEMU).
	TransportSerial = "serial"
	// TransportVsock is AF_VSOCK listeners (Firecracker).
	TransportVsock = "vsock"
)

// initEnv is the environment variable the kernel passes to PID 1 for the
// hearth_init=1 command line parameter. A kernel parameter without a dot
// and with a value that the kernel does not know becomes an environment
// variable of init.
const initEnv = "hearth_init"

// Config is the agent's configuration from the guest's kernel command
// line.
type Config struct {
	// Transport is "serial" or "vsock" (hearth.transport). Default:
	// "vsock".
	Transport string
	// SerialPort is the virtio-serial port device path for the serial
	// transport, for example /dev/virtio-ports/agent0. Init sets it once
	// the port exists; ParseCmdline leaves it empty.
	SerialPort string
	// PortName is the virtio-serial port name (hearth.port), for example
	// agent0. Required with the serial transport.
	PortName string
	// Hostname is the guest's hostname (hearth.hostname). Empty: the
	// kernel's default is kept.
	Hostname string
	// Root is the root drive's device path (hearth.root), for example
	// /dev/vda. Empty: the guest stays in the initramfs.
	Root string
	// RootFSType is the root drive's filesystem type
	// (hearth.rootfstype). Default: "ext4".
	RootFSType string
	// Modules are the kernel modules to load from the initramfs
	// (hearth.modules), in the order given. Dependencies come from
	// modules.dep and are loaded first.
	Modules []string
	// Network is the interface configuration from ip=. Nil: no
	// interface is configured apart from the loopback.
	Network *NetConfig
	// DNS are the name servers for /etc/resolv.conf (hearth.dns).
	// Empty: resolv.conf is left alone.
	DNS []netip.Addr
}

// NetConfig is the static IPv4 configuration of one interface.
type NetConfig struct {
	// Interface is the interface name. Default: "eth0".
	Interface string
	// Address is the guest's address with the prefix length of the
	// netmask, for example 172.20.0.2/16.
	Address netip.Prefix
	// Gateway is the default route's next hop. The zero Addr means no
	// default route.
	Gateway netip.Addr
}

// checkGuestInit returns an error unless pid and the hearth_init
// variable's value mark the process as the init of a hearth guest. It
// keeps the mounts, module loads and reboot away from a host.
func checkGuestInit(pid int, initVar string) error {
	if pid != 1 {
		return fmt.Errorf("guest init duties need PID 1, this process is PID %d: "+
			"run hearth-agent without init duties outside a guest", pid)
	}
	if initVar != "1" {
		return errors.New("guest init duties need hearth_init=1 on the kernel command line, " +
			"and it is missing: add hearth_init=1 to the guest's kernel command line")
	}
	return nil
}
