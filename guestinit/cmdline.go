package guestinit

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path"
	"strings"
)

// cmdlineParam is one key[=value] word of a kernel command line.
type cmdlineParam struct {
	key   string
	value string
}

// splitCmdline splits a kernel command line into parameters the way the
// kernel does: words are separated by white space outside double quotes,
// the first '=' separates key and value, and the quotes are dropped.
// Parsing stops at "--", after which the words belong to init's argv.
func splitCmdline(cmdline string) []cmdlineParam {
	var params []cmdlineParam
	var word strings.Builder
	inQuote, inWord := false, false
	flush := func() bool {
		if !inWord {
			return true
		}
		w := word.String()
		word.Reset()
		inWord = false
		if w == "--" {
			return false
		}
		w = strings.ReplaceAll(w, `"`, "")
		key, value, _ := strings.Cut(w, "=")
		params = append(params, cmdlineParam{key: key, value: value})
		return true
	}
	for _, r := range cmdline {
		switch {
		case r == '"':
			inQuote = !inQuote
			inWord = true
			word.WriteRune(r)
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if !flush() {
				return params
			}
		default:
			inWord = true
			word.WriteRune(r)
		}
	}
	flush()
	return params
}

// ParseCmdline returns the Config described by a kernel command line such
// as the contents of /proc/cmdline. Unknown parameters are ignored. A
// parameter given twice takes its last value, as in the kernel.
func ParseCmdline(cmdline string) (Config, error) {
	cfg, _, err := parseCmdline(cmdline)
	return cfg, err
}

// parseCmdline is ParseCmdline that also returns the unknown hearth.*
// parameters, so that Init can warn about a misspelt one.
func parseCmdline(cmdline string) (cfg Config, unknown []string, err error) {
	cfg = Config{Transport: TransportVsock, RootFSType: "ext4"}
	for _, p := range splitCmdline(cmdline) {
		if err := cfg.apply(p); err != nil {
			return Config{}, nil, err
		}
		if strings.HasPrefix(p.key, "hearth.") && !knownParams[p.key] {
			unknown = append(unknown, p.key)
		}
	}
	if cfg.Transport == TransportSerial && cfg.PortName == "" {
		return Config{}, nil, errors.New("hearth.transport=serial needs hearth.port " +
			"naming the virtio-serial port, and it is missing")
	}
	return cfg, unknown, nil
}

var knownParams = map[string]bool{
	"hearth.transport":  true,
	"hearth.port":       true,
	"hearth.hostname":   true,
	"hearth.root":       true,
	"hearth.rootfstype": true,
	"hearth.modules":    true,
	"hearth.dns":        true,
}

// apply sets the Config field that p describes, if any.
func (c *Config) apply(p cmdlineParam) error {
	switch p.key {
	case "hearth.transport":
		if p.value != TransportSerial && p.value != TransportVsock {
			return fmt.Errorf("invalid hearth.transport %q: want %q or %q",
				p.value, TransportSerial, TransportVsock)
		}
		c.Transport = p.value
	case "hearth.port":
		if p.value == "" || strings.ContainsAny(p.value, "/") {
			return fmt.Errorf("invalid hearth.port %q: want a port name such as agent0", p.value)
		}
		c.PortName = p.value
	case "hearth.hostname":
		if err := checkHostname(p.value); err != nil {
			return fmt.Errorf("invalid hearth.hostname %q: %w", p.value, err)
		}
		c.Hostname = p.value
	case "hearth.root":
		if !path.IsAbs(p.value) {
			return fmt.Errorf("invalid hearth.root %q: want a device path such as /dev/vda", p.value)
		}
		c.Root = p.value
	case "hearth.rootfstype":
		if p.value == "" {
			return errors.New("invalid hearth.rootfstype: empty, want a filesystem type such as ext4")
		}
		c.RootFSType = p.value
	case "hearth.modules":
		c.Modules = splitList(p.value)
	case "hearth.dns":
		dns, err := parseDNS(p.value)
		if err != nil {
			return err
		}
		c.DNS = dns
	case "ip":
		network, err := parseIPParam(p.value)
		if err != nil {
			return err
		}
		c.Network = network
	}
	return nil
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var items []string
	for item := range strings.SplitSeq(s, ",") {
		if item != "" {
			items = append(items, item)
		}
	}
	return items
}

func parseDNS(value string) ([]netip.Addr, error) {
	var dns []netip.Addr
	for _, item := range splitList(value) {
		addr, err := netip.ParseAddr(item)
		if err != nil {
			return nil, fmt.Errorf("invalid hearth.dns server %q: %w", item, err)
		}
		dns = append(dns, addr)
	}
	return dns, nil
}

// checkHostname accepts the names that sethostname(2) takes and that
// resolvers handle: at most 64 bytes of letters, digits, '-' and '.'.
func checkHostname(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("length %d, want 1 to 64 bytes", len(name))
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			r == '-' || r == '.'
		if !ok {
			return fmt.Errorf("character %q, want letters, digits, '-' and '.'", r)
		}
	}
	return nil
}

// parseIPParam parses the kernel's ip= parameter in its static form
// <client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>,
// for example 172.20.0.2::172.20.0.1:255.255.0.0::eth0:off. The server
// and hostname fields and any DNS or NTP fields after autoconf are
// ignored. "off" and "none" return nil. Only IPv4 is possible, because
// the kernel's format has no IPv6 form.
func parseIPParam(value string) (*NetConfig, error) {
	if value == "off" || value == "none" {
		return nil, nil
	}
	fields := strings.Split(value, ":")
	field := func(i int) string {
		if i < len(fields) {
			return fields[i]
		}
		return ""
	}
	if len(fields) < 4 {
		return nil, fmt.Errorf("invalid ip=%s: want <guest>::<gateway>:<netmask>::<device>:off", value)
	}

	addr, err := netip.ParseAddr(field(0))
	if err != nil || !addr.Is4() {
		return nil, fmt.Errorf("invalid ip=%s: guest address %q is not an IPv4 address", value, field(0))
	}
	prefix, err := netmaskBits(field(3))
	if err != nil {
		return nil, fmt.Errorf("invalid ip=%s: %w", value, err)
	}

	network := &NetConfig{Interface: "eth0", Address: netip.PrefixFrom(addr, prefix)}
	if dev := field(5); dev != "" {
		network.Interface = dev
	}
	if autoconf := field(6); autoconf != "" && autoconf != "off" && autoconf != "none" {
		return nil, fmt.Errorf("invalid ip=%s: autoconf %q is not supported, want off", value, autoconf)
	}

	if gw := field(2); gw != "" {
		network.Gateway, err = netip.ParseAddr(gw)
		if err != nil || !network.Gateway.Is4() {
			return nil, fmt.Errorf("invalid ip=%s: gateway %q is not an IPv4 address", value, gw)
		}
		if !network.Address.Masked().Contains(network.Gateway) {
			return nil, fmt.Errorf("invalid ip=%s: gateway %s is outside %s",
				value, network.Gateway, network.Address.Masked())
		}
	}
	return network, nil
}

// netmaskBits returns the prefix length of a dotted IPv4 netmask such as
// 255.255.0.0.
func netmaskBits(mask string) (int, error) {
	m, err := netip.ParseAddr(mask)
	if err != nil || !m.Is4() {
		return 0, fmt.Errorf("netmask %q is not a dotted IPv4 netmask", mask)
	}
	b := m.As4()
	ones, bits := net.IPMask(b[:]).Size()
	if bits == 0 {
		return 0, fmt.Errorf("netmask %q is not contiguous", mask)
	}
	return ones, nil
}
