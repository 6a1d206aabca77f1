package qemu

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/hearthvm/hearth/vmm"
)

func TestCopyFileKeepsHoles(t *testing.T) {
	const size = 16 << 20
	data := []struct {
		off int64
		b   []byte
	}{
		{0, bytes.Repeat([]byte{1}, 4096)},
		{5 << 20, bytes.Repeat([]byte{2}, 64<<10)},
		{size - 4096, bytes.Repeat([]byte{3}, 4096)},
	}
	cases := []struct {
		name string
		open func(t *testing.T) *os.File
	}{
		{"file on the same filesystem", func(t *testing.T) *os.File {
			f, err := os.Create(filepath.Join(t.TempDir(), "src"))
			if err != nil {
				t.Fatal(err)
			}
			return f
		}},
		{"memfd", func(t *testing.T) *os.File {
			f, err := newGuestMemory("test", 0)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := tc.open(t)
			defer src.Close()
			if err := src.Truncate(size); err != nil {
				t.Fatal(err)
			}
			for _, d := range data {
				if _, err := src.WriteAt(d.b, d.off); err != nil {
					t.Fatal(err)
				}
			}
			dst := filepath.Join(t.TempDir(), "dst")

			if err := copyFile(src, dst, true); err != nil {
				t.Fatalf("copyFile: %v", err)
			}
			got, err := os.ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			want := make([]byte, size)
			for _, d := range data {
				copy(want[d.off:], d.b)
			}
			if !bytes.Equal(got, want) {
				t.Error("copy differs from the source")
			}
			var st syscall.Stat_t
			if err := syscall.Stat(dst, &st); err != nil {
				t.Fatal(err)
			}
			// 72 KiB of data; a filesystem may allocate somewhat more.
			if allocated := st.Blocks * 512; allocated > 1<<20 {
				t.Errorf("copy allocates %d bytes, want at most 1 MiB (holes kept)", allocated)
			}
		})
	}
}

func TestCopyFileKeepsExistingTarget(t *testing.T) {
	src, err := os.Create(filepath.Join(t.TempDir(), "src"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst := filepath.Join(t.TempDir(), "dst")
	if err := os.WriteFile(dst, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}

	if err := copyFile(src, dst, false); !errors.Is(err, os.ErrExist) {
		t.Errorf("copyFile onto an existing file: got %v, want an error wrapping os.ErrExist", err)
	}
	if b, err := os.ReadFile(dst); err != nil || string(b) != "keep" {
		t.Errorf("existing target holds %q (%v), want %q", b, err, "keep")
	}
}

func TestRestoreSpec(t *testing.T) {
	mac := "02:fc:00:00:00:07"
	withNet := snapshotConfig{VCPUs: 1, MemoryMiB: 256, Net: true, MAC: mac}
	noNet := snapshotConfig{VCPUs: 1, MemoryMiB: 256}
	otherMAC, _ := net.ParseMAC("02:fc:00:00:00:09")

	cases := []struct {
		name    string
		spec    vmm.Spec
		cfg     snapshotConfig
		wantMAC string
		wantErr string
	}{
		{"sizes from the snapshot", vmm.Spec{}, noNet, "", ""},
		{"equal sizes", vmm.Spec{VCPUs: 1, MemoryMiB: 256}, noNet, "", ""},
		{"other memory size", vmm.Spec{MemoryMiB: 512}, noNet, "", "512 MiB"},
		{"other vcpus", vmm.Spec{VCPUs: 2}, noNet, "", "2 vcpus"},
		{"snapshot mac kept", vmm.Spec{TAP: "tap1", MAC: otherMAC}, withNet, mac, ""},
		{"network without tap", vmm.Spec{}, withNet, mac, ""},
		{"tap without network device", vmm.Spec{TAP: "tap1", MAC: otherMAC}, noNet, "", "no network device"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.spec.RootImage = "/images/other.ext4"
			got, err := restoreSpec(tc.spec, tc.cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("restoreSpec: %v", err)
			}
			if got.VCPUs != tc.cfg.VCPUs || got.MemoryMiB != tc.cfg.MemoryMiB {
				t.Errorf("got %d vcpus and %d MiB, want %d and %d", got.VCPUs, got.MemoryMiB, tc.cfg.VCPUs, tc.cfg.MemoryMiB)
			}
			if got.MAC.String() != tc.wantMAC {
				t.Errorf("mac: got %q, want %q", got.MAC, tc.wantMAC)
			}
			if got.RootImage != "" {
				t.Errorf("root image: got %q, want none (the disk comes from the snapshot)", got.RootImage)
			}
		})
	}
}

func TestSnapshotPath(t *testing.T) {
	cases := []struct {
		name, file string
		ok         bool
	}{
		{"plain name", "state", true},
		{"empty", "", false},
		{"absolute", "/etc/passwd", false},
		{"parent", "..", false},
		{"into parent", "../state", false},
		{"subdirectory", "a/state", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := snapshotPath("/snaps/s1", "state", tc.file)
			if tc.ok && (err != nil || got != "/snaps/s1/"+tc.file) {
				t.Errorf("got %q, %v, want /snaps/s1/%s", got, err, tc.file)
			}
			if !tc.ok && err == nil {
				t.Errorf("got %q, want an error", got)
			}
		})
	}
}

func TestReadSnapshotConfigRejects(t *testing.T) {
	cases := []struct {
		name, content, wantErr string
	}{
		{"missing", "", "no such file"},
		{"garbage", "not json", "parse snapshot config"},
		{"other format", `{"format": 2}`, "format 2"},
		{"no memory size", `{"format": 1, "vcpus": 1, "agent_port": "agent0", "accel": "tcg"}`, "incomplete"},
		{"invalid accel", `{"format": 1, "vcpus": 1, "memory_mib": 64, "agent_port": "agent0", "accel": "auto"}`, "invalid accel"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.content != "" {
				if err := os.WriteFile(filepath.Join(dir, snapConfigFile), []byte(tc.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := readSnapshotConfig(dir)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("got %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestBuildArgsSnapshotOptions(t *testing.T) {
	mac, _ := net.ParseMAC("02:fc:00:00:00:05")
	cases := []struct {
		name   string
		modify func(*launch)
		want   [][]string // argument sequences that must appear
		absent []string
	}{
		{
			name:   "anonymous memory",
			modify: func(l *launch) {},
			absent: []string{"-object", "-incoming"},
		},
		{
			name: "shared memory file",
			modify: func(l *launch) {
				l.Memory = memoryBackend{Path: memFilePath, Shared: true}
			},
			want: [][]string{
				{"-object", "memory-backend-file,id=mem,size=256M,mem-path=/proc/self/fd/3,share=on"},
				{"-machine", "memory-backend=mem"},
			},
		},
		{
			name: "restore",
			modify: func(l *launch) {
				l.Memory = memoryBackend{Path: "/snaps/a,b/memory"}
				l.Incoming = true
				l.NetNoBackend = true
				l.Spec.MAC = mac
			},
			want: [][]string{
				{"-object", "memory-backend-file,id=mem,size=256M,mem-path=/snaps/a,,b/memory,share=off"},
				{"-device", "virtio-net-device,mac=02:fc:00:00:00:05"},
				{"-incoming", "defer"},
			},
			absent: []string{"-netdev"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := testLaunch(AccelTCG)
			tc.modify(&l)
			args, err := buildArgs(l)
			if err != nil {
				t.Fatalf("buildArgs: %v", err)
			}
			for _, seq := range tc.want {
				if !containsSequence(args, seq) {
					t.Errorf("args %q lack %q", args, seq)
				}
			}
			for _, a := range tc.absent {
				if slices.Contains(args, a) {
					t.Errorf("args %q contain %q", args, a)
				}
			}
		})
	}
}

func containsSequence(args, seq []string) bool {
	for i := range args {
		if slices.Equal(args[i:min(i+len(seq), len(args))], seq) {
			return true
		}
	}
	return false
}

// TestCheckpointRestoreHaltedGuest checkpoints and restores a machine
// whose guest only halts, so it runs without the boot assets.
func TestCheckpointRestoreHaltedGuest(t *testing.T) {
	d := newTCGDriver(t)
	spec := fakeSpec(t, shortTempDir(t), multibootKernel(t, false))
	vm, err := d.Boot(t.Context(), spec)
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	origin := vm.(*Machine)
	t.Cleanup(func() { origin.Kill() })

	snapDir := t.TempDir()
	snap, err := origin.Checkpoint(t.Context(), snapDir)
	if err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	if got := queryStatus(t, origin); got != "running" {
		t.Errorf("origin after Checkpoint: got %q, want running", got)
	}

	// A paused machine stays paused.
	if err := origin.Pause(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := origin.Checkpoint(t.Context(), t.TempDir()); err != nil {
		t.Fatalf("Checkpoint of a paused machine: %v", err)
	}
	// QEMU reports a stopped machine after a completed migration as
	// postmigrate; cont resumes it from there as from paused.
	if got := queryStatus(t, origin); got != "postmigrate" {
		t.Errorf("paused origin after Checkpoint: got %q, want postmigrate", got)
	}
	if err := origin.Resume(t.Context()); err != nil {
		t.Fatalf("Resume after Checkpoint of a paused machine: %v", err)
	}
	if got := queryStatus(t, origin); got != "running" {
		t.Errorf("origin after Resume: got %q, want running", got)
	}

	cloneSpec := fakeSpec(t, shortTempDir(t), spec.Kernel)
	cloneSpec.MemoryMiB = 0
	vm, err = d.Restore(t.Context(), cloneSpec, snapDir, snap)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	clone := vm.(*Machine)
	t.Cleanup(func() { clone.Kill() })
	if got := queryStatus(t, clone); got != "running" {
		t.Errorf("clone after Restore: got %q, want running", got)
	}
	if got, want := backingFile(t, filepath.Join(cloneSpec.Dir, overlayFile)), filepath.Join(snapDir, snapDiskFile); got != want {
		t.Errorf("clone disk backing file: got %q, want %q", got, want)
	}

	// The clone's snapshot carries the RAM in its stream and restores
	// into a machine that runs on a memfd again.
	snapDir2 := t.TempDir()
	snap2, err := clone.Checkpoint(t.Context(), snapDir2)
	if err != nil {
		t.Fatalf("Checkpoint of the clone: %v", err)
	}
	if snap2.MemoryFile != "" {
		t.Errorf("memory file of the clone's snapshot: got %q, want none", snap2.MemoryFile)
	}
	if got := backingFile(t, filepath.Join(snapDir2, snap2.DiskFile)); got != spec.RootImage {
		t.Errorf("disk backing file of the clone's snapshot: got %q, want %q", got, spec.RootImage)
	}
	spec3 := fakeSpec(t, shortTempDir(t), spec.Kernel)
	vm, err = d.Restore(t.Context(), spec3, snapDir2, snap2)
	if err != nil {
		t.Fatalf("Restore from the clone's snapshot: %v", err)
	}
	clone2 := vm.(*Machine)
	if clone2.memFile == nil {
		t.Error("machine restored from a stream with RAM has no memfd")
	}
	checkKill(t, clone2, spec3.Dir)
	checkKill(t, clone, cloneSpec.Dir)
}
