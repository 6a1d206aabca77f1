package guestinit

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestSplitCmdline(t *testing.T) {
	tests := []struct {
		name    string
		cmdline string
		want    []cmdlineParam
	}{
		{"empty", "", nil},
		{"flags and values", "quiet console=ttyS0  panic=-1\n",
			[]cmdlineParam{{"quiet", ""}, {"console", "ttyS0"}, {"panic", "-1"}}},
		{"value with equals sign", "a=b=c", []cmdlineParam{{"a", "b=c"}}},
		{"quoted value", `x="a b" y=1`, []cmdlineParam{{"x", "a b"}, {"y", "1"}}},
		{"quoted parameter", `"x=a b" y`, []cmdlineParam{{"x", "a b"}, {"y", ""}}},
		{"init arguments after double dash", "a=1 -- b=2", []cmdlineParam{{"a", "1"}}},
		{"tabs", "a=1\tb=2", []cmdlineParam{{"a", "1"}, {"b", "2"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := splitCmdline(tc.cmdline)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("splitCmdline(%q): got %v, want %v", tc.cmdline, got, tc.want)
			}
		})
	}
}

func TestParseCmdline(t *testing.T) {
	full := "console=ttyS0 panic=-1 quiet tsc_early_khz=2596138 hearth_init=1 " +
		"ip=172.20.0.2::172.20.0.1:255.255.0.0::eth0:off " +
		"hearth.hostname=sb-1 hearth.dns=1.1.1.1,9.9.9.9 hearth.root=/dev/vda " +
		"hearth.modules=virtio_mmio,virtio_blk,,virtio-rng hearth.transport=serial hearth.port=agent0"
	tests := []struct {
		name    string
		cmdline string
		want    Config
	}{
		{
			name:    "defaults",
			cmdline: "console=ttyS0 hearth_init=1",
			want:    Config{Transport: "vsock", RootFSType: "ext4"},
		},
		{
			name:    "every parameter",
			cmdline: full,
			want: Config{
				Transport:  "serial",
				PortName:   "agent0",
				Hostname:   "sb-1",
				Root:       "/dev/vda",
				RootFSType: "ext4",
				Modules:    []string{"virtio_mmio", "virtio_blk", "virtio-rng"},
				Network: &NetConfig{
					Interface: "eth0",
					Address:   netip.MustParsePrefix("172.20.0.2/16"),
					Gateway:   netip.MustParseAddr("172.20.0.1"),
				},
				DNS: []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("9.9.9.9")},
			},
		},
		{
			name:    "vsock with filesystem type",
			cmdline: "hearth.transport=vsock hearth.root=/dev/vdb hearth.rootfstype=xfs",
			want:    Config{Transport: "vsock", Root: "/dev/vdb", RootFSType: "xfs"},
		},
		{
			name:    "last value wins",
			cmdline: "hearth.hostname=a hearth.hostname=b",
			want:    Config{Transport: "vsock", RootFSType: "ext4", Hostname: "b"},
		},
		{
			name:    "ip off",
			cmdline: "ip=off",
			want:    Config{Transport: "vsock", RootFSType: "ext4"},
		},
		{
			name:    "parameters after double dash ignored",
			cmdline: "hearth.hostname=a -- hearth.hostname=b",
			want:    Config{Transport: "vsock", RootFSType: "ext4", Hostname: "a"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCmdline(tc.cmdline)
			if err != nil {
				t.Fatalf("ParseCmdline(%q): got error %v, want nil", tc.cmdline, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ParseCmdline(%q):\ngot  %+v\nwant %+v", tc.cmdline, got, tc.want)
			}
		})
	}
}

func TestParseCmdlineErrors(t *testing.T) {
	tests := []struct {
		name    string
		cmdline string
		// wantInErr is a substring the error must contain, so that the
		// message names the parameter and value at fault.
		wantInErr string
	}{
		{"unknown transport", "hearth.transport=tcp", `hearth.transport "tcp"`},
		{"serial without port", "hearth.transport=serial", "hearth.port"},
		{"port with slash", "hearth.port=../x", `hearth.port "../x"`},
		{"hostname with space", `"hearth.hostname=a b"`, `hearth.hostname "a b"`},
		{"hostname too long", "hearth.hostname=" + strings.Repeat("a", 65), "length 65"},
		{"relative root", "hearth.root=vda", `hearth.root "vda"`},
		{"empty filesystem type", "hearth.rootfstype=", "hearth.rootfstype"},
		{"bad dns server", "hearth.dns=1.1.1.1,nameserver", `"nameserver"`},
		{"bad ip value", "ip=dhcp", "ip=dhcp"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCmdline(tc.cmdline)
			if err == nil {
				t.Fatalf("ParseCmdline(%q): got nil error, want one containing %q", tc.cmdline, tc.wantInErr)
			}
			if !strings.Contains(err.Error(), tc.wantInErr) {
				t.Errorf("ParseCmdline(%q): got error %q, want it to contain %q", tc.cmdline, err, tc.wantInErr)
			}
		})
	}
}

func TestParseCmdlineUnknownParams(t *testing.T) {
	_, unknown, err := parseCmdline("hearth.hostnme=x hearth.port=agent0 other.param=1")
	if err != nil {
		t.Fatalf("parseCmdline: got error %v, want nil", err)
	}
	want := []string{"hearth.hostnme"}
	if !reflect.DeepEqual(unknown, want) {
		t.Errorf("unknown params: got %v, want %v", unknown, want)
	}
}

func TestParseIPParam(t *testing.T) {
	tests := []struct {
		name  string
		value string
		want  *NetConfig
	}{
		{
			name:  "reference format",
			value: "172.20.0.2::172.20.0.1:255.255.0.0::eth0:off",
			want: &NetConfig{Interface: "eth0",
				Address: netip.MustParsePrefix("172.20.0.2/16"), Gateway: netip.MustParseAddr("172.20.0.1")},
		},
		{
			name:  "slash 30 without device or autoconf",
			value: "10.200.0.2::10.200.0.1:255.255.255.252",
			want: &NetConfig{Interface: "eth0",
				Address: netip.MustParsePrefix("10.200.0.2/30"), Gateway: netip.MustParseAddr("10.200.0.1")},
		},
		{
			name:  "no gateway",
			value: "192.168.7.5:::255.255.255.0::eth1:none",
			want:  &NetConfig{Interface: "eth1", Address: netip.MustParsePrefix("192.168.7.5/24")},
		},
		{
			name:  "dns fields ignored",
			value: "172.20.0.2::172.20.0.1:255.255.0.0:host:eth0:off:8.8.8.8:8.8.4.4",
			want: &NetConfig{Interface: "eth0",
				Address: netip.MustParsePrefix("172.20.0.2/16"), Gateway: netip.MustParseAddr("172.20.0.1")},
		},
		{name: "off", value: "off", want: nil},
		{name: "none", value: "none", want: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseIPParam(tc.value)
			if err != nil {
				t.Fatalf("parseIPParam(%q): got error %v, want nil", tc.value, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("parseIPParam(%q): got %+v, want %+v", tc.value, got, tc.want)
			}
		})
	}
}

func TestParseIPParamErrors(t *testing.T) {
	tests := []struct {
		name      string
		value     string
		wantInErr string
	}{
		{"dhcp", "dhcp", "want <guest>"},
		{"too few fields", "172.20.0.2::172.20.0.1", "want <guest>"},
		{"bad guest address", "172.20.0::172.20.0.1:255.255.0.0::eth0:off", `guest address "172.20.0"`},
		{"ipv6 guest address", "fd00::2::fd00::1:255.255.0.0", "not an IPv4 address"},
		{"missing netmask", "172.20.0.2::172.20.0.1:::eth0:off", `netmask ""`},
		{"non-contiguous netmask", "172.20.0.2::172.20.0.1:255.0.255.0::eth0:off", "not contiguous"},
		{"bad gateway", "172.20.0.2::gw:255.255.0.0::eth0:off", `gateway "gw"`},
		{"gateway outside subnet", "172.20.0.2::10.0.0.1:255.255.0.0::eth0:off", "outside 172.20.0.0/16"},
		{"dhcp autoconf", "172.20.0.2::172.20.0.1:255.255.0.0::eth0:dhcp", `autoconf "dhcp"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseIPParam(tc.value)
			if err == nil {
				t.Fatalf("parseIPParam(%q): got nil error, want one containing %q", tc.value, tc.wantInErr)
			}
			if !strings.Contains(err.Error(), tc.wantInErr) {
				t.Errorf("parseIPParam(%q): got error %q, want it to contain %q", tc.value, err, tc.wantInErr)
			}
		})
	}
}

func TestCheckGuestInit(t *testing.T) {
	tests := []struct {
		name    string
		pid     int
		initVar string
		wantErr bool
	}{
		{"guest init", 1, "1", false},
		{"pid 1 without variable", 1, "", true},
		{"pid 1 with other value", 1, "0", true},
		{"other pid with variable", 4242, "1", true},
		{"host process", 4242, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkGuestInit(tc.pid, tc.initVar)
			if gotErr := err != nil; gotErr != tc.wantErr {
				t.Errorf("checkGuestInit(%d, %q): got error %v, want error %v", tc.pid, tc.initVar, err, tc.wantErr)
			}
		})
	}
}
