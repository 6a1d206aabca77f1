package firecracker_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearthvm/hearth/network"
	"github.com/hearthvm/hearth/vmm/firecracker"
	"github.com/hearthvm/hearth/vmm/firecracker/api"
)

// requestsTo returns the bodies of the logged requests to path.
func requestsTo(recs []map[string]any, method, path string) []map[string]any {
	var out []map[string]any
	for _, r := range recs {
		if r["method"] == method && r["path"] == path {
			body, _ := r["body"].(map[string]any)
			out = append(out, body)
		}
	}
	return out
}

func instanceState(t *testing.T, m *firecracker.Machine) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := m.Client().DescribeInstance(ctx)
	if err != nil {
		t.Fatalf("describe instance: %v", err)
	}
	return info.State
}

func TestCheckpointRestore(t *testing.T) {
	requireDoubles(t)
	for _, tc := range []struct {
		name   string
		jailed bool
	}{
		{"direct", false},
		{"jailer", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t)
			cfg := env.config("1.16.1")
			var base string
			if tc.jailed {
				base = shortTempDir(t)
				cfg = jailerConfig(env, base, "")
			}
			d := newDriver(t, cfg)
			spec := env.spec(t, "cp-origin")
			m := boot(t, d, spec)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := ping(ctx, m); err != nil {
				t.Fatalf("ping: %v", err)
			}

			snapDir := t.TempDir()
			snap, err := m.Checkpoint(ctx, snapDir)
			if err != nil {
				t.Fatalf("checkpoint: %v", err)
			}
			if got := instanceState(t, m); got != api.StateRunning {
				t.Errorf("origin after checkpoint: got %s, want %s", got, api.StateRunning)
			}
			if err := ping(ctx, m); err != nil {
				t.Errorf("ping origin after checkpoint: %v", err)
			}
			if snap.Backend != "firecracker" || snap.BackendVersion != "1.16.1" || snap.DiskFormat != "raw" {
				t.Errorf("snapshot: got %+v, want backend firecracker 1.16.1 with a raw disk", snap)
			}
			entries, _ := os.ReadDir(snapDir)
			if len(entries) != len(snap.Files) || len(entries) != 4 {
				t.Errorf("snapshot directory: got %d files, want the %d listed in %v (state, memory, disk, config)",
					len(entries), len(snap.Files), snap.Files)
			}
			wantMode, wantGID := os.FileMode(0o400), uint32(0)
			if tc.jailed {
				wantMode, wantGID = 0o440, 65534
			}
			for _, name := range []string{snap.StateFile, snap.MemoryFile} {
				fi, err := os.Stat(filepath.Join(snapDir, name))
				if err != nil {
					t.Fatalf("snapshot file %s: %v", name, err)
				}
				if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != wantMode || st.Gid != wantGID || st.Uid != 0 {
					t.Errorf("%s: got mode %v owner %d:%d, want %v owner 0:%d", name, fi.Mode().Perm(), st.Uid, st.Gid, wantMode, wantGID)
				}
			}
			if tc.jailed {
				run := filepath.Join(base, "firecracker", spec.ID, "root", "run")
				for _, name := range []string{"snapshot.state", "snapshot.mem"} {
					if _, err := os.Lstat(filepath.Join(run, name)); !errors.Is(err, os.ErrNotExist) {
						t.Errorf("%s left in the jail's run directory: %v", name, err)
					}
				}
			}
			recs := checkRequestLog(t, env.requestLog)
			creates := requestsTo(recs, "PUT", "/snapshot/create")
			if len(creates) != 1 {
				t.Fatalf("snapshot/create requests: got %d, want 1", len(creates))
			}
			wantState := filepath.Join(snapDir, "snapshot.state")
			if tc.jailed {
				wantState = "run/snapshot.state"
			}
			if got := creates[0]["snapshot_path"]; got != wantState || creates[0]["snapshot_type"] != "Full" {
				t.Errorf("snapshot/create body %v: want snapshot_path %q and type Full", creates[0], wantState)
			}
			if got := requestsTo(recs, "PATCH", "/vm"); len(got) != 2 || got[0]["state"] != "Paused" || got[1]["state"] != "Resumed" {
				t.Errorf("PATCH /vm bodies: got %v, want Paused then Resumed", got)
			}

			// Restores run while the origin lives and after it and its
			// directory are gone.
			restore := func(id string) {
				t.Helper()
				os.Truncate(env.requestLog, 0)
				target := env.spec(t, id)
				vm, err := d.Restore(ctx, target, snapDir, snap)
				if err != nil {
					t.Fatalf("restore %s: %v", id, err)
				}
				r := vm.(*firecracker.Machine)
				defer r.Kill()
				if got := instanceState(t, r); got != api.StateRunning {
					t.Errorf("%s after restore: got %s, want %s", id, got, api.StateRunning)
				}
				if out, code := execEcho(t, r); out != "hi\n" || code != 0 {
					t.Errorf("%s: echo hi got %q exit %d, want %q exit 0", id, out, code, "hi\n")
				}
				recs := checkRequestLog(t, env.requestLog)
				loads := requestsTo(recs, "PUT", "/snapshot/load")
				if len(loads) != 1 {
					t.Fatalf("snapshot/load requests: got %d, want 1", len(loads))
				}
				vo, hasOverride := loads[0]["vsock_override"].(map[string]any)
				if hasOverride == tc.jailed {
					t.Errorf("load body %v: vsock_override present %v, want %v", loads[0], hasOverride, !tc.jailed)
				}
				if !tc.jailed && vo["uds_path"] != filepath.Join(target.Dir, "v.sock") {
					t.Errorf("vsock_override %v: want uds_path %s", vo, filepath.Join(target.Dir, "v.sock"))
				}
				if _, has := loads[0]["network_overrides"]; has {
					t.Errorf("load body %v: want no network_overrides for a machine without a network device", loads[0])
				}
				if got := requestsTo(recs, "PATCH", "/drives/rootfs"); len(got) != 0 {
					t.Errorf("PATCH /drives/rootfs: got %v, want none, since the state file names the clone's own disk", got)
				}
				if got := requestsTo(recs, "PATCH", "/vm"); len(got) != 1 || got[0]["state"] != "Resumed" {
					t.Errorf("PATCH /vm bodies: got %v, want one Resumed", got)
				}
			}
			restore("cp-clone-1")
			if err := m.Kill(); err != nil {
				t.Fatal(err)
			}
			if err := os.RemoveAll(spec.Dir); err != nil {
				t.Fatal(err)
			}
			restore("cp-clone-2")
		})
	}
}

func TestCheckpointFailureResumes(t *testing.T) {
	requireDoubles(t)
	for _, tc := range []struct {
		name   string
		jailed bool
	}{
		{"direct", false},
		{"jailer", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t)
			cfg := env.config("1.16.1")
			var base string
			if tc.jailed {
				base = shortTempDir(t)
				cfg = jailerConfig(env, base, "")
			}
			d := newDriver(t, cfg)
			spec := env.spec(t, "cp-fail")
			m := boot(t, d, spec)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()

			// Direct: Firecracker cannot write the state file. Jailer: it
			// writes into the jail, and the disk copy fails.
			missing := filepath.Join(t.TempDir(), "missing")
			if _, err := m.Checkpoint(ctx, missing); err == nil {
				t.Fatal("checkpoint into a missing directory: got nil error")
			}
			if got := instanceState(t, m); got != api.StateRunning {
				t.Errorf("machine after the failed checkpoint: got %s, want %s", got, api.StateRunning)
			}
			if err := ping(ctx, m); err != nil {
				t.Errorf("ping after the failed checkpoint: %v", err)
			}
			if tc.jailed {
				run := filepath.Join(base, "firecracker", spec.ID, "root", "run")
				for _, name := range []string{"snapshot.state", "snapshot.mem"} {
					if _, err := os.Lstat(filepath.Join(run, name)); !errors.Is(err, os.ErrNotExist) {
						t.Errorf("%s in the jail after the failed checkpoint: got present (err %v), want removed", name, err)
					}
				}
			}
			if _, err := os.Lstat(missing); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: got created, want absent", missing)
			}
		})
	}
}

// TestRestoreNetworkOverride restores a jailed machine with a TAP into
// another TAP: the load maps eth0 to the clone's TAP, and the guest keeps
// the snapshot's MAC address.
func TestRestoreNetworkOverride(t *testing.T) {
	requireDoubles(t)
	env := newEnv(t)
	ns := newNetNS(t)
	owner := &network.TAPUser{UID: 65534, GID: 65534}
	createTAP(t, "hthcp0", ns, owner)
	createTAP(t, "hthcp1", ns, owner)
	d := newDriver(t, jailerConfig(env, shortTempDir(t), ns))
	spec := env.spec(t, "net-origin")
	spec.TAP = "hthcp0"
	spec.MAC = net.HardwareAddr{0x06, 0, 0xac, 0x10, 0, 2}
	m := boot(t, d, spec)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ping(ctx, m); err != nil {
		t.Fatalf("ping: %v", err)
	}
	snapDir := t.TempDir()
	snap, err := m.Checkpoint(ctx, snapDir)
	if err != nil {
		t.Fatalf("checkpoint: %v", err)
	}

	tests := []struct {
		name    string
		tap     string
		wantErr string
	}{
		{"no tap", "", "restore with a tap"},
		{"tap missing in the namespace", "hthcp9", "no such device"},
		{"other tap", "hthcp1", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			os.Truncate(env.requestLog, 0)
			target := env.spec(t, "net-clone")
			target.TAP = tc.tap
			target.MAC = net.HardwareAddr{0x06, 0, 0xac, 0x10, 0, 9}
			agentsBeforeRestore := agentProcesses()
			vm, err := d.Restore(ctx, target, snapDir, snap)
			if tc.wantErr != "" {
				if err == nil {
					vm.Kill()
					t.Fatalf("restore: got nil error, want %q", tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("restore error %q: want it to contain %q", err, tc.wantErr)
				}
				if pids := newProcessesSince(agentsBeforeRestore, agentProcesses); len(pids) > 0 {
					t.Errorf("agent processes after the failed restore: got %v, want only the origin's", pids)
				}
				return
			}
			if err != nil {
				t.Fatalf("restore: %v", err)
			}
			r := vm.(*firecracker.Machine)
			defer r.Kill()
			if got := r.MAC(); got.String() != spec.MAC.String() {
				t.Errorf("clone MAC: got %s, want the snapshot's %s", got, spec.MAC)
			}
			if err := ping(ctx, r); err != nil {
				t.Errorf("ping clone: %v", err)
			}
			loads := requestsTo(checkRequestLog(t, env.requestLog), "PUT", "/snapshot/load")
			if len(loads) != 1 {
				t.Fatalf("snapshot/load requests: got %d, want 1", len(loads))
			}
			overrides, _ := loads[0]["network_overrides"].([]any)
			if len(overrides) != 1 {
				t.Fatalf("load body %v: want one network override", loads[0])
			}
			o := overrides[0].(map[string]any)
			if o["iface_id"] != "eth0" || o["host_dev_name"] != "hthcp1" {
				t.Errorf("network override %v: want eth0 on hthcp1", o)
			}
		})
	}
	if got := m.MAC(); got.String() != spec.MAC.String() {
		t.Errorf("origin MAC: got %s, want %s", got, spec.MAC)
	}
}
