// Package config loads and validates the TOML configuration of the hearth
// daemon (`hearth serve`). It only reads and checks the file: building the
// sandbox manager, the driver and the listeners from it is the job of
// package daemon.
//
// The sections [firecracker], [firecracker.jailer], [network], [defaults]
// and [grpc] accept the keys of the configuration file of arcbox-vm, the
// sandbox manager whose sandbox.v1 API hearth serves, so one file can
// serve both. The sections [hearth], [qemu] and [limits] and the [grpc]
// keys socket_mode, socket_group, tls_cert, tls_key and token_file are
// hearth's own. hearth.example.toml in the repository lists every key
// with its default.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
)

// DefaultPath is the configuration file `hearth serve` reads when no
// --config is given. A missing file at this path means all defaults.
const DefaultPath = "/etc/hearth/hearth.toml"

// Config is the daemon's configuration. The zero value is not valid: start
// from Default or Load.
type Config struct {
	Hearth      Hearth      `toml:"hearth"`
	Firecracker Firecracker `toml:"firecracker"`
	QEMU        QEMU        `toml:"qemu"`
	Network     Network     `toml:"network"`
	Defaults    Defaults    `toml:"defaults"`
	GRPC        GRPC        `toml:"grpc"`
	Limits      Limits      `toml:"limits"`
}

// Hearth is the [hearth] section: the daemon itself.
type Hearth struct {
	// Driver is the VMM driver: "auto" (default), "qemu" or
	// "firecracker". auto picks firecracker when its binary is found and
	// KVM works, and qemu otherwise.
	Driver string `toml:"driver"`
	// DataDir holds sandbox state, network leases and the KVM probe
	// cache. Default /var/lib/hearth.
	DataDir string `toml:"data_dir"`
	// AssetsDir holds vmlinux, initramfs.cpio and rootfs.ext4 as built by
	// scripts/build-assets. Empty (default) means <data_dir>/assets.
	AssetsDir string `toml:"assets_dir"`
	// Initramfs is the initramfs that holds hearth-agent. Empty (default)
	// means <assets_dir>/initramfs.cpio.
	Initramfs string `toml:"initramfs"`
	// LogLevel is the daemon's log level: debug, info (default), warn or
	// error.
	LogLevel string `toml:"log_level"`
}

// Firecracker is the [firecracker] section, used by the firecracker
// driver.
type Firecracker struct {
	// Binary is the firecracker executable, a path or a name looked up
	// in PATH. Default "firecracker".
	Binary string `toml:"binary"`
	// DataDir is the directory for snapshots. Empty (default) means the
	// sandbox's own directory.
	DataDir string `toml:"data_dir"`
	// LogLevel is Firecracker's --level: Error, Warning (default), Info,
	// Debug, Trace or Off.
	LogLevel string `toml:"log_level"`
	// NoSeccomp disables Firecracker's seccomp filters. Testing only.
	NoSeccomp bool `toml:"no_seccomp"`
	// SeccompFilter is a compiled BPF seccomp filter file. Empty
	// (default) keeps Firecracker's built-in filters.
	SeccompFilter string `toml:"seccomp_filter"`
	// HTTPAPIMaxPayloadSize is the largest API request body in bytes; 0
	// (default) keeps Firecracker's own limit of 51200.
	HTTPAPIMaxPayloadSize int64 `toml:"http_api_max_payload_size"`
	// MMDSSizeLimit is the metadata store limit in bytes; 0 (default)
	// keeps Firecracker's default.
	MMDSSizeLimit int64 `toml:"mmds_size_limit"`
	// SocketTimeoutSecs bounds the wait for Firecracker's API socket, in
	// seconds, 1 to 300. Default 5.
	SocketTimeoutSecs int64 `toml:"socket_timeout_secs"`
	// Jailer, when the [firecracker.jailer] section is present, starts
	// Firecracker through the jailer. Nil (default) runs it directly.
	Jailer *Jailer `toml:"jailer"`
}

// Jailer is the [firecracker.jailer] section.
type Jailer struct {
	// Binary is the jailer executable. Default "jailer".
	Binary string `toml:"binary"`
	// UID and GID are the unprivileged ids Firecracker runs as, 0 to
	// 4294967294. Default 0, which gives no privilege separation.
	UID int64 `toml:"uid"`
	GID int64 `toml:"gid"`
	// ChrootBaseDir is the directory the jails are built in, which must
	// exist. Default /srv/jailer.
	ChrootBaseDir string `toml:"chroot_base_dir"`
	// NetNS is a network namespace path to join. Default none.
	NetNS string `toml:"netns"`
	// NewPIDNS runs Firecracker in a new PID namespace. Default false.
	NewPIDNS bool `toml:"new_pid_ns"`
	// CgroupVersion is "1" or "2"; empty (default) keeps the jailer's
	// default of 1.
	CgroupVersion string `toml:"cgroup_version"`
	// ParentCgroup is a relative cgroup path without "." or "..".
	ParentCgroup string `toml:"parent_cgroup"`
	// ResourceLimits are rlimits such as "fsize=2048" or "no-file=1024".
	ResourceLimits []string `toml:"resource_limits"`
}

// QEMU is the [qemu] section, used by the qemu driver.
type QEMU struct {
	// Binary is the qemu-system-x86_64 executable. Default
	// "qemu-system-x86_64".
	Binary string `toml:"binary"`
	// Accel is "auto" (default: KVM once a probe boot showed it runs a
	// guest, else TCG), "kvm" or "tcg".
	Accel string `toml:"accel"`
}

// Network is the [network] section: the address pool of the sandboxes'
// TAP devices.
type Network struct {
	// CIDR is the IPv4 network guest addresses come from, prefix length
	// 1 to 30. Default 172.20.0.0/16.
	CIDR string `toml:"cidr"`
	// Gateway is the host's address on every TAP. Empty (default) means
	// the first host address of CIDR.
	Gateway string `toml:"gateway"`
	// DNS are the name servers written to each guest's /etc/resolv.conf,
	// IPv4 or IPv6 addresses. Empty (default) leaves the image's file.
	DNS []string `toml:"dns"`
	// Bridge is accepted for compatibility with arcbox-vm files and
	// otherwise unused: hearth gives each sandbox a point-to-point TAP
	// and uses no bridge.
	Bridge string `toml:"bridge"`
}

// Defaults is the [defaults] section: values for the fields a create
// request leaves empty.
type Defaults struct {
	// VCPUs is the number of virtual CPUs, 1 to 32. Default 1.
	VCPUs int64 `toml:"vcpus"`
	// MemoryMiB is the guest memory in MiB, at least 64. Default 256.
	MemoryMiB int64 `toml:"memory_mib"`
	// Kernel is the guest kernel. Empty (default) means
	// <assets_dir>/vmlinux.
	Kernel string `toml:"kernel"`
	// RootFS is the root filesystem image. Empty (default) means
	// <assets_dir>/rootfs.ext4.
	RootFS string `toml:"rootfs"`
	// BootArgs are kernel arguments. Empty (default) means the driver's.
	BootArgs string `toml:"boot_args"`
}

// GRPC is the [grpc] section: where the API listens.
type GRPC struct {
	// UnixSocket is the path of the API's Unix socket. Default
	// /run/hearth/hearth.sock.
	UnixSocket string `toml:"unix_socket"`
	// SocketMode is the socket's permission bits in octal, "0600" to
	// "0777". Default "0660": the owner and the socket group.
	SocketMode string `toml:"socket_mode"`
	// SocketGroup is the group name or numeric id that owns the socket.
	// Empty (default) keeps the daemon's group.
	SocketGroup string `toml:"socket_group"`
	// TCPAddr is a host:port to serve the API on over TCP as well. Empty
	// (default) disables TCP. TCP requires TLSCert, TLSKey and TokenFile.
	TCPAddr string `toml:"tcp_addr"`
	// TLSCert and TLSKey are the PEM certificate and key of the TCP
	// listener.
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	// TokenFile contains the bearer token TCP clients must send in the
	// "authorization: Bearer <token>" metadata.
	TokenFile string `toml:"token_file"`
}

// Limits is the [limits] section.
type Limits struct {
	// MaxSandboxes is the number of sandboxes that may exist at once
	// (stopped and failed ones excluded); 0 (default) means no limit.
	MaxSandboxes int64 `toml:"max_sandboxes"`
	// MaxConcurrentBoots is the number of sandboxes that may boot at
	// once; further creates wait. 0 (default) means no limit.
	MaxConcurrentBoots int64 `toml:"max_concurrent_boots"`
}

// Default returns the configuration used for every key a file leaves out.
func Default() Config {
	return Config{
		Hearth: Hearth{
			Driver:   "auto",
			DataDir:  "/var/lib/hearth",
			LogLevel: "info",
		},
		Firecracker: Firecracker{
			Binary:            "firecracker",
			LogLevel:          "Warning",
			SocketTimeoutSecs: 5,
		},
		QEMU: QEMU{
			Binary: "qemu-system-x86_64",
			Accel:  "auto",
		},
		Network: Network{
			CIDR: "172.20.0.0/16",
		},
		Defaults: Defaults{
			VCPUs:     1,
			MemoryMiB: 256,
		},
		GRPC: GRPC{
			UnixSocket: "/run/hearth/hearth.sock",
			SocketMode: "0660",
		},
	}
}

// defaultJailer returns the values of the keys a [firecracker.jailer]
// section leaves out.
func defaultJailer() Jailer {
	return Jailer{Binary: "jailer", ChrootBaseDir: "/srv/jailer"}
}

// Load reads the file at path, applies the defaults and validates the
// result. A file that does not exist is an error unless path is
// DefaultPath, which stands for all defaults.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && path == DefaultPath {
		cfg := Default()
		return cfg, cfg.Validate()
	}
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	cfg, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes a TOML document over the defaults and validates it. Keys
// that hearth does not know are an error that names them.
func Parse(data []byte) (Config, error) {
	cfg := Default()
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&cfg)
	if err != nil {
		return Config{}, describeDecodeError(err)
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		return Config{}, unknownKeysError(undecoded)
	}
	if len(cfg.Network.DNS) == 0 {
		cfg.Network.DNS = nil
	}
	if cfg.Firecracker.Jailer != nil {
		cfg.Firecracker.Jailer = jailerWithDefaults(*cfg.Firecracker.Jailer)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// describeDecodeError keeps the line, column and key of a syntax or type
// error, which toml.ParseError carries.
func describeDecodeError(err error) error {
	var perr toml.ParseError
	if errors.As(err, &perr) {
		msg := fmt.Sprintf("invalid TOML at line %d, column %d", perr.Position.Line, perr.Position.Col)
		if perr.LastKey != "" {
			msg += fmt.Sprintf(" (key %q)", perr.LastKey)
		}
		return fmt.Errorf("%s: %s", msg, perr.Message)
	}
	return fmt.Errorf("invalid TOML: %s", strings.TrimPrefix(err.Error(), "toml: "))
}

// unknownKeysError names the unknown keys. A table is named only when
// none of its keys is, so "[bogus]" with "x = 1" reports "[bogus].x".
func unknownKeysError(keys []toml.Key) error {
	names := make([]string, 0, len(keys))
	for _, k := range keys {
		if !hasChild(keys, k) {
			names = append(names, formatKey(k))
		}
	}
	sort.Strings(names)
	return fmt.Errorf("unknown keys %s: check their spelling against hearth.example.toml",
		strings.Join(names, ", "))
}

func hasChild(keys []toml.Key, parent toml.Key) bool {
	for _, k := range keys {
		if len(k) > len(parent) && slices.Equal(k[:len(parent)], parent) {
			return true
		}
	}
	return false
}

// formatKey spells a key as "[section].key", the form used in every
// message of this package.
func formatKey(k toml.Key) string {
	if len(k) == 1 {
		return k[0]
	}
	return "[" + strings.Join(k[:len(k)-1], ".") + "]." + k[len(k)-1]
}

func jailerWithDefaults(j Jailer) *Jailer {
	d := defaultJailer()
	if j.Binary == "" {
		j.Binary = d.Binary
	}
	if j.ChrootBaseDir == "" {
		j.ChrootBaseDir = d.ChrootBaseDir
	}
	if len(j.ResourceLimits) == 0 {
		j.ResourceLimits = nil
	}
	return &j
}

// AssetsDir returns the directory of the boot assets.
func (c Config) AssetsDir() string {
	if c.Hearth.AssetsDir != "" {
		return c.Hearth.AssetsDir
	}
	return filepath.Join(c.Hearth.DataDir, "assets")
}

// KernelPath returns the default guest kernel.
func (c Config) KernelPath() string {
	return firstNonEmpty(c.Defaults.Kernel, filepath.Join(c.AssetsDir(), "vmlinux"))
}

// InitramfsPath returns the initramfs that holds hearth-agent.
func (c Config) InitramfsPath() string {
	return firstNonEmpty(c.Hearth.Initramfs, filepath.Join(c.AssetsDir(), "initramfs.cpio"))
}

// RootFSPath returns the default root filesystem image.
func (c Config) RootFSPath() string {
	return firstNonEmpty(c.Defaults.RootFS, filepath.Join(c.AssetsDir(), "rootfs.ext4"))
}

// Warnings returns notes about keys that are accepted but have no effect,
// for the daemon to log at start.
func (c Config) Warnings() []string {
	var notes []string
	if c.Network.Bridge != "" {
		notes = append(notes, fmt.Sprintf("[network].bridge = %q is ignored: hearth gives each sandbox a point-to-point TAP and uses no bridge", c.Network.Bridge))
	}
	return notes
}

func firstNonEmpty(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}
