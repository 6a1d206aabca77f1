// Package guestinit performs hearth-agent's duties as PID 1 of a guest:
// mounting the kernel filesystems, loading modules, switching to the root
// drive, configuring the network, and shutting the guest down. It runs
// only inside a VM; the agent calls it only when it is PID 1 and the
// kernel command line carries hearth_init=1.
package guestinit

// Config is what the guest's kernel command line told the agent.
type Config struct {
	// Transport is "serial" or "vsock".
	Transport string
	// SerialPort is the virtio-serial port device path for the serial
	// transport, for example /dev/virtio-ports/agent0.
	SerialPort string
}
