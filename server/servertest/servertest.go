// Package servertest provides a sandbox manager for tests of the API
// layers: its driver boots no VM but serves the real agent (package agent)
// in-process, so commands run as child processes of the test, on the
// host, without any isolation. It is meant for tests only.
package servertest

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agent"
	"github.com/hearthvm/hearth/sandbox"
	"github.com/hearthvm/hearth/vmm"
)

// Deadline bounds the waits of the tests that use this package.
const Deadline = 30 * time.Second

// QuietLogger discards every record.
var QuietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// FakeDriver boots FakeMachines: no VM, but a real agent served
// in-process, so commands run as child processes of the test.
type FakeDriver struct {
	// BootGate, when set, makes Boot wait until it is closed.
	BootGate chan struct{}
}

func (d *FakeDriver) Name() string { return "fake" }

func (d *FakeDriver) Boot(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	if d.BootGate != nil {
		select {
		case <-d.BootGate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	console := filepath.Join(spec.Dir, "console.log")
	if err := os.WriteFile(console, nil, 0o600); err != nil {
		return nil, err
	}
	m := &FakeMachine{done: make(chan struct{}), console: console}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.agent = agent.NewServer(agent.Options{Shutdown: m.exit, Logger: QuietLogger})
	return m, nil
}

// FakeMachine connects DialAgent to an in-process agent over net.Pipe.
// Killing it cancels the agent's sessions, which kills their commands.
type FakeMachine struct {
	ctx     context.Context
	cancel  context.CancelFunc
	agent   *agent.Server
	console string
	done    chan struct{}
	once    sync.Once
}

func (m *FakeMachine) DialAgent(ctx context.Context, port uint32) (net.Conn, error) {
	select {
	case <-m.done:
		return nil, errors.New("the fake VM has exited")
	default:
	}
	host, guest := net.Pipe()
	go m.agent.HandleConn(m.ctx, port, guest)
	return host, nil
}

func (m *FakeMachine) Wait(ctx context.Context) error {
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *FakeMachine) Done() <-chan struct{} { return m.done }
func (m *FakeMachine) Kill() error           { m.exit(); return nil }
func (m *FakeMachine) ConsolePath() string   { return m.console }
func (m *FakeMachine) PID() int              { return 0 }

func (m *FakeMachine) exit() {
	m.once.Do(func() {
		m.cancel()
		close(m.done)
	})
}

// NewManager returns a manager on driver (a new FakeDriver when nil) with
// empty boot assets in t.TempDir() and no network pool, so sandboxes
// need network mode "none". Any in-process driver fits, such as
// instant.Driver for the snapshot calls FakeDriver lacks. It skips the
// test where the agent cannot run commands, and removes every sandbox
// when the test ends.
func NewManager(t *testing.T, driver vmm.Driver) *sandbox.Manager {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("the in-process agent runs commands on Linux only")
	}
	if driver == nil {
		driver = &FakeDriver{}
	}

	dir := t.TempDir()
	assets := filepath.Join(dir, "assets")
	if err := os.Mkdir(assets, 0o700); err != nil {
		t.Fatal(err)
	}
	defaults := sandbox.Defaults{
		Kernel: filepath.Join(assets, "vmlinux"),
		Initrd: filepath.Join(assets, "initramfs.cpio"),
		RootFS: filepath.Join(assets, "rootfs.ext4"),
	}
	for _, p := range []string{defaults.Kernel, defaults.Initrd, defaults.RootFS} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	mgr, err := sandbox.New(sandbox.Config{
		DataDir:      filepath.Join(dir, "data"),
		Driver:       driver,
		Defaults:     defaults,
		ReadyTimeout: Deadline,
		Logger:       QuietLogger,
	})
	if err != nil {
		t.Fatalf("new manager: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), Deadline)
		defer cancel()
		if err := mgr.Close(ctx); err != nil {
			t.Errorf("close manager: %v", err)
		}
	})
	return mgr
}
