package sandbox_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/sandbox"
	"github.com/hearthvm/hearth/vmm/instant"
)

// newManager returns a manager on the instant VMM double with placeholder
// boot assets, and removes every sandbox when the test ends.
func newManager(t *testing.T) *sandbox.Manager {
	t.Helper()
	return newManagerWith(t, &instant.Driver{}, t.TempDir())
}

// newManagerWith returns a manager on driver with its state under dir.
func newManagerWith(t *testing.T, driver *instant.Driver, dir string) *sandbox.Manager {
	t.Helper()
	assets := filepath.Join(dir, "assets")
	if err := os.MkdirAll(assets, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"vmlinux", "initramfs.cpio", "rootfs.ext4"} {
		if err := os.WriteFile(filepath.Join(assets, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m, err := sandbox.New(sandbox.Config{
		DataDir: filepath.Join(dir, "data"),
		Driver:  driver,
		Defaults: sandbox.Defaults{
			Kernel: filepath.Join(assets, "vmlinux"),
			Initrd: filepath.Join(assets, "initramfs.cpio"),
			RootFS: filepath.Join(assets, "rootfs.ext4"),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(context.Background()); err != nil {
			t.Errorf("close manager: %v", err)
		}
	})
	return m
}

func createReady(t *testing.T, m *sandbox.Manager, opts sandbox.CreateOptions) *sandbox.Sandbox {
	t.Helper()
	if opts.Network == "" {
		opts.Network = sandbox.NetworkNone
	}
	info, err := m.Create(context.Background(), opts)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	sb, err := m.Get(info.ID)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sb.WaitReady(ctx); err != nil {
		t.Fatalf("wait ready: %v", err)
	}
	return sb
}

// nextEvent returns the next event, failing the test after a deadline.
func nextEvent(t *testing.T, sub *sandbox.Subscription) sandbox.Event {
	t.Helper()
	select {
	case ev, ok := <-sub.C():
		if !ok {
			t.Fatalf("subscription ended: %v", sub.Err())
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	return sandbox.Event{}
}

func expectActions(t *testing.T, sub *sandbox.Subscription, want ...string) []sandbox.Event {
	t.Helper()
	var got []sandbox.Event
	for _, action := range want {
		ev := nextEvent(t, sub)
		if ev.Action != action {
			t.Fatalf("event %d: got %q, want %q", len(got), ev.Action, action)
		}
		got = append(got, ev)
	}
	return got
}

func TestLifecycleEvents(t *testing.T) {
	m := newManager(t)
	sub := m.Subscribe(sandbox.EventFilter{SandboxID: "life"}, 0)
	defer sub.Close()

	sb := createReady(t, m, sandbox.CreateOptions{ID: "life", Labels: map[string]string{"team": "a"}})
	expectActions(t, sub, sandbox.ActionCreated, sandbox.ActionReady)

	var out bytes.Buffer
	code, err := sb.Exec(context.Background(), agentproto.StartRequest{Cmd: []string{"sh", "-c", "echo hi; exit 3"}},
		agentclient.ExecIO{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if code != 3 || out.String() != "hi\n" {
		t.Errorf("exec: got code %d output %q, want 3 and %q", code, out.String(), "hi\n")
	}
	evs := expectActions(t, sub, sandbox.ActionRunning, sandbox.ActionIdle)
	if got := evs[1].Attributes["exit_code"]; got != "3" {
		t.Errorf("idle exit_code: got %q, want 3", got)
	}
	info := sb.Info()
	if info.State != sandbox.StateReady || info.LastExitCode != 3 || info.LastExitedAt.IsZero() {
		t.Errorf("info after exec: got state %s last exit %d at %v", info.State, info.LastExitCode, info.LastExitedAt)
	}

	if err := m.Stop(context.Background(), "life", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	expectActions(t, sub, sandbox.ActionStopping, sandbox.ActionStopped)
	if err := m.Remove(context.Background(), "life", false); err != nil {
		t.Fatal(err)
	}
	expectActions(t, sub, sandbox.ActionRemoved)
	if _, err := os.Stat(info.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sandbox directory after remove: %v, want not exist", err)
	}
	if _, err := m.Get("life"); !errors.Is(err, sandbox.ErrNotFound) {
		t.Errorf("get after remove: got %v, want ErrNotFound", err)
	}
}

func TestCreateRejectsBadInput(t *testing.T) {
	m := newManager(t)
	cases := []struct {
		name string
		opts sandbox.CreateOptions
		want string
	}{
		{"path id", sandbox.CreateOptions{ID: "../x"}, `sandbox id "../x"`},
		{"tiny memory", sandbox.CreateOptions{MemoryMiB: 1}, "minimum of 64 MiB"},
		{"too many vcpus", sandbox.CreateOptions{VCPUs: 33}, "vcpus 33"},
		{"network mode", sandbox.CreateOptions{Network: "bridge"}, `network mode "bridge"`},
		{"tap without pool", sandbox.CreateOptions{Network: sandbox.NetworkTAP}, "needs a network pool"},
		{"missing kernel", sandbox.CreateOptions{Kernel: "/nonexistent/vmlinux"}, "build the boot assets"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.opts.Network == "" {
				tc.opts.Network = sandbox.NetworkNone
			}
			_, err := m.Create(context.Background(), tc.opts)
			if err == nil {
				t.Fatal("got nil error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error: got %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestConcurrentCreateOneWins(t *testing.T) {
	m := newManager(t)
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = m.Create(context.Background(), sandbox.CreateOptions{ID: "dup", Network: sandbox.NetworkNone})
		}()
	}
	wg.Wait()
	wins := 0
	for _, err := range errs {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, sandbox.ErrAlreadyExists):
			t.Errorf("loser error: got %v, want ErrAlreadyExists", err)
		}
	}
	if wins != 1 {
		t.Errorf("winners: got %d, want 1", wins)
	}
}

func TestExecCancelReturnsToReady(t *testing.T) {
	m := newManager(t)
	sb := createReady(t, m, sandbox.CreateOptions{ID: "cancel"})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := sb.Exec(ctx, agentproto.StartRequest{Cmd: []string{"sleep", "100"}}, agentclient.ExecIO{})
		done <- err
	}()
	waitState(t, sb, sandbox.StateRunning)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("exec error: got %v, want context.Canceled", err)
		}
	case <-time.After(time.Second):
		t.Fatal("exec did not return within 1s of the cancel")
	}
	waitState(t, sb, sandbox.StateReady)
}

func waitState(t *testing.T, sb *sandbox.Sandbox, want sandbox.State) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for sb.Info().State != want {
		if time.Now().After(deadline) {
			t.Fatalf("state: got %s, want %s", sb.Info().State, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestConcurrentExecs(t *testing.T) {
	m := newManager(t)
	sb := createReady(t, m, sandbox.CreateOptions{ID: "multi"})
	const n = 3
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			script := "sleep 0.2; echo run" + string(rune('0'+i)) + "; exit " + string(rune('0'+i))
			code, err := sb.Exec(context.Background(), agentproto.StartRequest{Cmd: []string{"sh", "-c", script}},
				agentclient.ExecIO{Stdout: &out})
			if err != nil {
				t.Errorf("exec %d: %v", i, err)
				return
			}
			if want := "run" + string(rune('0'+i)) + "\n"; out.String() != want || code != int32(i) {
				t.Errorf("exec %d: got %q code %d, want %q code %d", i, out.String(), code, want, i)
			}
		}()
	}
	wg.Wait()
	if got := sb.Info().State; got != sandbox.StateReady {
		t.Errorf("state after execs: got %s, want ready", got)
	}
}

func TestTTLRemovesSandbox(t *testing.T) {
	m := newManager(t)
	sub := m.Subscribe(sandbox.EventFilter{Action: sandbox.ActionRemoved}, 0)
	defer sub.Close()
	start := time.Now()
	createReady(t, m, sandbox.CreateOptions{ID: "ttl", TTL: 500 * time.Millisecond})
	ev := nextEvent(t, sub)
	if ev.SandboxID != "ttl" {
		t.Fatalf("removed event for %q, want ttl", ev.SandboxID)
	}
	if elapsed := time.Since(start); elapsed < 500*time.Millisecond {
		t.Errorf("removed after %s, before its TTL of 500ms", elapsed)
	}
}

func TestTTLTimerSparesReusedID(t *testing.T) {
	m := newManager(t)
	createReady(t, m, sandbox.CreateOptions{ID: "reuse", TTL: 300 * time.Millisecond})
	if err := m.Remove(context.Background(), "reuse", false); err != nil {
		t.Fatal(err)
	}
	createReady(t, m, sandbox.CreateOptions{ID: "reuse"})
	time.Sleep(600 * time.Millisecond)
	if _, err := m.Get("reuse"); err != nil {
		t.Errorf("second sandbox with the reused ID: %v, want it alive", err)
	}
}

func TestSetTTLExtendsAndClears(t *testing.T) {
	m := newManager(t)
	createReady(t, m, sandbox.CreateOptions{ID: "extend", TTL: 300 * time.Millisecond})
	if _, err := m.SetTTL("extend", 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond)
	info, err := m.Inspect("extend")
	if err != nil {
		t.Fatalf("sandbox gone after its TTL was cleared: %v", err)
	}
	if !info.ExpiresAt.IsZero() {
		t.Errorf("ExpiresAt after clearing: got %v, want zero", info.ExpiresAt)
	}
	info, err = m.SetTTL("extend", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if until := time.Until(info.ExpiresAt); until < 59*time.Minute {
		t.Errorf("ExpiresAt after extending by 1h: %s from now", until)
	}
}

func TestRemoveRunningNeedsForce(t *testing.T) {
	m := newManager(t)
	sb := createReady(t, m, sandbox.CreateOptions{ID: "busy"})
	go func() {
		_, _ = sb.Exec(context.Background(), agentproto.StartRequest{Cmd: []string{"sleep", "100"}}, agentclient.ExecIO{})
	}()
	waitState(t, sb, sandbox.StateRunning)
	if err := m.Remove(context.Background(), "busy", false); !errors.Is(err, sandbox.ErrWrongState) {
		t.Errorf("remove without force: got %v, want ErrWrongState", err)
	}
	if err := m.Remove(context.Background(), "busy", true); err != nil {
		t.Errorf("remove with force: %v", err)
	}
}

func TestSlowSubscriberOverflows(t *testing.T) {
	m := newManager(t)
	sub := m.Subscribe(sandbox.EventFilter{}, 2)
	for i := range 3 {
		createReady(t, m, sandbox.CreateOptions{ID: "flood" + string(rune('a'+i))})
	}
	n := 0
	for range sub.C() {
		n++
	}
	if n != 2 {
		t.Errorf("events delivered before the overflow: got %d, want 2", n)
	}
	if !errors.Is(sub.Err(), sandbox.ErrEventsOverflow) {
		t.Errorf("subscription error: got %v, want ErrEventsOverflow", sub.Err())
	}
}

func TestListFilters(t *testing.T) {
	m := newManager(t)
	createReady(t, m, sandbox.CreateOptions{ID: "la", Labels: map[string]string{"env": "dev", "team": "x"}})
	createReady(t, m, sandbox.CreateOptions{ID: "lb", Labels: map[string]string{"env": "prod"}})
	got := m.List(sandbox.ListFilter{Labels: map[string]string{"env": "dev"}})
	if len(got) != 1 || got[0].ID != "la" {
		t.Errorf("label filter: got %v, want [la]", ids(got))
	}
	got = m.List(sandbox.ListFilter{State: sandbox.StateReady})
	if len(got) != 2 {
		t.Errorf("state filter: got %v, want [la lb]", ids(got))
	}
	got = m.List(sandbox.ListFilter{State: sandbox.StateStopped})
	if len(got) != 0 {
		t.Errorf("stopped filter: got %v, want none", ids(got))
	}
}

func ids(infos []sandbox.Info) []string {
	var out []string
	for _, i := range infos {
		out = append(out, i.ID)
	}
	return out
}

func TestMaxSandboxes(t *testing.T) {
	dir := t.TempDir()
	newManagerWith(t, &instant.Driver{}, dir) // writes the placeholder assets
	m2, err := sandbox.New(sandbox.Config{
		DataDir: filepath.Join(dir, "limited"), Driver: &instant.Driver{}, MaxSandboxes: 1,
		Defaults: sandbox.Defaults{
			Kernel: filepath.Join(dir, "assets", "vmlinux"),
			Initrd: filepath.Join(dir, "assets", "initramfs.cpio"),
			RootFS: filepath.Join(dir, "assets", "rootfs.ext4"),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m2.Close(context.Background()) })
	createReady(t, m2, sandbox.CreateOptions{ID: "one"})
	_, err = m2.Create(context.Background(), sandbox.CreateOptions{ID: "two", Network: sandbox.NetworkNone})
	if !errors.Is(err, sandbox.ErrResourceExhausted) {
		t.Fatalf("second create past the limit: got %v, want ErrResourceExhausted", err)
	}
	if err := m2.Stop(context.Background(), "one", time.Second); err != nil {
		t.Fatal(err)
	}
	createReady(t, m2, sandbox.CreateOptions{ID: "three"})
}

func TestStaleSandboxDirectoryRemoved(t *testing.T) {
	dir := t.TempDir()
	newManagerWith(t, &instant.Driver{}, dir)
	stale := filepath.Join(dir, "data", "sandboxes", "stale")
	if err := os.MkdirAll(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	// PID 0x7fffffff never exists, so the owner counts as exited.
	rec := `{"owner":{"PID":2147483647,"StartTime":1}}`
	if err := os.WriteFile(filepath.Join(stale, "owner.json"), []byte(rec), 0o600); err != nil {
		t.Fatal(err)
	}
	again := newManagerWith(t, &instant.Driver{}, dir)
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale sandbox directory: %v, want removed", err)
	}
	createReady(t, again, sandbox.CreateOptions{ID: "stale"})
}

func TestCreateRejectsBadLabels(t *testing.T) {
	m := newManager(t)
	cases := []struct {
		name   string
		labels map[string]string
		want   string
	}{
		{"control in value", map[string]string{"k": "x\x1b]0;pwned\a"}, "control characters"},
		{"newline in key", map[string]string{"a\nb": "v"}, "control characters"},
		{"empty key", map[string]string{"": "v"}, "label key"},
		{"huge value", map[string]string{"k": strings.Repeat("v", 2000)}, "at most 1024"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.Create(context.Background(), sandbox.CreateOptions{Labels: tc.labels, Network: sandbox.NetworkNone})
			if !errors.Is(err, sandbox.ErrInvalidArgument) {
				t.Fatalf("got %v, want ErrInvalidArgument", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error: got %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestCreateRejectsMoreMemoryThanHost(t *testing.T) {
	m := newManager(t)
	_, err := m.Create(context.Background(), sandbox.CreateOptions{MemoryMiB: 1 << 30, Network: sandbox.NetworkNone})
	if !errors.Is(err, sandbox.ErrInvalidArgument) || !strings.Contains(err.Error(), "more than this host has") {
		t.Errorf("got %v, want ErrInvalidArgument naming the host's memory", err)
	}
}
