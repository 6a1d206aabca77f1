package sandbox_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/sandbox"
	"github.com/hearthvm/hearth/vmm/firecracker/api"
)

// The Firecracker double's guest is an agent process whose root file
// system is a tmpfs, and the double's snapshot carries that tmpfs in the
// memory file, as guest RAM. So these tests can show that a file the
// guest wrote before the checkpoint is in every clone. They cannot show
// that processes, open files or kernel state survive: a restored double
// runs a new agent process. The double's guest does not mount the root
// disk, so the tests write it from the host to show that each clone gets
// its own copy of the snapshot's disk.

func TestFirecrackerSnapshot(t *testing.T) {
	tools := buildFCTools(t)
	for _, tc := range []struct {
		name   string
		jailed bool
	}{
		{"direct", false},
		{"jailer", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testCheckpointRestore(t, tools, fcSetup{jailed: tc.jailed})
		})
	}
	t.Run("1.15.1", func(t *testing.T) {
		testRestoreWithoutVsockOverride(t, tools)
	})
}

// guestOutput runs argv in the sandbox and returns its standard output,
// failing the test unless it exits 0.
func guestOutput(t *testing.T, m *fcManager, id string, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code, err := m.Exec(ctx, id, agentproto.StartRequest{Cmd: argv}, agentclient.ExecIO{Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		t.Fatalf("exec %q in %s: %v (stderr %q)", argv, id, err, stderr.String())
	}
	if code != 0 {
		t.Fatalf("exec %q in %s: exit code %d, want 0 (stderr %q)", argv, id, code, stderr.String())
	}
	return stdout.String()
}

func createFCReady(t *testing.T, m *fcManager, id string) sandbox.Info {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := m.Create(ctx, sandbox.CreateOptions{ID: id, Network: sandbox.NetworkNone}); err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
	sb, err := m.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.WaitReady(ctx); err != nil {
		t.Fatalf("wait for %s: %v", id, err)
	}
	return sb.Info()
}

func restoreFC(t *testing.T, m *fcManager, id, snapID string) sandbox.Info {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, err := m.Restore(ctx, sandbox.RestoreOptions{ID: id, SnapshotID: snapID})
	if err != nil {
		t.Fatalf("restore %s from %s: %v", id, snapID, err)
	}
	if info.State != sandbox.StateReady {
		t.Fatalf("state of %s after restore: got %s, want %s", id, info.State, sandbox.StateReady)
	}
	return info
}

func checkpointFC(t *testing.T, m *fcManager, id string) sandbox.SnapshotInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	snap, err := m.Checkpoint(ctx, id, "warm", map[string]string{"test": "fc"})
	if err != nil {
		t.Fatalf("checkpoint %s: %v", id, err)
	}
	return snap
}

func removeFC(t *testing.T, m *fcManager, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, err := m.Inspect(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(ctx, id, true); err != nil {
		t.Fatalf("remove %s: %v", id, err)
	}
	for _, p := range m.sandboxFiles(info) {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s of %s after remove: got present (err %v), want removed", p, id, err)
		}
	}
}

// diskMarker is written into a disk by the host, standing in for a guest
// write, at diskMarkerOffset.
const diskMarkerOffset = 4096

func writeDisk(t *testing.T, path, marker string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte(marker), diskMarkerOffset); err != nil {
		t.Fatal(err)
	}
}

func readDisk(t *testing.T, path string, n int) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, diskMarkerOffset); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return string(b)
}

func testCheckpointRestore(t *testing.T, tools fcTools, setup fcSetup) {
	m := newFCManager(t, tools, setup)
	// Short ids and test names keep the jail's socket paths within
	// sun_path.
	const origin, cloneA, cloneB, cloneC = "fcs-origin", "fcs-a", "fcs-b", "fcs-c"

	originInfo := createFCReady(t, m, origin)
	guestOutput(t, m, origin, "sh", "-c", "echo kept > /root/marker")
	writeDisk(t, filepath.Join(originInfo.Dir, "rootfs.ext4"), "origin-disk")

	snap := checkpointFC(t, m, origin)
	t.Run("snapshot record", func(t *testing.T) {
		vm := snap.VM
		if vm.Backend != "firecracker" || vm.BackendVersion != "1.16.1" || vm.DiskFormat != "raw" {
			t.Errorf("backend, version, disk format: got %q %q %q, want firecracker 1.16.1 raw",
				vm.Backend, vm.BackendVersion, vm.DiskFormat)
		}
		for _, name := range []string{vm.StateFile, vm.MemoryFile, vm.DiskFile} {
			if _, ok := vm.Files[name]; !ok || name == "" {
				t.Errorf("files %v: want %q listed", vm.Files, name)
			}
		}
		for name, size := range vm.Files {
			st, err := os.Stat(filepath.Join(snap.Dir, name))
			if err != nil {
				t.Errorf("snapshot file %s: %v", name, err)
				continue
			}
			if st.Size() != size {
				t.Errorf("snapshot file %s: got %d bytes, want the recorded %d", name, st.Size(), size)
			}
		}
		if got, want := vm.Files[vm.MemoryFile], int64(snap.MemoryMiB)<<20; got != want {
			t.Errorf("memory file: got %d bytes, want %d for %d MiB", got, want, snap.MemoryMiB)
		}
		if vm.Took <= 0 {
			t.Errorf("took: got %s, want the pause's length", vm.Took)
		}
		if got := readDisk(t, filepath.Join(snap.Dir, vm.DiskFile), len("origin-disk")); got != "origin-disk" {
			t.Errorf("snapshot disk: got %q at the marker, want the origin's %q", got, "origin-disk")
		}
	})
	// The origin runs on after the checkpoint.
	if got := guestOutput(t, m, origin, "cat", "/root/marker"); got != "kept\n" {
		t.Errorf("origin's marker after checkpoint: got %q, want %q", got, "kept\n")
	}

	// The first clone is restored while the origin runs, with its vsock
	// socket and disk in use; the second after the origin is gone.
	a := restoreFC(t, m, cloneA, snap.ID)
	removeFC(t, m, origin)
	b := restoreFC(t, m, cloneB, snap.ID)
	for _, id := range []string{cloneA, cloneB} {
		if got := guestOutput(t, m, id, "cat", "/root/marker"); got != "kept\n" {
			t.Errorf("%s: /root/marker got %q, want %q written before the checkpoint", id, got, "kept\n")
		}
	}

	t.Run("own disk copies", func(t *testing.T) {
		diskA, diskB := filepath.Join(a.Dir, "rootfs.ext4"), filepath.Join(b.Dir, "rootfs.ext4")
		for _, p := range []string{diskA, diskB} {
			if got := readDisk(t, p, len("origin-disk")); got != "origin-disk" {
				t.Errorf("%s: got %q at the marker, want the snapshot's %q", p, got, "origin-disk")
			}
		}
		writeDisk(t, diskA, "clone-a-dsk")
		if got := readDisk(t, diskB, len("origin-disk")); got != "origin-disk" {
			t.Errorf("%s after a write to %s: got %q, want %q", diskB, diskA, got, "origin-disk")
		}
		if got := readDisk(t, filepath.Join(snap.Dir, snap.VM.DiskFile), len("origin-disk")); got != "origin-disk" {
			t.Errorf("snapshot disk after a write to a clone's disk: got %q, want %q", got, "origin-disk")
		}
	})

	t.Run("list", func(t *testing.T) {
		got := m.ListSnapshots(sandbox.SnapshotFilter{SandboxID: origin, Labels: map[string]string{"test": "fc"}})
		if len(got) != 1 || got[0].ID != snap.ID || got[0].Dir != snap.Dir {
			t.Errorf("snapshots of %s: got %+v, want only %s", origin, got, snap.ID)
		}
	})

	t.Run("delete refused while clones run", func(t *testing.T) {
		err := m.DeleteSnapshot(snap.ID)
		if !errors.Is(err, sandbox.ErrWrongState) {
			t.Fatalf("delete: got %v, want ErrWrongState", err)
		}
		if !strings.Contains(err.Error(), cloneA) || !strings.Contains(err.Error(), cloneB) {
			t.Errorf("error %q: want it to name %s and %s", err, cloneA, cloneB)
		}
		if _, err := os.Stat(filepath.Join(snap.Dir, snap.VM.MemoryFile)); err != nil {
			t.Errorf("memory file after the refused delete: %v", err)
		}
	})

	// A clone checkpoints and restores like any sandbox; what it wrote
	// after its own restore is in its clone too.
	guestOutput(t, m, cloneA, "sh", "-c", "echo second > /root/second")
	snap2 := checkpointFC(t, m, cloneA)
	if snap2.SandboxID != cloneA {
		t.Errorf("second snapshot's origin: got %q, want %q", snap2.SandboxID, cloneA)
	}
	restoreFC(t, m, cloneC, snap2.ID)
	if got := guestOutput(t, m, cloneC, "cat", "/root/marker", "/root/second"); got != "kept\nsecond\n" {
		t.Errorf("%s: markers got %q, want %q", cloneC, got, "kept\nsecond\n")
	}
	if got := guestOutput(t, m, cloneA, "cat", "/root/marker"); got != "kept\n" {
		t.Errorf("%s after its checkpoint: /root/marker got %q, want %q", cloneA, got, "kept\n")
	}

	t.Run("delete after the clones are removed", func(t *testing.T) {
		removeFC(t, m, cloneA)
		removeFC(t, m, cloneB)
		if err := m.DeleteSnapshot(snap.ID); err != nil {
			t.Fatalf("delete %s: %v", snap.ID, err)
		}
		if _, err := os.Stat(snap.Dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after delete: got %v, want removed", snap.Dir, err)
		}
		// The second snapshot owes nothing to the first.
		if got := guestOutput(t, m, cloneC, "cat", "/root/marker"); got != "kept\n" {
			t.Errorf("%s after the first snapshot was deleted: got %q, want %q", cloneC, got, "kept\n")
		}
		if err := m.DeleteSnapshot(snap2.ID); !errors.Is(err, sandbox.ErrWrongState) {
			t.Errorf("delete %s while %s runs: got %v, want ErrWrongState", snap2.ID, cloneC, err)
		}
		removeFC(t, m, cloneC)
		if err := m.DeleteSnapshot(snap2.ID); err != nil {
			t.Fatalf("delete %s: %v", snap2.ID, err)
		}
		entries, err := os.ReadDir(filepath.Dir(snap.Dir))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			t.Errorf("left in the snapshot catalog: %s", e.Name())
		}
		if n := len(m.ListSnapshots(sandbox.SnapshotFilter{})); n != 0 {
			t.Errorf("catalog: got %d snapshots, want 0", n)
		}
		if pids := m.doubleProcessesAfterExit(); len(pids) > 0 {
			t.Errorf("processes: got %v, want none", pids)
		}
	})
}

// testRestoreWithoutVsockOverride uses a double that claims 1.15.1,
// which has no vsock_override. In direct mode a clone's vsock socket is
// in its own directory, so the restore must fail before anything starts;
// under the jailer every jail has the same relative paths and the restore
// needs no override.
func testRestoreWithoutVsockOverride(t *testing.T, tools fcTools) {
	for _, tc := range []struct {
		name    string
		jailed  bool
		wantErr bool
	}{
		{"direct", false, true},
		{"jailer", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newFCManager(t, tools, fcSetup{jailed: tc.jailed, doubleArgs: []string{"--claim-version", "1.15.1"}})
			createFCReady(t, m, "fco-origin")
			guestOutput(t, m, "fco-origin", "sh", "-c", "echo kept > /root/marker")
			snap := checkpointFC(t, m, "fco-origin")
			if snap.VM.BackendVersion != "1.15.1" {
				t.Errorf("backend version: got %q, want 1.15.1", snap.VM.BackendVersion)
			}
			before := m.doubleProcesses()

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			info, err := m.Restore(ctx, sandbox.RestoreOptions{ID: "fco-clone", SnapshotID: snap.ID})
			if !tc.wantErr {
				if err != nil {
					t.Fatalf("restore: %v", err)
				}
				if got := guestOutput(t, m, "fco-clone", "cat", "/root/marker"); got != "kept\n" {
					t.Errorf("clone's /root/marker: got %q, want %q", got, "kept\n")
				}
				return
			}
			if err == nil {
				t.Fatalf("restore: got a %s clone, want an error naming vsock_override", info.State)
			}
			if !errors.Is(err, api.ErrUnsupported) || !strings.Contains(err.Error(), "vsock_override") {
				t.Errorf("restore error %q: want api.ErrUnsupported naming vsock_override", err)
			}
			if info.State != sandbox.StateFailed {
				t.Errorf("clone state: got %s, want %s", info.State, sandbox.StateFailed)
			}
			after := m.doubleProcesses()
			slices.Sort(before)
			slices.Sort(after)
			if !slices.Equal(before, after) {
				t.Errorf("processes of the doubles: got %v after the failed restore, want the origin's %v", after, before)
			}
			if got := guestOutput(t, m, "fco-origin", "cat", "/root/marker"); got != "kept\n" {
				t.Errorf("origin after the failed restore: got %q, want %q", got, "kept\n")
			}
			removeFC(t, m, "fco-clone")
		})
	}
}
