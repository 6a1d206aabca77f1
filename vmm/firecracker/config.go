package firecracker

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/vmm"
)

// Defaults.
const (
	DefaultLogLevel       = "Warning"
	DefaultSocketTimeout  = 5 * time.Second
	DefaultOpenFilesLimit = 2048
	DefaultChrootBaseDir  = "/srv/jailer"
	DefaultBootArgs       = "console=ttyS0 reboot=k panic=1 pci=off"
	DefaultStopTimeout    = 10 * time.Second
)

// GuestCID is the vsock context ID of every guest. With Firecracker's
// hybrid vsock the CID matters only inside one VM's device, so every VM
// can use the same one.
const GuestCID = 3

// driverArgs are the kernel parameters the driver always appends: the
// agent's transport and the modules it loads from the initramfs.
const driverArgs = "hearth.transport=vsock hearth.modules=virtio_mmio,virtio_blk,virtio_net,vsock,vmw_vsock_virtio_transport_common,vmw_vsock_virtio_transport"

// maxAgentPort is the largest agent port; its guest-initiated socket
// path <vsock>_<port> is the longest socket path the driver may need.
const maxAgentPort = agentproto.PortControl

// maxSunPath is the usable length of sun_path in struct sockaddr_un on
// Linux: 108 bytes including the terminating NUL.
const maxSunPath = 107

// File names inside the sandbox directory (and the chroot).
const (
	apiSocketName = "api.sock"
	vsockName     = "v.sock"
	rootDiskName  = "rootfs.ext4"
	logName       = "firecracker.log"
	metricsName   = "firecracker.metrics"
	consoleName   = "console.log"
)

// Config configures the Firecracker driver.
type Config struct {
	// Binary is the firecracker executable. Default "firecracker" from
	// PATH.
	Binary string
	// DataDir is the default snapshot directory for CreateSnapshot. Empty
	// means the sandbox directory.
	DataDir string
	// LogLevel is Firecracker's --level: Error, Warning (default), Info,
	// Debug, Trace or Off.
	LogLevel string
	// NoSeccomp disables Firecracker's seccomp filters (--no-seccomp).
	// Not for production. Mutually exclusive with SeccompFilter.
	NoSeccomp bool
	// SeccompFilter is a custom compiled BPF filter (--seccomp-filter).
	SeccompFilter string
	// HTTPAPIMaxPayloadSize is --http-api-max-payload-size in bytes; 0
	// keeps Firecracker's default of 51200.
	HTTPAPIMaxPayloadSize int
	// MMDSSizeLimit is --mmds-size-limit in bytes; 0 keeps Firecracker's
	// default, which is the payload limit.
	MMDSSizeLimit int
	// SocketTimeout bounds the wait for the API socket after start.
	// Default 5 s.
	SocketTimeout time.Duration
	// APITimeout bounds one ordinary API call. Default api.DefaultTimeout.
	APITimeout time.Duration
	// SnapshotTimeout bounds snapshot create and load. Default
	// api.DefaultSnapshotTimeout.
	SnapshotTimeout time.Duration
	// OpenFilesLimit is RLIMIT_NOFILE for Firecracker, which sizes its fd
	// table from it at start. Default 2048, the jailer's default.
	OpenFilesLimit uint64
	// ExtraArgs are appended to Firecracker's command line (after "--"
	// for the jailer), for flags such as --enable-pci.
	ExtraArgs []string
	// MMDS, when set, adds the metadata service on eth0 (only for
	// sandboxes with a TAP).
	MMDS *MMDSConfig
	// Jailer, when set, starts Firecracker through the jailer.
	Jailer *JailerConfig
}

// MMDSConfig configures the metadata service.
type MMDSConfig struct {
	// Version is "V1" or "V2" (default V2).
	Version string
	// Data returns the initial MMDS contents for a sandbox, a JSON object.
	// Nil leaves the store empty.
	Data func(spec vmm.Spec) any
}

// JailerConfig configures jailer mode.
type JailerConfig struct {
	// Binary is the jailer executable. Default "jailer" from PATH.
	Binary string
	// UID and GID are the unprivileged ids Firecracker runs as.
	UID, GID uint32
	// ChrootBaseDir is --chroot-base-dir; it must exist. Default
	// /srv/jailer.
	ChrootBaseDir string
	// NetNS is a network namespace path to join (--netns).
	NetNS string
	// NewPIDNS runs Firecracker as PID 1 of a new PID namespace
	// (--new-pid-ns).
	NewPIDNS bool
	// Daemonize detaches Firecracker (--daemonize).
	Daemonize bool
	// CgroupVersion is 1 or 2; 0 leaves the jailer's default (1).
	CgroupVersion int
	// ParentCgroup is --parent-cgroup, relative, without '.' or '..'.
	ParentCgroup string
	// Cgroups are --cgroup <file>=<value> arguments.
	Cgroups []string
	// ResourceLimits are --resource-limit arguments (fsize=<bytes>,
	// no-file=<n>). Without a no-file entry the driver adds
	// no-file=<OpenFilesLimit>.
	ResourceLimits []string
}

func (c Config) withDefaults() Config {
	if c.Binary == "" {
		c.Binary = "firecracker"
	}
	if c.LogLevel == "" {
		c.LogLevel = DefaultLogLevel
	}
	if c.SocketTimeout == 0 {
		c.SocketTimeout = DefaultSocketTimeout
	}
	if c.OpenFilesLimit == 0 {
		c.OpenFilesLimit = DefaultOpenFilesLimit
	}
	if c.Jailer != nil {
		j := *c.Jailer
		if j.Binary == "" {
			j.Binary = "jailer"
		}
		if j.ChrootBaseDir == "" {
			j.ChrootBaseDir = DefaultChrootBaseDir
		}
		c.Jailer = &j
	}
	return c
}

func (c Config) validate() error {
	if c.NoSeccomp && c.SeccompFilter != "" {
		return errors.New("invalid firecracker config: no_seccomp and seccomp_filter are mutually exclusive; set one")
	}
	switch strings.ToLower(c.LogLevel) {
	case "error", "warning", "info", "debug", "trace", "off":
	default:
		return fmt.Errorf("invalid firecracker log level %q: want Error, Warning, Info, Debug, Trace or Off", c.LogLevel)
	}
	if c.HTTPAPIMaxPayloadSize < 0 || c.MMDSSizeLimit < 0 {
		return errors.New("invalid firecracker config: payload and MMDS size limits must not be negative")
	}
	if j := c.Jailer; j != nil {
		if j.CgroupVersion != 0 && j.CgroupVersion != 1 && j.CgroupVersion != 2 {
			return fmt.Errorf("invalid jailer cgroup version %d: want 1 or 2", j.CgroupVersion)
		}
		if filepath.IsAbs(j.ParentCgroup) || strings.Contains("/"+j.ParentCgroup+"/", "/../") ||
			strings.Contains("/"+j.ParentCgroup+"/", "/./") {
			return fmt.Errorf("invalid jailer parent cgroup %q: must be relative without '.' or '..'", j.ParentCgroup)
		}
	}
	return nil
}

// sandboxIDPattern matches the ids both firecracker --id and the jailer accept.
var sandboxIDPattern = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// ValidateID checks that id is usable as a Firecracker instance and jail
// id: 1 to 64 characters, letters, digits or '-'.
func ValidateID(id string) error {
	if !sandboxIDPattern.MatchString(id) {
		return fmt.Errorf("invalid sandbox id %q for firecracker: use 1 to 64 letters, digits or '-'", id)
	}
	return nil
}

// checkSocketPaths fails when a host socket path does not fit in
// sun_path, naming the limit and the path.
func checkSocketPaths(paths ...string) error {
	for _, p := range paths {
		if len(p) > maxSunPath {
			return fmt.Errorf("unix socket path %q is %d bytes, over the %d-byte sun_path limit: use a shorter sandbox directory, chroot base directory or sandbox id",
				p, len(p), maxSunPath)
		}
	}
	return nil
}

// socketPaths returns the host socket paths a sandbox needs: the API
// socket, the vsock socket and the vsock socket of the largest agent port.
func socketPaths(apiSock, vsock string) []string {
	return []string{apiSock, vsock, fmt.Sprintf("%s_%d", vsock, maxAgentPort)}
}

// BootArgs returns the kernel command line for spec: the caller's
// arguments (or DefaultBootArgs), then spec.AgentArgs, then the driver's
// own parameters.
func BootArgs(spec vmm.Spec) string {
	base := strings.TrimSpace(spec.BootArgs)
	if base == "" {
		base = DefaultBootArgs
	}
	parts := []string{base}
	parts = append(parts, spec.AgentArgs...)
	parts = append(parts, driverArgs)
	return strings.Join(parts, " ")
}

func checkSpec(spec vmm.Spec) error {
	if err := ValidateID(spec.ID); err != nil {
		return err
	}
	switch {
	case spec.Dir == "":
		return fmt.Errorf("sandbox %s: spec has no directory", spec.ID)
	case spec.VCPUs < 1 || spec.VCPUs > 32:
		return fmt.Errorf("sandbox %s: %d vCPUs, firecracker accepts 1 to 32", spec.ID, spec.VCPUs)
	case spec.MemoryMiB < 1:
		return fmt.Errorf("sandbox %s: memory %d MiB, want at least 1", spec.ID, spec.MemoryMiB)
	case spec.Kernel == "":
		return fmt.Errorf("sandbox %s: spec has no kernel", spec.ID)
	case spec.RootImage == "":
		return fmt.Errorf("sandbox %s: spec has no root image", spec.ID)
	case len(spec.TAP) > 15:
		return fmt.Errorf("sandbox %s: TAP name %q is over 15 bytes", spec.ID, spec.TAP)
	}
	return nil
}
