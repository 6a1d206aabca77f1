package bench

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/config"
	"github.com/hearthvm/hearth/daemon"
	"github.com/hearthvm/hearth/sandbox"
	"github.com/hearthvm/hearth/vmm"
	"github.com/hearthvm/hearth/vmm/firecracker"
	"github.com/hearthvm/hearth/vmm/instant"
)

// DaemonCommand is the hidden first argument that makes hearth-bench run
// as the daemon under test, so the daemon is a process of its own whose
// memory can be read apart from the client's.
const DaemonCommand = "__daemon"

// Drivers the benchmark daemon can run.
const (
	driverFCDouble = "fcdouble" // the Firecracker driver on the Firecracker double
	driverInstant  = "instant"  // the instant in-process double
)

// daemonReadyLine is the line the daemon process prints on stdout once
// it serves.
const daemonReadyLine = "ready"

// daemonStopTimeout bounds the daemon's shutdown after SIGTERM.
const daemonStopTimeout = 60 * time.Second

// DaemonMain runs the benchmark daemon: the real daemon package serving
// the gRPC API on a Unix socket, with a sandbox manager on one of the
// doubles. It serves until SIGTERM or SIGINT and returns the exit code.
func DaemonMain(args []string) int {
	fs := flag.NewFlagSet(DaemonCommand, flag.ContinueOnError)
	driverName := fs.String("driver", driverFCDouble, "fcdouble or instant")
	dir := fs.String("dir", "", "data directory")
	socket := fs.String("socket", "", "API socket path")
	agentPath := fs.String("agent", "", "static hearth-agent binary (fcdouble)")
	fakeFC := fs.String("firecracker", "", "fake-firecracker binary (fcdouble)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serveDaemon(ctx, *driverName, *dir, *socket, *agentPath, *fakeFC, log); err != nil {
		fmt.Fprintf(os.Stderr, "benchmark daemon: %v\n", err)
		return 1
	}
	return 0
}

func serveDaemon(ctx context.Context, driverName, dir, socket, agentPath, fakeFC string, log *slog.Logger) error {
	driver, err := newBenchDriver(driverName, agentPath, fakeFC, log)
	if err != nil {
		return err
	}
	mgr, err := newDoubleManager(filepath.Join(dir, "data"), driver, log)
	if err != nil {
		return err
	}
	cfg := config.Default()
	cfg.Hearth.DataDir = filepath.Join(dir, "data")
	cfg.GRPC.UnixSocket = socket
	cfg.GRPC.SocketMode = "0600"
	d, err := daemon.Start(daemon.Options{Config: cfg, Manager: mgr, Logger: log})
	if err != nil {
		return err
	}
	fmt.Println(daemonReadyLine)

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-d.Failed():
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), daemonStopTimeout)
	defer cancel()
	return errors.Join(serveErr, d.Shutdown(stopCtx))
}

func newBenchDriver(name, agentPath, fakeFC string, log *slog.Logger) (vmm.Driver, error) {
	switch name {
	case driverInstant:
		return &instant.Driver{}, nil
	case driverFCDouble:
		return firecracker.New(fcDoubleConfig(agentPath, fakeFC), log)
	default:
		return nil, fmt.Errorf("unknown benchmark driver %q: want %s or %s", name, driverFCDouble, driverInstant)
	}
}

// fcDoubleConfig runs the Firecracker driver on the double, whose guest
// is the real hearth-agent, serving in namespaces of its own.
func fcDoubleConfig(agentPath, fakeFC string) firecracker.Config {
	return firecracker.Config{
		Binary:    fakeFC,
		NoSeccomp: true,
		ExtraArgs: []string{"--agent", agentPath},
	}
}

// newDoubleManager returns a manager for a double: placeholder boot
// assets, which the doubles never read, and no network pool, so every
// sandbox uses network mode none.
func newDoubleManager(dataDir string, driver vmm.Driver, log *slog.Logger) (*sandbox.Manager, error) {
	d, err := placeholderAssets(filepath.Join(dataDir, "assets"))
	if err != nil {
		return nil, err
	}
	return sandbox.New(sandbox.Config{
		DataDir: dataDir, Driver: driver, Defaults: d,
		ReadyTimeout: 60 * time.Second, Logger: log,
	})
}

// placeholderAssets creates stand-ins for the boot assets in dir. The
// doubles boot no kernel, but the manager and the drivers check that the
// files exist.
func placeholderAssets(dir string) (sandbox.Defaults, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return sandbox.Defaults{}, fmt.Errorf("create placeholder assets: %w", err)
	}
	d := sandbox.Defaults{
		Kernel: filepath.Join(dir, "vmlinux"),
		Initrd: filepath.Join(dir, "initramfs.cpio"),
		RootFS: filepath.Join(dir, "rootfs.ext4"),
	}
	for _, p := range []string{d.Kernel, d.Initrd, d.RootFS} {
		if err := os.WriteFile(p, []byte("placeholder"), 0o644); err != nil {
			return sandbox.Defaults{}, fmt.Errorf("create placeholder assets: %w", err)
		}
	}
	return d, nil
}

// daemonProcess is a running benchmark daemon and a client of its API.
type daemonProcess struct {
	cmd    *exec.Cmd
	exited chan struct{}
	conn   *grpc.ClientConn
	client sandboxv1.SandboxServiceClient
	stderr *os.File
}

// startDaemon starts the benchmark daemon with driver in a new directory
// under e.dir and connects to it.
func (e *env) startDaemon(ctx context.Context, driver string) (_ *daemonProcess, err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(e.dir, "d-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	socket := filepath.Join(dir, "api.sock")
	stderr, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, DaemonCommand, "-driver", driver, "-dir", dir, "-socket", socket,
		"-agent", e.agent, "-firecracker", e.fakeFC)
	cmd.Stderr = stderr
	// The daemon dies with the benchmark, so an interrupted run leaves
	// no daemon behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		stderr.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		stderr.Close()
		return nil, fmt.Errorf("start benchmark daemon: %w", err)
	}
	p := &daemonProcess{cmd: cmd, exited: make(chan struct{}), stderr: stderr}
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	defer func() {
		if err != nil {
			p.stop()
		}
	}()

	if err := waitReadyLine(ctx, stdout, p.exited); err != nil {
		return nil, fmt.Errorf("benchmark daemon did not start: %w; its log: %s", err, tail(stderr.Name()))
	}
	go io.Copy(io.Discard, stdout)
	p.conn, err = grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	p.client = sandboxv1.NewSandboxServiceClient(p.conn)
	return p, nil
}

func waitReadyLine(ctx context.Context, r io.Reader, exited <-chan struct{}) error {
	line := make(chan error, 1)
	go func() {
		s, err := bufio.NewReader(r).ReadString('\n')
		if err == nil && strings.TrimSpace(s) != daemonReadyLine {
			err = fmt.Errorf("unexpected output %q", s)
		}
		line <- err
	}()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	select {
	case err := <-line:
		return err
	case <-exited:
		return errors.New("the process exited")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pid returns the daemon's process ID.
func (p *daemonProcess) pid() int { return p.cmd.Process.Pid }

// stop ends the daemon with SIGTERM, which removes its sandboxes, and
// kills it if it has not exited within daemonStopTimeout.
func (p *daemonProcess) stop() {
	if p.conn != nil {
		p.conn.Close()
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(daemonStopTimeout):
		p.cmd.Process.Kill()
		<-p.exited
	}
	p.stderr.Close()
}

// createReady creates a sandbox with network mode none and waits until
// it is ready, by running a first command in it: the API waits for a
// starting sandbox before it runs a command.
func (p *daemonProcess) createReady(ctx context.Context) (string, error) {
	resp, err := p.client.Create(ctx, &sandboxv1.CreateSandboxRequest{
		Network: &sandboxv1.NetworkSpec{Mode: sandbox.NetworkNone},
	})
	if err != nil {
		return "", fmt.Errorf("create sandbox: %w", err)
	}
	if err := p.run(ctx, resp.GetId(), []string{"/bin/true"}); err != nil {
		return "", err
	}
	return resp.GetId(), nil
}

// run runs cmd through the Run call and returns once its exit code has
// arrived; a non-zero code is an error.
func (p *daemonProcess) run(ctx context.Context, id string, cmd []string) error {
	stream, err := p.client.Run(ctx, &sandboxv1.RunRequest{Id: id, Cmd: cmd})
	if err != nil {
		return fmt.Errorf("run %v in %s: %w", cmd, id, err)
	}
	for {
		out, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("run %v in %s: %w", cmd, id, err)
		}
		if out.GetDone() {
			if code := out.GetExitCode(); code != 0 {
				return fmt.Errorf("run %v in %s: exit code %d", cmd, id, code)
			}
			return nil
		}
	}
}

// tail returns the end of a log file for an error message.
func tail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	if len(data) > 2000 {
		data = data[len(data)-2000:]
	}
	return strings.TrimSpace(string(data))
}
