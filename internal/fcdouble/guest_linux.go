package fcdouble

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// guestCommand is the hidden first argument that makes the double's own
// binary act as the guest's setup process inside the new namespaces.
const guestCommand = "__fcdouble-guest"

// guestDirName is the directory, relative to the double's working
// directory, that holds the guest's mount point and the agent socket. The
// agent socket is dialled by this relative path, so its length does not
// depend on the length of the working directory.
const guestDirName = "fcdouble-guest"

// guest is the hearth-agent process standing in for a booted guest.
type guest struct {
	pid      int
	sockPath string // relative to the double's working directory
	dir      string
	exited   chan struct{}
}

func (s *server) currentGuest() *guest {
	s.guestMu.Lock()
	defer s.guestMu.Unlock()
	return s.guestRef
}

// setPaused stops or continues the agent's processes, standing in for
// paused vCPUs.
func (s *server) setPaused(paused bool) {
	s.guestMu.Lock()
	s.guestPaused = paused
	g := s.guestRef
	s.guestMu.Unlock()
	if g == nil {
		return
	}
	sig := syscall.SIGCONT
	if paused {
		sig = syscall.SIGSTOP
	}
	// SIGSTOP and SIGCONT reach the init of a child PID namespace even
	// without a handler, because they come from an ancestor namespace.
	syscall.Kill(g.pid, sig)
}

func (g *guest) stop() {
	if g != nil {
		syscall.Kill(g.pid, syscall.SIGKILL)
	}
}

func (g *guest) dial(port uint32) (net.Conn, error) {
	return dialAgent(g.sockPath, port)
}

// startGuest starts the agent and arranges for the double to exit 0 when
// the agent exits, as Firecracker does when the guest reboots.
func (s *server) startGuest() error {
	if s.cfg.AgentPath == "" {
		return errors.New("no --agent given to the double")
	}
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	dir := filepath.Join(wd, guestDirName)
	os.RemoveAll(dir)
	for _, d := range []string{"root", "sock"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return err
		}
	}
	g := &guest{sockPath: filepath.Join(guestDirName, "sock", "agent.sock"), dir: dir, exited: make(chan struct{})}

	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that forked the child exits, so
		// that thread stays locked and alive until the child is gone.
		// Under full CI load an agent was still seen alive long after its
		// double had been killed, so the agent also gets the read end of
		// a pipe whose write end only this process holds: when the double
		// dies, the agent reads end of file and exits.
		runtime.LockOSThread()
		readEnd, writeEnd, err := os.Pipe()
		if err != nil {
			started <- err
			return
		}
		cmd := exec.Command("/proc/self/exe", guestCommand,
			"--agent", s.cfg.AgentPath, "--dir", dir, "--hostname", s.cfg.ID)
		cmd.Env = []string{"PATH=/bin"}
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		cmd.ExtraFiles = []*os.File{readEnd} // fd 3 in the guest
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWNET | syscall.CLONE_NEWPID,
			Pdeathsig:  syscall.SIGKILL,
		}
		if err := cmd.Start(); err != nil {
			readEnd.Close()
			writeEnd.Close()
			started <- err
			return
		}
		readEnd.Close()
		g.pid = cmd.Process.Pid
		started <- nil
		cmd.Wait()
		writeEnd.Close()
		close(g.exited)
		os.RemoveAll(dir)
		if s.cfg.HangOnReboot {
			// A guest whose reboot hangs: the process stays, and no
			// vsock connection gets a reply any more.
			s.guestMu.Lock()
			s.guestRef = nil
			s.guestMu.Unlock()
			return
		}
		// The guest is gone: Firecracker exits 0 after a guest reboot.
		os.Exit(exitOK)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start agent: %w", err)
	}

	s.guestMu.Lock()
	s.guestRef = g
	s.guestMu.Unlock()
	return nil
}

// guestMain runs inside the new namespaces: it builds a throwaway root on
// tmpfs holding busybox and the agent, and execs the agent in serve-only
// mode. The agent becomes PID 1 of the namespace but gets no hearth_init
// variable, so it never performs init duties.
func guestMain(args []string) int {
	fs := flag.NewFlagSet(guestCommand, flag.ContinueOnError)
	agent := fs.String("agent", "", "agent binary")
	dir := fs.String("dir", "", "guest directory")
	hostname := fs.String("hostname", "", "hostname")
	if err := fs.Parse(args); err != nil {
		return exitArgParsing
	}
	if err := setupGuestRoot(*agent, *dir, *hostname); err != nil {
		fmt.Fprintf(os.Stderr, "fcdouble guest: %v\n", err)
		return exitGeneric
	}
	argv := []string{"/bin/hearth-agent", "--listen-hybrid", "/run/hearth/agent.sock", "--parent-fd", "3"}
	err := syscall.Exec(argv[0], argv, []string{"PATH=/bin", "HOME=/"})
	fmt.Fprintf(os.Stderr, "fcdouble guest: exec agent: %v\n", err)
	return exitGeneric
}

func setupGuestRoot(agent, dir, hostname string) error {
	// Nothing mounted below propagates to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	root := filepath.Join(dir, "root")
	if err := unix.Mount("tmpfs", root, "tmpfs", 0, "size=16m,mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", root, err)
	}
	for _, d := range []string{"bin", "proc", "tmp", "dev", "run/hearth", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("busybox is needed for the guest's commands: %w", err)
	}
	binds := []struct{ src, dst string }{
		{busybox, "bin/busybox"},
		{agent, "bin/hearth-agent"},
		{filepath.Join(dir, "sock"), "run/hearth"},
	}
	for _, b := range binds {
		dst := filepath.Join(root, b.dst)
		if fi, err := os.Stat(b.src); err == nil && !fi.IsDir() {
			if err := os.WriteFile(dst, nil, 0o755); err != nil {
				return err
			}
		}
		if err := unix.Mount(b.src, dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", b.src, err)
		}
	}
	for _, applet := range []string{"sh", "echo", "cat", "ls", "sleep", "true", "false", "id", "env", "uname", "hostname"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
			return err
		}
	}
	for name, dev := range map[string]uint64{"null": unix.Mkdev(1, 3), "zero": unix.Mkdev(1, 5), "urandom": unix.Mkdev(1, 9)} {
		if err := unix.Mknod(filepath.Join(root, "dev", name), unix.S_IFCHR|0o666, int(dev)); err != nil {
			return fmt.Errorf("mknod /dev/%s: %w", name, err)
		}
	}
	if err := unix.Sethostname([]byte(hostname)); err != nil {
		return err
	}
	if err := unix.Chroot(root); err != nil {
		return fmt.Errorf("chroot %s: %w", root, err)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount proc: %w", err)
	}
	return nil
}
