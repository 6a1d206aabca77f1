package network

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// Pool defaults.
const (
	// DefaultCIDR is the pool network when Config.CIDR is empty.
	DefaultCIDR = "172.20.0.0/16"
	// MinPrefix and MaxPrefix bound the pool's prefix length. A /31 or /32
	// has no address left for a guest once the gateway is taken, and a /0
	// would make every TAP name and offset overflow 32 bits.
	MinPrefix = 1
	MaxPrefix = 30
	// TAPPrefix starts the name of every TAP device this package creates.
	TAPPrefix = "hth"
)

// Config configures a Pool.
type Config struct {
	// CIDR is the IPv4 network guest addresses come from, for example
	// "172.20.0.0/16". Default DefaultCIDR. The prefix length must be
	// MinPrefix to MaxPrefix and the address must have no host bits set.
	CIDR string
	// Gateway is the host's address on every TAP and the guests' default
	// route. Default: the first host address of CIDR (172.20.0.1 for the
	// default network). It must lie inside CIDR and be neither its network
	// nor its broadcast address.
	Gateway string
	// DataDir is hearth's data directory. The lease state lives in
	// DataDir/network/leases.json, guarded by an exclusive flock(2) on
	// DataDir/network/leases.lock. Required.
	DataDir string
	// Logger receives a message for every stale lease reclaimed. Default
	// slog.Default().
	Logger *slog.Logger
}

// Pool hands out guest addresses from one IPv4 network. Leases live in a
// state file shared by every process that opens a Pool on the same data
// directory, guarded by an exclusive file lock. A Pool is safe for
// concurrent use by goroutines and by processes.
//
// Allocation picks the lowest free address: guests get .2, .3 and so on
// with the default gateway, and a released address is handed out again
// first.
type Pool struct {
	network netip.Prefix
	base    uint32 // network address
	size    uint64 // addresses in the network, network and broadcast included
	gateway uint32 // offset of the gateway from base

	dir string
	log *slog.Logger

	// alive and deleteTAP are replaced by tests.
	alive     func(Owner) bool
	deleteTAP func(name, netnsPath string) error
}

// NewPool validates cfg and returns its pool. It touches no file: the
// state directory is created by the first operation that writes a lease.
func NewPool(cfg Config) (*Pool, error) {
	cidr := cfg.CIDR
	if cidr == "" {
		cidr = DefaultCIDR
	}
	network, err := parseNetwork(cidr)
	if err != nil {
		return nil, err
	}
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("network pool: data directory is empty: %w", ErrInvalid)
	}

	p := &Pool{
		network:   network,
		base:      addrToUint32(network.Addr()),
		size:      uint64(1) << (32 - network.Bits()),
		gateway:   1,
		dir:       filepath.Join(cfg.DataDir, "network"),
		log:       cfg.Logger,
		alive:     Owner.Alive,
		deleteTAP: deleteTAPForReclaim,
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	if cfg.Gateway != "" {
		if p.gateway, err = p.parseGateway(cfg.Gateway); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// parseNetwork parses an IPv4 network in CIDR notation. It parses the
// prefix length itself so that a length out of range (such as /33) gets
// the same message as /31 or /0.
func parseNetwork(cidr string) (netip.Prefix, error) {
	addrText, bitsText, ok := strings.Cut(cidr, "/")
	if !ok {
		return netip.Prefix{}, fmt.Errorf("network cidr %q: missing prefix length, want an IPv4 network such as %s: %w", cidr, DefaultCIDR, ErrInvalid)
	}
	addr, err := netip.ParseAddr(addrText)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("network cidr %q: want an IPv4 network such as %s: %w", cidr, DefaultCIDR, ErrInvalid)
	}
	if !addr.Is4() {
		return netip.Prefix{}, fmt.Errorf("network cidr %q: IPv6 is not supported, use an IPv4 network such as %s: %w", cidr, DefaultCIDR, ErrInvalid)
	}
	bits, err := strconv.Atoi(bitsText)
	if err != nil || bits < MinPrefix || bits > MaxPrefix {
		return netip.Prefix{}, fmt.Errorf("network cidr %q: prefix length %q out of range, want %d to %d: %w", cidr, bitsText, MinPrefix, MaxPrefix, ErrInvalid)
	}

	network := netip.PrefixFrom(addr, bits)
	if masked := network.Masked(); masked != network {
		return netip.Prefix{}, fmt.Errorf("network cidr %q: host bits are set, did you mean %s: %w", cidr, masked, ErrInvalid)
	}
	return network, nil
}

// parseGateway returns the gateway's offset in the pool.
func (p *Pool) parseGateway(text string) (uint32, error) {
	addr, err := netip.ParseAddr(text)
	if err != nil || !addr.Is4() {
		return 0, fmt.Errorf("network gateway %q: want an IPv4 address inside %s: %w", text, p.network, ErrInvalid)
	}
	if !p.network.Contains(addr) {
		return 0, fmt.Errorf("network gateway %s: outside the pool network %s: %w", addr, p.network, ErrInvalid)
	}
	offset := addrToUint32(addr) - p.base
	if offset == 0 || uint64(offset) == p.size-1 {
		return 0, fmt.Errorf("network gateway %s: is the network or broadcast address of %s, use a host address: %w", addr, p.network, ErrInvalid)
	}
	return offset, nil
}

// Network returns the pool's network.
func (p *Pool) Network() *net.IPNet {
	return &net.IPNet{IP: p.addrAt(0).AsSlice(), Mask: p.Netmask()}
}

// Gateway returns the host's address on every TAP of the pool.
func (p *Pool) Gateway() net.IP {
	return p.addrAt(p.gateway).AsSlice()
}

// Netmask returns the pool's netmask, such as 255.255.0.0 for a /16.
func (p *Pool) Netmask() net.IPMask {
	return net.CIDRMask(p.network.Bits(), 32)
}

// Prefix returns the pool's prefix length in bits.
func (p *Pool) Prefix() int {
	return p.network.Bits()
}

// Capacity returns the number of guest addresses: all addresses of the
// network except the network, broadcast and gateway addresses.
func (p *Pool) Capacity() uint64 {
	return p.size - 3
}

// StatePath returns the path of the lease state file.
func (p *Pool) StatePath() string {
	return filepath.Join(p.dir, "leases.json")
}

// TAPName returns the TAP device name for a guest address of the pool:
// TAPPrefix followed by the address's offset from the network address in
// lowercase hex, for example "hth2" for 172.20.0.2 in 172.20.0.0/16.
// Distinct addresses get distinct names, and the longest name (offset
// 7ffffffe in a /1) has 11 bytes, within the kernel's 15-byte limit.
func (p *Pool) TAPName(ip net.IP) (string, error) {
	addr, ok := netip.AddrFromSlice(ip)
	if !ok || !addr.Unmap().Is4() || !p.network.Contains(addr.Unmap()) {
		return "", fmt.Errorf("tap name for %s: address is outside the pool network %s: %w", ip, p.network, ErrInvalid)
	}
	return tapName(addrToUint32(addr.Unmap()) - p.base), nil
}

func tapName(offset uint32) string {
	return TAPPrefix + strconv.FormatUint(uint64(offset), 16)
}

// isGuestOffset reports whether the address at offset may be leased.
func (p *Pool) isGuestOffset(offset uint64) bool {
	return offset > 0 && offset < p.size-1 && offset != uint64(p.gateway)
}

func (p *Pool) addrAt(offset uint32) netip.Addr {
	return uint32ToAddr(p.base + offset)
}

func addrToUint32(addr netip.Addr) uint32 {
	b := addr.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func uint32ToAddr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
