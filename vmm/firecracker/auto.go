package firecracker

import (
	"fmt"
	"os/exec"
)

// Selection is the outcome of SelectDriver.
type Selection struct {
	// Driver is "firecracker" or "qemu".
	Driver string
	// Reason explains the choice, for logs and for a person choosing a
	// setting.
	Reason string
}

// SelectDriver implements "driver = auto": firecracker when its binary is
// found and KVM can run a standard guest, else qemu. probeKVM reports
// whether KVM works; nil uses ProbeKVM.
func SelectDriver(binary string, probeKVM func() error) Selection {
	if binary == "" {
		binary = "firecracker"
	}
	if probeKVM == nil {
		probeKVM = ProbeKVM
	}
	path, err := exec.LookPath(binary)
	if err != nil {
		return Selection{Driver: "qemu", Reason: fmt.Sprintf("firecracker binary %q not found; using qemu", binary)}
	}
	if err := probeKVM(); err != nil {
		return Selection{Driver: "qemu", Reason: fmt.Sprintf("no usable KVM for firecracker: %v; using qemu", err)}
	}
	return Selection{Driver: "firecracker", Reason: fmt.Sprintf("firecracker at %s and KVM runs standard guests", path)}
}
