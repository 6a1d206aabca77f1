package sandbox

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentproto"
)

// Workload is a command running in a sandbox.
type Workload struct {
	// ID names the workload within its sandbox: "w1", "w2" and so on, in
	// the order the commands started. IDs are not reused while the
	// sandbox exists.
	ID        string
	Cmd       []string
	User      string
	TTY       bool
	StartedAt time.Time
}

// signalBuffer is how many signals may wait for the agent client to send
// them. Signal blocks while the buffer is full.
const signalBuffer = 8

// workloadRegistry is the set of commands running in one sandbox. Its zero
// value is ready to use.
type workloadRegistry struct {
	mu      sync.Mutex
	lastID  uint64
	running map[string]*runningWorkload
}

// runningWorkload is a registered command and the channel its signals
// travel through to the agent client.
type runningWorkload struct {
	seq     uint64
	info    Workload
	signals chan syscall.Signal
	// ended is closed when the command has ended.
	ended chan struct{}
}

// add registers a command and returns it.
func (r *workloadRegistry) add(req agentproto.StartRequest) *runningWorkload {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastID++
	w := &runningWorkload{
		seq: r.lastID,
		info: Workload{
			ID: "w" + strconv.FormatUint(r.lastID, 10), Cmd: slices.Clone(req.Cmd),
			User: req.User, TTY: req.TTY, StartedAt: time.Now(),
		},
		signals: make(chan syscall.Signal, signalBuffer),
		ended:   make(chan struct{}),
	}
	if r.running == nil {
		r.running = make(map[string]*runningWorkload)
	}
	r.running[w.info.ID] = w
	return w
}

// remove unregisters w and wakes every Signal waiting on it.
func (r *workloadRegistry) remove(w *runningWorkload) {
	r.mu.Lock()
	delete(r.running, w.info.ID)
	r.mu.Unlock()
	close(w.ended)
}

func (r *workloadRegistry) get(id string) (*runningWorkload, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	w, ok := r.running[id]
	return w, ok
}

// list returns the running workloads, oldest first.
func (r *workloadRegistry) list() []Workload {
	r.mu.Lock()
	running := make([]*runningWorkload, 0, len(r.running))
	for _, w := range r.running {
		running = append(running, w)
	}
	r.mu.Unlock()
	slices.SortFunc(running, func(a, b *runningWorkload) int { return cmp.Compare(a.seq, b.seq) })
	out := make([]Workload, len(running))
	for i, w := range running {
		out[i] = w.info
	}
	return out
}

// ExecWorkload runs a command in the sandbox like Exec, registered as a
// workload that ListWorkloads shows and Signal reaches while it runs. It
// calls started, when not nil, with the workload's record once it is
// registered and before the command starts, so a caller can announce the
// ID. It returns how the command ended: exit code, signal, timeout and
// reason. Signals from stdio.Signals are forwarded as well.
func (sb *Sandbox) ExecWorkload(ctx context.Context, req agentproto.StartRequest, stdio agentclient.ExecIO,
	started func(Workload)) (agentclient.Result, error) {
	machine, err := sb.beginWorkload()
	if err != nil {
		return agentclient.Result{}, err
	}

	w := sb.running.add(req)
	merged := stdio.Signals
	stdio.Signals = w.signals
	if merged != nil {
		go forwardCallerSignals(merged, w)
	}
	if started != nil {
		started(w.info)
	}

	res, err := sb.exec(ctx, machine, req, stdio)
	sb.running.remove(w)
	sb.endWorkload(res.Code, err)
	return res, err
}

// forwardCallerSignals copies the caller's signals into the workload's
// channel until either ends.
func forwardCallerSignals(from <-chan syscall.Signal, w *runningWorkload) {
	for {
		select {
		case sig, ok := <-from:
			if !ok {
				return
			}
			select {
			case w.signals <- sig:
			case <-w.ended:
				return
			}
		case <-w.ended:
			return
		}
	}
}

// ListWorkloads returns the commands running in the sandbox, oldest
// first.
func (sb *Sandbox) ListWorkloads() []Workload {
	return sb.running.list()
}

// Signal sends sig to a running workload: to its process group, or in
// terminal mode to the terminal's foreground process group. It returns
// once the signal is queued for the agent, not when it is delivered. A
// workload that has ended, or that never existed, is ErrNotFound.
func (sb *Sandbox) Signal(ctx context.Context, workloadID string, sig syscall.Signal) error {
	if sig < 1 || sig > agentproto.MaxSignal {
		return fmt.Errorf("%w: signal number %d: use 1 to %d", ErrInvalidArgument, sig, agentproto.MaxSignal)
	}
	w, ok := sb.running.get(workloadID)
	if !ok {
		return fmt.Errorf("%w: workload %q in sandbox %q; list the running ones with ListWorkloads",
			ErrNotFound, workloadID, sb.id)
	}
	select {
	case w.signals <- sig:
		return nil
	case <-w.ended:
		return fmt.Errorf("%w: workload %q in sandbox %q has ended", ErrNotFound, workloadID, sb.id)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ExecWorkload runs a command in a ready sandbox as Sandbox.ExecWorkload
// does.
func (m *Manager) ExecWorkload(ctx context.Context, id string, req agentproto.StartRequest, stdio agentclient.ExecIO,
	started func(Workload)) (agentclient.Result, error) {
	sb, err := m.Get(id)
	if err != nil {
		return agentclient.Result{}, err
	}
	return sb.ExecWorkload(ctx, req, stdio, started)
}

// ListWorkloads returns the commands running in a sandbox, oldest first.
func (m *Manager) ListWorkloads(id string) ([]Workload, error) {
	sb, err := m.Get(id)
	if err != nil {
		return nil, err
	}
	return sb.ListWorkloads(), nil
}

// Signal sends sig to a workload of a sandbox as Sandbox.Signal does.
func (m *Manager) Signal(ctx context.Context, id, workloadID string, sig syscall.Signal) error {
	sb, err := m.Get(id)
	if err != nil {
		return err
	}
	return sb.Signal(ctx, workloadID, sig)
}
