// Package instant is a VMM double that boots instantly: each machine is
// an in-process hearth-agent server (package agent, serve-only, so it
// never touches the host's clock or network) reached over in-memory
// pipes. Commands run on the host as the calling user, so it is for tests
// and for measuring the manager's own overhead, never for isolation.
package instant

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/hearthvm/hearth/agent"
	"github.com/hearthvm/hearth/vmm"
)

// Driver boots instant machines. The zero value is ready to use.
type Driver struct {
	// BootErr, when set, makes every Boot fail with it.
	BootErr error
	// CheckpointErr, when set, makes every Checkpoint fail with it half
	// way, after the state file is written.
	CheckpointErr error
}

// Name returns "instant".
func (d *Driver) Name() string { return "instant" }

// Boot starts an in-process agent for spec and writes an empty console
// log into spec.Dir.
func (d *Driver) Boot(_ context.Context, spec vmm.Spec) (vmm.Machine, error) {
	if d.BootErr != nil {
		return nil, d.BootErr
	}
	console := filepath.Join(spec.Dir, "console.log")
	if err := os.WriteFile(console, nil, 0o600); err != nil {
		return nil, fmt.Errorf("create console log: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Machine{
		console: console, ctx: ctx, cancel: cancel, done: make(chan struct{}),
		checkpointErr: d.CheckpointErr,
	}
	m.server = agent.NewServer(agent.Options{Shutdown: m.exit})
	return m, nil
}

// Machine is one instant machine.
type Machine struct {
	console       string
	server        *agent.Server
	checkpointErr error
	ctx           context.Context
	cancel        context.CancelFunc

	once sync.Once
	done chan struct{}

	// mu orders wg.Add in DialAgent before wg.Wait in Kill, as
	// sync.WaitGroup requires.
	mu     sync.Mutex
	exited bool
	wg     sync.WaitGroup
}

// DialAgent returns a pipe served by the machine's agent on port.
func (m *Machine) DialAgent(ctx context.Context, port uint32) (net.Conn, error) {
	select {
	case <-m.done:
		return nil, errors.New("instant machine has exited")
	case <-ctx.Done():
		return nil, ctx.Err()
	default:
	}
	m.mu.Lock()
	if m.exited {
		m.mu.Unlock()
		return nil, errors.New("instant machine has exited")
	}
	host, guest := net.Pipe()
	m.wg.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		m.server.HandleConn(m.ctx, port, guest)
	}()
	return host, nil
}

// exit ends the machine as a guest reboot would.
func (m *Machine) exit() {
	m.once.Do(func() {
		m.mu.Lock()
		m.exited = true
		m.mu.Unlock()
		m.cancel()
		close(m.done)
	})
}

// Wait blocks until the machine has exited or ctx ends.
func (m *Machine) Wait(ctx context.Context) error {
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Done is closed once the machine has exited.
func (m *Machine) Done() <-chan struct{} { return m.done }

// Kill ends the machine and every session on it.
func (m *Machine) Kill() error {
	m.exit()
	m.wg.Wait()
	return nil
}

// ConsolePath returns the machine's (empty) console log.
func (m *Machine) ConsolePath() string { return m.console }

// PID returns the calling process's PID: the machine runs inside it.
func (m *Machine) PID() int { return os.Getpid() }

// Pause and Resume only record the state; the in-process agent keeps
// running.
func (m *Machine) Pause(context.Context) error  { return nil }
func (m *Machine) Resume(context.Context) error { return nil }

// Checkpoint writes placeholder state and memory files into dir, or fails
// with the driver's CheckpointErr after writing half of them.
func (m *Machine) Checkpoint(_ context.Context, dir string) (vmm.Snapshot, error) {
	snap := vmm.Snapshot{
		Backend: "instant", BackendVersion: "1", StateFile: "state", MemoryFile: "memory",
		Files: map[string]int64{"state": 5, "memory": 6},
	}
	if err := os.WriteFile(filepath.Join(dir, "state"), []byte("state"), 0o600); err != nil {
		return vmm.Snapshot{}, err
	}
	if m.checkpointErr != nil {
		return vmm.Snapshot{}, m.checkpointErr
	}
	if err := os.WriteFile(filepath.Join(dir, "memory"), []byte("memory"), 0o600); err != nil {
		return vmm.Snapshot{}, err
	}
	return snap, nil
}

// Restore boots a new instant machine after checking that the snapshot's
// files exist.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, snapDir string, snap vmm.Snapshot) (vmm.Machine, error) {
	for name := range snap.Files {
		if _, err := os.Stat(filepath.Join(snapDir, name)); err != nil {
			return nil, fmt.Errorf("snapshot file: %w", err)
		}
	}
	return d.Boot(ctx, spec)
}
