package qemu

import (
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/hearthvm/hearth/vmm"
)

func testLaunch(accel Accel) launch {
	return launch{
		Spec: vmm.Spec{
			ID:        "sb-1",
			Dir:       "/run/hearth/sb-1",
			VCPUs:     2,
			MemoryMiB: 256,
			Kernel:    "/assets/vmlinux",
			Initrd:    "/assets/initramfs.cpio",
			RootImage: "/assets/rootfs.ext4",
			AgentArgs: []string{"hearth_init=1", "hearth.root=/dev/vda"},
		},
		Accel:     accel,
		TSCKHz:    2596130,
		AgentPort: "agent0",
		Disk:      "/run/hearth/sb-1/root.qcow2",
		Paths:     pathsIn("/run/hearth/sb-1"),
	}
}

func TestBuildArgs(t *testing.T) {
	mac, err := net.ParseMAC("02:fc:00:00:00:05")
	if err != nil {
		t.Fatal(err)
	}
	common := func(accel, cmdline string) []string {
		return []string{
			"-M", "microvm",
			"-accel", accel,
			"-nodefaults",
			"-no-reboot",
			"-display", "none",
			"-name", "sb-1",
			"-smp", "2",
			"-m", "256",
			"-kernel", "/assets/vmlinux",
			"-initrd", "/assets/initramfs.cpio",
			"-append", cmdline,
			"-chardev", "file,id=con,path=/run/hearth/sb-1/console.log",
			"-serial", "chardev:con",
			"-chardev", "socket,id=qmp,path=/run/hearth/sb-1/qmp.sock,server=on,wait=off",
			"-mon", "chardev=qmp,mode=control",
			"-device", "virtio-serial-device",
			"-chardev", "socket,id=agent,path=/run/hearth/sb-1/agent.sock,server=on,wait=off",
			"-device", "virtserialport,chardev=agent,name=agent0",
			"-drive", "file=/run/hearth/sb-1/root.qcow2,if=none,id=root,format=qcow2",
			"-device", "virtio-blk-device,drive=root",
		}
	}
	const agentTail = "hearth_init=1 hearth.root=/dev/vda hearth.transport=serial hearth.port=agent0 " +
		"hearth.modules=virtio_mmio,virtio_blk,virtio_net,virtio_console"
	tcgCmdline := DefaultBootArgs + " " + agentTail + " tsc_early_khz=2596130"
	kvmCmdline := DefaultBootArgs + " " + agentTail
	netArgs := []string{
		"-netdev", "tap,id=net0,ifname=hvtap5,script=no,downscript=no",
		"-device", "virtio-net-device,netdev=net0,mac=02:fc:00:00:00:05",
	}

	tests := []struct {
		name   string
		accel  Accel
		tap    string
		extra  []string
		noDisk bool
		want   []string
	}{
		{
			name:  "tcg without tap",
			accel: AccelTCG,
			want:  common("tcg", tcgCmdline),
		},
		{
			name:  "kvm without tap",
			accel: AccelKVM,
			want:  common("kvm", kvmCmdline),
		},
		{
			name:  "tcg with tap",
			accel: AccelTCG,
			tap:   "hvtap5",
			want:  append(common("tcg", tcgCmdline), netArgs...),
		},
		{
			name:  "kvm with tap",
			accel: AccelKVM,
			tap:   "hvtap5",
			want:  append(common("kvm", kvmCmdline), netArgs...),
		},
		{
			name:  "extra args last",
			accel: AccelKVM,
			tap:   "hvtap5",
			extra: []string{"-d", "guest_errors"},
			want:  append(append(common("kvm", kvmCmdline), netArgs...), "-d", "guest_errors"),
		},
		{
			name:   "no root image",
			accel:  AccelKVM,
			noDisk: true,
			want:   common("kvm", kvmCmdline)[:len(common("kvm", kvmCmdline))-4],
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := testLaunch(tc.accel)
			l.Spec.TAP = tc.tap
			l.Spec.MAC = mac
			l.ExtraArgs = tc.extra
			if tc.noDisk {
				l.Disk = ""
			}
			got, err := buildArgs(l)
			if err != nil {
				t.Fatalf("buildArgs: %v", err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got args\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}

func TestKernelCmdline(t *testing.T) {
	tests := []struct {
		name      string
		accel     Accel
		bootArgs  string
		agentArgs []string
		want      string
	}{
		{
			name:  "defaults under tcg",
			accel: AccelTCG,
			want: "console=ttyS0 panic=-1 quiet cryptomgr.notests hearth.transport=serial hearth.port=agent0 " +
				"hearth.modules=virtio_mmio,virtio_blk,virtio_net,virtio_console tsc_early_khz=2596130",
		},
		{
			name:  "defaults under kvm have no tsc",
			accel: AccelKVM,
			want: "console=ttyS0 panic=-1 quiet cryptomgr.notests hearth.transport=serial hearth.port=agent0 " +
				"hearth.modules=virtio_mmio,virtio_blk,virtio_net,virtio_console",
		},
		{
			name:      "caller args replace defaults only",
			accel:     AccelTCG,
			bootArgs:  "console=ttyS0 loglevel=7",
			agentArgs: []string{"hearth_init=1", "hearth.hostname=sb-1"},
			want: "console=ttyS0 loglevel=7 hearth_init=1 hearth.hostname=sb-1 hearth.transport=serial " +
				"hearth.port=agent0 hearth.modules=virtio_mmio,virtio_blk,virtio_net,virtio_console tsc_early_khz=2596130",
		},
		{
			name:      "blank caller args mean defaults",
			accel:     AccelKVM,
			bootArgs:  "   ",
			agentArgs: []string{"ip=172.20.0.2::172.20.0.1:255.255.0.0::eth0:off"},
			want: "console=ttyS0 panic=-1 quiet cryptomgr.notests ip=172.20.0.2::172.20.0.1:255.255.0.0::eth0:off " +
				"hearth.transport=serial hearth.port=agent0 hearth.modules=virtio_mmio,virtio_blk,virtio_net,virtio_console",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := testLaunch(tc.accel)
			l.Spec.BootArgs = tc.bootArgs
			l.Spec.AgentArgs = tc.agentArgs
			got, err := kernelCmdline(l)
			if err != nil {
				t.Fatalf("kernelCmdline: %v", err)
			}
			if got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestKernelCmdlineTCGNeedsTSC(t *testing.T) {
	l := testLaunch(AccelTCG)
	l.TSCKHz = 0
	if _, err := kernelCmdline(l); err == nil {
		t.Fatal("got nil error for tcg without a tsc frequency, want an error")
	}
	l.Accel = AccelKVM
	if _, err := kernelCmdline(l); err != nil {
		t.Errorf("kvm without a tsc frequency: got %v, want nil", err)
	}
}

func TestKernelCmdlineLengthLimit(t *testing.T) {
	l := testLaunch(AccelKVM)
	l.Spec.AgentArgs = nil
	base, err := kernelCmdline(l)
	if err != nil {
		t.Fatal(err)
	}
	// One argument sized so the whole line is exactly n bytes: the
	// argument plus the joining space adds len(arg)+1.
	withLength := func(n int) []string {
		return []string{"x=" + strings.Repeat("a", n-len(base)-1-2)}
	}

	tests := []struct {
		name    string
		length  int
		wantErr bool
	}{
		{"at limit", 2047, false},
		{"one over", 2048, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l.Spec.AgentArgs = withLength(tc.length)
			line, err := kernelCmdline(l)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("got nil error for a %d-byte line, want an error", tc.length)
				}
				if !strings.Contains(err.Error(), "2048 bytes") || !strings.Contains(err.Error(), "2047") {
					t.Errorf("error %q does not name the length and the limit", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("got %v for a %d-byte line, want nil", err, tc.length)
			}
			if len(line) != tc.length {
				t.Fatalf("test setup: line is %d bytes, want %d", len(line), tc.length)
			}
		})
	}
}

func TestSocketPathLimit(t *testing.T) {
	// dir + "/agent.sock" (11 bytes) is the longer of the two sockets.
	dirOf := func(socketLen int) string {
		return "/" + strings.Repeat("d", socketLen-len("/agent.sock")-1)
	}
	tests := []struct {
		name    string
		length  int
		wantErr bool
	}{
		{"107 bytes", 107, false},
		{"108 bytes", 108, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := dirOf(tc.length)
			l := testLaunch(AccelKVM)
			l.Paths = pathsIn(dir)
			l.Disk = ""
			if got := len(l.Paths.Agent); got != tc.length {
				t.Fatalf("test setup: agent socket path is %d bytes, want %d", got, tc.length)
			}
			_, err := buildArgs(l)
			if !tc.wantErr {
				if err != nil {
					t.Errorf("got %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("got nil error, want a socket path error")
			}
			for _, want := range []string{l.Paths.Agent, "107"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func TestBuildArgsRejects(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*launch)
	}{
		{"tap without mac", func(l *launch) { l.Spec.TAP = "hvtap1"; l.Spec.MAC = nil }},
		{"auto accel", func(l *launch) { l.Accel = AccelAuto }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := testLaunch(AccelTCG)
			tc.modify(&l)
			if _, err := buildArgs(l); err == nil {
				t.Error("got nil error, want an error")
			}
		})
	}
}

func TestOptValueEscapesCommas(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"plain", "/run/hearth/a/qmp.sock", "/run/hearth/a/qmp.sock"},
		{"comma", "/run/a,b/qmp.sock", "/run/a,,b/qmp.sock"},
		{"option injection", "x,server=off", "x,,server=off"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := optValue(tc.in); got != tc.want {
				t.Errorf("optValue(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	cfg, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Accel != AccelAuto {
		t.Errorf("Accel = %q, want auto", cfg.Accel)
	}
	if cfg.AgentPort != "agent0" {
		t.Errorf("AgentPort = %q, want agent0", cfg.AgentPort)
	}
	if cfg.QEMU != "qemu-system-x86_64" {
		t.Errorf("QEMU = %q, want qemu-system-x86_64", cfg.QEMU)
	}
	if cfg.ProbeTimeout != DefaultProbeTimeout {
		t.Errorf("ProbeTimeout = %v, want %v", cfg.ProbeTimeout, DefaultProbeTimeout)
	}
	if _, err := (Config{Accel: "hvf"}).withDefaults(); err == nil {
		t.Error("accel hvf: got nil error, want an error")
	}
}
