package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hearthvm/hearth/agentlink"
	"github.com/hearthvm/hearth/vmm"
	"github.com/hearthvm/hearth/vmm/qemu/qmp"
)

// ErrKilled is wrapped by Machine.Wait after Kill ended the machine.
var ErrKilled = errors.New("machine killed by the host")

// Timeouts of start-up and Kill.
const (
	// qmpConnectTimeout bounds the wait for QEMU's QMP socket when the
	// caller's context has no earlier deadline. QEMU creates it before
	// the guest starts, in well under a second.
	qmpConnectTimeout = 10 * time.Second
	// quitTimeout bounds the QMP quit and QEMU's exit after it, before
	// Kill falls back to SIGKILL.
	quitTimeout = 2 * time.Second
	// reapTimeout bounds the wait for the process after SIGKILL.
	reapTimeout = 10 * time.Second
)

// logTailBytes is how much of qemu.log an error quotes.
const logTailBytes = 2048

// Machine is one running QEMU process. It implements vmm.Machine.
type Machine struct {
	id     string
	paths  machinePaths
	launch launch // source of the command line
	// memFile is the guest RAM (a memfd QEMU maps shared), or nil when
	// the guest's RAM is private to QEMU. Kill closes it.
	memFile *os.File
	// snapshotBase is the snapshot config a restored machine was started
	// from, which its own checkpoints inherit. It is nil for a booted
	// machine.
	snapshotBase *snapshotConfig
	qemuImg      string // qemu-img binary, for rebasing snapshot disks
	cmd          *exec.Cmd
	mux          *agentlink.SerialMux
	log          *slog.Logger
	done         chan struct{}
	qmp          *qmp.Client // set before Boot returns

	exitErr error // set by reap before done closes
	killed  atomic.Bool

	killOnce sync.Once
	killErr  error

	// checkpointMu serialises checkpoints, each of which runs its own
	// migration.
	checkpointMu sync.Mutex

	mu             sync.Mutex
	shutdownReason string // reason of QEMU's SHUTDOWN event
}

var _ vmm.Machine = (*Machine)(nil)

// start spawns QEMU for l and connects QMP. It takes ownership of
// l.MemFile. On error the process is killed and reaped, and the files
// start created are removed.
func (d *Driver) start(ctx context.Context, l launch) (_ *Machine, err error) {
	if l.MemFile != nil {
		defer func() {
			if err != nil {
				l.MemFile.Close()
			}
		}()
	}
	args, err := buildArgs(l)
	if err != nil {
		return nil, err
	}

	logFile, err := os.OpenFile(l.Paths.QEMULog, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create qemu log: %w", err)
	}
	defer logFile.Close()

	cmd := exec.Command(d.qemu, args...)
	cmd.Stdin = nil // /dev/null
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = processAttr()
	if l.MemFile != nil {
		cmd.ExtraFiles = []*os.File{l.MemFile} // descriptor 3, see memFilePath
	}

	m := &Machine{
		id:      l.Spec.ID,
		paths:   l.Paths,
		launch:  l,
		memFile: l.MemFile,
		qemuImg: d.qemuImg,
		cmd:     cmd,
		mux:     agentlink.NewSerialMux(l.Paths.Agent),
		log:     d.log.With("sandbox", l.Spec.ID),
		done:    make(chan struct{}),
	}
	d.log.Debug("starting qemu", "sandbox", l.Spec.ID, "args", args)
	if err := cmd.Start(); err != nil {
		removeFiles(l.Paths.QEMULog)
		return nil, fmt.Errorf("start %s: %w", d.qemu, err)
	}
	go m.reap()

	defer func() {
		if err != nil {
			m.Kill()
			removeFiles(l.Paths.Console, l.Paths.QEMULog)
		}
	}()

	if err := m.connectQMP(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// reap waits for QEMU and records how it ended. It is the only caller of
// cmd.Wait.
func (m *Machine) reap() {
	err := m.cmd.Wait()
	switch {
	case m.killed.Load():
		m.exitErr = fmt.Errorf("qemu (pid %d): %w", m.cmd.Process.Pid, ErrKilled)
	case err != nil:
		m.exitErr = fmt.Errorf("qemu (pid %d) exited: %w; qemu.log ends with: %s",
			m.cmd.Process.Pid, err, m.logTail())
	}
	close(m.done)
}

// connectQMP dials the QMP socket until QEMU has created it, the process
// exits, or the start-up deadline passes.
func (m *Machine) connectQMP(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, qmpConnectTimeout)
	defer cancel()

	for {
		c, err := qmp.Dial(ctx, m.paths.QMP, qmp.Options{OnEvent: m.onEvent})
		if err == nil {
			m.qmp = c
			return nil
		}

		retry := errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED)
		select {
		case <-m.done:
			return fmt.Errorf("qemu exited during start-up: %s", m.logTail())
		default:
		}
		if !retry || ctx.Err() != nil {
			return fmt.Errorf("connect to qemu: %w; qemu.log ends with: %s", err, m.logTail())
		}

		select {
		case <-m.done:
			return fmt.Errorf("qemu exited during start-up: %s", m.logTail())
		case <-ctx.Done():
			return fmt.Errorf("connect to qemu: %w; qemu.log ends with: %s", ctx.Err(), m.logTail())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// onEvent runs on the QMP reader goroutine and must not block.
func (m *Machine) onEvent(ev qmp.Event) {
	m.log.Debug("qmp event", "event", ev.Name, "data", string(ev.Data))
	if ev.Name != "SHUTDOWN" {
		return
	}
	var data struct {
		Reason string `json:"reason"`
	}
	if json.Unmarshal(ev.Data, &data) == nil {
		m.mu.Lock()
		m.shutdownReason = data.Reason
		m.mu.Unlock()
	}
}

// ShutdownReason returns the reason of QEMU's SHUTDOWN event, for example
// "guest-shutdown", "guest-reset" (also a guest panic, under panic=-1) or
// "host-qmp-quit"; empty until QEMU sent one.
func (m *Machine) ShutdownReason() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.shutdownReason
}

// DialAgent opens a stream to the agent's port over the virtio-serial
// multiplexer, retrying until the agent listens or ctx ends.
func (m *Machine) DialAgent(ctx context.Context, port uint32) (net.Conn, error) {
	conn, err := m.mux.DialAgent(ctx, port)
	if err != nil {
		return nil, fmt.Errorf("dial agent port %d of %s: %w", port, m.id, err)
	}
	return conn, nil
}

// Wait blocks until QEMU has exited and been reaped, or ctx ends. It
// returns nil when QEMU exited with status 0 on its own, which it does
// when the guest powers off or reboots (including a panic under
// panic=-1). After Kill it returns an error wrapping ErrKilled.
func (m *Machine) Wait(ctx context.Context) error {
	select {
	case <-m.done:
		return m.exitErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Done is closed once QEMU has exited and been reaped.
func (m *Machine) Done() <-chan struct{} { return m.done }

// Kill sends QMP quit, sends SIGKILL to its process group if
// it has not exited within a short deadline, reaps it, closes the agent
// multiplexer and QMP, and removes the QMP and agent sockets. It is
// idempotent and safe for concurrent use; later calls wait for the first
// and return its result.
func (m *Machine) Kill() error {
	m.killOnce.Do(func() { m.killErr = m.kill() })
	return m.killErr
}

func (m *Machine) kill() error {
	m.killed.Store(true)
	var errs []error

	if !m.exited() && m.qmp != nil {
		m.quit()
	}
	if !m.exited() {
		if err := killProcessGroup(m.cmd.Process.Pid); err != nil {
			errs = append(errs, fmt.Errorf("kill qemu (pid %d): %w", m.cmd.Process.Pid, err))
		}
		select {
		case <-m.done:
		case <-time.After(reapTimeout):
			errs = append(errs, fmt.Errorf("qemu (pid %d) did not exit within %v of SIGKILL", m.cmd.Process.Pid, reapTimeout))
		}
	}

	if err := m.mux.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close agent link: %w", err))
	}
	if m.qmp != nil {
		m.qmp.Close()
	}
	if m.memFile != nil {
		// The memfd's pages are freed once QEMU's descriptor and this one
		// are closed; it has no name that could be left behind.
		m.memFile.Close()
	}
	if err := removeFiles(m.paths.QMP, m.paths.Agent); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// quit sends QMP quit and waits briefly for QEMU to exit. Failures are
// not reported because Kill falls back to SIGKILL.
func (m *Machine) quit() {
	ctx, cancel := context.WithTimeout(context.Background(), quitTimeout)
	defer cancel()

	if _, err := m.qmp.Execute(ctx, "quit", nil); err != nil && !errors.Is(err, qmp.ErrClosed) {
		m.log.Debug("qmp quit failed; sending SIGKILL", "error", err)
		return
	}
	select {
	case <-m.done:
	case <-ctx.Done():
	}
}

func (m *Machine) exited() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// Pause stops the guest's vCPUs (QMP stop). QEMU keeps running, and it
// drains and flushes the block devices before returning. The agent
// session survives a short pause. The host's yamux keepalive (every 15 s
// by default) ends the session when the stopped guest leaves a ping
// unanswered for 10 s, and the next DialAgent after Resume reconnects.
func (m *Machine) Pause(ctx context.Context) error {
	if _, err := m.qmp.Execute(ctx, "stop", nil); err != nil {
		return fmt.Errorf("pause %s: %w", m.id, err)
	}
	return nil
}

// Resume restarts the guest's vCPUs after Pause (QMP cont).
func (m *Machine) Resume(ctx context.Context) error {
	if _, err := m.qmp.Execute(ctx, "cont", nil); err != nil {
		return fmt.Errorf("resume %s: %w", m.id, err)
	}
	return nil
}

// QMP returns the machine's QMP client. It stays owned by the machine:
// callers must not close it, and it is closed by Kill.
func (m *Machine) QMP() *qmp.Client { return m.qmp }

// ConsolePath returns the file that captures the guest's serial console.
func (m *Machine) ConsolePath() string { return m.paths.Console }

// PID returns QEMU's process ID.
func (m *Machine) PID() int { return m.cmd.Process.Pid }

func (m *Machine) logTail() string {
	return readTail(m.paths.QEMULog, logTailBytes)
}

// readTail returns up to n bytes from the end of the file at path, or a
// note saying why it could not.
func readTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()

	if st, err := f.Stat(); err == nil && st.Size() > n {
		f.Seek(st.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, n))
	if s := bytesTrim(b); s != "" {
		return s
	}
	return "(empty)"
}

func bytesTrim(b []byte) string {
	return strings.TrimSpace(string(bytes.ToValidUTF8(b, []byte("?"))))
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(line)
}

// removeFiles removes each path, ignoring paths that do not exist.
func removeFiles(paths ...string) error {
	var errs []error
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
