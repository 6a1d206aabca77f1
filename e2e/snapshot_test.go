package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/e2e/harness"
)

// counterScript writes /root/f and starts a loop in the background that
// appends 1, 2, 3... to /root/count every 100 ms. The loop's output is
// redirected so that the command, and with it the workload, ends at once.
const counterScript = `echo data > /root/f; (i=0; while true; do i=$((i+1)); echo $i >> /root/count; sleep 0.1; done) >/dev/null 2>&1 &`

// Sandbox IDs of the snapshot tests.
const (
	originID  = "origin"
	cloneA    = "clone-a" // restored through the API
	cloneB    = "clone-b" // restored through the CLI
	cloneC    = "clone-c" // restored from a checkpoint of clone-a
	lateClone = "late"    // restored 60 s after the checkpoint
)

// lateDelay is how long after its checkpoint the late clone is restored:
// long enough that a guest clock that was not set after the restore is
// far outside the tolerance of clockTolerance.
const lateDelay = 60 * time.Second

// clockTolerance bounds the difference between a guest's `date +%s` and
// the host's time while the command ran.
const clockTolerance = 2 * time.Second

// listenPort is the TCP port of the listeners that the network test
// starts in the guests.
const listenPort = 7000

// snapshotEnv is a daemon with one origin sandbox running the counter
// script, and the snapshot taken of it, shared by the snapshot subtests.
type snapshotEnv struct {
	*daemonEnv
	snapshots sandboxv1.SandboxSnapshotServiceClient
	control   sandboxv1.SandboxControlServiceClient

	// Set by TestSnapshot before the subtests run.
	snap      *sandboxv1.CheckpointResponse
	snapTaken time.Time
	cut       counterCut
	// Set by the clones subtests.
	cloneSnap *sandboxv1.CheckpointResponse
}

// TestSnapshot checkpoints one origin sandbox and runs the snapshot
// scenarios against that snapshot. Clones are restored through the API
// and the CLI, and pause and resume run on the origin. Two scenarios run
// in parallel with them: a clone restored a minute after the checkpoint,
// and a failed checkpoint on a daemon of its own. The snapshots are
// deleted once their clones are gone.
func TestSnapshot(t *testing.T) {
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	assets := harness.Assets(t)
	netns := harness.NewNetns(t)
	d := harness.StartDaemon(t, hearthBin, netns, assets)
	s := newSnapshotEnv(t, d)
	ctx := longContext(t)

	s.createCounting(t, originID)
	// Part of /root/count on the disk and part only in the page cache:
	// the clones need the disk copy and the memory of one moment.
	s.waitCounterAbove(t, originID, 10)
	s.runOK(t, originID, "sync")
	s.waitCounterAbove(t, originID, 20)
	began := time.Now()
	s.cut.before = lastCount(t, s.readCounter(t, originID))
	snap, err := s.snapshots.Checkpoint(ctx, &sandboxv1.CheckpointRequest{SandboxId: originID, Name: "origin"})
	if err != nil {
		t.Fatalf("checkpoint %s: %v", originID, err)
	}
	s.cut.window = time.Since(began)
	t.Logf("checkpoint of %s: %s, %s", originID, s.cut.window.Round(time.Millisecond), snap.GetSnapshotDir())
	s.snap, s.snapTaken = snap, began
	// The clones must not see this file: their disk is the snapshot's.
	s.runOK(t, originID, "sh", "-c", "echo after > /root/after-checkpoint")

	t.Run("after checkpoint", func(t *testing.T) {
		t.Run("late clone clock", s.testLateClone)
		t.Run("failed checkpoint", testFailedCheckpoint)
		t.Run("clones", s.testClones)
	})
	t.Run("delete snapshots", s.testDeleteSnapshots)

	if _, err := s.client.Remove(ctx, &sandboxv1.RemoveSandboxRequest{Id: originID, Force: true}); err != nil {
		t.Errorf("remove %s: %v", originID, err)
	}
	d.Stop(t)
	if links := harness.Links(t, netns); !slices.Equal(links, []string{"lo"}) {
		t.Errorf("devices left in the namespace after the daemon stopped: got %v, want [lo]", links)
	}
	if pids := harness.QEMUProcesses(d.DataDir); len(pids) > 0 {
		t.Errorf("QEMU processes left after the daemon stopped: %v", pids)
	}
	for _, sub := range []string{"sandboxes", "snapshots"} {
		entries, _ := os.ReadDir(filepath.Join(d.DataDir, sub))
		for _, ent := range entries {
			t.Errorf("%s left in %s after the daemon stopped", ent.Name(), sub)
		}
	}
}

func newSnapshotEnv(t *testing.T, d *harness.Daemon) *snapshotEnv {
	conn := d.Dial(t)
	return &snapshotEnv{
		daemonEnv: &daemonEnv{d: d, client: sandboxv1.NewSandboxServiceClient(conn)},
		snapshots: sandboxv1.NewSandboxSnapshotServiceClient(conn),
		control:   sandboxv1.NewSandboxControlServiceClient(conn),
	}
}

// testClones restores two clones of the origin and checks what they
// inherit, what they share and what they do not. The steps run in order
// because each builds on the clones of the first.
func (s *snapshotEnv) testClones(t *testing.T) {
	t.Parallel()
	t.Cleanup(func() { s.removeSandboxes(t, cloneA, cloneB, cloneC) })
	if !t.Run("restore twice", s.testRestoreTwice) {
		return
	}
	t.Run("disks are separate", s.testSeparateDisks)
	t.Run("network", s.testCloneNetwork)
	t.Run("inspect reports guest MAC", s.testInspectMAC)
	t.Run("checkpoint a clone", s.testCheckpointClone)
	t.Run("delete refused while in use", s.testDeleteInUse)
	t.Run("pause and resume", s.testPauseResume)
}

// testRestoreTwice restores the snapshot once through the API and once
// through the CLI, and checks that both clones have the origin's file and
// continue its counter, that the origin keeps running, and that commands
// run in all three at once.
func (s *snapshotEnv) testRestoreTwice(t *testing.T) {
	ctx := testContext(t)
	began := time.Now()
	resp, err := s.snapshots.Restore(ctx, &sandboxv1.RestoreRequest{Id: cloneA, SnapshotId: s.snap.GetSnapshotId()})
	if err != nil {
		t.Fatalf("restore %s through the API: %v", cloneA, err)
	}
	t.Logf("restore of %s through the API: %s", cloneA, time.Since(began).Round(time.Millisecond))
	s.checkContinued(t, cloneA, s.cut, began)
	if resp.GetId() != cloneA || resp.GetIpAddress() == "" {
		t.Errorf("restore response: got id %q, address %q; want %s and an address", resp.GetId(), resp.GetIpAddress(), cloneA)
	}

	began = time.Now()
	res := s.d.CLI(ctx, t, "restore", "--id", cloneB, s.snap.GetSnapshotId())
	if res.Code != 0 || res.Stdout != cloneB+"\n" {
		t.Fatalf("hearth restore --id %s: got exit %d stdout %q stderr %q, want %s", cloneB, res.Code, res.Stdout, res.Stderr, cloneB)
	}
	t.Logf("restore of %s through the CLI: %s", cloneB, time.Since(began).Round(time.Millisecond))
	s.checkContinued(t, cloneB, s.cut, began)

	for _, id := range []string{cloneA, cloneB} {
		info, err := s.client.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: id})
		if err != nil || info.GetState() != "ready" {
			t.Errorf("inspect %s after restore: got %v, %v; want state ready", id, info, err)
		}
		if got := s.runOK(t, id, "cat", "/root/f"); got != "data\n" {
			t.Errorf("/root/f in %s: got %q, want %q", id, got, "data\n")
		}
		if got := s.runOK(t, id, "hostname"); got != id+"\n" {
			t.Errorf("hostname of %s: got %q, want its own ID", id, got)
		}
	}
	s.waitCounterAbove(t, originID, lastCount(t, s.readCounter(t, originID)))

	s.testRunAtOnce(t, originID, cloneA, cloneB)
}

// testRunAtOnce starts a command in each sandbox at the same time and
// checks that all of them ran at one moment: every command printed its
// first line before any of them finished.
func (s *snapshotEnv) testRunAtOnce(t *testing.T, ids ...string) {
	type timed struct {
		runResult
		firstOutput, done time.Time
	}
	results := make([]timed, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[i]
			r.runResult = s.runEach(t, id, func(*sandboxv1.RunOutput) {
				if r.firstOutput.IsZero() {
					r.firstOutput = time.Now()
				}
			}, "sh", "-c", "cat /root/f; sleep 5; echo done")
			r.done = time.Now()
		}()
	}
	wg.Wait()

	var lastStart, firstEnd time.Time
	for i, r := range results {
		if r.err != nil || r.code != 0 || r.stdout != "data\ndone\n" {
			t.Errorf("run in %s: got exit %d stdout %q stderr %q err %v; want 0 and %q", ids[i], r.code, r.stdout, r.stderr, r.err, "data\ndone\n")
			continue
		}
		if r.firstOutput.After(lastStart) {
			lastStart = r.firstOutput
		}
		if firstEnd.IsZero() || r.done.Before(firstEnd) {
			firstEnd = r.done
		}
	}
	if !t.Failed() && !lastStart.Before(firstEnd) {
		t.Errorf("runs in %v: the last first output came %s after the first run ended, want all running at once",
			ids, lastStart.Sub(firstEnd))
	}
}

// testSeparateDisks checks that a file the origin wrote after the
// checkpoint is missing in the clones, and a file one clone writes is
// missing in the other and in the origin.
func (s *snapshotEnv) testSeparateDisks(t *testing.T) {
	tests := []struct {
		name    string
		writer  string // "" when TestSnapshot wrote the file
		path    string
		present []string
		absent  []string
	}{
		{"origin after checkpoint", "", "/root/after-checkpoint", []string{originID}, []string{cloneA, cloneB}},
		{"one clone", cloneA, "/root/clone-a-only", []string{cloneA}, []string{cloneB, originID}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.writer != "" {
				s.runOK(t, tc.writer, "sh", "-c", "echo mine > "+tc.path)
			}
			for _, id := range tc.present {
				if res := s.run(t, id, "test", "-e", tc.path); res.err != nil || res.code != 0 {
					t.Errorf("test -e %s in %s: got exit %d, %v; want 0", tc.path, id, res.code, res.err)
				}
			}
			for _, id := range tc.absent {
				if res := s.run(t, id, "test", "-e", tc.path); res.err != nil || res.code != 1 {
					t.Errorf("test -e %s in %s: got exit %d, %v; want 1 (no such file)", tc.path, id, res.code, res.err)
				}
			}
		})
	}
}

// testCloneNetwork checks that every sandbox has its own address, that
// the guests' eth0 carry those addresses and the origin's MAC, and that a
// TCP connection from the host reaches a listener in each guest at the
// address Inspect reports.
func (s *snapshotEnv) testCloneNetwork(t *testing.T) {
	ids := []string{originID, cloneA, cloneB}
	addrs := map[string]string{}
	for _, id := range ids {
		info, err := s.client.Inspect(testContext(t), &sandboxv1.InspectSandboxRequest{Id: id})
		if err != nil {
			t.Fatalf("inspect %s: %v", id, err)
		}
		addr := info.GetNetwork().GetIpAddress()
		for other, otherAddr := range addrs {
			if addr == otherAddr {
				t.Errorf("address of %s: got %s, the address of %s too; want distinct addresses", id, addr, other)
			}
		}
		addrs[id] = addr
		if got := s.runOK(t, id, "ip", "-4", "-o", "addr", "show", "eth0"); !strings.Contains(got, " "+addr+"/") {
			t.Errorf("eth0 of %s: got %q, want the address %s", id, got, addr)
		}
	}

	originMAC := s.guestMAC(t, originID)
	for _, id := range []string{cloneA, cloneB} {
		if got := s.guestMAC(t, id); got != originMAC {
			t.Errorf("MAC of eth0 in %s: got %s, want the origin's %s (QEMU migrates the virtio-net state)", id, got, originMAC)
		}
	}

	for _, id := range ids {
		greeting := "hello from " + id
		s.runOK(t, id, "sh", "-c", fmt.Sprintf("(echo %q | nc -l -p %d) >/dev/null 2>&1 &", greeting, listenPort))
	}
	for _, id := range ids {
		if got := s.dialGuest(t, addrs[id]); got != "hello from "+id+"\n" {
			t.Errorf("TCP %s:%d from the host: got %q, want the greeting of %s", addrs[id], listenPort, got, id)
		}
	}
}

// testInspectMAC checks that Inspect reports the MAC address each guest
// uses on eth0.
func (s *snapshotEnv) testInspectMAC(t *testing.T) {
	for _, id := range []string{originID, cloneA, cloneB} {
		info, err := s.client.Inspect(testContext(t), &sandboxv1.InspectSandboxRequest{Id: id})
		if err != nil {
			t.Fatalf("inspect %s: %v", id, err)
		}
		if got, want := info.GetNetwork().GetMacAddress(), s.guestMAC(t, id); got != want {
			t.Errorf("Inspect of %s: got mac_address %s, want %s, the guest's eth0", id, got, want)
		}
	}
}

// testCheckpointClone checkpoints a clone and restores a sandbox from
// that snapshot: it has the files of both generations and continues the
// counter.
func (s *snapshotEnv) testCheckpointClone(t *testing.T) {
	ctx := testContext(t)
	began := time.Now()
	cut := counterCut{before: lastCount(t, s.readCounter(t, cloneA))}
	snap, err := s.snapshots.Checkpoint(ctx, &sandboxv1.CheckpointRequest{SandboxId: cloneA, Name: "clone"})
	if err != nil {
		t.Fatalf("checkpoint %s: %v", cloneA, err)
	}
	s.cloneSnap = snap
	cut.window = time.Since(began)
	t.Logf("checkpoint of %s: %s", cloneA, cut.window.Round(time.Millisecond))

	began = time.Now()
	if _, err := s.snapshots.Restore(ctx, &sandboxv1.RestoreRequest{Id: cloneC, SnapshotId: snap.GetSnapshotId()}); err != nil {
		t.Fatalf("restore %s from the snapshot of %s: %v", cloneC, cloneA, err)
	}
	t.Logf("restore of %s from the snapshot of %s: %s", cloneC, cloneA, time.Since(began).Round(time.Millisecond))
	s.checkContinued(t, cloneC, cut, began)

	for _, file := range []struct{ path, want string }{{"/root/f", "data\n"}, {"/root/clone-a-only", "mine\n"}} {
		if got := s.runOK(t, cloneC, "cat", file.path); got != file.want {
			t.Errorf("%s in %s: got %q, want %q", file.path, cloneC, got, file.want)
		}
	}
	s.waitCounterAbove(t, cloneA, lastCount(t, s.readCounter(t, cloneA)))
}

// testDeleteInUse checks that a snapshot whose clones run cannot be
// deleted, and that the refused delete leaves its files alone.
func (s *snapshotEnv) testDeleteInUse(t *testing.T) {
	if s.cloneSnap == nil {
		t.Skip("no snapshot of a clone: checkpoint a clone failed")
	}
	tests := []struct {
		name  string
		snap  *sandboxv1.CheckpointResponse
		users []string
	}{
		{"memory file of the origin's snapshot", s.snap, []string{cloneA, cloneB}},
		{"disk of a clone's snapshot", s.cloneSnap, []string{cloneC}},
	}
	memory := filepath.Join(s.snap.GetSnapshotDir(), "memory")
	if pids := harness.QEMUProcesses("mem-path=" + memory + ","); len(pids) < 2 {
		t.Errorf("QEMU processes mapping %s: got %v, want those of %s and %s", memory, pids, cloneA, cloneB)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			files := snapshotFiles(t, tc.snap.GetSnapshotDir())
			_, err := s.snapshots.DeleteSnapshot(ctx, &sandboxv1.DeleteSnapshotRequest{SnapshotId: tc.snap.GetSnapshotId()})
			if status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("delete %s: got %v, want FailedPrecondition", tc.snap.GetSnapshotId(), err)
			}
			for _, id := range tc.users {
				if msg := status.Convert(err).Message(); !strings.Contains(msg, id) {
					t.Errorf("refused delete: got message %q, want it to name the clone %s", msg, id)
				}
			}
			if got := snapshotFiles(t, tc.snap.GetSnapshotDir()); !slices.Equal(got, files) {
				t.Errorf("files after the refused delete: got %v, want %v", got, files)
			}
			if !s.listed(t, tc.snap.GetSnapshotId()) {
				t.Errorf("ListSnapshots after the refused delete: %s missing", tc.snap.GetSnapshotId())
			}
		})
	}
	for _, id := range []string{cloneA, cloneB, cloneC} {
		s.runOK(t, id, "true")
	}
}

// testPauseResume pauses and resumes the origin, first through the API,
// then through the CLI, long enough each time that a guest clock left
// standing would lag by more than clockTolerance.
func (s *snapshotEnv) testPauseResume(t *testing.T) {
	const pausedFor = 4 * time.Second
	t.Run("api", func(t *testing.T) {
		ctx := testContext(t)
		count := lastCount(t, s.readCounter(t, originID))
		info, err := s.control.Pause(ctx, &sandboxv1.PauseSandboxRequest{Id: originID})
		if err != nil || info.GetState() != "paused" {
			t.Fatalf("pause %s: got %v, %v; want state paused", originID, info, err)
		}
		if info, err := s.client.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: originID}); err != nil || info.GetState() != "paused" {
			t.Errorf("inspect %s while paused: got %v, %v; want state paused", originID, info, err)
		}
		list, err := s.client.List(ctx, &sandboxv1.ListSandboxesRequest{State: "paused"})
		if err != nil {
			t.Fatalf("list paused sandboxes: %v", err)
		}
		var paused []string
		for _, sb := range list.GetSandboxes() {
			paused = append(paused, sb.GetId()+"="+sb.GetState())
		}
		if !slices.Equal(paused, []string{originID + "=paused"}) {
			t.Errorf("list with state paused: got %v, want [%s=paused]", paused, originID)
		}
		if res := s.run(t, originID, "true"); status.Code(res.err) != codes.FailedPrecondition {
			t.Errorf("run while paused: got %v (exit %d), want FailedPrecondition", res.err, res.code)
		}
		_, err = s.snapshots.Checkpoint(ctx, &sandboxv1.CheckpointRequest{SandboxId: originID})
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("checkpoint while paused: got %v, want FailedPrecondition", err)
		}
		if _, err := s.control.Pause(ctx, &sandboxv1.PauseSandboxRequest{Id: originID}); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("second pause: got %v, want FailedPrecondition", err)
		}

		time.Sleep(pausedFor)
		info, err = s.control.Resume(ctx, &sandboxv1.ResumeSandboxRequest{Id: originID})
		if err != nil || info.GetState() != "ready" {
			t.Fatalf("resume %s: got %v, %v; want state ready", originID, info, err)
		}
		if _, err := s.control.Resume(ctx, &sandboxv1.ResumeSandboxRequest{Id: originID}); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("second resume: got %v, want FailedPrecondition", err)
		}
		s.checkClock(t, originID)
		s.waitCounterAbove(t, originID, count)
	})

	t.Run("cli", func(t *testing.T) {
		ctx := testContext(t)
		if res := s.d.CLI(ctx, t, "pause", originID); res.Code != 0 {
			t.Fatalf("hearth pause %s: exit %d stderr %q", originID, res.Code, res.Stderr)
		}
		if res := s.d.CLI(ctx, t, "ls", "-q", "--state", "paused"); res.Stdout != originID+"\n" {
			t.Errorf("hearth ls -q --state paused: got %q (exit %d), want %q", res.Stdout, res.Code, originID+"\n")
		}
		res := s.d.CLI(ctx, t, "inspect", originID)
		if !regexp.MustCompile(`(?m)^State:\s+paused$`).MatchString(res.Stdout) {
			t.Errorf("hearth inspect %s: got exit %d stdout\n%s\nwant State: paused", originID, res.Code, res.Stdout)
		}
		res = s.d.CLI(ctx, t, "exec", originID, "--", "true")
		if res.Code != 125 || !strings.Contains(res.Stderr, "paused") {
			t.Errorf("hearth exec while paused: got exit %d stderr %q, want 125 and a message saying paused", res.Code, res.Stderr)
		}

		time.Sleep(pausedFor)
		if res := s.d.CLI(ctx, t, "resume", originID); res.Code != 0 {
			t.Fatalf("hearth resume %s: exit %d stderr %q", originID, res.Code, res.Stderr)
		}
		before := time.Now()
		res = s.d.CLI(ctx, t, "exec", originID, "--", "date", "+%s")
		after := time.Now()
		if res.Code != 0 {
			t.Fatalf("hearth exec date after resume: exit %d stderr %q", res.Code, res.Stderr)
		}
		checkGuestTime(t, originID, res.Stdout, before, after)
	})
}

// testLateClone restores a clone lateDelay after the checkpoint and
// checks that its clock was set from the host's.
func (s *snapshotEnv) testLateClone(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	select {
	case <-time.After(time.Until(s.snapTaken.Add(lateDelay))):
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	t.Cleanup(func() { s.removeSandboxes(t, lateClone) })
	if _, err := s.snapshots.Restore(ctx, &sandboxv1.RestoreRequest{Id: lateClone, SnapshotId: s.snap.GetSnapshotId()}); err != nil {
		t.Fatalf("restore %s %s after the checkpoint: %v", lateClone, lateDelay, err)
	}
	s.checkClock(t, lateClone)
	s.removeSandboxes(t, lateClone)
}

// testDeleteSnapshots deletes the snapshots once no clone runs, one
// through the API and one through the CLI, and checks that no file of
// them remains.
func (s *snapshotEnv) testDeleteSnapshots(t *testing.T) {
	ctx := testContext(t)
	if infos, err := s.client.List(ctx, &sandboxv1.ListSandboxesRequest{}); err != nil || len(infos.GetSandboxes()) != 1 {
		t.Fatalf("sandboxes before deleting the snapshots: got %v, %v; want only %s", infos, err, originID)
	}
	if _, err := s.snapshots.DeleteSnapshot(ctx, &sandboxv1.DeleteSnapshotRequest{SnapshotId: s.snap.GetSnapshotId()}); err != nil {
		t.Errorf("delete the origin's snapshot: %v", err)
	}
	deleted := []*sandboxv1.CheckpointResponse{s.snap}
	if s.cloneSnap != nil {
		if res := s.d.CLI(ctx, t, "snapshots", "rm", s.cloneSnap.GetSnapshotId()); res.Code != 0 {
			t.Errorf("hearth snapshots rm %s: exit %d stderr %q", s.cloneSnap.GetSnapshotId(), res.Code, res.Stderr)
		}
		deleted = append(deleted, s.cloneSnap)
	}
	for _, snap := range deleted {
		if _, err := os.Stat(snap.GetSnapshotDir()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("snapshot directory %s after the delete: got %v, want it gone", snap.GetSnapshotDir(), err)
		}
		if s.listed(t, snap.GetSnapshotId()) {
			t.Errorf("ListSnapshots after the delete: %s still listed", snap.GetSnapshotId())
		}
	}
}

// testFailedCheckpoint runs a daemon of its own whose snapshot directory
// is a 4 MiB tmpfs: the checkpoint fails while it copies the guest
// memory, and must leave neither a snapshot nor a file behind, and the
// origin running.
func testFailedCheckpoint(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("mount"); err != nil {
		t.Skip("mount not found; install the Debian package mount")
	}
	assets := harness.Assets(t)
	netns := harness.NewNetns(t)
	dir := t.TempDir()
	snapDir := filepath.Join(dir, "data", "snapshots")
	if err := os.MkdirAll(snapDir, 0o700); err != nil {
		t.Fatal(err)
	}
	harness.MustRun(t, "mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "hearth-e2e-snapshots", snapDir)
	// Registered before the daemon starts, so it runs after the daemon
	// stopped.
	t.Cleanup(func() {
		if out, err := exec.Command("umount", snapDir).CombinedOutput(); err != nil {
			t.Errorf("unmount %s: %v: %s", snapDir, err, out)
		}
	})
	d := harness.StartDaemonIn(t, dir, hearthBin, netns, assets)
	s := newSnapshotEnv(t, d)
	ctx := testContext(t)

	const id = "full"
	// The daemon removes the sandbox when it stops.
	s.createCounting(t, id)
	before := lastCount(t, s.readCounter(t, id))

	_, err := s.snapshots.Checkpoint(ctx, &sandboxv1.CheckpointRequest{SandboxId: id})
	t.Logf("checkpoint into a full snapshot directory: %v", err)
	if err == nil {
		t.Fatalf("checkpoint into a 4 MiB snapshot directory: got success, want an error")
	}
	msg := status.Convert(err).Message()
	for _, want := range []string{"copy guest memory", "no space left on device"} {
		if !strings.Contains(msg, want) {
			t.Errorf("checkpoint error: got %q, want it to contain %q", msg, want)
		}
	}

	list, err := s.snapshots.ListSnapshots(ctx, &sandboxv1.ListSnapshotsRequest{})
	if err != nil || len(list.GetSnapshots()) != 0 {
		t.Errorf("ListSnapshots after the failed checkpoint: got %v, %v; want none", list, err)
	}
	entries, err := os.ReadDir(snapDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, ent := range entries {
		t.Errorf("left in the snapshot directory after the failed checkpoint: %s", ent.Name())
	}

	info, err := s.client.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: id})
	if err != nil || info.GetState() != "ready" {
		t.Errorf("inspect %s after the failed checkpoint: got %v, %v; want state ready", id, info, err)
	}
	if got := s.runOK(t, id, "cat", "/root/f"); got != "data\n" {
		t.Errorf("/root/f after the failed checkpoint: got %q, want %q", got, "data\n")
	}
	s.waitCounterAbove(t, id, before)

	s.removeSandboxes(t, id)
	d.Stop(t)
	if links := harness.Links(t, netns); !slices.Equal(links, []string{"lo"}) {
		t.Errorf("devices left in the namespace after the daemon stopped: got %v, want [lo]", links)
	}
	if pids := harness.QEMUProcesses(d.DataDir); len(pids) > 0 {
		t.Errorf("QEMU processes left after the daemon stopped: %v", pids)
	}
}

// createCounting creates a sandbox through the API, waits until it is
// ready and starts counterScript in it.
func (s *snapshotEnv) createCounting(t *testing.T, id string) {
	t.Helper()
	ctx := testContext(t)
	began := time.Now()
	if _, err := s.client.Create(ctx, &sandboxv1.CreateSandboxRequest{Id: id}); err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
	s.waitState(t, id, "ready")
	t.Logf("boot of %s: %s", id, time.Since(began).Round(time.Millisecond))
	s.runOK(t, id, "sh", "-c", counterScript)
	s.waitCounterAbove(t, id, 0)
}

// runOK runs a command in a sandbox, fails the test unless it exits 0,
// and returns its standard output.
func (s *snapshotEnv) runOK(t *testing.T, id string, cmd ...string) string {
	t.Helper()
	res := s.run(t, id, cmd...)
	if res.err != nil || res.code != 0 {
		t.Fatalf("run %q in %s: got exit %d, %v, stderr %q; want exit 0", cmd, id, res.code, res.err, res.stderr)
	}
	return res.stdout
}

// runEach is daemonEnv.run with a callback for each output message.
func (s *snapshotEnv) runEach(t *testing.T, id string, each func(*sandboxv1.RunOutput), cmd ...string) runResult {
	stream, err := s.client.Run(testContext(t), &sandboxv1.RunRequest{Id: id, Cmd: cmd})
	if err != nil {
		return runResult{err: err}
	}
	var res runResult
	for {
		out, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			res.err = errors.New("the output ended without done")
			return res
		}
		if err != nil {
			res.err = err
			return res
		}
		each(out)
		switch out.GetStream() {
		case "stdout":
			res.stdout += string(out.GetData())
		case "stderr":
			res.stderr += string(out.GetData())
		}
		if out.GetDone() {
			res.code = out.GetExitCode()
			return res
		}
	}
}

// readCounter returns the values in a sandbox's /root/count and fails
// the test unless they count up from 1 without a gap or a repeat.
func (s *snapshotEnv) readCounter(t *testing.T, id string) []int {
	t.Helper()
	values, err := parseCounter(s.runOK(t, id, "cat", "/root/count"))
	if err != nil {
		t.Fatalf("/root/count in %s: %v", id, err)
	}
	return values
}

// parseCounter returns the values of a counter file, checking that they
// count up from 1 without a gap or a repeat: a loop that restarted, or a
// disk copy out of step with the memory, would break the sequence.
func parseCounter(content string) ([]int, error) {
	// The loop may be in the middle of a write: drop an unfinished line.
	content = content[:strings.LastIndexByte(content, '\n')+1]
	values := make([]int, 0, strings.Count(content, "\n"))
	for _, line := range strings.Split(strings.TrimSuffix(content, "\n"), "\n") {
		if line == "" && len(values) == 0 {
			break // an empty file
		}
		n, err := strconv.Atoi(line)
		if err != nil {
			return values, fmt.Errorf("line %d is %q, want a number", len(values)+1, line)
		}
		if n != len(values)+1 {
			return values, fmt.Errorf("got %d on line %d after %v, want %d", n, len(values)+1, tail(values), len(values)+1)
		}
		values = append(values, n)
	}
	return values, nil
}

func lastCount(t *testing.T, values []int) int {
	t.Helper()
	if len(values) == 0 {
		t.Fatal("/root/count is empty")
	}
	return values[len(values)-1]
}

func tail(values []int) []int {
	return values[max(0, len(values)-3):]
}

// counterCut brackets the counter value a checkpoint captured: the
// origin's last value read right before the Checkpoint call, and the time
// from that read until the call returned, during which the loop wrote at
// most maxIterations(window) more values.
type counterCut struct {
	before int
	window time.Duration
}

// maxIterations is the most values the counter loop can write in d,
// since every iteration sleeps 100 ms of the guest's monotonic clock,
// which advances no faster than the host's.
func maxIterations(d time.Duration) int {
	return int(d/(100*time.Millisecond)) + 1
}

// checkContinued reads the counter of a clone whose restore began at
// restored and checks that it continues from the checkpoint. readCounter
// checks that the values count up from 1 without a gap. The last value
// must be at least the origin's value right before the checkpoint. It may
// exceed it only by what the loop can have written in the origin until
// the checkpoint and in the clone since the restore. A clone that started
// over, or got the disk or memory of a later moment, fails. Then the
// counter must keep going.
func (s *snapshotEnv) checkContinued(t *testing.T, id string, cut counterCut, restored time.Time) {
	t.Helper()
	last := lastCount(t, s.readCounter(t, id))
	high := cut.before + maxIterations(cut.window) + maxIterations(time.Since(restored))
	t.Logf("counter in %s right after restore: %d; at the checkpoint: %d to %d", id, last, cut.before, cut.before+maxIterations(cut.window))
	if last < cut.before || last > high {
		t.Errorf("counter in %s right after restore: got %d, want %d to %d, just above the value at the checkpoint",
			id, last, cut.before, high)
	}
	s.waitCounterAbove(t, id, last)
}

// waitCounterAbove waits until a sandbox's counter passes above, which
// shows that its loop runs. A missing /root/count counts as empty.
func (s *snapshotEnv) waitCounterAbove(t *testing.T, id string, above int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out := s.runOK(t, id, "sh", "-c", "cat /root/count 2>/dev/null; exit 0")
		values, err := parseCounter(out)
		if err != nil {
			t.Fatalf("/root/count in %s: %v", id, err)
		}
		if len(values) > 0 && values[len(values)-1] > above {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("counter in %s: got %v after 30 s, want a value above %d", id, tail(values), above)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// checkClock runs `date +%s` in a sandbox and checks it against the
// host's time while the command ran.
func (s *snapshotEnv) checkClock(t *testing.T, id string) {
	t.Helper()
	before := time.Now()
	out := s.runOK(t, id, "date", "+%s")
	checkGuestTime(t, id, out, before, time.Now())
}

// checkGuestTime checks that a guest's `date +%s` output, printed between
// before and after on the host, is within clockTolerance of that span.
func checkGuestTime(t *testing.T, id, out string, before, after time.Time) {
	t.Helper()
	secs, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		t.Fatalf("date +%%s in %s: got %q, want a number", id, out)
	}
	guest := time.Unix(secs, 0)
	t.Logf("clock of %s: guest %d, host %.1f to %.1f", id, secs,
		float64(before.UnixMilli())/1000, float64(after.UnixMilli())/1000)
	// date +%s truncates, so the guest second may start up to 1 s
	// before the host's time.
	low, high := before.Add(-clockTolerance-time.Second), after.Add(clockTolerance)
	if guest.Before(low) || guest.After(high) {
		t.Errorf("clock of %s: got %s, want within %s of the host's %s to %s",
			id, guest.Format(time.TimeOnly), clockTolerance, before.Format(time.TimeOnly), after.Format(time.TimeOnly))
	}
}

// guestMAC returns the MAC address of eth0 inside a sandbox.
func (s *snapshotEnv) guestMAC(t *testing.T, id string) string {
	t.Helper()
	return strings.TrimSpace(s.runOK(t, id, "cat", "/sys/class/net/eth0/address"))
}

// dialGuest connects to listenPort at addr from inside the daemon's
// network namespace with socat and returns what the listener sent. It
// retries while the listener is not up yet, for up to 30 s.
func (s *snapshotEnv) dialGuest(t *testing.T, addr string) string {
	t.Helper()
	if _, err := exec.LookPath("socat"); err != nil {
		t.Skip("socat not found; install the Debian package socat")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", s.d.Netns,
			"socat", "-u", fmt.Sprintf("TCP:%s:%d,connect-timeout=5", addr, listenPort), "STDOUT").Output()
		cancel()
		if err == nil && len(out) > 0 {
			return string(out)
		}
		if time.Now().After(deadline) {
			t.Errorf("connect to %s:%d from the host: %v, output %q", addr, listenPort, err, out)
			return string(out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// listed reports whether ListSnapshots returns the snapshot id.
func (s *snapshotEnv) listed(t *testing.T, id string) bool {
	t.Helper()
	list, err := s.snapshots.ListSnapshots(testContext(t), &sandboxv1.ListSnapshotsRequest{})
	if err != nil {
		t.Fatalf("list snapshots: %v", err)
	}
	return slices.ContainsFunc(list.GetSnapshots(), func(snap *sandboxv1.SnapshotSummary) bool {
		return snap.GetId() == id
	})
}

// removeSandboxes removes sandboxes that exist, for cleanups.
func (s *snapshotEnv) removeSandboxes(t *testing.T, ids ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, id := range ids {
		_, err := s.client.Remove(ctx, &sandboxv1.RemoveSandboxRequest{Id: id, Force: true})
		if err != nil && status.Code(err) != codes.NotFound {
			t.Errorf("remove %s: %v", id, err)
		}
	}
}

// snapshotFiles returns "name size" for each file in a snapshot
// directory.
func snapshotFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read snapshot directory: %v", err)
	}
	var files []string
	for _, ent := range entries {
		fi, err := ent.Info()
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, fmt.Sprintf("%s %d", ent.Name(), fi.Size()))
	}
	return files
}

// longContext bounds TestSnapshot, which waits lateDelay besides its
// boots and restores.
func longContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestParseCounter(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    []int
		wantErr bool
	}{
		{"empty", "", []int{}, false},
		{"counting", "1\n2\n3\n", []int{1, 2, 3}, false},
		{"unfinished last line", "1\n2\n3", []int{1, 2}, false},
		{"restarted", "1\n2\n1\n", nil, true},
		{"gap", "1\n2\n4\n", nil, true},
		{"repeat", "1\n2\n2\n", nil, true},
		{"not from 1", "5\n6\n", nil, true},
		{"not a number", "1\nx\n", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCounter(tc.content)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("parseCounter(%q): got %v, want an error", tc.content, got)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("parseCounter(%q): got %v, %v; want %v", tc.content, got, err, tc.want)
			}
		})
	}
}
