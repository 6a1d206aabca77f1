package firecracker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hearthvm/hearth/vmm"
)

// spawn starts Firecracker (directly or through the jailer), waits for
// its API socket and returns the machine. On error nothing is left
// running.
func (d *Driver) spawn(ctx context.Context, spec vmm.Spec, l layout) (_ *Machine, err error) {
	console, err := os.OpenFile(l.consoleHost, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: create console log: %w", spec.ID, err)
	}
	defer console.Close()

	var cmd *exec.Cmd
	if d.cfg.Jailer == nil {
		cmd, err = d.directCommand(spec, l)
	} else {
		cmd = exec.Command(d.cfg.Jailer.Binary, d.jailerArgs(spec, l)...)
	}
	if err != nil {
		return nil, err
	}
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = console, console
	// Its own process group keeps terminal signals meant for the manager
	// away from Firecracker.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("sandbox %s: start %s: %w", spec.ID, cmd.Path, err)
	}

	m := newMachine(d, spec, l)
	forks := d.cfg.Jailer != nil && (d.cfg.Jailer.Daemonize || d.cfg.Jailer.NewPIDNS)
	if !forks {
		m.trackChild(cmd)
	} else if err := d.adoptForked(ctx, m, cmd, l); err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	defer func() {
		if err != nil {
			if kerr := m.Kill(); kerr != nil {
				err = errors.Join(err, kerr)
			}
		}
	}()

	if err := m.waitSocket(ctx, d.cfg.SocketTimeout); err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	if d.cfg.Jailer != nil && !forks {
		// The jailer execs in place: the child is Firecracker now.
		if err := verifyExe(m.pid, filepath.Join(l.root, filepath.Base(l.execFile))); err != nil {
			return nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
		}
	}
	if _, err := m.client.Version(ctx); err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	return m, nil
}

// directCommand builds the command for direct mode. RLIMIT_NOFILE is set
// by util-linux prlimit, which sets the limit on itself and execs
// Firecracker in place, so the limit is in force before Firecracker sizes
// its fd table. Without prlimit the driver falls back to prlimit(2) right
// after start; see trackChild.
func (d *Driver) directCommand(spec vmm.Spec, l layout) (*exec.Cmd, error) {
	bin, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("firecracker binary %q: %w: install firecracker or set its path", d.cfg.Binary, vmm.ErrUnavailable)
	}
	args := d.firecrackerArgs(spec, l)
	var cmd *exec.Cmd
	if wrapper, err := exec.LookPath("prlimit"); err == nil {
		n := strconv.FormatUint(d.cfg.OpenFilesLimit, 10)
		cmd = exec.Command(wrapper, append([]string{"--nofile=" + n + ":" + n, "--", bin}, args...)...)
	} else {
		cmd = exec.Command(bin, args...)
		d.log.Warn("prlimit not found: the open-files limit is set after firecracker started", "sandbox", spec.ID)
	}
	cmd.Dir = spec.Dir
	return cmd, nil
}

// adoptForked waits for a forking jailer to exit, then reads and verifies
// Firecracker's PID from the pid file.
func (d *Driver) adoptForked(ctx context.Context, m *Machine, jailer *exec.Cmd, l layout) error {
	if err := jailer.Wait(); err != nil {
		return fmt.Errorf("jailer failed: %w; see %s", err, l.consoleHost)
	}
	execName := filepath.Base(l.execFile)
	pidFile := filepath.Join(l.root, execName+".pid")
	raw, err := os.ReadFile(pidFile)
	if err != nil {
		return fmt.Errorf("read firecracker pid: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || pid <= 0 {
		return fmt.Errorf("invalid firecracker pid %q in %s", raw, pidFile)
	}
	// The pid must be Firecracker's before the driver ever signals it.
	if err := verifyExe(pid, filepath.Join(l.root, execName)); err != nil {
		return err
	}
	return m.trackPID(pid)
}

// verifyExe checks that /proc/<pid>/exe is the file at want, by device
// and inode, because the path a jailed process's exe link shows depends
// on its mount namespace.
func verifyExe(pid int, want string) error {
	got, err := os.Stat(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return fmt.Errorf("check process %d: %w", pid, err)
	}
	exp, err := os.Stat(want)
	if err != nil {
		return fmt.Errorf("check process %d: %w", pid, err)
	}
	if !os.SameFile(got, exp) {
		return fmt.Errorf("process %d is not firecracker from %s: refusing to signal it", pid, want)
	}
	return nil
}

// waitSocket waits until the API socket accepts connections, the process
// exits, or the timeout passes.
func (m *Machine) waitSocket(ctx context.Context, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if c, err := net.Dial("unix", m.apiSock); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-m.done:
			return fmt.Errorf("firecracker exited before its API socket %s appeared: %v; see %s", m.apiSock, m.waitErr, m.console)
		case <-deadline.C:
			return fmt.Errorf("firecracker API socket %s did not appear within %s; see %s", m.apiSock, timeout, m.console)
		case <-ctx.Done():
			return fmt.Errorf("wait for firecracker API socket: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// trackChild reaps a direct child in the background.
func (m *Machine) trackChild(cmd *exec.Cmd) {
	m.pid = cmd.Process.Pid
	if filepath.Base(cmd.Path) != "prlimit" && m.driver.cfg.Jailer == nil {
		lim := unix.Rlimit{Cur: m.driver.cfg.OpenFilesLimit, Max: m.driver.cfg.OpenFilesLimit}
		unix.Prlimit(m.pid, unix.RLIMIT_NOFILE, &lim, nil)
	}
	go func() {
		err := cmd.Wait()
		m.exited(exitError(err))
	}()
}

// trackPID follows a process that is not this process's child (the
// jailer forked it) through a pidfd.
func (m *Machine) trackPID(pid int) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("open pidfd for firecracker %d: %w", pid, err)
	}
	m.pid = pid
	m.pidfd = fd
	go func() {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err == nil || !errors.Is(err, unix.EINTR) {
				break
			}
		}
		m.exited(reapForeign(pid))
	}()
	return nil
}

// reapForeign collects the exit status of a reparented process when this
// process is its subreaper. Otherwise init reaps it, and the unknown
// status is reported as nil.
func reapForeign(pid int) error {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil
		}
		break
	}
	switch {
	case ws.Exited() && ws.ExitStatus() == 0:
		return nil
	case ws.Exited():
		return fmt.Errorf("firecracker exited with code %d", ws.ExitStatus())
	case ws.Signaled():
		return fmt.Errorf("firecracker killed by %s", ws.Signal())
	}
	return nil
}

func exitError(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return fmt.Errorf("firecracker killed by %s", ws.Signal())
		}
		return fmt.Errorf("firecracker exited with code %d", ee.ExitCode())
	}
	return err
}
