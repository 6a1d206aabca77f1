package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hearthvm/hearth/vmm"
)

// maxSocketPath is the longest Unix socket path Linux accepts: sun_path
// has 108 bytes, and QEMU needs the last one for the terminating NUL.
const maxSocketPath = 107

// maxKernelCmdline is the longest kernel command line an x86 kernel keeps.
// COMMAND_LINE_SIZE is 2048 there, including the terminating NUL, and the
// kernel silently truncates a longer line.
const maxKernelCmdline = 2047

// Files the driver creates in vmm.Spec.Dir.
const (
	consoleFile = "console.log"
	qemuLogFile = "qemu.log"
	qmpSocket   = "qmp.sock"
	agentSocket = "agent.sock"
	overlayFile = "root.qcow2"
)

// machinePaths are the absolute paths of one machine's files.
type machinePaths struct {
	Console string
	QEMULog string
	QMP     string
	Agent   string
	Overlay string
}

func pathsIn(dir string) machinePaths {
	return machinePaths{
		Console: filepath.Join(dir, consoleFile),
		QEMULog: filepath.Join(dir, qemuLogFile),
		QMP:     filepath.Join(dir, qmpSocket),
		Agent:   filepath.Join(dir, agentSocket),
		Overlay: filepath.Join(dir, overlayFile),
	}
}

// launch is everything a QEMU command line is built from.
type launch struct {
	Spec      vmm.Spec
	Accel     Accel // AccelKVM or AccelTCG
	TSCKHz    int   // used under TCG only
	AgentPort string
	// Disk is the writable overlay attached as the root drive; empty
	// attaches no drive.
	Disk      string
	Paths     machinePaths
	ExtraArgs []string

	// Memory is the guest RAM's backing file; the zero value gives the
	// guest anonymous RAM.
	Memory memoryBackend
	// MemFile, when set, is passed to QEMU as descriptor 3, so that
	// Memory.Path can name it as /proc/self/fd/3. start takes ownership.
	MemFile *os.File
	// Incoming starts QEMU waiting for a migration stream
	// (-incoming defer) instead of booting the guest.
	Incoming bool
	// NetNoBackend attaches the network device without a TAP, for a
	// restored machine whose snapshot has one but whose spec has none.
	NetNoBackend bool
}

// memoryBackend describes a memory-backend-file object.
type memoryBackend struct {
	// Path is the file QEMU maps; empty means anonymous RAM.
	Path string
	// Shared maps the file MAP_SHARED (share=on), so the file is the
	// guest's RAM. Otherwise QEMU maps it MAP_PRIVATE (share=off): the
	// guest starts from the file's contents, its writes go to private
	// copy-on-write pages, and the file is never written.
	Shared bool
}

// memFilePath is how QEMU names launch.MemFile, which it inherits as
// descriptor 3 (the first of exec.Cmd.ExtraFiles). Opening
// /proc/self/fd/3 of a memfd opens the same memfd again.
const memFilePath = "/proc/self/fd/3"

// checkSocketPath rejects a socket path the kernel cannot bind, before
// QEMU is started and fails with a less clear message.
func checkSocketPath(path string) error {
	if len(path) > maxSocketPath {
		return fmt.Errorf("unix socket path %s is %d bytes, longer than the limit of %d: use a shorter sandbox directory",
			path, len(path), maxSocketPath)
	}
	return nil
}

// kernelCmdline returns the guest kernel command line. The caller's boot
// arguments replace only DefaultBootArgs; the agent arguments, the agent
// transport and, under TCG, tsc_early_khz are always appended.
//
// tsc_early_khz is required under TCG: without it the kernel calibrates
// the TSC against the PIT, which is timing-sensitive under emulation, and
// microvm has no HPET or ACPI PM timer to fall back on. About half of the
// boots then hang. The TCG guest's TSC runs at the host TSC rate.
func kernelCmdline(l launch) (string, error) {
	args := l.Spec.BootArgs
	if strings.TrimSpace(args) == "" {
		args = DefaultBootArgs
	}
	parts := []string{strings.TrimSpace(args)}
	for _, a := range l.Spec.AgentArgs {
		if a != "" {
			parts = append(parts, a)
		}
	}
	parts = append(parts,
		"hearth.transport=serial",
		"hearth.port="+l.AgentPort,
		"hearth.modules="+GuestModules,
	)
	if l.Accel == AccelTCG {
		if l.TSCKHz <= 0 {
			return "", fmt.Errorf("tsc_early_khz is required under tcg, but the host tsc frequency is unknown")
		}
		parts = append(parts, "tsc_early_khz="+strconv.Itoa(l.TSCKHz))
	}

	line := strings.Join(parts, " ")
	if len(line) > maxKernelCmdline {
		return "", fmt.Errorf("kernel command line is %d bytes, longer than the x86 limit of %d: shorten the boot or agent arguments",
			len(line), maxKernelCmdline)
	}
	return line, nil
}

// buildArgs returns QEMU's arguments, without the binary. The device order
// is fixed (agent port, root drive, network) so that a snapshot taken from
// one machine restores into a machine built from the same spec.
func buildArgs(l launch) ([]string, error) {
	for _, p := range []string{l.Paths.QMP, l.Paths.Agent} {
		if err := checkSocketPath(p); err != nil {
			return nil, err
		}
	}
	cmdline, err := kernelCmdline(l)
	if err != nil {
		return nil, err
	}
	if l.Accel != AccelKVM && l.Accel != AccelTCG {
		return nil, fmt.Errorf("invalid accel %q for a launch: want kvm or tcg", l.Accel)
	}

	s := l.Spec
	args := []string{
		"-M", "microvm",
		"-accel", string(l.Accel),
		"-nodefaults",
		"-no-reboot",
		"-display", "none",
	}
	if s.ID != "" {
		args = append(args, "-name", optValue(s.ID))
	}
	args = append(args,
		"-smp", strconv.Itoa(s.VCPUs),
		"-m", strconv.Itoa(s.MemoryMiB),
	)
	if l.Memory.Path != "" {
		share := "off"
		if l.Memory.Shared {
			share = "on"
		}
		args = append(args,
			"-object", fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=%s",
				s.MemoryMiB, optValue(l.Memory.Path), share),
			"-machine", "memory-backend=mem",
		)
	}
	args = append(args,
		"-kernel", s.Kernel,
		"-initrd", s.Initrd,
		"-append", cmdline,
		"-chardev", "file,id=con,path="+optValue(l.Paths.Console),
		"-serial", "chardev:con",
		"-chardev", "socket,id=qmp,path="+optValue(l.Paths.QMP)+",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path="+optValue(l.Paths.Agent)+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name="+optValue(l.AgentPort),
	)
	if l.Disk != "" {
		args = append(args,
			"-drive", "file="+optValue(l.Disk)+",if=none,id=root,format=qcow2",
			"-device", "virtio-blk-device,drive=root",
		)
	}
	switch {
	case s.TAP != "":
		if len(s.MAC) == 0 {
			return nil, fmt.Errorf("tap %q has no guest mac address: set vmm.Spec.MAC", s.TAP)
		}
		args = append(args,
			"-netdev", "tap,id=net0,ifname="+optValue(s.TAP)+",script=no,downscript=no",
			"-device", "virtio-net-device,netdev=net0,mac="+s.MAC.String(),
		)
	case l.NetNoBackend:
		if len(s.MAC) == 0 {
			return nil, fmt.Errorf("network device has no guest mac address: set vmm.Spec.MAC")
		}
		args = append(args, "-device", "virtio-net-device,mac="+s.MAC.String())
	}
	if l.Incoming {
		args = append(args, "-incoming", "defer")
	}
	return append(args, l.ExtraArgs...), nil
}

// optValue escapes a value for QEMU's key=value option syntax, in which a
// comma separates options and a doubled comma stands for one comma.
func optValue(v string) string {
	return strings.ReplaceAll(v, ",", ",,")
}
