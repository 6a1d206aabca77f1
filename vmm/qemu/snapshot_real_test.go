package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/vmm"
)

// counterScript writes /root/file and starts a loop that writes an
// increasing number to /tmp/counter ten times a second.
const counterScript = `echo hello > /root/file; (i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done) >/dev/null 2>&1 &`

// guestExec runs script with /bin/sh in the guest and returns its
// combined output and exit code.
func guestExec(ctx context.Context, m *Machine, script string) (string, int32, error) {
	conn, err := m.DialAgent(ctx, agentproto.PortExec)
	if err != nil {
		return "", 0, err
	}
	var out bytes.Buffer
	req := agentproto.StartRequest{Cmd: []string{"/bin/sh", "-c", script}}
	res, err := agentclient.Exec(ctx, conn, req, agentclient.ExecIO{Stdout: &out, Stderr: &out})
	return out.String(), res.Code, err
}

// mustExec runs script and fails the test unless it exits with 0.
func mustExec(t *testing.T, ctx context.Context, m *Machine, script string) string {
	t.Helper()
	out, code, err := guestExec(ctx, m, script)
	if err != nil {
		t.Fatalf("exec %q in %s: %v", script, m.id, err)
	}
	if code != 0 {
		t.Fatalf("exec %q in %s: exit code %d, want 0; output: %s", script, m.id, code, out)
	}
	return out
}

func readCounter(t *testing.T, ctx context.Context, m *Machine) int {
	t.Helper()
	out := mustExec(t, ctx, m, "cat /tmp/counter")
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("counter of %s is %q, want a number", m.id, out)
	}
	return n
}

// waitAgent pings the agent until it answers or ctx ends.
func waitAgent(t *testing.T, ctx context.Context, m *Machine) {
	t.Helper()
	var err error
	for ctx.Err() == nil {
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = pingAgent(attempt, m)
		cancel()
		if err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("agent of %s did not answer: %v; console ends with: %s", m.id, err, readTail(m.ConsolePath(), 2048))
}

func guestSpec(t *testing.T, id string) vmm.Spec {
	kernel, initrd, rootfs := guestAssets(t)
	return vmm.Spec{
		ID:        id,
		Dir:       shortTempDir(t),
		VCPUs:     1,
		MemoryMiB: 256,
		Kernel:    kernel,
		Initrd:    initrd,
		RootImage: rootfs,
		AgentArgs: []string{"hearth_init=1", "hearth.root=/dev/vda", "hearth.hostname=" + id},
	}
}

// restoreReady restores a machine from snapDir and waits for its agent.
// It logs the time to the first agent answer.
func restoreReady(t *testing.T, ctx context.Context, d *Driver, id, snapDir string, snap vmm.Snapshot) *Machine {
	t.Helper()
	spec := guestSpec(t, id)
	spec.VCPUs, spec.MemoryMiB = 0, 0 // taken from the snapshot
	began := time.Now()
	vm, err := d.Restore(ctx, spec, snapDir, snap)
	if err != nil {
		t.Fatalf("Restore %s: %v", id, err)
	}
	m := vm.(*Machine)
	t.Cleanup(func() { m.Kill() })
	returned := time.Since(began)
	waitAgent(t, ctx, m)
	t.Logf("restore %s: Restore returned after %v, first agent answer after %v",
		id, returned.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	return m
}

// backingFile returns the backing file recorded in a qcow2 image.
func backingFile(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command(DefaultQEMUImg, "info", "-U", "--output=json", path).Output()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v", path, err)
	}
	var info struct {
		Backing string `json:"full-backing-filename"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("parse qemu-img info: %v", err)
	}
	return info.Backing
}

// TestRealSnapshot boots one origin guest and checkpoints and restores it
// several ways. The subtests share the machines and run in order.
func TestRealSnapshot(t *testing.T) {
	requireQEMU(t)
	_, _, rootfs := guestAssets(t)
	d, err := New(Config{Accel: AccelTCG, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	// Under TCG on a loaded 2-core host a boot takes a few seconds; the
	// deadline only bounds a hung guest.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()

	vm, err := d.Boot(ctx, guestSpec(t, "snap-origin"))
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	origin := vm.(*Machine)
	t.Cleanup(func() { origin.Kill() })
	waitAgent(t, ctx, origin)
	mustExec(t, ctx, origin, counterScript)
	for readCounter(t, ctx, origin) < 5 {
		time.Sleep(100 * time.Millisecond)
	}

	snapDir := shortTempDir(t)
	atCheckpoint := readCounter(t, ctx, origin)
	snap, err := origin.Checkpoint(ctx, snapDir)
	if err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	t.Logf("checkpoint of the origin: paused for %v, files %v", snap.Took.Round(time.Millisecond), snap.Files)
	mustExec(t, ctx, origin, "echo later > /root/after")

	t.Run("snapshot metadata", func(t *testing.T) {
		checks := []struct {
			name, got, want string
		}{
			{"backend", snap.Backend, "qemu"},
			{"backend version", snap.BackendVersion, origin.QMP().Version().String()},
			{"state file", snap.StateFile, snapStateFile},
			{"memory file", snap.MemoryFile, snapMemoryFile},
			{"disk file", snap.DiskFile, snapDiskFile},
			{"disk format", snap.DiskFormat, "qcow2"},
			{"disk backing file", backingFile(t, filepath.Join(snapDir, snap.DiskFile)), rootfs},
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("%s: got %q, want %q", c.name, c.got, c.want)
			}
		}
		if snap.Took <= 0 {
			t.Errorf("took: got %v, want more than 0", snap.Took)
		}
		names := dirEntries(t, snapDir)
		if len(names) != len(snap.Files) {
			t.Errorf("snapshot directory has %v, files lists %v", names, snap.Files)
		}
		for _, name := range names {
			st, err := os.Stat(filepath.Join(snapDir, name))
			if err != nil {
				t.Fatal(err)
			}
			if size, ok := snap.Files[name]; !ok || size != st.Size() {
				t.Errorf("files[%q]: got %d (listed %v), want %d", name, size, ok, st.Size())
			}
		}
		if got, want := snap.Files[snapMemoryFile], int64(256<<20); got != want {
			t.Errorf("memory file size: got %d, want %d", got, want)
		}
	})

	clone1 := restoreReady(t, ctx, d, "snap-clone1", snapDir, snap)
	clone2 := restoreReady(t, ctx, d, "snap-clone2", snapDir, snap)
	machines := []*Machine{origin, clone1, clone2}

	t.Run("clones keep memory and disk", func(t *testing.T) {
		for _, m := range []*Machine{clone1, clone2} {
			first := readCounter(t, ctx, m)
			if first < atCheckpoint || first > atCheckpoint+100 {
				t.Errorf("%s: counter right after restore is %d, want about %d (the value at checkpoint)", m.id, first, atCheckpoint)
			}
			time.Sleep(500 * time.Millisecond)
			if later := readCounter(t, ctx, m); later <= first {
				t.Errorf("%s: counter went from %d to %d in 0.5 s, want it to increase", m.id, first, later)
			}
		}
	})

	t.Run("exec in origin and clones at once", func(t *testing.T) {
		var wg sync.WaitGroup
		outs := make([]string, len(machines))
		errs := make([]error, len(machines))
		for i, m := range machines {
			wg.Go(func() {
				out, code, err := guestExec(ctx, m, "cat /root/file")
				if err == nil && code != 0 {
					err = fmt.Errorf("exit code %d", code)
				}
				outs[i], errs[i] = out, err
			})
		}
		wg.Wait()
		for i, m := range machines {
			if errs[i] != nil {
				t.Errorf("%s: cat /root/file: %v", m.id, errs[i])
			} else if outs[i] != "hello\n" {
				t.Errorf("%s: /root/file holds %q, want %q", m.id, outs[i], "hello\n")
			}
		}
	})

	t.Run("origin keeps running", func(t *testing.T) {
		if got := queryStatus(t, origin); got != "running" {
			t.Errorf("origin status: got %q, want running", got)
		}
		if got := readCounter(t, ctx, origin); got <= atCheckpoint {
			t.Errorf("origin counter: got %d, want more than %d", got, atCheckpoint)
		}
	})

	t.Run("disks are separate", func(t *testing.T) {
		mustExec(t, ctx, clone1, "echo one > /root/clone1")
		cases := []struct {
			m    *Machine
			file string
		}{
			{clone1, "/root/after"},
			{clone2, "/root/after"},
			{clone2, "/root/clone1"},
			{origin, "/root/clone1"},
		}
		for _, c := range cases {
			if _, code, err := guestExec(ctx, c.m, "test -e "+c.file); err != nil {
				t.Errorf("%s: test -e %s: %v", c.m.id, c.file, err)
			} else if code == 0 {
				t.Errorf("%s: %s exists, want it absent", c.m.id, c.file)
			}
		}
	})

	t.Run("checkpoint of a clone", func(t *testing.T) {
		dir := shortTempDir(t)
		snap2, err := clone1.Checkpoint(ctx, dir)
		if err != nil {
			t.Fatalf("Checkpoint of clone1: %v", err)
		}
		t.Logf("checkpoint of clone1: paused for %v, files %v", snap2.Took.Round(time.Millisecond), snap2.Files)
		if snap2.MemoryFile != "" {
			t.Errorf("memory file: got %q, want none (the RAM is in the state stream)", snap2.MemoryFile)
		}
		if got := backingFile(t, filepath.Join(dir, snap2.DiskFile)); got != rootfs {
			t.Errorf("disk backing file: got %q, want %q", got, rootfs)
		}

		clone3 := restoreReady(t, ctx, d, "snap-clone3", dir, snap2)
		if got := mustExec(t, ctx, clone3, "cat /root/file /root/clone1"); got != "hello\none\n" {
			t.Errorf("clone3 files hold %q, want %q", got, "hello\none\n")
		}
		first := readCounter(t, ctx, clone3)
		if first < atCheckpoint {
			t.Errorf("clone3 counter: got %d, want at least %d", first, atCheckpoint)
		}
		if _, code, err := guestExec(ctx, clone1, "true"); err != nil || code != 0 {
			t.Errorf("clone1 after its checkpoint: exec true: code %d, %v", code, err)
		}

		// clone3 runs on a memfd again, so its own snapshot has a
		// memory file.
		snap3, err := clone3.Checkpoint(ctx, shortTempDir(t))
		if err != nil {
			t.Fatalf("Checkpoint of clone3: %v", err)
		}
		if snap3.MemoryFile != snapMemoryFile {
			t.Errorf("memory file of clone3's snapshot: got %q, want %q", snap3.MemoryFile, snapMemoryFile)
		}
	})

	t.Run("checkpoint into a full filesystem", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("mounting a small tmpfs needs root: run the test as root")
		}
		cases := []struct {
			name string
			size string // tmpfs size
		}{
			{"state file does not fit", "16k"},
			{"memory file does not fit", "1m"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				dir := mountTmpfs(t, tc.size)
				_, err := origin.Checkpoint(ctx, dir)
				if err == nil {
					t.Fatal("Checkpoint into a full filesystem succeeded, want an error")
				}
				t.Logf("error: %v", err)
				if names := dirEntries(t, dir); len(names) != 0 {
					t.Errorf("failed checkpoint left %v", names)
				}
				if got := queryStatus(t, origin); got != "running" {
					t.Errorf("origin status: got %q, want running", got)
				}
				before := readCounter(t, ctx, origin)
				time.Sleep(300 * time.Millisecond)
				if after := readCounter(t, ctx, origin); after <= before {
					t.Errorf("origin counter went from %d to %d, want it to increase", before, after)
				}
			})
		}
	})

	t.Run("restore from a bad state file", func(t *testing.T) {
		state, err := os.ReadFile(filepath.Join(snapDir, snap.StateFile))
		if err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			name    string
			state   []byte // nil: no state file
			wantErr string
		}{
			{"missing", nil, "open snapshot state file"},
			{"garbage", bytes.Repeat([]byte("garbage!"), 1024), "load state file"},
			{"truncated", state[:len(state)/2], "load state file"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				bad := linkSnapshot(t, snapDir, snap, tc.state)
				spec := guestSpec(t, "snap-bad")
				_, err := d.Restore(ctx, spec, bad, snap)
				if err == nil {
					t.Fatal("Restore succeeded, want an error")
				}
				t.Logf("error: %v", err)
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %q does not contain %q", err, tc.wantErr)
				}
				if pids := processesMentioning(t, spec.Dir); len(pids) != 0 {
					t.Errorf("qemu processes %v still run", pids)
				}
				if names := dirEntries(t, spec.Dir); len(names) != 0 {
					t.Errorf("failed restore left %v in the sandbox directory", names)
				}
			})
		}
	})
}

// linkSnapshot returns a new snapshot directory whose files link to
// snapDir's, except the state file, which holds state (absent if nil).
func linkSnapshot(t *testing.T, snapDir string, snap vmm.Snapshot, state []byte) string {
	t.Helper()
	dir := t.TempDir()
	for name := range snap.Files {
		if name == snap.StateFile {
			continue
		}
		if err := os.Symlink(filepath.Join(snapDir, name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if state != nil {
		if err := os.WriteFile(filepath.Join(dir, snap.StateFile), state, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// mountTmpfs mounts a tmpfs of the given size on a new directory and
// unmounts it when the test ends.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs on %s: %v: %s", dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// testLogger returns a logger that writes to the test log, at debug level
// when the test runs with -v.
func testLogger(t *testing.T) *slog.Logger {
	level := slog.LevelInfo
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
