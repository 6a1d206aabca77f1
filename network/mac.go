package network

import (
	"crypto/sha256"
	"net"
)

// MACAddress returns the guest MAC address for a sandbox: the first six
// bytes of the SHA-256 of the sandbox ID, with the locally administered bit
// (0x02) set and the multicast bit (0x01) cleared in the first byte. The
// same ID always gets the same address, so a restored sandbox keeps its
// MAC.
func MACAddress(sandboxID string) net.HardwareAddr {
	sum := sha256.Sum256([]byte(sandboxID))
	mac := net.HardwareAddr(sum[:6:6])
	mac[0] = (mac[0] | 0x02) &^ 0x01
	return mac
}
