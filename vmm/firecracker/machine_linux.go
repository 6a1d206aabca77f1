package firecracker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hearthvm/hearth/agentlink"
	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/vmm"
	"github.com/hearthvm/hearth/vmm/firecracker/api"
)

// killWait bounds the wait for a killed process to be reaped.
const killWait = 10 * time.Second

// Machine is one Firecracker process. It implements vmm.Machine and adds
// Shutdown, Pause, Resume and CreateSnapshot.
type Machine struct {
	driver    *Driver
	id        string
	dir       string
	jailDir   string
	root      string
	apiSock   string
	vsockHost string
	vsockAPI  string
	diskAPI   string
	console   string
	client    *api.Client
	pid       int
	pidfd     int

	done     chan struct{}
	exitOnce sync.Once
	waitErr  error // set before done is closed

	killOnce sync.Once
	killErr  error

	// spare is the exec stream dialled ahead of time.
	spare execSpare
}

var _ vmm.Machine = (*Machine)(nil)

func newMachine(d *Driver, spec vmm.Spec, l layout) *Machine {
	return &Machine{driver: d, id: spec.ID, dir: spec.Dir, jailDir: l.jailDir, root: l.root,
		apiSock: l.apiSockHost, vsockHost: l.vsockHost, vsockAPI: l.vsockAPI, diskAPI: l.diskAPI,
		console: l.consoleHost, client: d.newClient(l.apiSockHost), pidfd: -1,
		done: make(chan struct{})}
}

func (m *Machine) exited(err error) {
	m.exitOnce.Do(func() {
		m.waitErr = err
		close(m.done)
		m.spare.discard(true)
	})
}

// Client returns the machine's API client.
func (m *Machine) Client() *api.Client { return m.client }

// DialAgent opens a stream to the agent's port through the hybrid vsock
// socket, retrying until the agent listens or ctx ends. A stream to the
// exec port comes from a spare dialled ahead of time when one is ready.
func (m *Machine) DialAgent(ctx context.Context, port uint32) (net.Conn, error) {
	if port == agentproto.PortExec {
		return m.dialExec(ctx)
	}
	return m.dialAgent(ctx, port)
}

func (m *Machine) dialAgent(ctx context.Context, port uint32) (net.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-m.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	c, err := agentlink.DialHybrid(ctx, m.vsockHost, port, agentlink.HybridOptions{})
	if err != nil {
		select {
		case <-m.done:
			return nil, fmt.Errorf("dial agent port %d of sandbox %s: firecracker exited: %v", port, m.id, m.waitErr)
		default:
		}
		return nil, fmt.Errorf("dial agent port %d of sandbox %s: %w", port, m.id, err)
	}
	return c, nil
}

// Wait blocks until Firecracker has exited and been reaped, or ctx ends.
// It returns nil for exit code 0, which Firecracker uses after a guest
// reboot.
//
// NOTE: under the jailer with Daemonize or NewPIDNS, Firecracker is not
// this process's child. Its exit status is known only when this process
// is a child subreaper (PR_SET_CHILD_SUBREAPER); otherwise Wait returns
// nil after the exit.
func (m *Machine) Wait(ctx context.Context) error {
	select {
	case <-m.done:
		return m.waitErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Done is closed once Firecracker has exited and been reaped.
func (m *Machine) Done() <-chan struct{} { return m.done }

// ConsolePath returns the file that captures the guest's serial console
// (Firecracker's stdout and stderr).
func (m *Machine) ConsolePath() string { return m.console }

// PID returns Firecracker's host PID.
func (m *Machine) PID() int { return m.pid }

// Kill sends SIGKILL, waits for the process to be reaped, and removes the
// sockets and, in jailer mode, the chroot. It is idempotent and safe to
// call concurrently with Wait.
func (m *Machine) Kill() error {
	m.killOnce.Do(func() { m.killErr = m.kill() })
	return m.killErr
}

func (m *Machine) kill() error {
	m.spare.discard(true)
	var errs []error
	select {
	case <-m.done:
	default:
		if err := m.signal(syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("kill firecracker %d: %w", m.pid, err))
		}
		select {
		case <-m.done:
		case <-time.After(killWait):
			errs = append(errs, fmt.Errorf("firecracker %d not reaped %s after SIGKILL", m.pid, killWait))
		}
	}
	m.client.Close()
	if m.pidfd >= 0 {
		unix.Close(m.pidfd)
		m.pidfd = -1
	}
	errs = append(errs, m.removeFiles()...)
	m.driver.log.Info("firecracker machine removed", "sandbox", m.id, "pid", m.pid)
	return errors.Join(errs...)
}

// signal sends sig through the pidfd when the process is not a child, so
// a recycled PID is never signalled.
func (m *Machine) signal(sig syscall.Signal) error {
	if m.pidfd >= 0 {
		return unix.PidfdSendSignal(m.pidfd, sig, nil, 0)
	}
	return syscall.Kill(m.pid, sig)
}

// removeFiles removes what Firecracker never removes itself: the API and
// vsock sockets, and the chroot in jailer mode.
func (m *Machine) removeFiles() []error {
	var errs []error
	for _, p := range []string{m.apiSock, m.vsockHost} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove socket: %w", err))
		}
	}
	if m.jailDir != "" {
		if err := os.RemoveAll(m.jailDir); err != nil {
			errs = append(errs, fmt.Errorf("remove chroot: %w", err))
		}
	}
	return errs
}

// Shutdown sends Ctrl+Alt+Del, so that the guest reboots and Firecracker
// exits, waits up to timeout (DefaultStopTimeout when 0), then kills it.
// The process is always reaped and its files removed. It returns nil when
// the guest exited by itself.
func (m *Machine) Shutdown(ctx context.Context, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = DefaultStopTimeout
	}
	select {
	case <-m.done:
		return m.Kill()
	default:
	}
	if err := m.client.SendCtrlAltDel(ctx); err != nil {
		m.driver.log.Warn("send ctrl+alt+del failed; killing", "sandbox", m.id, "error", err)
	} else {
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-m.done:
			return m.Kill()
		case <-t.C:
			m.driver.log.Warn("guest did not stop after ctrl+alt+del; killing", "sandbox", m.id, "timeout", timeout)
		case <-ctx.Done():
		}
	}
	if err := m.Kill(); err != nil {
		return err
	}
	return fmt.Errorf("sandbox %s did not stop within %s and was killed", m.id, timeout)
}

// Pause pauses the vCPUs. Every vsock connection is gone after the next
// Resume, so callers dial the agent again. The spare exec stream is
// closed first.
func (m *Machine) Pause(ctx context.Context) error {
	m.spare.discard(false)
	if err := m.client.Pause(ctx); err != nil {
		m.spare.resume()
		return fmt.Errorf("pause sandbox %s: %w", m.id, err)
	}
	return nil
}

// Resume resumes the vCPUs.
func (m *Machine) Resume(ctx context.Context) error {
	if err := m.client.Resume(ctx); err != nil {
		return fmt.Errorf("resume sandbox %s: %w", m.id, err)
	}
	m.spare.resume()
	return nil
}
