package server

import (
	"bytes"
	"context"
	"io"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/sandbox"
)

// streamWorkload is the name of RunOutput.stream and ExecOutput.stream
// in the message that announces the workload ID.
const streamWorkload = "workload"

// agentMessagePrefix starts the STDERR message of an agent that ran no
// command.
const agentMessagePrefix = "hearth-agent: "

// exitSessionLimit is the exit code of a command the agent rejected
// because it already runs its maximum number of commands.
const exitSessionLimit = 125

// maxHeldMessage is the longest first STDERR write that is held back as a
// possible agent message.
const maxHeldMessage = 4096

// runWorkload runs start in sb as a registered workload. announce, when
// not nil, receives the workload ID before the command starts. A command
// the agent rejected (session limit, shutdown) becomes an error with the
// agent's message: RESOURCE_EXHAUSTED when too many commands run, else
// UNAVAILABLE.
func runWorkload(ctx context.Context, sb *sandbox.Sandbox, start agentproto.StartRequest, stdio agentclient.ExecIO,
	announce func(id string)) (agentclient.Result, error) {
	held := &heldOutput{stdout: stdio.Stdout, stderr: stdio.Stderr}
	stdio.Stdout, stdio.Stderr = held.stdoutWriter(), held.stderrWriter()

	var started func(sandbox.Workload)
	if announce != nil {
		started = func(w sandbox.Workload) { announce(w.ID) }
	}
	res, err := sb.ExecWorkload(ctx, start, stdio, started)
	if err != nil {
		return res, toStatus(err)
	}
	if res.Reason == agentproto.ReasonRejected {
		msg := strings.TrimSpace(strings.TrimPrefix(string(held.held), agentMessagePrefix))
		if msg == "" {
			msg = "the agent rejected the command"
		}
		code := codes.Unavailable
		if res.Code == exitSessionLimit {
			code = codes.ResourceExhausted
		}
		return res, status.Errorf(code, "sandbox %q: %s", sb.ID(), msg)
	}
	if err := held.flush(); err != nil {
		return res, toStatus(err)
	}
	return res, nil
}

// heldOutput forwards a command's output, except that a first STDERR
// write starting with the agent's message prefix is held until the
// command's end shows whether the agent ran the command at all. Any
// other write forwards the held bytes first, so the order is kept. The
// agent client writes from one goroutine, so no lock is needed.
type heldOutput struct {
	stdout, stderr io.Writer
	held           []byte
	forwarded      bool
}

func (h *heldOutput) stdoutWriter() io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		if err := h.flush(); err != nil {
			return 0, err
		}
		return write(h.stdout, p)
	})
}

func (h *heldOutput) stderrWriter() io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		if !h.forwarded && h.held == nil && len(p) <= maxHeldMessage && bytes.HasPrefix(p, []byte(agentMessagePrefix)) {
			h.held = bytes.Clone(p)
			return len(p), nil
		}
		if err := h.flush(); err != nil {
			return 0, err
		}
		return write(h.stderr, p)
	})
}

// flush forwards the held bytes, if any.
func (h *heldOutput) flush() error {
	h.forwarded = true
	if h.held == nil {
		return nil
	}
	p := h.held
	h.held = nil
	_, err := write(h.stderr, p)
	return err
}

func write(w io.Writer, p []byte) (int, error) {
	if w == nil {
		return len(p), nil
	}
	return w.Write(p)
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// ListWorkloads returns the commands running in a sandbox, oldest first.
func (h *controlService) ListWorkloads(_ context.Context, req *sandboxv1.ListWorkloadsRequest) (*sandboxv1.ListWorkloadsResponse, error) {
	if err := checkID(req.GetId()); err != nil {
		return nil, toStatus(err)
	}
	workloads, err := h.s.mgr.ListWorkloads(req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &sandboxv1.ListWorkloadsResponse{Workloads: make([]*sandboxv1.Workload, 0, len(workloads))}
	for _, w := range workloads {
		resp.Workloads = append(resp.Workloads, &sandboxv1.Workload{
			Id: w.ID, Cmd: w.Cmd, User: w.User, Tty: w.TTY, StartedAt: w.StartedAt.UnixNano(),
		})
	}
	return resp, nil
}

// Signal sends a signal to a running workload.
func (h *controlService) Signal(ctx context.Context, req *sandboxv1.SignalRequest) (*sandboxv1.Empty, error) {
	if err := checkID(req.GetId()); err != nil {
		return nil, toStatus(err)
	}
	if req.GetWorkloadId() == "" {
		return nil, invalidArgument("workload_id", "the workload id is empty; list the running ones with ListWorkloads")
	}
	sig, err := parseSignal("signal", req.GetSignal())
	if err != nil {
		return nil, err
	}
	if err := h.s.mgr.Signal(ctx, req.GetId(), req.GetWorkloadId(), sig); err != nil {
		return nil, toStatus(err)
	}
	return &sandboxv1.Empty{}, nil
}
