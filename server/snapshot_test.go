package server_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/vmm/instant"
)

func TestCheckpointRestoreDelete(t *testing.T) {
	h := newHarness(t, harnessOptions{driver: &instant.Driver{}})
	ctx := testContext(t)
	events := h.watchEvents(t, &sandboxv1.SandboxEventsRequest{Id: "origin"})
	h.create(t, &sandboxv1.CreateSandboxRequest{Id: "origin"})

	cp, err := h.snaps.Checkpoint(ctx, &sandboxv1.CheckpointRequest{
		SandboxId: "origin", Name: "warm", Labels: map[string]string{"tier": "gold"},
	})
	if err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	if cp.GetSnapshotId() == "" {
		t.Error("checkpoint: got an empty snapshot_id")
	}
	if fi, err := os.Stat(cp.GetSnapshotDir()); err != nil || !fi.IsDir() {
		t.Errorf("snapshot_dir %q: got %v, want an existing directory", cp.GetSnapshotDir(), err)
	}
	created, err := time.Parse(time.RFC3339, cp.GetCreatedAt())
	if err != nil {
		t.Errorf("created_at %q: %v, want RFC 3339", cp.GetCreatedAt(), err)
	} else if d := time.Since(created); d < 0 || d > time.Minute {
		t.Errorf("created_at %q: got %s ago, want within the last minute", cp.GetCreatedAt(), d)
	}
	events.waitFor(t, "created", "ready", "checkpointed")
	for _, ev := range events.snapshot() {
		if ev.GetAction() == "checkpointed" && ev.GetAttributes()["snapshot_id"] != cp.GetSnapshotId() {
			t.Errorf("checkpointed event: got attributes %v, want snapshot_id %s", ev.GetAttributes(), cp.GetSnapshotId())
		}
	}
	if info := h.waitState(t, "origin", "ready"); info.GetState() != "ready" {
		t.Errorf("origin after checkpoint: got %q, want ready", info.GetState())
	}

	filters := []struct {
		name string
		req  *sandboxv1.ListSnapshotsRequest
		want int
	}{
		{"all", &sandboxv1.ListSnapshotsRequest{}, 1},
		{"origin", &sandboxv1.ListSnapshotsRequest{SandboxId: "origin"}, 1},
		{"other origin", &sandboxv1.ListSnapshotsRequest{SandboxId: "else"}, 0},
		{"matching label", &sandboxv1.ListSnapshotsRequest{Labels: map[string]string{"tier": "gold"}}, 1},
		{"other label value", &sandboxv1.ListSnapshotsRequest{Labels: map[string]string{"tier": "lead"}}, 0},
	}
	for _, tc := range filters {
		t.Run("list "+tc.name, func(t *testing.T) {
			resp, err := h.snaps.ListSnapshots(ctx, tc.req)
			if err != nil {
				t.Fatalf("list snapshots: %v", err)
			}
			if got := len(resp.GetSnapshots()); got != tc.want {
				t.Fatalf("got %d snapshots, want %d", got, tc.want)
			}
			if tc.want == 0 {
				return
			}
			s := resp.GetSnapshots()[0]
			if s.GetId() != cp.GetSnapshotId() || s.GetSandboxId() != "origin" || s.GetName() != "warm" ||
				s.GetSnapshotDir() != cp.GetSnapshotDir() || s.GetCreatedAt() != cp.GetCreatedAt() ||
				s.GetLabels()["tier"] != "gold" {
				t.Errorf("summary: got %v, want snapshot %s of origin named warm with tier=gold", s, cp.GetSnapshotId())
			}
		})
	}

	restored, err := h.snaps.Restore(ctx, &sandboxv1.RestoreRequest{
		Id: "clone", SnapshotId: cp.GetSnapshotId(), Labels: map[string]string{"from": "warm"},
	})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if restored.GetId() != "clone" {
		t.Errorf("restore id: got %q, want clone", restored.GetId())
	}
	// Ready on return, without polling.
	info, err := h.client.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: "clone"})
	if err != nil {
		t.Fatalf("inspect clone: %v", err)
	}
	if info.GetState() != "ready" || info.GetLabels()["from"] != "warm" {
		t.Errorf("clone right after restore: got state %q labels %v, want ready with from=warm", info.GetState(), info.GetLabels())
	}
	res, err := h.run(ctx, &sandboxv1.RunRequest{Id: "clone", Cmd: []string{"echo", "cloned"}})
	if err != nil || res.stdout != "cloned\n" || res.exitCode != 0 {
		t.Errorf("run in clone: got %q exit %d, %v; want %q exit 0", res.stdout, res.exitCode, err, "cloned\n")
	}

	_, err = h.snaps.DeleteSnapshot(ctx, &sandboxv1.DeleteSnapshotRequest{SnapshotId: cp.GetSnapshotId()})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("delete a snapshot a clone uses: got %v, want FailedPrecondition", err)
	}
	if _, err := h.client.Remove(ctx, &sandboxv1.RemoveSandboxRequest{Id: "clone", Force: true}); err != nil {
		t.Fatalf("remove clone: %v", err)
	}
	if _, err := h.snaps.DeleteSnapshot(ctx, &sandboxv1.DeleteSnapshotRequest{SnapshotId: cp.GetSnapshotId()}); err != nil {
		t.Fatalf("delete snapshot after its clone is gone: %v", err)
	}
	if _, err := os.Stat(cp.GetSnapshotDir()); !os.IsNotExist(err) {
		t.Errorf("snapshot_dir after delete: got %v, want it gone", err)
	}
	resp, err := h.snaps.ListSnapshots(ctx, &sandboxv1.ListSnapshotsRequest{})
	if err != nil || len(resp.GetSnapshots()) != 0 {
		t.Errorf("list after delete: got %v, %v; want none", resp.GetSnapshots(), err)
	}
	_, err = h.snaps.DeleteSnapshot(ctx, &sandboxv1.DeleteSnapshotRequest{SnapshotId: cp.GetSnapshotId()})
	if status.Code(err) != codes.NotFound {
		t.Errorf("delete twice: got %v, want NotFound", err)
	}
}

func TestCheckpointRunningRefused(t *testing.T) {
	h := newHarness(t, harnessOptions{driver: &instant.Driver{}})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "busy"})
	ctx := testContext(t)
	// The command ends when the test's context is cancelled.
	if _, err := h.client.Run(ctx, &sandboxv1.RunRequest{Id: id, Cmd: []string{"sleep", "100.75"}}); err != nil {
		t.Fatalf("run: %v", err)
	}
	h.waitState(t, id, "running")

	_, err := h.snaps.Checkpoint(ctx, &sandboxv1.CheckpointRequest{SandboxId: id})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("checkpoint of a running sandbox: got %v, want FailedPrecondition", err)
	}
	_, err = h.control.Pause(ctx, &sandboxv1.PauseSandboxRequest{Id: id})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("pause of a running sandbox: got %v, want FailedPrecondition", err)
	}
}

func TestPauseResume(t *testing.T) {
	h := newHarness(t, harnessOptions{driver: &instant.Driver{}})
	ctx := testContext(t)
	events := h.watchEvents(t, &sandboxv1.SandboxEventsRequest{Id: "nap"})
	h.create(t, &sandboxv1.CreateSandboxRequest{Id: "nap"})

	info, err := h.control.Pause(ctx, &sandboxv1.PauseSandboxRequest{Id: "nap"})
	if err != nil {
		t.Fatalf("pause: %v", err)
	}
	if info.GetState() != "paused" {
		t.Errorf("pause: got state %q, want paused", info.GetState())
	}
	list, err := h.client.List(ctx, &sandboxv1.ListSandboxesRequest{State: "paused"})
	if err != nil {
		t.Fatalf("list paused: %v", err)
	}
	if len(list.GetSandboxes()) != 1 || list.GetSandboxes()[0].GetId() != "nap" {
		t.Errorf("list paused: got %v, want the sandbox nap", list.GetSandboxes())
	}
	_, err = h.run(ctx, &sandboxv1.RunRequest{Id: "nap", Cmd: []string{"true"}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("run in a paused sandbox: got %v, want FailedPrecondition", err)
	}
	_, err = h.control.Pause(ctx, &sandboxv1.PauseSandboxRequest{Id: "nap"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("pause twice: got %v, want FailedPrecondition", err)
	}

	info, err = h.control.Resume(ctx, &sandboxv1.ResumeSandboxRequest{Id: "nap"})
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	if info.GetState() != "ready" {
		t.Errorf("resume: got state %q, want ready", info.GetState())
	}
	res, err := h.run(ctx, &sandboxv1.RunRequest{Id: "nap", Cmd: []string{"echo", "awake"}})
	if err != nil || res.stdout != "awake\n" {
		t.Errorf("run after resume: got %q, %v; want %q", res.stdout, err, "awake\n")
	}
	events.waitFor(t, "created", "ready", "paused", "resumed", "running", "idle")
}

func TestEventsFilterHearthActions(t *testing.T) {
	h := newHarness(t, harnessOptions{driver: &instant.Driver{}})
	ctx := testContext(t)
	paused := h.watchEvents(t, &sandboxv1.SandboxEventsRequest{Action: "paused"})
	h.create(t, &sandboxv1.CreateSandboxRequest{Id: "filtered"})
	if _, err := h.control.Pause(ctx, &sandboxv1.PauseSandboxRequest{Id: "filtered"}); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if _, err := h.control.Resume(ctx, &sandboxv1.ResumeSandboxRequest{Id: "filtered"}); err != nil {
		t.Fatalf("resume: %v", err)
	}
	paused.waitFor(t, "paused")
	// A later event that the filter passes proves resumed was filtered
	// out, not merely not delivered yet.
	if _, err := h.control.Pause(ctx, &sandboxv1.PauseSandboxRequest{Id: "filtered"}); err != nil {
		t.Fatalf("pause again: %v", err)
	}
	paused.waitFor(t, "paused", "paused")
	if got := paused.actions(); !slices.Equal(got, []string{"paused", "paused"}) {
		t.Errorf("events filtered by paused: got %v, want [paused paused]", got)
	}
}

func TestRestoreFailureLeavesNoClone(t *testing.T) {
	h := newHarness(t, harnessOptions{driver: &instant.Driver{}})
	ctx := testContext(t)
	h.create(t, &sandboxv1.CreateSandboxRequest{Id: "origin"})
	cp, err := h.snaps.Checkpoint(ctx, &sandboxv1.CheckpointRequest{SandboxId: "origin"})
	if err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	// The instant driver's restore fails when a snapshot file is missing.
	if err := os.Remove(filepath.Join(cp.GetSnapshotDir(), "memory")); err != nil {
		t.Fatal(err)
	}

	if _, err := h.snaps.Restore(ctx, &sandboxv1.RestoreRequest{Id: "broken", SnapshotId: cp.GetSnapshotId()}); err == nil {
		t.Fatal("restore from a damaged snapshot: got nil error, want a failure")
	}
	_, err = h.client.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: "broken"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("inspect the clone of a failed restore: got %v, want NotFound", err)
	}
	list, err := h.client.List(ctx, &sandboxv1.ListSandboxesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetSandboxes()) != 1 {
		t.Errorf("sandboxes after a failed restore: got %v, want only origin", list.GetSandboxes())
	}
}
