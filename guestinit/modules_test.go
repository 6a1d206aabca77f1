package guestinit

import (
	"reflect"
	"strings"
	"testing"
)

// testModulesDep is the trimmed modules.dep of Debian's 6.1 cloud kernel,
// with a compressed module and a comment added.
const testModulesDep = `# trimmed
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko

kernel/drivers/char/hw_random/virtio-rng.ko.xz: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
`

func moduleNames(modules []kernelModule) []string {
	var out []string
	for _, m := range modules {
		out = append(out, m.Name)
	}
	return out
}

func TestParseModulesDep(t *testing.T) {
	modules, err := parseModulesDep(strings.NewReader(testModulesDep))
	if err != nil {
		t.Fatalf("parseModulesDep: got error %v, want nil", err)
	}
	if got, want := len(modules), 8; got != want {
		t.Errorf("module count: got %d, want %d", got, want)
	}
	tests := []struct {
		name string
		want kernelModule
	}{
		{"virtio", kernelModule{Name: "virtio", Path: "kernel/drivers/virtio/virtio.ko"}},
		{"net_failover", kernelModule{Name: "net_failover", Path: "kernel/drivers/net/net_failover.ko",
			Deps: []string{"failover"}}},
		{"virtio_rng", kernelModule{Name: "virtio_rng", Path: "kernel/drivers/char/hw_random/virtio-rng.ko.xz",
			Deps: []string{"virtio_ring", "virtio"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := modules[tc.name]; !reflect.DeepEqual(got, tc.want) {
				t.Errorf("module %s: got %+v, want %+v", tc.name, got, tc.want)
			}
		})
	}
}

func TestParseModulesDepMalformed(t *testing.T) {
	_, err := parseModulesDep(strings.NewReader("kernel/a.ko:\nkernel/b.ko kernel/a.ko\n"))
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("parseModulesDep: got error %v, want one naming line 2", err)
	}
}

func TestModuleName(t *testing.T) {
	tests := map[string]string{
		"virtio_blk":                    "virtio_blk",
		"virtio-rng":                    "virtio_rng",
		"kernel/drivers/virtio-rng.ko":  "virtio_rng",
		"kernel/net/vsock.ko.zst":       "vsock",
		"kernel/fs/ext4/ext4.ko.gz":     "ext4",
		"vmw_vsock_virtio_transport.ko": "vmw_vsock_virtio_transport",
	}
	for in, want := range tests {
		t.Run(in, func(t *testing.T) {
			if got := moduleName(in); got != want {
				t.Errorf("moduleName(%q): got %q, want %q", in, got, want)
			}
		})
	}
}

func TestModuleLoadOrder(t *testing.T) {
	modules, err := parseModulesDep(strings.NewReader(testModulesDep))
	if err != nil {
		t.Fatalf("parseModulesDep: %v", err)
	}
	builtin := map[string]bool{"virtio_console": true}
	tests := []struct {
		name      string
		requested []string
		want      []string
	}{
		{"driver preset", []string{"virtio_mmio", "virtio_blk", "virtio_net", "virtio_console"},
			[]string{"virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "failover", "net_failover", "virtio_net"}},
		{"dependencies first whatever the request order", []string{"virtio_net", "failover"},
			[]string{"failover", "net_failover", "virtio_ring", "virtio", "virtio_net"}},
		{"dash in request", []string{"virtio-rng"}, []string{"virtio_ring", "virtio", "virtio_rng"}},
		{"each module once", []string{"virtio_blk", "virtio_blk", "virtio"},
			[]string{"virtio_ring", "virtio", "virtio_blk"}},
		{"built-in only", []string{"virtio_console"}, nil},
		{"nothing requested", nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			order, err := moduleLoadOrder(modules, builtin, tc.requested)
			if err != nil {
				t.Fatalf("moduleLoadOrder(%v): got error %v, want nil", tc.requested, err)
			}
			if got := moduleNames(order); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("moduleLoadOrder(%v): got %v, want %v", tc.requested, got, tc.want)
			}
		})
	}
}

func TestModuleLoadOrderErrors(t *testing.T) {
	modules := map[string]kernelModule{
		"a":    {Name: "a", Path: "a.ko", Deps: []string{"b"}},
		"b":    {Name: "b", Path: "b.ko", Deps: []string{"a"}},
		"c":    {Name: "c", Path: "c.ko", Deps: []string{"gone"}},
		"solo": {Name: "solo", Path: "solo.ko"},
	}
	tests := []struct {
		name      string
		requested []string
		wantInErr string
	}{
		{"cycle", []string{"a"}, "cycle: a -> b -> a"},
		{"missing dependency", []string{"c"}, "module gone, needed by c"},
		{"unknown module", []string{"solo", "virtio_nope"}, "virtio_nope is neither in modules.dep"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := moduleLoadOrder(modules, nil, tc.requested)
			if err == nil {
				t.Fatalf("moduleLoadOrder(%v): got nil error, want one containing %q", tc.requested, tc.wantInErr)
			}
			if !strings.Contains(err.Error(), tc.wantInErr) {
				t.Errorf("moduleLoadOrder(%v): got error %q, want it to contain %q", tc.requested, err, tc.wantInErr)
			}
		})
	}
}

func TestParseModulesBuiltin(t *testing.T) {
	builtin, err := parseModulesBuiltin(strings.NewReader(
		"kernel/drivers/virtio/virtio_pci.ko\n\nkernel/drivers/char/virtio-console.ko\n"))
	if err != nil {
		t.Fatalf("parseModulesBuiltin: got error %v, want nil", err)
	}
	want := map[string]bool{"virtio_pci": true, "virtio_console": true}
	if !reflect.DeepEqual(builtin, want) {
		t.Errorf("parseModulesBuiltin: got %v, want %v", builtin, want)
	}
}
