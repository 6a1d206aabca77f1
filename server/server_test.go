package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/server"
	"github.com/hearthvm/hearth/server/servertest"
)

// eventLog collects the events of one Events stream in the background.
type eventLog struct {
	mu     sync.Mutex
	events []*sandboxv1.SandboxEvent
	err    error
	ended  chan struct{}
}

func (h *harness) watchEvents(t *testing.T, req *sandboxv1.SandboxEventsRequest) *eventLog {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := h.client.Events(ctx, req)
	if err != nil {
		t.Fatalf("events: %v", err)
	}
	// The subscription exists once the server has sent the headers.
	if _, err := stream.Header(); err != nil {
		t.Fatalf("events header: %v", err)
	}
	l := &eventLog{ended: make(chan struct{})}
	go func() {
		defer close(l.ended)
		for {
			ev, err := stream.Recv()
			l.mu.Lock()
			if err != nil {
				l.err = err
				l.mu.Unlock()
				return
			}
			l.events = append(l.events, ev)
			l.mu.Unlock()
		}
	}()
	return l
}

// snapshot returns a copy of the events received so far.
func (l *eventLog) snapshot() []*sandboxv1.SandboxEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

func (l *eventLog) actions() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var actions []string
	for _, ev := range l.events {
		actions = append(actions, ev.GetAction())
	}
	return actions
}

// waitFor waits until the log contains want as a subsequence.
func (l *eventLog) waitFor(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(servertest.Deadline)
	for !isSubsequence(l.actions(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("events: got %v, want %v in order", l.actions(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func isSubsequence(got, want []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

func TestLifecycle(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	events := h.watchEvents(t, &sandboxv1.SandboxEventsRequest{Id: "life"})
	ctx := testContext(t)

	resp, err := h.client.Create(ctx, &sandboxv1.CreateSandboxRequest{
		Id: "life", Labels: map[string]string{"team": "a"}, Network: &sandboxv1.NetworkSpec{Mode: "none"},
	})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if resp.GetId() != "life" || resp.GetState() != "starting" || resp.GetIpAddress() != "" {
		t.Errorf("create response: got id %q state %q ip %q, want life, starting and no address",
			resp.GetId(), resp.GetState(), resp.GetIpAddress())
	}
	events.waitFor(t, "created", "ready")

	res, err := h.run(ctx, &sandboxv1.RunRequest{Id: "life", Cmd: []string{"echo", "hi"}})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if res.stdout != "hi\n" {
		t.Errorf("run stdout: got %q, want %q", res.stdout, "hi\n")
	}
	if !res.done || res.exitCode != 0 {
		t.Errorf("run end: got done %v exit %d, want done with exit 0", res.done, res.exitCode)
	}

	info := h.waitState(t, "life", "ready")
	if info.GetLastExitCode() != 0 || info.GetLastExitedAt() == 0 {
		t.Errorf("inspect: got last exit %d at %d, want 0 at a set time", info.GetLastExitCode(), info.GetLastExitedAt())
	}
	if now := time.Now().Unix(); info.GetCreatedAt() > now || info.GetCreatedAt() < now-60 {
		t.Errorf("inspect created_at: got %d, want Unix seconds near %d", info.GetCreatedAt(), now)
	}
	if info.GetReadyAt() < info.GetCreatedAt() {
		t.Errorf("inspect ready_at: got %d, want at least created_at %d", info.GetReadyAt(), info.GetCreatedAt())
	}
	if info.GetLimits().GetVcpus() != 1 || info.GetLimits().GetMemoryMib() != 256 {
		t.Errorf("inspect limits: got %v, want the defaults 1 vCPU and 256 MiB", info.GetLimits())
	}
	if info.GetLabels()["team"] != "a" {
		t.Errorf("inspect labels: got %v, want team=a", info.GetLabels())
	}

	list, err := h.client.List(ctx, &sandboxv1.ListSandboxesRequest{State: "ready", Labels: map[string]string{"team": "a"}})
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	if len(list.GetSandboxes()) != 1 || list.GetSandboxes()[0].GetId() != "life" {
		t.Errorf("list ready team=a: got %v, want the sandbox life", list.GetSandboxes())
	}
	list, err = h.client.List(ctx, &sandboxv1.ListSandboxesRequest{Labels: map[string]string{"team": "b"}})
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	if len(list.GetSandboxes()) != 0 {
		t.Errorf("list team=b: got %v, want none", list.GetSandboxes())
	}

	if _, err := h.client.Stop(ctx, &sandboxv1.StopSandboxRequest{Id: "life"}); err != nil {
		t.Fatalf("stop: %v", err)
	}
	h.waitState(t, "life", "stopped")
	if _, err := h.client.Remove(ctx, &sandboxv1.RemoveSandboxRequest{Id: "life"}); err != nil {
		t.Fatalf("remove: %v", err)
	}
	_, err = h.client.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: "life"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("inspect after remove: got %v, want NotFound", err)
	}

	events.waitFor(t, "created", "ready", "running", "idle", "stopping", "stopped", "removed")
	events.mu.Lock()
	defer events.mu.Unlock()
	for _, ev := range events.events {
		if ev.GetSandboxId() != "life" {
			t.Errorf("event %s: got sandbox %q, want life", ev.GetAction(), ev.GetSandboxId())
		}
		if ts := time.Unix(0, ev.GetTimestamp()); time.Since(ts) > time.Minute || time.Since(ts) < 0 {
			t.Errorf("event %s: timestamp %d is not Unix nanoseconds of the last minute", ev.GetAction(), ev.GetTimestamp())
		}
		if ev.GetAction() == "idle" && ev.GetAttributes()["exit_code"] != "0" {
			t.Errorf("idle event: got attributes %v, want exit_code 0", ev.GetAttributes())
		}
	}
}

func TestRunStderrAndExitCode(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "codes"})
	res, err := h.run(testContext(t), &sandboxv1.RunRequest{
		Id: id, Cmd: []string{"sh", "-c", "echo out; echo err >&2; exit 3"},
	})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if res.stdout != "out\n" || res.stderr != "err\n" {
		t.Errorf("run output: got stdout %q stderr %q, want %q and %q", res.stdout, res.stderr, "out\n", "err\n")
	}
	if !res.done || res.exitCode != 3 {
		t.Errorf("run end: got done %v exit %d, want done with exit 3", res.done, res.exitCode)
	}
	info := h.waitState(t, id, "ready")
	if info.GetLastExitCode() != 3 {
		t.Errorf("inspect last_exit_code: got %d, want 3", info.GetLastExitCode())
	}
}

// processRunning reports whether a process with exactly these arguments
// exists.
func processRunning(t *testing.T, args ...string) bool {
	t.Helper()
	want := []byte(strings.Join(args, "\x00") + "\x00")
	dirs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range dirs {
		if cmdline, err := os.ReadFile(p); err == nil && bytes.Equal(cmdline, want) {
			return true
		}
	}
	return false
}

func TestRunClientDisconnectKillsWorkload(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "gone"})

	// An argument no other test uses, to find this very process.
	args := []string{"sleep", "100.25"}
	ctx, cancel := context.WithCancel(testContext(t))
	stream, err := h.client.Run(ctx, &sandboxv1.RunRequest{Id: id, Cmd: args})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	h.waitState(t, id, "running")
	deadline := time.Now().Add(servertest.Deadline)
	for !processRunning(t, args...) {
		if time.Now().After(deadline) {
			t.Fatalf("%v never started", args)
		}
		time.Sleep(10 * time.Millisecond)
	}

	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("recv after cancel: got %v, want Canceled", err)
	}
	// The deadline is the behaviour under test: a client that goes away
	// must not leave its workload running.
	gone := time.Now().Add(time.Second)
	for {
		info, err := h.client.Inspect(testContext(t), &sandboxv1.InspectSandboxRequest{Id: id})
		if err != nil {
			t.Fatalf("inspect: %v", err)
		}
		running := processRunning(t, args...)
		if !running && info.GetState() == "ready" && info.GetWorkloads() == 0 {
			break
		}
		if time.Now().After(gone) {
			t.Fatalf("1 s after the client left: process running %v, state %q, workloads %d; want gone, ready, 0",
				running, info.GetState(), info.GetWorkloads())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConcurrentCreateSameID(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = h.client.Create(testContext(t), &sandboxv1.CreateSandboxRequest{
				Id: "twin", Network: &sandboxv1.NetworkSpec{Mode: "none"},
			})
		}()
	}
	wg.Wait()
	var ok, exists int
	for _, err := range errs {
		switch status.Code(err) {
		case codes.OK:
			ok++
		case codes.AlreadyExists:
			exists++
		default:
			t.Errorf("create: got %v, want OK or AlreadyExists", err)
		}
	}
	if ok != 1 || exists != 1 {
		t.Errorf("two creates of one id: got %d OK and %d AlreadyExists, want 1 and 1", ok, exists)
	}
	h.waitState(t, "twin", "ready")
}

// waitGone polls Inspect until the sandbox no longer exists.
func (h *harness) waitGone(t *testing.T, id string) {
	t.Helper()
	deadline := time.Now().Add(servertest.Deadline)
	for {
		_, err := h.client.Inspect(testContext(t), &sandboxv1.InspectSandboxRequest{Id: id})
		if status.Code(err) == codes.NotFound {
			return
		}
		if err != nil {
			t.Fatalf("inspect %s: %v", id, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s still exists after %s", id, servertest.Deadline)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestTTLRemovesSandbox(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	events := h.watchEvents(t, &sandboxv1.SandboxEventsRequest{Id: "brief", Action: "removed"})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "brief", TtlSeconds: 2})
	info := h.waitState(t, id, "ready")
	if want := info.GetCreatedAt() + 2; info.GetExpiresAt() < want-1 || info.GetExpiresAt() > want+1 {
		t.Errorf("expires_at: got %d, want about created_at + 2 = %d", info.GetExpiresAt(), want)
	}
	h.waitGone(t, id)
	events.waitFor(t, "removed")
	if got := events.actions(); len(got) != 1 {
		t.Errorf("events filtered by action removed: got %v, want only removed", got)
	}
}

func TestTTLOldTimerSparesNewSandbox(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx := testContext(t)
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "reborn", TtlSeconds: 1})
	if _, err := h.client.Remove(ctx, &sandboxv1.RemoveSandboxRequest{Id: id}); err != nil {
		t.Fatalf("remove: %v", err)
	}
	h.create(t, &sandboxv1.CreateSandboxRequest{Id: "reborn"})

	// Past the first sandbox's deadline, its timer must not have removed
	// the second one.
	time.Sleep(2 * time.Second)
	info, err := h.client.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: "reborn"})
	if err != nil {
		t.Fatalf("inspect the new sandbox after the old TTL: %v", err)
	}
	if info.GetState() != "ready" || info.GetExpiresAt() != 0 {
		t.Errorf("new sandbox: got state %q expires_at %d, want ready with no TTL", info.GetState(), info.GetExpiresAt())
	}
}

func TestSetTTL(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx := testContext(t)
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "later", TtlSeconds: 1})

	info, err := h.control.SetTTL(ctx, &sandboxv1.SetTTLRequest{Id: id, TtlSeconds: 0})
	if err != nil {
		t.Fatalf("clear ttl: %v", err)
	}
	if info.GetExpiresAt() != 0 {
		t.Errorf("after clearing the TTL: got expires_at %d, want 0", info.GetExpiresAt())
	}
	time.Sleep(1500 * time.Millisecond)
	if _, err := h.client.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: id}); err != nil {
		t.Fatalf("inspect after the cleared TTL passed: %v", err)
	}

	info, err = h.control.SetTTL(ctx, &sandboxv1.SetTTLRequest{Id: id, TtlSeconds: 1})
	if err != nil {
		t.Fatalf("set ttl: %v", err)
	}
	if info.GetExpiresAt() == 0 {
		t.Error("after setting a TTL: got expires_at 0, want a time")
	}
	h.waitGone(t, id)

	_, err = h.control.SetTTL(ctx, &sandboxv1.SetTTLRequest{Id: "missing", TtlSeconds: 5})
	if status.Code(err) != codes.NotFound {
		t.Errorf("set ttl of a missing sandbox: got %v, want NotFound", err)
	}
}

func TestConcurrentRuns(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "busy"})

	var wg sync.WaitGroup
	results := make([]runResult, 3)
	errs := make([]error, 3)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			script := fmt.Sprintf("sleep 0.2; echo run-%d; exit %d", i, 10+i)
			results[i], errs[i] = h.run(testContext(t), &sandboxv1.RunRequest{Id: id, Cmd: []string{"sh", "-c", script}})
		}()
	}
	wg.Wait()
	for i, res := range results {
		if errs[i] != nil {
			t.Errorf("run %d: %v", i, errs[i])
			continue
		}
		if want := fmt.Sprintf("run-%d\n", i); res.stdout != want {
			t.Errorf("run %d stdout: got %q, want %q", i, res.stdout, want)
		}
		if !res.done || res.exitCode != int32(10+i) {
			t.Errorf("run %d end: got done %v exit %d, want done with exit %d", i, res.done, res.exitCode, 10+i)
		}
	}
	h.waitState(t, id, "ready")
}

func TestRunWaitsForStartingSandbox(t *testing.T) {
	gate := make(chan struct{})
	h := newHarness(t, harnessOptions{driver: &servertest.FakeDriver{BootGate: gate}})
	ctx := testContext(t)
	if _, err := h.client.Create(ctx, &sandboxv1.CreateSandboxRequest{
		Id: "early", Network: &sandboxv1.NetworkSpec{Mode: "none"},
	}); err != nil {
		t.Fatalf("create: %v", err)
	}
	done := make(chan struct{})
	var res runResult
	var err error
	go func() {
		defer close(done)
		res, err = h.run(ctx, &sandboxv1.RunRequest{Id: "early", Cmd: []string{"echo", "late"}})
	}()
	select {
	case <-done:
		t.Fatalf("run returned before the sandbox booted: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(gate)
	<-done
	if err != nil || res.stdout != "late\n" {
		t.Errorf("run on a starting sandbox: got %q, %v; want %q once ready", res.stdout, err, "late\n")
	}
}

func TestExecStdinAndEOF(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "pipe"})
	stream, err := h.client.Exec(testContext(t))
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	msgs := []*sandboxv1.ExecInput{
		{Payload: &sandboxv1.ExecInput_Init{Init: &sandboxv1.ExecRequest{Id: id, Cmd: []string{"sh", "-c", "cat; echo end"}}}},
		{Payload: &sandboxv1.ExecInput_Stdin{Stdin: []byte("hello ")}},
		{Payload: &sandboxv1.ExecInput_Stdin{Stdin: []byte("world\n")}},
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	// cat ends only when CloseSend reaches it as stdin EOF.
	if err := stream.CloseSend(); err != nil {
		t.Fatalf("close send: %v", err)
	}
	var stdout string
	var last *sandboxv1.ExecOutput
	for {
		out, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		stdout += string(out.GetData())
		last = out
	}
	if stdout != "hello world\nend\n" {
		t.Errorf("exec stdout: got %q, want %q", stdout, "hello world\nend\n")
	}
	if last == nil || !last.GetDone() || last.GetStream() != "exit" || last.GetExitCode() != 0 {
		t.Errorf("exec last message: got %v, want stream exit, done, exit code 0", last)
	}
}

func TestExecTTYSizeAndResize(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "term"})
	stream, err := h.client.Exec(testContext(t))
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	init := &sandboxv1.ExecRequest{
		Id: id, Tty: true, TtySize: &sandboxv1.TerminalSize{Width: 100, Height: 30},
		Cmd: []string{"sh", "-c", "stty -echo; while read line; do stty size; [ \"$line\" = q ] && exit 0; done"},
	}
	if err := stream.Send(&sandboxv1.ExecInput{Payload: &sandboxv1.ExecInput_Init{Init: init}}); err != nil {
		t.Fatalf("send init: %v", err)
	}
	send := func(m *sandboxv1.ExecInput) {
		if err := stream.Send(m); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	var output string
	readUntil := func(want string) {
		t.Helper()
		for !strings.Contains(output, want) {
			out, err := stream.Recv()
			if err != nil {
				t.Fatalf("recv waiting for %q: got output %q, error %v", want, output, err)
			}
			output += string(out.GetData())
		}
	}

	send(&sandboxv1.ExecInput{Payload: &sandboxv1.ExecInput_Stdin{Stdin: []byte("a\n")}})
	readUntil("30 100")

	// The resize and the next line travel on separate paths to the agent,
	// so lines are sent until the new size shows.
	send(&sandboxv1.ExecInput{Payload: &sandboxv1.ExecInput_Resize{Resize: &sandboxv1.TerminalSize{Width: 120, Height: 40}}})
	deadline := time.Now().Add(servertest.Deadline)
	for !strings.Contains(output, "40 120") {
		if time.Now().After(deadline) {
			t.Fatalf("terminal size after resize: got output %q, want 40 120", output)
		}
		send(&sandboxv1.ExecInput{Payload: &sandboxv1.ExecInput_Stdin{Stdin: []byte("b\n")}})
		out, err := stream.Recv()
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		output += string(out.GetData())
	}
	send(&sandboxv1.ExecInput{Payload: &sandboxv1.ExecInput_Stdin{Stdin: []byte("q\n")}})
	for {
		out, err := stream.Recv()
		if err != nil {
			t.Fatalf("recv before exit: %v", err)
		}
		if out.GetDone() {
			if out.GetExitCode() != 0 {
				t.Errorf("exit code: got %d, want 0", out.GetExitCode())
			}
			return
		}
	}
}

func TestExecFirstMessageMustBeInit(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	stream, err := h.client.Exec(testContext(t))
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	if err := stream.Send(&sandboxv1.ExecInput{Payload: &sandboxv1.ExecInput_Stdin{Stdin: []byte("x")}}); err != nil {
		t.Fatalf("send: %v", err)
	}
	_, err = stream.Recv()
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "init") {
		t.Errorf("exec without init: got %v, want InvalidArgument naming init", err)
	}
}

func TestErrors(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.create(t, &sandboxv1.CreateSandboxRequest{Id: "present"})
	none := &sandboxv1.NetworkSpec{Mode: "none"}
	key := "ssh-ed25519 AAAA"

	tests := []struct {
		name     string
		call     func(ctx context.Context) error
		code     codes.Code
		contains string
	}{
		{"inspect unknown", func(ctx context.Context) error {
			_, err := h.client.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: "nobody"})
			return err
		}, codes.NotFound, "nobody"},
		{"stop unknown", func(ctx context.Context) error {
			_, err := h.client.Stop(ctx, &sandboxv1.StopSandboxRequest{Id: "nobody"})
			return err
		}, codes.NotFound, "nobody"},
		{"run unknown", func(ctx context.Context) error {
			_, err := h.run(ctx, &sandboxv1.RunRequest{Id: "nobody", Cmd: []string{"true"}})
			return err
		}, codes.NotFound, "nobody"},
		{"create path id", func(ctx context.Context) error {
			_, err := h.client.Create(ctx, &sandboxv1.CreateSandboxRequest{Id: "../x", Network: none})
			return err
		}, codes.InvalidArgument, "../x"},
		{"inspect path id", func(ctx context.Context) error {
			_, err := h.client.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: "../x"})
			return err
		}, codes.InvalidArgument, "../x"},
		{"inspect empty id", func(ctx context.Context) error {
			_, err := h.client.Inspect(ctx, &sandboxv1.InspectSandboxRequest{})
			return err
		}, codes.InvalidArgument, "id"},
		{"create 1 MiB", func(ctx context.Context) error {
			_, err := h.client.Create(ctx, &sandboxv1.CreateSandboxRequest{
				Limits: &sandboxv1.ResourceLimits{MemoryMib: 1}, Network: none,
			})
			return err
		}, codes.InvalidArgument, "minimum of 64 MiB"},
		{"create 99 vcpus", func(ctx context.Context) error {
			_, err := h.client.Create(ctx, &sandboxv1.CreateSandboxRequest{
				Limits: &sandboxv1.ResourceLimits{Vcpus: 99}, Network: none,
			})
			return err
		}, codes.InvalidArgument, "vcpus"},
		{"create image", func(ctx context.Context) error {
			_, err := h.client.Create(ctx, &sandboxv1.CreateSandboxRequest{Image: "alpine:3", Network: none})
			return err
		}, codes.InvalidArgument, "image"},
		{"create mounts", func(ctx context.Context) error {
			_, err := h.client.Create(ctx, &sandboxv1.CreateSandboxRequest{
				Mounts: []*sandboxv1.Mount{{Source: "/src", Target: "/dst"}}, Network: none,
			})
			return err
		}, codes.InvalidArgument, "mounts"},
		{"create ssh key", func(ctx context.Context) error {
			_, err := h.client.Create(ctx, &sandboxv1.CreateSandboxRequest{SshPublicKey: &key, Network: none})
			return err
		}, codes.InvalidArgument, "ssh_public_key"},
		{"create bad network mode", func(ctx context.Context) error {
			_, err := h.client.Create(ctx, &sandboxv1.CreateSandboxRequest{Network: &sandboxv1.NetworkSpec{Mode: "bridge"}})
			return err
		}, codes.InvalidArgument, "bridge"},
		{"create tap without pool", func(ctx context.Context) error {
			_, err := h.client.Create(ctx, &sandboxv1.CreateSandboxRequest{})
			return err
		}, codes.Unavailable, "network"},
		{"create existing", func(ctx context.Context) error {
			_, err := h.client.Create(ctx, &sandboxv1.CreateSandboxRequest{Id: "present", Network: none})
			return err
		}, codes.AlreadyExists, "present"},
		{"run empty cmd", func(ctx context.Context) error {
			_, err := h.run(ctx, &sandboxv1.RunRequest{Id: "present"})
			return err
		}, codes.InvalidArgument, "cmd"},
		{"list bad state", func(ctx context.Context) error {
			_, err := h.client.List(ctx, &sandboxv1.ListSandboxesRequest{State: "asleep"})
			return err
		}, codes.InvalidArgument, "state"},
		{"events bad action", func(ctx context.Context) error {
			stream, err := h.client.Events(ctx, &sandboxv1.SandboxEventsRequest{Action: "exploded"})
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		}, codes.InvalidArgument, "action"},
		{"checkpoint without driver support", func(ctx context.Context) error {
			_, err := h.snaps.Checkpoint(ctx, &sandboxv1.CheckpointRequest{SandboxId: "present"})
			return err
		}, codes.Unavailable, "cannot checkpoint"},
		{"checkpoint unknown", func(ctx context.Context) error {
			_, err := h.snaps.Checkpoint(ctx, &sandboxv1.CheckpointRequest{SandboxId: "nobody"})
			return err
		}, codes.NotFound, "nobody"},
		{"checkpoint empty id", func(ctx context.Context) error {
			_, err := h.snaps.Checkpoint(ctx, &sandboxv1.CheckpointRequest{})
			return err
		}, codes.InvalidArgument, "sandbox_id"},
		{"checkpoint path id", func(ctx context.Context) error {
			_, err := h.snaps.Checkpoint(ctx, &sandboxv1.CheckpointRequest{SandboxId: "../x"})
			return err
		}, codes.InvalidArgument, "../x"},
		{"restore unknown snapshot", func(ctx context.Context) error {
			_, err := h.snaps.Restore(ctx, &sandboxv1.RestoreRequest{SnapshotId: "snap-none"})
			return err
		}, codes.NotFound, "snap-none"},
		{"restore empty snapshot id", func(ctx context.Context) error {
			_, err := h.snaps.Restore(ctx, &sandboxv1.RestoreRequest{})
			return err
		}, codes.InvalidArgument, "snapshot_id"},
		{"restore path id", func(ctx context.Context) error {
			_, err := h.snaps.Restore(ctx, &sandboxv1.RestoreRequest{Id: "../x", SnapshotId: "snap-none"})
			return err
		}, codes.InvalidArgument, "../x"},
		{"delete unknown snapshot", func(ctx context.Context) error {
			_, err := h.snaps.DeleteSnapshot(ctx, &sandboxv1.DeleteSnapshotRequest{SnapshotId: "snap-none"})
			return err
		}, codes.NotFound, "snap-none"},
		{"delete empty snapshot id", func(ctx context.Context) error {
			_, err := h.snaps.DeleteSnapshot(ctx, &sandboxv1.DeleteSnapshotRequest{})
			return err
		}, codes.InvalidArgument, "snapshot_id"},
		{"pause without driver support", func(ctx context.Context) error {
			_, err := h.control.Pause(ctx, &sandboxv1.PauseSandboxRequest{Id: "present"})
			return err
		}, codes.Unavailable, "cannot pause"},
		{"pause unknown", func(ctx context.Context) error {
			_, err := h.control.Pause(ctx, &sandboxv1.PauseSandboxRequest{Id: "nobody"})
			return err
		}, codes.NotFound, "nobody"},
		{"resume not paused", func(ctx context.Context) error {
			_, err := h.control.Resume(ctx, &sandboxv1.ResumeSandboxRequest{Id: "present"})
			return err
		}, codes.FailedPrecondition, "not paused"},
		{"resume path id", func(ctx context.Context) error {
			_, err := h.control.Resume(ctx, &sandboxv1.ResumeSandboxRequest{Id: "../x"})
			return err
		}, codes.InvalidArgument, "../x"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call(testContext(t))
			if got := status.Code(err); got != tc.code {
				t.Fatalf("got code %s (%v), want %s", got, err, tc.code)
			}
			if !strings.Contains(status.Convert(err).Message(), tc.contains) {
				t.Errorf("got message %q, want it to contain %q", status.Convert(err).Message(), tc.contains)
			}
		})
	}
}

func TestRemoveRunningNeedsForce(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "held"})
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	if _, err := h.client.Run(ctx, &sandboxv1.RunRequest{Id: id, Cmd: []string{"sleep", "100.5"}}); err != nil {
		t.Fatalf("run: %v", err)
	}
	h.waitState(t, id, "running")

	_, err := h.client.Remove(testContext(t), &sandboxv1.RemoveSandboxRequest{Id: id})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "force") {
		t.Errorf("remove without force: got %v, want FailedPrecondition mentioning force", err)
	}
	if _, err := h.client.Remove(testContext(t), &sandboxv1.RemoveSandboxRequest{Id: id, Force: true}); err != nil {
		t.Fatalf("remove with force: %v", err)
	}
	h.waitGone(t, id)
}

func TestMaxSandboxes(t *testing.T) {
	h := newHarness(t, harnessOptions{server: server.Options{MaxSandboxes: 1}})
	ctx := testContext(t)
	first := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "only"})

	_, err := h.client.Create(ctx, &sandboxv1.CreateSandboxRequest{Id: "second", Network: &sandboxv1.NetworkSpec{Mode: "none"}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("create past the limit: got %v, want ResourceExhausted", err)
	}

	// A stopped sandbox no longer counts.
	if _, err := h.client.Stop(ctx, &sandboxv1.StopSandboxRequest{Id: first, TimeoutSeconds: 5}); err != nil {
		t.Fatalf("stop: %v", err)
	}
	h.create(t, &sandboxv1.CreateSandboxRequest{Id: "second"})
}

func TestMaxConcurrentBoots(t *testing.T) {
	gate := make(chan struct{})
	h := newHarness(t, harnessOptions{
		server: server.Options{MaxConcurrentBoots: 1},
		driver: &servertest.FakeDriver{BootGate: gate},
	})
	none := &sandboxv1.NetworkSpec{Mode: "none"}
	if _, err := h.client.Create(testContext(t), &sandboxv1.CreateSandboxRequest{Id: "boot-1", Network: none}); err != nil {
		t.Fatalf("first create: %v", err)
	}

	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := h.client.Create(short, &sandboxv1.CreateSandboxRequest{Id: "boot-2", Network: none})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("create while another boots: got %v, want DeadlineExceeded", err)
	}
	if _, err := h.client.Inspect(testContext(t), &sandboxv1.InspectSandboxRequest{Id: "boot-2"}); status.Code(err) != codes.NotFound {
		t.Errorf("inspect the create that timed out: got %v, want NotFound", err)
	}

	close(gate)
	h.create(t, &sandboxv1.CreateSandboxRequest{Id: "boot-2"})
}

// gatedSends holds every SendMsg of the streams it wraps until release is
// closed, as a client that stopped reading would.
type gatedSends struct {
	grpc.ServerStream
	release <-chan struct{}
}

func (g gatedSends) SendMsg(m any) error {
	<-g.release
	return g.ServerStream.SendMsg(m)
}

func TestSlowEventsSubscriberEnds(t *testing.T) {
	release := make(chan struct{})
	var gated atomic.Bool
	// Only the first Events stream is held; the probe's is not.
	gate := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.FullMethod == sandboxv1.SandboxService_Events_FullMethodName && gated.CompareAndSwap(false, true) {
			ss = gatedSends{ServerStream: ss, release: release}
		}
		return handler(srv, ss)
	}
	h := newHarness(t, harnessOptions{
		server:       server.Options{EventBacklog: 2},
		interceptors: []grpc.StreamServerInterceptor{gate},
	})
	stream, err := h.client.Events(testContext(t), &sandboxv1.SandboxEventsRequest{})
	if err != nil {
		t.Fatalf("events: %v", err)
	}
	// Headers are not messages, so they pass the gate.
	if _, err := stream.Header(); err != nil {
		t.Fatalf("events header: %v", err)
	}
	probe := newHarnessProbe(t, h)

	// created, ready, running, idle, stopping, stopped: more than one held
	// send plus a backlog of two.
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "chatty"})
	if _, err := h.run(testContext(t), &sandboxv1.RunRequest{Id: id, Cmd: []string{"true"}}); err != nil {
		t.Fatalf("run: %v", err)
	}
	if _, err := h.client.Stop(testContext(t), &sandboxv1.StopSandboxRequest{Id: id}); err != nil {
		t.Fatalf("stop: %v", err)
	}
	probe(t)
	close(release)

	var received int
	for {
		_, err := stream.Recv()
		if err == nil {
			received++
			continue
		}
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "fell behind") {
			t.Fatalf("slow subscriber's stream ended with %v, want ResourceExhausted saying it fell behind", err)
		}
		break
	}
	if received == 0 || received > 3 {
		t.Errorf("events delivered before the error: got %d, want 1 to 3 (one held send plus a backlog of two)", received)
	}
}

// newHarnessProbe returns a check that the lifecycle events reached
// subscribers. It subscribes at once, so events of later calls are seen.
func newHarnessProbe(t *testing.T, h *harness) func(t *testing.T) {
	t.Helper()
	events := h.watchEvents(t, &sandboxv1.SandboxEventsRequest{})
	return func(t *testing.T) {
		t.Helper()
		events.waitFor(t, "created", "ready", "running", "idle", "stopping", "stopped")
	}
}
