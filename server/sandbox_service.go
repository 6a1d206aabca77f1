package server

import (
	"context"
	"errors"
	"io"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/sandbox"
)

// Names of RunOutput.stream and ExecOutput.stream.
const (
	streamStdout = "stdout"
	streamStderr = "stderr"
	streamExit   = "exit"
)

// sandboxService implements sandboxv1.SandboxServiceServer.
type sandboxService struct {
	sandboxv1.UnimplementedSandboxServiceServer
	s *Server
}

// checkID rejects an empty or malformed sandbox id before the manager is
// asked, so "../x" reads as an invalid argument rather than as not found.
func checkID(id string) error {
	if id == "" {
		return invalidArgument("id", "the sandbox id is empty")
	}
	return sandbox.ValidateID(id)
}

// Create starts a sandbox and returns at once with state starting, unless
// [limits].max_concurrent_boots is reached, in which case it first waits
// for a boot slot. The address is assigned during boot, so ip_address is
// empty in the response; Inspect reports it once the sandbox is ready.
func (h *sandboxService) Create(ctx context.Context, req *sandboxv1.CreateSandboxRequest) (*sandboxv1.CreateSandboxResponse, error) {
	opts, err := createOptions(req)
	if err != nil {
		return nil, err
	}
	info, err := h.s.create(ctx, opts)
	if err != nil {
		return nil, toStatus(err)
	}
	return &sandboxv1.CreateSandboxResponse{
		Id:        info.ID,
		IpAddress: info.Network.IP,
		State:     string(info.State),
	}, nil
}

// Run runs a command and streams its output, then a last message with
// stream "exit", done and the exit code. The command is killed when the
// client goes away; the sandbox stays.
func (h *sandboxService) Run(req *sandboxv1.RunRequest, stream grpc.ServerStreamingServer[sandboxv1.RunOutput]) error {
	if err := checkID(req.GetId()); err != nil {
		return toStatus(err)
	}
	start, err := startRequest(req.GetCmd(), req.GetEnv(), req.GetWorkingDir(), req.GetUser(), req.GetTty(),
		nil, req.GetTimeoutSeconds())
	if err != nil {
		return err
	}
	ctx := stream.Context()
	sb, err := h.s.readySandbox(ctx, req.GetId())
	if err != nil {
		return toStatus(err)
	}

	send := func(name string, data []byte) error {
		return stream.Send(&sandboxv1.RunOutput{Stream: name, Data: data})
	}
	var announce func(string)
	if req.GetAnnounceWorkload() {
		// A send fails only when the stream has ended, and the end of
		// the stream's context then kills the command.
		announce = func(id string) { _ = stream.Send(&sandboxv1.RunOutput{Stream: streamWorkload, WorkloadId: id}) }
	}
	res, err := runWorkload(ctx, sb, start, agentclient.ExecIO{
		Stdout: outputWriter{name: streamStdout, send: send},
		Stderr: outputWriter{name: streamStderr, send: send},
	}, announce)
	if err != nil {
		return err
	}
	return stream.Send(&sandboxv1.RunOutput{
		Stream: streamExit, ExitCode: res.Code, Done: true,
		Signal: res.Signal, Reason: res.Reason, TimedOut: res.TimedOut,
	})
}

// outputWriter turns each write of a command's output into one message.
// The agent client writes from one goroutine, so sends never overlap.
type outputWriter struct {
	name string
	send func(name string, data []byte) error
}

func (w outputWriter) Write(p []byte) (int, error) {
	if err := w.send(w.name, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Exec runs an interactive command. The first message must carry init,
// and later ones carry stdin bytes, a terminal resize or a signal. When the client
// closes its side (CloseSend), the command's stdin is closed.
func (h *sandboxService) Exec(stream grpc.BidiStreamingServer[sandboxv1.ExecInput, sandboxv1.ExecOutput]) error {
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return invalidArgument("init", "the stream ended before its first message, which must carry init")
	}
	if err != nil {
		return err
	}
	init := first.GetInit()
	if init == nil {
		return invalidArgument("init", "the first ExecInput must carry init; send stdin and resize only after it")
	}
	if err := checkID(init.GetId()); err != nil {
		return toStatus(err)
	}
	start, err := startRequest(init.GetCmd(), init.GetEnv(), init.GetWorkingDir(), init.GetUser(), init.GetTty(),
		init.GetTtySize(), init.GetTimeoutSeconds())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	sb, err := h.s.readySandbox(ctx, init.GetId())
	if err != nil {
		return toStatus(err)
	}

	in := newExecInput(stream, cancel)
	go in.receive()
	send := func(name string, data []byte) error {
		return stream.Send(&sandboxv1.ExecOutput{Stream: name, Data: data})
	}
	var announce func(string)
	if init.GetAnnounceWorkload() {
		announce = func(id string) { _ = stream.Send(&sandboxv1.ExecOutput{Stream: streamWorkload, WorkloadId: id}) }
	}
	res, err := runWorkload(ctx, sb, start, agentclient.ExecIO{
		Stdin:   in.stdinReader,
		Stdout:  outputWriter{name: streamStdout, send: send},
		Stderr:  outputWriter{name: streamStderr, send: send},
		Resize:  in.resize,
		Signals: in.signals,
	}, announce)
	in.close()
	if inputErr := in.err(); inputErr != nil {
		return inputErr
	}
	if err != nil {
		return err
	}
	return stream.Send(&sandboxv1.ExecOutput{
		Stream: streamExit, ExitCode: res.Code, Done: true,
		Signal: res.Signal, Reason: res.Reason, TimedOut: res.TimedOut,
	})
}

// execInput forwards the client's messages after init to the command:
// stdin through a pipe, resizes and signals through channels.
type execInput struct {
	stream      grpc.BidiStreamingServer[sandboxv1.ExecInput, sandboxv1.ExecOutput]
	cancel      context.CancelFunc
	stdinReader *io.PipeReader
	stdinWriter *io.PipeWriter
	resize      chan agentclient.TerminalSize
	signals     chan syscall.Signal
	done        chan struct{}

	mu       sync.Mutex
	protoErr error
}

func newExecInput(stream grpc.BidiStreamingServer[sandboxv1.ExecInput, sandboxv1.ExecOutput], cancel context.CancelFunc) *execInput {
	r, w := io.Pipe()
	return &execInput{
		stream: stream, cancel: cancel, stdinReader: r, stdinWriter: w,
		resize: make(chan agentclient.TerminalSize, 4), signals: make(chan syscall.Signal, 4),
		done: make(chan struct{}),
	}
}

// receive runs until the client closes its side, the stream ends or the
// command has ended. It may outlive Exec by one blocked Recv, which
// returns once the handler has returned.
func (in *execInput) receive() {
	for {
		msg, err := in.stream.Recv()
		if errors.Is(err, io.EOF) {
			in.stdinWriter.Close()
			return
		}
		if err != nil {
			in.stdinWriter.CloseWithError(err)
			return
		}
		switch p := msg.GetPayload().(type) {
		case *sandboxv1.ExecInput_Stdin:
			if _, err := in.stdinWriter.Write(p.Stdin); err != nil {
				return
			}
		case *sandboxv1.ExecInput_Resize:
			width, height, err := terminalSize(p.Resize)
			if err != nil {
				in.fail(err)
				return
			}
			select {
			case in.resize <- agentclient.TerminalSize{Width: width, Height: height}:
			case <-in.done:
				return
			}
		case *sandboxv1.ExecInput_Signal:
			sig, err := parseSignal("signal", p.Signal)
			if err != nil {
				in.fail(err)
				return
			}
			select {
			case in.signals <- sig:
			case <-in.done:
				return
			}
		case *sandboxv1.ExecInput_Init:
			in.fail(invalidArgument("init", "init may be sent only once, in the first message"))
			return
		}
	}
}

// fail records a protocol error of the client and ends the command.
func (in *execInput) fail(err error) {
	in.mu.Lock()
	in.protoErr = err
	in.mu.Unlock()
	in.stdinWriter.CloseWithError(err)
	in.cancel()
}

func (in *execInput) err() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.protoErr
}

// close unblocks a receive that is writing stdin or a resize after the
// command has ended.
func (in *execInput) close() {
	close(in.done)
	in.stdinReader.CloseWithError(io.ErrClosedPipe)
}

// Stop shuts a sandbox down; timeout_seconds 0 means 30 s.
func (h *sandboxService) Stop(ctx context.Context, req *sandboxv1.StopSandboxRequest) (*sandboxv1.Empty, error) {
	if err := checkID(req.GetId()); err != nil {
		return nil, toStatus(err)
	}
	timeout := time.Duration(req.GetTimeoutSeconds()) * time.Second
	if timeout == 0 {
		timeout = sandbox.DefaultStopTimeout
	}
	if err := h.s.mgr.Stop(ctx, req.GetId(), timeout); err != nil {
		return nil, toStatus(err)
	}
	return &sandboxv1.Empty{}, nil
}

// Remove destroys a sandbox; one with a running workload needs force.
func (h *sandboxService) Remove(ctx context.Context, req *sandboxv1.RemoveSandboxRequest) (*sandboxv1.Empty, error) {
	if err := checkID(req.GetId()); err != nil {
		return nil, toStatus(err)
	}
	if err := h.s.mgr.Remove(ctx, req.GetId(), req.GetForce()); err != nil {
		return nil, toStatus(err)
	}
	return &sandboxv1.Empty{}, nil
}

func (h *sandboxService) Inspect(_ context.Context, req *sandboxv1.InspectSandboxRequest) (*sandboxv1.SandboxInfo, error) {
	if err := checkID(req.GetId()); err != nil {
		return nil, toStatus(err)
	}
	info, err := h.s.mgr.Inspect(req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	return sandboxInfo(info), nil
}

func (h *sandboxService) List(_ context.Context, req *sandboxv1.ListSandboxesRequest) (*sandboxv1.ListSandboxesResponse, error) {
	if s := req.GetState(); s != "" && !validState(s) {
		return nil, invalidArgument("state", "want starting, ready, running, paused, stopping, stopped, failed or empty for all")
	}
	infos := h.s.mgr.List(sandbox.ListFilter{State: sandbox.State(req.GetState()), Labels: req.GetLabels()})
	resp := &sandboxv1.ListSandboxesResponse{Sandboxes: make([]*sandboxv1.SandboxSummary, 0, len(infos))}
	for _, info := range infos {
		resp.Sandboxes = append(resp.Sandboxes, sandboxSummary(info))
	}
	return resp, nil
}

// Events streams lifecycle events until the client goes away. The stream
// of a client that reads too slowly ends with RESOURCE_EXHAUSTED once the
// events buffered for it are delivered, and the client may subscribe again.
func (h *sandboxService) Events(req *sandboxv1.SandboxEventsRequest, stream grpc.ServerStreamingServer[sandboxv1.SandboxEvent]) error {
	if a := req.GetAction(); a != "" && !validAction(a) {
		return invalidArgument("action",
			"want created, ready, running, idle, stopping, stopped, failed, removed, checkpointed, paused, resumed or empty for all")
	}
	sub := h.s.mgr.Subscribe(sandbox.EventFilter{SandboxID: req.GetId(), Action: req.GetAction()}, h.s.eventBacklog)
	defer sub.Close()
	// Sending the headers now signals that the subscription exists, so
	// the client can rely on receiving every event published after them.
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}

	ctx := stream.Context()
	for {
		select {
		case ev, ok := <-sub.C():
			if !ok {
				if err := sub.Err(); err != nil {
					return status.Errorf(codes.ResourceExhausted, "events: %v", err)
				}
				return nil
			}
			if err := stream.Send(sandboxEvent(ev)); err != nil {
				return err
			}
		case <-h.s.closing:
			return errShuttingDown
		case <-ctx.Done():
			return toStatus(ctx.Err())
		}
	}
}
