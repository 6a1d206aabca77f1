package firecracker

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hearthvm/hearth/vmm"
)

func TestBootArgs(t *testing.T) {
	tests := []struct {
		name string
		spec vmm.Spec
		want string
	}{
		{"defaults", vmm.Spec{}, DefaultBootArgs + " " + driverArgs},
		{"caller args replace defaults", vmm.Spec{BootArgs: "console=ttyS0 reboot=k quiet"},
			"console=ttyS0 reboot=k quiet " + driverArgs},
		{"agent args before driver args", vmm.Spec{AgentArgs: []string{"hearth_init=1", "hearth.hostname=a"}},
			DefaultBootArgs + " hearth_init=1 hearth.hostname=a " + driverArgs},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := BootArgs(tc.spec); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestValidateID(t *testing.T) {
	tests := []struct {
		id    string
		valid bool
	}{
		{"sandbox-1", true},
		{"A1", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"", false},
		{"under_score", false},
		{"dot.ted", false},
		{"slash/ed", false},
	}
	for _, tc := range tests {
		t.Run(tc.id, func(t *testing.T) {
			if err := ValidateID(tc.id); (err == nil) != tc.valid {
				t.Errorf("ValidateID(%q): got %v, want valid %v", tc.id, err, tc.valid)
			}
		})
	}
}

func TestCheckSocketPaths(t *testing.T) {
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
			p := "/" + strings.Repeat("s", tc.length-1)
			err := checkSocketPaths(p)
			if (err != nil) != tc.wantErr {
				t.Fatalf("got %v, want error %v", err, tc.wantErr)
			}
			if err != nil && (!strings.Contains(err.Error(), "107") || !strings.Contains(err.Error(), p)) {
				t.Errorf("error %q: want it to name the limit and the path", err)
			}
		})
	}
	if got := socketPaths("/d/api.sock", "/d/v.sock"); got[2] != "/d/v.sock_54" {
		t.Errorf("largest port socket: got %q, want /d/v.sock_54", got[2])
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"defaults", Config{}, false},
		{"seccomp both", Config{NoSeccomp: true, SeccompFilter: "/f.bpf"}, true},
		{"bad level", Config{LogLevel: "Verbose"}, true},
		{"bad cgroup version", Config{Jailer: &JailerConfig{CgroupVersion: 3}}, true},
		{"parent cgroup escapes", Config{Jailer: &JailerConfig{ParentCgroup: "a/../b"}}, true},
		{"absolute parent cgroup", Config{Jailer: &JailerConfig{ParentCgroup: "/a"}}, true},
		{"parent cgroup ok", Config{Jailer: &JailerConfig{ParentCgroup: "hearth/vms"}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.withDefaults().validate()
			if (err != nil) != tc.wantErr {
				t.Errorf("got %v, want error %v", err, tc.wantErr)
			}
		})
	}
}

func TestCopyImageKeepsHoles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("data in the middle")
	f.WriteAt(data, 32<<20)
	f.Truncate(64 << 20)
	f.Close()

	dst := filepath.Join(dir, "dst.img")
	if err := copyImage(src, dst, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 64<<20 {
		t.Fatalf("size: got %d, want %d", len(got), 64<<20)
	}
	if string(got[32<<20:32<<20+len(data)]) != string(data) {
		t.Errorf("content at 32 MiB: got %q, want %q", got[32<<20:32<<20+len(data)], data)
	}
	fi, _ := os.Stat(dst)
	if blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512; blocks > 4<<20 {
		t.Errorf("allocated: got %d bytes, want under 4 MiB (holes kept)", blocks)
	}
	if err := copyImage(src, dst, 0o600); !errors.Is(err, os.ErrExist) {
		t.Errorf("copy onto existing file: got %v, want ErrExist", err)
	}
}

func TestSelectDriver(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		binary string
		kvm    error
		want   string
	}{
		{"binary missing", "/nonexistent/firecracker", nil, "qemu"},
		{"kvm unusable", self, errors.New("no SSE3"), "qemu"},
		{"both present", self, nil, "firecracker"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := SelectDriver(tc.binary, func() error { return tc.kvm })
			if got.Driver != tc.want {
				t.Errorf("driver: got %q (%s), want %q", got.Driver, got.Reason, tc.want)
			}
			if got.Reason == "" {
				t.Error("reason: got empty, want an explanation")
			}
		})
	}
}
