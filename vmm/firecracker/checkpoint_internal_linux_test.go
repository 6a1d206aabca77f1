package firecracker

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearthvm/hearth/vmm"
	"github.com/hearthvm/hearth/vmm/firecracker/api"
)

func TestCheckLoadable(t *testing.T) {
	d, err := New(Config{Binary: "firecracker"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec := vmm.Spec{ID: "clone", Dir: t.TempDir(), TAP: "tap-clone"}
	l, err := d.layout(spec)
	if err != nil {
		t.Fatal(err)
	}
	present := filepath.Join(t.TempDir(), "origin.ext4")
	if err := os.WriteFile(present, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	v := func(s string) api.Version {
		ver, err := api.ParseVersion(s)
		if err != nil {
			t.Fatal(err)
		}
		return ver
	}
	tests := []struct {
		name        string
		snap        Snapshot
		wantErr     string
		unsupported bool
	}{
		{"same paths on 1.11", Snapshot{Version: v("1.11.0"), VsockPath: l.vsockAPI, DrivePath: l.diskAPI, TAP: spec.TAP}, "", false},
		{"other vsock on 1.16", Snapshot{Version: v("1.16.0"), VsockPath: "/origin/v.sock", DrivePath: l.diskAPI, TAP: spec.TAP}, "", false},
		{"other vsock on 1.15", Snapshot{Version: v("1.15.1"), VsockPath: "/origin/v.sock", DrivePath: l.diskAPI, TAP: spec.TAP}, "vsock_override", true},
		{"other tap on 1.12", Snapshot{Version: v("1.12.0"), VsockPath: l.vsockAPI, DrivePath: l.diskAPI, TAP: "tap-origin"}, "", false},
		{"other tap on 1.11", Snapshot{Version: v("1.11.0"), VsockPath: l.vsockAPI, DrivePath: l.diskAPI, TAP: "tap-origin"}, "network_overrides", true},
		{"other drive present", Snapshot{Version: v("1.16.1"), VsockPath: l.vsockAPI, DrivePath: present, TAP: spec.TAP}, "", false},
		{"other drive gone", Snapshot{Version: v("1.16.1"), VsockPath: l.vsockAPI, DrivePath: present + ".gone", TAP: spec.TAP}, "cannot override", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := d.checkLoadable(spec, l, tc.snap)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("got %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error naming %q", err, tc.wantErr)
			}
			if got := errors.Is(err, api.ErrUnsupported); got != tc.unsupported {
				t.Errorf("errors.Is(err, api.ErrUnsupported): got %v, want %v", got, tc.unsupported)
			}
		})
	}
}

func TestRestoreSpec(t *testing.T) {
	cfg := snapshotConfig{VCPUs: 2, MemoryMiB: 256, TAP: "tap-origin", MAC: "06:00:ac:10:00:02"}
	tests := []struct {
		name    string
		spec    vmm.Spec
		cfg     snapshotConfig
		wantErr string
	}{
		{"fills in the snapshot's size", vmm.Spec{TAP: "tap-clone"}, cfg, ""},
		{"other vcpus", vmm.Spec{VCPUs: 1, TAP: "tap-clone"}, cfg, "use the snapshot's values"},
		{"no tap for a snapshot with one", vmm.Spec{}, cfg, "restore with a tap"},
		{"tap for a snapshot without one", vmm.Spec{TAP: "tap-clone"}, snapshotConfig{VCPUs: 2, MemoryMiB: 256}, "restore without a tap"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := restoreSpec(tc.spec, tc.cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.VCPUs != 2 || got.MemoryMiB != 256 || got.MAC.String() != cfg.MAC {
				t.Errorf("spec: got %d vcpus, %d MiB, mac %s; want 2, 256, %s", got.VCPUs, got.MemoryMiB, got.MAC, cfg.MAC)
			}
		})
	}
}
