package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// reaper collects the exit status of the agent's children. There is one
// per process (see processReaper), driven by SIGCHLD.
//
// As PID 1 (of a guest, or of a PID namespace) the reaper calls
// wait4(-1), so it also reaps every orphan that the kernel re-parents to
// the agent. In that mode nothing else in the process may wait for
// children: exec.Cmd.Wait or os.Process.Wait would race the reaper for
// the status and lose it. Otherwise it waits only for the PIDs registered
// with it and leaves every other child to its own waiter.
//
// Children are started through start, which forks while holding mu. The
// loop reaps only while holding mu, so a child is always registered
// before its status can be collected. A status collected for a PID that
// is not registered therefore belongs to an orphan and is discarded.
type reaper struct {
	reapAll bool
	log     *slog.Logger

	mu       sync.Mutex
	children map[int]*child
}

// child is a process started through the reaper.
type child struct {
	pid  int
	done chan struct{} // closed once status and err are set

	// status and err are written once, under reaper.mu, before done closes.
	status unix.WaitStatus
	err    error
	reaped bool // guarded by reaper.mu
}

var (
	reaperOnce   sync.Once
	sharedReaper *reaper
)

// processReaper returns the reaper of this process, starting it on first
// use. It reaps all children when the process is PID 1.
func processReaper() *reaper {
	reaperOnce.Do(func() {
		sharedReaper = newReaper(os.Getpid() == 1, slog.Default())
	})
	return sharedReaper
}

// startReaper starts the process's reaper, so that as PID 1 the agent
// reaps orphans from the start, before it runs any command.
func startReaper() { processReaper() }

func newReaper(reapAll bool, logger *slog.Logger) *reaper {
	r := &reaper{reapAll: reapAll, log: logger, children: make(map[int]*child)}

	// A buffer of one is enough: SIGCHLD carries no count, and each pass
	// of the loop reaps every child that has exited by then.
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, unix.SIGCHLD)
	go r.loop(sigchld)

	// Children that exited before signal.Notify (orphans re-parented to a
	// guest init during boot) sent their SIGCHLD too early to be seen.
	sigchld <- unix.SIGCHLD
	if reapAll {
		logger.Info("reaping all children as PID 1")
	}
	return r
}

func (r *reaper) loop(sigchld <-chan os.Signal) {
	for range sigchld {
		r.reap()
	}
}

// start calls fork, which must start exactly one process and return its
// PID, and registers that PID before the reaper can collect its status.
func (r *reaper) start(fork func() (int, error)) (*child, error) {
	r.mu.Lock()
	defer r.mu.Unlock()

	pid, err := fork()
	if err != nil {
		return nil, err
	}
	c := &child{pid: pid, done: make(chan struct{})}
	r.children[pid] = c
	return c, nil
}

func (r *reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()

	if r.reapAll {
		_ = r.reapAny()
	} else {
		r.reapRegistered()
	}
}

// reapAny collects every exited child, registered or not, and reports
// whether children remain. The caller holds r.mu.
func (r *reaper) reapAny() bool {
	for {
		var ws unix.WaitStatus
		// WALL also collects children created by clone(2) with an exit
		// signal other than SIGCHLD.
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG|unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			// ECHILD: the process has no children left.
			return false
		}
		if pid == 0 {
			return true
		}

		c, ok := r.children[pid]
		if !ok {
			r.log.Debug("reaped orphan", "pid", pid, "status", describeStatus(ws))
			continue
		}
		r.finish(c, ws, nil)
	}
}

// reapRegistered collects the registered children that have exited and
// leaves all other children of the process alone.
func (r *reaper) reapRegistered() {
	for pid, c := range r.children {
		var ws unix.WaitStatus
		got, err := wait4Retry(pid, &ws)
		switch {
		case err != nil:
			r.finish(c, 0, fmt.Errorf("wait for pid %d: %w", pid, err))
		case got == pid:
			r.finish(c, ws, nil)
		}
	}
}

func wait4Retry(pid int, ws *unix.WaitStatus) (int, error) {
	for {
		got, err := unix.Wait4(pid, ws, unix.WNOHANG, nil)
		if !errors.Is(err, unix.EINTR) {
			return got, err
		}
	}
}

// finish records a child's status. The caller holds r.mu.
func (r *reaper) finish(c *child, ws unix.WaitStatus, err error) {
	delete(r.children, c.pid)
	c.status = ws
	c.err = err
	c.reaped = true
	close(c.done)
}

// childrenRemain reaps the children that have exited and reports whether
// any remain. It is meaningful only when the reaper reaps all children.
func (r *reaper) childrenRemain() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reapAny()
}

// signalGroup sends sig to the process group led by c, but only while c
// has not been reaped: until then its PID, and so its process group ID,
// cannot be reused by an unrelated process. It reports whether the signal
// was sent.
func (r *reaper) signalGroup(c *child, sig unix.Signal) bool {
	return r.signalProcessGroup(c, c.pid, sig)
}

// signalProcessGroup sends sig to process group pgid, a group of c's
// session, while c has not been reaped. It reports whether the signal was
// sent.
func (r *reaper) signalProcessGroup(c *child, pgid int, sig unix.Signal) bool {
	r.mu.Lock()
	defer r.mu.Unlock()

	if c.reaped {
		return false
	}
	return unix.Kill(-pgid, sig) == nil
}

// exitCode converts a wait status to the exit code a shell reports:
// the exit status, or 128+N for a process killed by signal N.
func exitCode(ws unix.WaitStatus) int32 {
	switch {
	case ws.Exited():
		return int32(ws.ExitStatus())
	case ws.Signaled():
		return 128 + int32(ws.Signal())
	default:
		return -1
	}
}

func describeStatus(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + ws.Signal().String()
	}
	return fmt.Sprintf("exit %d", ws.ExitStatus())
}
