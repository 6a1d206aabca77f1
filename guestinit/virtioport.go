package guestinit

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// errPortNotFound means no virtio-serial port carries the requested name
// yet. Ports are named by a control message after the device probe, so
// the caller polls.
var errPortNotFound = errors.New("virtio-serial port not found")

// findVirtioPort returns the device name (for example vport0p1) of the
// virtio-serial port called name, searching classDir, which is
// /sys/class/virtio-ports in a guest.
func findVirtioPort(classDir, name string) (string, error) {
	entries, err := os.ReadDir(classDir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", errPortNotFound
	}
	if err != nil {
		return "", fmt.Errorf("list %s: %w", classDir, err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(classDir, e.Name(), "name"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("read name of virtio port %s: %w", e.Name(), err)
		}
		if strings.TrimSpace(string(data)) == name {
			return e.Name(), nil
		}
	}
	return "", errPortNotFound
}
