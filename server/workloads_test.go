package server_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/agent"
	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/server/servertest"
	"github.com/hearthvm/hearth/vmm"
)

// startAnnounced starts req with announce_workload and returns the stream
// and the announced workload ID.
func (h *harness) startAnnounced(t *testing.T, ctx context.Context, req *sandboxv1.RunRequest) (
	interface {
		Recv() (*sandboxv1.RunOutput, error)
	}, string) {
	t.Helper()
	req.AnnounceWorkload = true
	stream, err := h.client.Run(ctx, req)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatalf("run first message: %v", err)
	}
	if first.GetStream() != "workload" || first.GetWorkloadId() == "" || first.GetDone() {
		t.Fatalf("run first message: got %v, want stream workload with a workload_id", first)
	}
	return stream, first.GetWorkloadId()
}

// lastOutput reads a Run stream to its end and returns the done message.
func lastOutput(t *testing.T, stream interface {
	Recv() (*sandboxv1.RunOutput, error)
}) *sandboxv1.RunOutput {
	t.Helper()
	var last *sandboxv1.RunOutput
	for {
		out, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("run: %v", err)
		}
		last = out
	}
	if last == nil || !last.GetDone() {
		t.Fatalf("run: last message %v, want one marked done", last)
	}
	return last
}

func TestWorkloadSignalAndList(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "sig"})
	ctx := testContext(t)

	stream, workload := h.startAnnounced(t, ctx, &sandboxv1.RunRequest{Id: id, Cmd: []string{"sleep", "100"}, User: ""})
	list, err := h.control.ListWorkloads(ctx, &sandboxv1.ListWorkloadsRequest{Id: id})
	if err != nil {
		t.Fatalf("list workloads: %v", err)
	}
	if len(list.GetWorkloads()) != 1 {
		t.Fatalf("list workloads: got %v, want one", list.GetWorkloads())
	}
	w := list.GetWorkloads()[0]
	if w.GetId() != workload || strings.Join(w.GetCmd(), " ") != "sleep 100" || w.GetStartedAt() == 0 || w.GetTty() {
		t.Errorf("workload: got %v, want id %s, cmd sleep 100, a start time and no tty", w, workload)
	}

	if _, err := h.control.Signal(ctx, &sandboxv1.SignalRequest{Id: id, WorkloadId: workload, Signal: "TERM"}); err != nil {
		t.Fatalf("signal: %v", err)
	}
	last := lastOutput(t, stream)
	if last.GetExitCode() != 143 || last.GetSignal() != "SIGTERM" || last.GetReason() != "signaled" || last.GetTimedOut() {
		t.Errorf("exit after SIGTERM: got code %d signal %q reason %q timed_out %v, want 143 SIGTERM signaled false",
			last.GetExitCode(), last.GetSignal(), last.GetReason(), last.GetTimedOut())
	}

	list, err = h.control.ListWorkloads(ctx, &sandboxv1.ListWorkloadsRequest{Id: id})
	if err != nil || len(list.GetWorkloads()) != 0 {
		t.Errorf("list workloads after the end: got %v, %v; want none", list.GetWorkloads(), err)
	}
	_, err = h.control.Signal(ctx, &sandboxv1.SignalRequest{Id: id, WorkloadId: workload, Signal: "TERM"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("signal to an ended workload: got %v, want NotFound", err)
	}
}

func TestWorkloadSignalInvalid(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "badsig"})
	for _, tc := range []struct {
		name     string
		sandbox  string
		workload string
		signal   string
		want     codes.Code
	}{
		{"unknown name", id, "w1", "SIGFOO", codes.InvalidArgument},
		{"number zero", id, "w1", "0", codes.InvalidArgument},
		{"number too large", id, "w1", "65", codes.InvalidArgument},
		{"empty signal", id, "w1", "", codes.InvalidArgument},
		{"empty workload", id, "", "TERM", codes.InvalidArgument},
		{"unknown workload", id, "w99", "TERM", codes.NotFound},
		{"unknown sandbox", "nobody", "w1", "TERM", codes.NotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.control.Signal(testContext(t), &sandboxv1.SignalRequest{Id: tc.sandbox, WorkloadId: tc.workload, Signal: tc.signal})
			if status.Code(err) != tc.want {
				t.Errorf("signal %q to %s/%s: got %v, want %s", tc.signal, tc.sandbox, tc.workload, err, tc.want)
			}
		})
	}
}

func TestRunExitDetail(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "detail"})
	for _, tc := range []struct {
		name       string
		cmd        []string
		timeout    uint32
		wantCode   int32
		wantSignal string
		wantReason string
		wantTimed  bool
	}{
		{"normal exit", []string{"sh", "-c", "exit 3"}, 0, 3, "", "exited", false},
		{"killed by signal", []string{"sh", "-c", "kill -KILL $$"}, 0, 137, "SIGKILL", "signaled", false},
		{"timeout", []string{"sh", "-c", "sleep 100 & sleep 100"}, 1, 124, "SIGKILL", "timed out", true},
		{"not found", []string{"/no/such/program"}, 0, 127, "", "not found", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream, err := h.client.Run(testContext(t), &sandboxv1.RunRequest{Id: id, Cmd: tc.cmd, TimeoutSeconds: tc.timeout})
			if err != nil {
				t.Fatal(err)
			}
			last := lastOutput(t, stream)
			if last.GetExitCode() != tc.wantCode || last.GetSignal() != tc.wantSignal ||
				last.GetReason() != tc.wantReason || last.GetTimedOut() != tc.wantTimed {
				t.Errorf("got code %d signal %q reason %q timed_out %v, want %d %q %q %v",
					last.GetExitCode(), last.GetSignal(), last.GetReason(), last.GetTimedOut(),
					tc.wantCode, tc.wantSignal, tc.wantReason, tc.wantTimed)
			}
		})
	}
}

func TestExecInputSignal(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "execsig"})
	stream, err := h.client.Exec(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	init := &sandboxv1.ExecRequest{Id: id, Cmd: []string{"sleep", "100"}, AnnounceWorkload: true}
	if err := stream.Send(&sandboxv1.ExecInput{Payload: &sandboxv1.ExecInput_Init{Init: init}}); err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetWorkloadId() == "" {
		t.Fatalf("exec first message: got %v, %v; want a workload ID", first, err)
	}
	if err := stream.Send(&sandboxv1.ExecInput{Payload: &sandboxv1.ExecInput_Signal{Signal: "SIGINT"}}); err != nil {
		t.Fatal(err)
	}
	for {
		out, err := stream.Recv()
		if err != nil {
			t.Fatalf("exec: %v", err)
		}
		if out.GetDone() {
			if out.GetExitCode() != 130 || out.GetSignal() != "SIGINT" {
				t.Errorf("exec after SIGINT: got code %d signal %q, want 130 SIGINT", out.GetExitCode(), out.GetSignal())
			}
			return
		}
	}
}

func TestExecInputSignalInvalid(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "execbad"})
	stream, err := h.client.Exec(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	init := &sandboxv1.ExecRequest{Id: id, Cmd: []string{"sleep", "100"}}
	if err := stream.Send(&sandboxv1.ExecInput{Payload: &sandboxv1.ExecInput_Init{Init: init}}); err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&sandboxv1.ExecInput{Payload: &sandboxv1.ExecInput_Signal{Signal: "NOPE"}}); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := stream.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("exec with an unknown signal: got %v, want InvalidArgument", err)
		}
		return
	}
}

// limitedDriver boots in-process agents that run at most one command at
// a time.
type limitedDriver struct{}

func (limitedDriver) Name() string { return "limited" }

func (limitedDriver) Boot(_ context.Context, spec vmm.Spec) (vmm.Machine, error) {
	console := filepath.Join(spec.Dir, "console.log")
	if err := os.WriteFile(console, nil, 0o600); err != nil {
		return nil, err
	}
	m := &limitedMachine{console: console, done: make(chan struct{})}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.agent = agent.NewServer(agent.Options{MaxSessions: 1, Shutdown: m.exit, Logger: servertest.QuietLogger})
	return m, nil
}

type limitedMachine struct {
	ctx     context.Context
	cancel  context.CancelFunc
	agent   *agent.Server
	console string
	done    chan struct{}
	once    sync.Once
}

func (m *limitedMachine) DialAgent(_ context.Context, port uint32) (net.Conn, error) {
	host, guest := net.Pipe()
	go m.agent.HandleConn(m.ctx, port, guest)
	return host, nil
}

func (m *limitedMachine) Wait(ctx context.Context) error {
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *limitedMachine) Done() <-chan struct{} { return m.done }
func (m *limitedMachine) Kill() error           { m.exit(); return nil }
func (m *limitedMachine) ConsolePath() string   { return m.console }
func (m *limitedMachine) PID() int              { return 0 }

func (m *limitedMachine) exit() {
	m.once.Do(func() {
		m.cancel()
		close(m.done)
	})
}

func TestRunSessionLimit(t *testing.T) {
	h := newHarness(t, harnessOptions{driver: limitedDriver{}})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "limit"})
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()

	stream, err := h.client.Run(ctx, &sandboxv1.RunRequest{Id: id, Cmd: []string{"sh", "-c", "echo started; exec sleep 100"}})
	if err != nil {
		t.Fatal(err)
	}
	// Output proves that the agent runs the first command and counts it.
	if first, err := stream.Recv(); err != nil || string(first.GetData()) != "started\n" {
		t.Fatalf("first run: got %v, %v; want output started", first, err)
	}

	res, err := h.run(testContext(t), &sandboxv1.RunRequest{Id: id, Cmd: []string{"true"}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second run: got %v, want ResourceExhausted", err)
	}
	if !strings.Contains(err.Error(), "at most 1") || strings.Contains(err.Error(), "hearth-agent:") {
		t.Errorf("second run: got %v, want the agent's message naming the limit of 1", err)
	}
	if res.stderr != "" {
		t.Errorf("second run: got stderr %q before the error, want none", res.stderr)
	}
}
