//go:build !linux

package network

import (
	"fmt"
	"net"
)

// CreateTAP reports ErrUnavailable: TAP devices exist only on Linux.
func CreateTAP(name string, gateway, guest net.IP, opts TAPOptions) error {
	return fmt.Errorf("create tap %q: %w: TAP devices need Linux", name, ErrUnavailable)
}

// DeleteTAP reports ErrUnavailable: TAP devices exist only on Linux.
func DeleteTAP(name string, opts TAPOptions) error {
	return fmt.Errorf("delete tap %q: %w: TAP devices need Linux", name, ErrUnavailable)
}

// deleteTAPForReclaim does nothing: no TAP can exist on this system.
func deleteTAPForReclaim(name, netnsPath string) error {
	return nil
}

func deleteDetachedTAP(name string, opts TAPOptions) (bool, error) {
	return false, nil
}
