package guestinit

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const testMountinfo = `22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,size=110000k,mode=755
24 23 0:21 / /dev/pts rw,nosuid,noexec - devpts devpts rw,mode=620,ptmxmode=666
25 22 0:22 / /proc rw,nosuid,nodev,noexec - proc proc rw
26 22 254:16 / /mnt/my\040data rw,relatime shared:3 - ext4 /dev/vdb rw
27 26 254:32 / /mnt/my\040data/inner rw,relatime shared:4 master:1 - xfs /dev/vdc rw
28 22 0:23 / /tmp rw,nosuid,nodev - tmpfs tmpfs rw,mode=1777
`

func TestParseMountinfo(t *testing.T) {
	entries, err := parseMountinfo(strings.NewReader(testMountinfo))
	if err != nil {
		t.Fatalf("parseMountinfo: got error %v, want nil", err)
	}
	if got, want := len(entries), 7; got != want {
		t.Fatalf("entries: got %d, want %d", got, want)
	}
	tests := []struct {
		name  string
		index int
		want  mountEntry
	}{
		{"root", 0, mountEntry{Target: "/", FSType: "ext4", Source: "/dev/vda"}},
		{"escaped space", 4, mountEntry{Target: "/mnt/my data", FSType: "ext4", Source: "/dev/vdb"}},
		{"optional fields", 5, mountEntry{Target: "/mnt/my data/inner", FSType: "xfs", Source: "/dev/vdc"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := entries[tc.index]; got != tc.want {
				t.Errorf("entry %d: got %+v, want %+v", tc.index, got, tc.want)
			}
		})
	}
}

func TestParseMountinfoMalformed(t *testing.T) {
	_, err := parseMountinfo(strings.NewReader("22 1 254:0 / / rw\n"))
	if err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("parseMountinfo: got error %v, want one naming line 1", err)
	}
}

func TestUnmountOrder(t *testing.T) {
	entries, err := parseMountinfo(strings.NewReader(testMountinfo))
	if err != nil {
		t.Fatalf("parseMountinfo: %v", err)
	}
	got := unmountOrder(entries)
	want := []string{"/mnt/my data/inner", "/mnt/my data"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("unmountOrder: got %q, want %q", got, want)
	}
}

func TestFindVirtioPort(t *testing.T) {
	dir := t.TempDir()
	ports := map[string]string{"vport0p0": "", "vport0p1": "agent0\n", "vport0p2": "logs\n"}
	for dev, name := range ports {
		if err := os.MkdirAll(filepath.Join(dir, dev), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dev, "name"), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A port whose name attribute is missing is skipped.
	if err := os.MkdirAll(filepath.Join(dir, "vport1p1"), 0o755); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		classDir string
		port     string
		want     string
		wantErr  error
	}{
		{"named port", dir, "agent0", "vport0p1", nil},
		{"second port", dir, "logs", "vport0p2", nil},
		{"name not there yet", dir, "agent1", "", errPortNotFound},
		{"no class directory", filepath.Join(dir, "missing"), "agent0", "", errPortNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := findVirtioPort(tc.classDir, tc.port)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("findVirtioPort(%q): got error %v, want %v", tc.port, err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("findVirtioPort(%q): got %q, want %q", tc.port, got, tc.want)
			}
		})
	}
}
