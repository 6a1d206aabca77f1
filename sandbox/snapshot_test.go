package sandbox_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/sandbox"
	"github.com/hearthvm/hearth/vmm/instant"
)

func TestCheckpointCatalogSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	m := newManagerWith(t, &instant.Driver{}, dir)
	createReady(t, m, sandbox.CreateOptions{ID: "origin", MemoryMiB: 128})
	snap, err := m.Checkpoint(context.Background(), "origin", "warm", map[string]string{"k": "v"})
	if err != nil {
		t.Fatal(err)
	}
	for name := range snap.VM.Files {
		if _, err := os.Stat(filepath.Join(snap.Dir, name)); err != nil {
			t.Errorf("snapshot file %s: %v", name, err)
		}
	}
	if snap.SandboxID != "origin" || snap.Name != "warm" || snap.MemoryMiB != 128 || snap.VM.Backend != "instant" {
		t.Errorf("snapshot record: got %+v", snap)
	}

	again := newManagerWith(t, &instant.Driver{}, dir)
	got := again.ListSnapshots(sandbox.SnapshotFilter{SandboxID: "origin", Labels: map[string]string{"k": "v"}})
	if len(got) != 1 || got[0].ID != snap.ID || got[0].Dir != snap.Dir {
		t.Fatalf("catalog after restart: got %+v, want %s", got, snap.ID)
	}
	if n := len(again.ListSnapshots(sandbox.SnapshotFilter{Labels: map[string]string{"k": "other"}})); n != 0 {
		t.Errorf("label filter: got %d snapshots, want 0", n)
	}
	if n := len(again.ListSnapshots(sandbox.SnapshotFilter{SandboxID: "else"})); n != 0 {
		t.Errorf("origin filter: got %d snapshots, want 0", n)
	}
}

func TestCheckpointFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	m := newManagerWith(t, &instant.Driver{CheckpointErr: errors.New("no space left on device")}, dir)
	sb := createReady(t, m, sandbox.CreateOptions{ID: "origin"})
	if _, err := m.Checkpoint(context.Background(), "origin", "", nil); err == nil {
		t.Fatal("checkpoint: got nil error, want the driver's failure")
	}
	entries, err := os.ReadDir(filepath.Join(dir, "data", "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("left in the snapshot directory: %s", e.Name())
	}
	if n := len(m.ListSnapshots(sandbox.SnapshotFilter{})); n != 0 {
		t.Errorf("catalog: got %d snapshots, want 0", n)
	}
	if got := sb.Info().State; got != sandbox.StateReady {
		t.Errorf("origin state: got %s, want ready", got)
	}
}

func TestCheckpointRunningRefused(t *testing.T) {
	m := newManager(t)
	sb := createReady(t, m, sandbox.CreateOptions{ID: "busy"})
	go func() {
		_, _ = sb.Exec(context.Background(), agentproto.StartRequest{Cmd: []string{"sleep", "100"}}, agentclient.ExecIO{})
	}()
	waitState(t, sb, sandbox.StateRunning)
	if _, err := m.Checkpoint(context.Background(), "busy", "", nil); !errors.Is(err, sandbox.ErrWrongState) {
		t.Errorf("checkpoint of a running sandbox: got %v, want ErrWrongState", err)
	}
}

func TestRestoreAndDeleteSnapshot(t *testing.T) {
	m := newManager(t)
	createReady(t, m, sandbox.CreateOptions{ID: "origin", VCPUs: 2})
	snap, err := m.Checkpoint(context.Background(), "origin", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	clone, err := m.Restore(context.Background(), sandbox.RestoreOptions{ID: "clone", SnapshotID: snap.ID})
	if err != nil {
		t.Fatal(err)
	}
	if clone.State != sandbox.StateReady || clone.VCPUs != 2 {
		t.Errorf("clone: got state %s vcpus %d, want ready and 2", clone.State, clone.VCPUs)
	}
	var out bytes.Buffer
	code, err := m.Exec(context.Background(), "clone", agentproto.StartRequest{Cmd: []string{"echo", "clone"}},
		agentclient.ExecIO{Stdout: &out})
	if err != nil || code != 0 || out.String() != "clone\n" {
		t.Errorf("exec in clone: got %q code %d err %v", out.String(), code, err)
	}

	// The clone's own checkpoint carries the origin's geometry.
	second, err := m.Checkpoint(context.Background(), "clone", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if second.VCPUs != 2 {
		t.Errorf("clone checkpoint vcpus: got %d, want 2", second.VCPUs)
	}

	if err := m.DeleteSnapshot(snap.ID); !errors.Is(err, sandbox.ErrWrongState) {
		t.Errorf("delete while a clone runs: got %v, want ErrWrongState", err)
	}
	if err := m.Remove(context.Background(), "clone", false); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteSnapshot(snap.ID); err != nil {
		t.Fatalf("delete after the clone is gone: %v", err)
	}
	if _, err := os.Stat(snap.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("snapshot directory after delete: %v, want not exist", err)
	}
	if err := m.DeleteSnapshot(snap.ID); !errors.Is(err, sandbox.ErrNotFound) {
		t.Errorf("second delete: got %v, want ErrNotFound", err)
	}
}

func TestPauseResume(t *testing.T) {
	m := newManager(t)
	sub := m.Subscribe(sandbox.EventFilter{SandboxID: "p"}, 0)
	defer sub.Close()
	sb := createReady(t, m, sandbox.CreateOptions{ID: "p"})
	expectActions(t, sub, sandbox.ActionCreated, sandbox.ActionReady)
	if err := m.Pause(context.Background(), "p"); err != nil {
		t.Fatal(err)
	}
	if got := sb.Info().State; got != sandbox.StatePaused {
		t.Errorf("state: got %s, want paused", got)
	}
	if _, err := sb.Exec(context.Background(), agentproto.StartRequest{Cmd: []string{"true"}}, agentclient.ExecIO{}); !errors.Is(err, sandbox.ErrWrongState) {
		t.Errorf("exec while paused: got %v, want ErrWrongState", err)
	}
	if err := m.Resume(context.Background(), "p"); err != nil {
		t.Fatal(err)
	}
	expectActions(t, sub, sandbox.ActionPaused, sandbox.ActionResumed)
	if err := m.Resume(context.Background(), "p"); !errors.Is(err, sandbox.ErrWrongState) {
		t.Errorf("resume of a ready sandbox: got %v, want ErrWrongState", err)
	}
}
