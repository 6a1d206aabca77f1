package network

import (
	"errors"
	"net"
	"strings"
	"testing"
)

func TestNewPoolValidation(t *testing.T) {
	tests := []struct {
		name    string
		cidr    string
		gateway string
		wantErr string // substring of the error; empty means valid
	}{
		{name: "default", cidr: ""},
		{name: "slash 8", cidr: "10.0.0.0/8"},
		{name: "slash 1", cidr: "128.0.0.0/1"},
		{name: "slash 30", cidr: "10.0.0.0/30"},
		{name: "custom gateway", cidr: "10.0.0.0/24", gateway: "10.0.0.100"},
		{name: "slash 0", cidr: "0.0.0.0/0", wantErr: `prefix length "0" out of range, want 1 to 30`},
		{name: "slash 31", cidr: "10.0.0.0/31", wantErr: `prefix length "31" out of range, want 1 to 30`},
		{name: "slash 32", cidr: "10.0.0.0/32", wantErr: `prefix length "32" out of range, want 1 to 30`},
		{name: "slash 33", cidr: "10.0.0.0/33", wantErr: `"10.0.0.0/33": prefix length "33" out of range, want 1 to 30`},
		{name: "negative prefix", cidr: "10.0.0.0/-1", wantErr: `prefix length "-1" out of range`},
		{name: "prefix not a number", cidr: "10.0.0.0/abc", wantErr: `prefix length "abc" out of range`},
		{name: "ipv6", cidr: "fd00::/64", wantErr: "IPv6 is not supported"},
		{name: "ipv4 mapped ipv6", cidr: "::ffff:10.0.0.0/120", wantErr: "IPv6 is not supported"},
		{name: "garbage", cidr: "not-a-network", wantErr: `"not-a-network": missing prefix length`},
		{name: "garbage address", cidr: "10.0.0/24", wantErr: `"10.0.0/24": want an IPv4 network`},
		{name: "host bits set", cidr: "10.0.0.1/24", wantErr: "did you mean 10.0.0.0/24"},
		{name: "gateway outside", cidr: "10.0.0.0/24", gateway: "10.0.1.1", wantErr: "10.0.1.1: outside the pool network 10.0.0.0/24"},
		{name: "gateway is network", cidr: "10.0.0.0/24", gateway: "10.0.0.0", wantErr: "network or broadcast address"},
		{name: "gateway is broadcast", cidr: "10.0.0.0/24", gateway: "10.0.0.255", wantErr: "network or broadcast address"},
		{name: "gateway ipv6", cidr: "10.0.0.0/24", gateway: "fd00::1", wantErr: `gateway "fd00::1": want an IPv4 address`},
		{name: "gateway garbage", cidr: "10.0.0.0/24", gateway: "gw", wantErr: `gateway "gw": want an IPv4 address`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewPool(Config{CIDR: tc.cidr, Gateway: tc.gateway, DataDir: t.TempDir()})
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("got error %v, want none", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("got no error, want one containing %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("got error %q, want it to contain %q", err, tc.wantErr)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("got error %v, want it to wrap ErrInvalid", err)
			}
		})
	}
}

func TestNewPoolRequiresDataDir(t *testing.T) {
	_, err := NewPool(Config{})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("got error %v, want ErrInvalid", err)
	}
}

func TestPoolDefaults(t *testing.T) {
	p, err := NewPool(Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := p.Network().String(), "172.20.0.0/16"; got != want {
		t.Errorf("Network: got %s, want %s", got, want)
	}
	if got, want := p.Gateway().String(), "172.20.0.1"; got != want {
		t.Errorf("Gateway: got %s, want %s", got, want)
	}
	if got, want := net.IP(p.Netmask()).String(), "255.255.0.0"; got != want {
		t.Errorf("Netmask: got %s, want %s", got, want)
	}
	if got, want := p.Prefix(), 16; got != want {
		t.Errorf("Prefix: got %d, want %d", got, want)
	}
	if got, want := p.Capacity(), uint64(65533); got != want {
		t.Errorf("Capacity: got %d, want %d", got, want)
	}
}

func TestPoolCapacity(t *testing.T) {
	tests := []struct {
		cidr string
		want uint64
	}{
		{"10.0.0.0/30", 1},
		{"10.0.0.0/29", 5},
		{"10.0.0.0/24", 253},
		{"128.0.0.0/1", 1<<31 - 3},
	}
	for _, tc := range tests {
		t.Run(tc.cidr, func(t *testing.T) {
			p, err := NewPool(Config{CIDR: tc.cidr, DataDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Capacity(); got != tc.want {
				t.Errorf("got %d, want %d", got, tc.want)
			}
		})
	}
}

func TestTAPNameSlash1(t *testing.T) {
	p, err := NewPool(Config{CIDR: "128.0.0.0/1", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		ip   string
		want string
	}{
		{"128.0.0.1", "hth1"},
		{"128.0.0.2", "hth2"},
		{"128.0.0.15", "hthf"},
		{"128.0.0.16", "hth10"},
		{"128.0.255.255", "hthffff"},
		{"128.1.0.0", "hth10000"},
		{"200.100.50.25", "hth48643219"},
		{"255.255.255.254", "hth7ffffffe"}, // the highest guest address
	}
	seen := map[string]string{}
	for _, tc := range tests {
		got, err := p.TAPName(net.ParseIP(tc.ip))
		if err != nil {
			t.Fatalf("TAPName(%s): %v", tc.ip, err)
		}
		if got != tc.want {
			t.Errorf("TAPName(%s): got %q, want %q", tc.ip, got, tc.want)
		}
		if len(got) > 15 {
			t.Errorf("TAPName(%s): got %d bytes, want at most 15", tc.ip, len(got))
		}
		if other, dup := seen[got]; dup {
			t.Errorf("TAPName(%s) = %q, same as for %s", tc.ip, got, other)
		}
		seen[got] = tc.ip
	}
}

func TestTAPNameUniqueInPool(t *testing.T) {
	p, err := NewPool(Config{CIDR: "10.0.0.0/20", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]uint32{}
	for offset := uint32(1); offset < 4095; offset++ {
		ip := uint32ToAddr(p.base + offset).AsSlice()
		name, err := p.TAPName(ip)
		if err != nil {
			t.Fatalf("TAPName(%s): %v", net.IP(ip), err)
		}
		if prev, dup := seen[name]; dup {
			t.Fatalf("offsets %d and %d both map to %q", prev, offset, name)
		}
		seen[name] = offset
	}
}

func TestTAPNameOutsidePool(t *testing.T) {
	p, err := NewPool(Config{CIDR: "10.0.0.0/24", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{"10.0.1.2", "fd00::2"} {
		if name, err := p.TAPName(net.ParseIP(ip)); !errors.Is(err, ErrInvalid) {
			t.Errorf("TAPName(%s): got %q, %v, want ErrInvalid", ip, name, err)
		}
	}
}

func TestMACAddress(t *testing.T) {
	ids := []string{"", "a", "sb-1", "sb-2", "0123456789abcdef0123456789abcdef", "ünïcode"}
	seen := map[string]string{}
	for _, id := range ids {
		mac := MACAddress(id)
		if len(mac) != 6 {
			t.Fatalf("MACAddress(%q): got %d bytes, want 6", id, len(mac))
		}
		if mac[0]&0x02 == 0 {
			t.Errorf("MACAddress(%q) = %s: locally administered bit clear, want set", id, mac)
		}
		if mac[0]&0x01 != 0 {
			t.Errorf("MACAddress(%q) = %s: multicast bit set, want clear", id, mac)
		}
		if again := MACAddress(id); again.String() != mac.String() {
			t.Errorf("MACAddress(%q): got %s then %s, want the same", id, mac, again)
		}
		if other, dup := seen[mac.String()]; dup {
			t.Errorf("MACAddress(%q) = MACAddress(%q) = %s", id, other, mac)
		}
		seen[mac.String()] = id
	}
}

// TestMACAddressStable pins the derivation, because a restored sandbox
// must get the MAC it had before an upgrade. The value is the first six
// bytes of SHA-256("sb-1") (a7 ff 50 5d 82 50) with 0x02 set and 0x01 cleared.
func TestMACAddressStable(t *testing.T) {
	if got, want := MACAddress("sb-1").String(), "a6:ff:50:5d:82:50"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestLeaseKernelArg(t *testing.T) {
	l := Lease{
		IP:      net.ParseIP("172.20.0.2"),
		Gateway: net.ParseIP("172.20.0.1"),
		Netmask: net.CIDRMask(16, 32),
	}
	if got, want := l.KernelArg(), "ip=172.20.0.2::172.20.0.1:255.255.0.0::eth0:off"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
