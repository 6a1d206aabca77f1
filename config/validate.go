package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hearthvm/hearth/network"
	"github.com/hearthvm/hearth/sandbox"
)

// maxSunPath is the usable length of a Unix socket path on Linux: 108
// bytes of sun_path including the terminating NUL.
const maxSunPath = 107

// maxID is the largest uid or gid; 4294967295 is (uid_t)-1, which means
// "no id".
const maxID = 1<<32 - 2

// KeyError is an invalid value of one key.
type KeyError struct {
	// Key is spelled "[section].key".
	Key string
	// Value is the value as decoded from the file.
	Value any
	// Reason describes the allowed values.
	Reason string
}

func (e *KeyError) Error() string {
	return fmt.Sprintf("invalid %s = %s: %s", e.Key, formatValue(e.Value), e.Reason)
}

func formatValue(v any) string {
	switch v := v.(type) {
	case string:
		return strconv.Quote(v)
	case []string:
		quoted := make([]string, len(v))
		for i, s := range v {
			quoted[i] = strconv.Quote(s)
		}
		return "[" + strings.Join(quoted, ", ") + "]"
	default:
		return fmt.Sprint(v)
	}
}

// validator collects every invalid key, so that one run reports them all.
type validator struct {
	errs []error
}

func (v *validator) fail(key string, value any, format string, args ...any) {
	v.errs = append(v.errs, &KeyError{Key: key, Value: value, Reason: fmt.Sprintf(format, args...)})
}

func (v *validator) oneOf(key, value string, allowed ...string) {
	for _, a := range allowed {
		if value == a {
			return
		}
	}
	v.fail(key, value, "want one of %s", strings.Join(allowed, ", "))
}

func (v *validator) absPath(key, value string, required bool) {
	switch {
	case value == "" && required:
		v.fail(key, value, "a path is required")
	case value != "" && !filepath.IsAbs(value):
		v.fail(key, value, "want an absolute path, because the daemon's working directory is not fixed")
	}
}

func (v *validator) intRange(key string, value, lo, hi int64, unit string) {
	if value < lo || value > hi {
		v.fail(key, value, "want %d to %d%s", lo, hi, unit)
	}
}

// Validate checks every key and returns one KeyError per invalid key,
// joined with errors.Join.
func (c Config) Validate() error {
	var v validator
	c.validateHearth(&v)
	c.validateFirecracker(&v)
	c.validateQEMU(&v)
	c.validateNetwork(&v)
	c.validateDefaults(&v)
	c.validateGRPC(&v)
	v.intRange("[limits].max_sandboxes", c.Limits.MaxSandboxes, 0, 1<<31-1, " (0 means no limit)")
	v.intRange("[limits].max_concurrent_boots", c.Limits.MaxConcurrentBoots, 0, 1<<31-1, " (0 means no limit)")
	return errors.Join(v.errs...)
}

func (c Config) validateHearth(v *validator) {
	h := c.Hearth
	v.oneOf("[hearth].driver", h.Driver, "auto", "qemu", "firecracker")
	v.absPath("[hearth].data_dir", h.DataDir, true)
	v.absPath("[hearth].assets_dir", h.AssetsDir, false)
	v.absPath("[hearth].initramfs", h.Initramfs, false)
	v.oneOf("[hearth].log_level", h.LogLevel, "debug", "info", "warn", "error")
}

func (c Config) validateFirecracker(v *validator) {
	f := c.Firecracker
	if f.Binary == "" {
		v.fail("[firecracker].binary", f.Binary, "want a path or a name to look up in PATH")
	}
	v.absPath("[firecracker].data_dir", f.DataDir, false)
	switch strings.ToLower(f.LogLevel) {
	case "error", "warning", "info", "debug", "trace", "off":
	default:
		v.fail("[firecracker].log_level", f.LogLevel, "want one of Error, Warning, Info, Debug, Trace, Off")
	}
	v.absPath("[firecracker].seccomp_filter", f.SeccompFilter, false)
	if f.NoSeccomp && f.SeccompFilter != "" {
		v.fail("[firecracker].seccomp_filter", f.SeccompFilter, "must be empty when [firecracker].no_seccomp is true; set one of the two")
	}
	v.intRange("[firecracker].http_api_max_payload_size", f.HTTPAPIMaxPayloadSize, 0, 1<<31-1, " bytes (0 keeps Firecracker's default)")
	v.intRange("[firecracker].mmds_size_limit", f.MMDSSizeLimit, 0, 1<<31-1, " bytes (0 keeps Firecracker's default)")
	v.intRange("[firecracker].socket_timeout_secs", f.SocketTimeoutSecs, 1, 300, " seconds")
	if f.Jailer != nil {
		validateJailer(v, *f.Jailer)
	}
}

func validateJailer(v *validator, j Jailer) {
	if j.Binary == "" {
		v.fail("[firecracker.jailer].binary", j.Binary, "want a path or a name to look up in PATH")
	}
	v.intRange("[firecracker.jailer].uid", j.UID, 0, maxID, "")
	v.intRange("[firecracker.jailer].gid", j.GID, 0, maxID, "")
	v.absPath("[firecracker.jailer].chroot_base_dir", j.ChrootBaseDir, true)
	v.absPath("[firecracker.jailer].netns", j.NetNS, false)
	if j.CgroupVersion != "" {
		v.oneOf("[firecracker.jailer].cgroup_version", j.CgroupVersion, "1", "2")
	}
	p := "/" + j.ParentCgroup + "/"
	if filepath.IsAbs(j.ParentCgroup) || strings.Contains(p, "/../") || strings.Contains(p, "/./") {
		v.fail("[firecracker.jailer].parent_cgroup", j.ParentCgroup, "want a relative cgroup path without '.' or '..' components")
	}
	for _, limit := range j.ResourceLimits {
		name, value, ok := strings.Cut(limit, "=")
		n, err := strconv.ParseUint(value, 10, 64)
		if !ok || (name != "fsize" && name != "no-file") || err != nil || (name == "no-file" && n == 0) {
			v.fail("[firecracker.jailer].resource_limits", j.ResourceLimits,
				"entry %q: want fsize=<bytes> or no-file=<count of at least 1>", limit)
		}
	}
}

func (c Config) validateQEMU(v *validator) {
	if c.QEMU.Binary == "" {
		v.fail("[qemu].binary", c.QEMU.Binary, "want a path or a name to look up in PATH")
	}
	v.oneOf("[qemu].accel", c.QEMU.Accel, "auto", "kvm", "tcg")
}

// validateNetwork checks cidr and gateway with the rules of
// network.NewPool, which touches no file.
func (c Config) validateNetwork(v *validator) {
	n := c.Network
	if _, err := network.NewPool(network.Config{CIDR: n.CIDR, DataDir: "/"}); err != nil {
		v.fail("[network].cidr", n.CIDR, "%s; want an IPv4 network with prefix length %d to %d, such as %s",
			poolReason(err), network.MinPrefix, network.MaxPrefix, network.DefaultCIDR)
	} else if n.Gateway != "" {
		if _, err := network.NewPool(network.Config{CIDR: n.CIDR, Gateway: n.Gateway, DataDir: "/"}); err != nil {
			v.fail("[network].gateway", n.Gateway, "%s; want a host address inside [network].cidr, or empty for its first host address",
				poolReason(err))
		}
	}
	for _, server := range n.DNS {
		if _, err := netip.ParseAddr(server); err != nil {
			v.fail("[network].dns", n.DNS, "entry %q is not an IP address", server)
		}
	}
}

// poolReason returns the message of a network.NewPool error without the
// kind it wraps, which KeyError already conveys.
func poolReason(err error) string {
	return strings.TrimSuffix(err.Error(), ": "+network.ErrInvalid.Error())
}

func (c Config) validateDefaults(v *validator) {
	d := c.Defaults
	v.intRange("[defaults].vcpus", d.VCPUs, 1, sandbox.MaxVCPUs, "")
	v.intRange("[defaults].memory_mib", d.MemoryMiB, sandbox.MinMemoryMiB, 1<<31-1, " MiB")
	v.absPath("[defaults].kernel", d.Kernel, false)
	v.absPath("[defaults].rootfs", d.RootFS, false)
}

func (c Config) validateGRPC(v *validator) {
	g := c.GRPC
	v.absPath("[grpc].unix_socket", g.UnixSocket, true)
	if len(g.UnixSocket) > maxSunPath {
		v.fail("[grpc].unix_socket", g.UnixSocket, "the path is %d bytes, over the %d-byte limit of Unix socket paths", len(g.UnixSocket), maxSunPath)
	}
	if _, err := ParseSocketMode(g.SocketMode); err != nil {
		v.fail("[grpc].socket_mode", g.SocketMode, "%v", err)
	}
	v.absPath("[grpc].tls_cert", g.TLSCert, false)
	v.absPath("[grpc].tls_key", g.TLSKey, false)
	v.absPath("[grpc].token_file", g.TokenFile, false)
	if (g.TLSCert == "") != (g.TLSKey == "") {
		v.fail("[grpc].tls_key", g.TLSKey, "set tls_cert and tls_key together")
	}
	if g.TCPAddr == "" {
		return
	}
	if _, port, err := net.SplitHostPort(g.TCPAddr); err != nil || port == "" {
		v.fail("[grpc].tcp_addr", g.TCPAddr, "want host:port, such as 127.0.0.1:7443")
	}
	if g.TLSCert == "" || g.TLSKey == "" || g.TokenFile == "" {
		v.fail("[grpc].tcp_addr", g.TCPAddr,
			"a TCP listener needs TLS and a bearer token: set [grpc].tls_cert, [grpc].tls_key and [grpc].token_file, or leave tcp_addr empty")
	}
}

// ParseSocketMode parses an octal permission string such as "0660".
func ParseSocketMode(s string) (uint32, error) {
	mode, err := strconv.ParseUint(s, 8, 32)
	if err != nil || mode > 0o777 {
		return 0, errors.New("want octal permission bits from 0000 to 0777, such as \"0660\"")
	}
	return uint32(mode), nil
}
