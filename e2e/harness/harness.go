// Package harness starts real hearth daemons for the end-to-end tests:
// it builds the hearth binary, creates a network namespace per test, and
// runs `hearth serve` inside it with a configuration, socket and data
// directory of the test's own. It imports no generated API code, so that
// a test with its own client of the sandbox.v1 protocol can use it
// without registering that protocol twice.
package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// StartTimeout bounds the wait for a daemon's socket to accept
// connections.
const StartTimeout = 60 * time.Second

// stopTimeout bounds a daemon's shutdown, which removes its sandboxes,
// before it is killed.
const stopTimeout = 90 * time.Second

// Build compiles cmd/hearth with the race detector into dir and returns
// the binary's path.
func Build(dir string) (string, error) {
	bin := filepath.Join(dir, "hearth")
	out, err := exec.Command("go", "build", "-race", "-o", bin, "github.com/hearthvm/hearth/cmd/hearth").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build hearth: %v\n%s", err, out)
	}
	return bin, nil
}

// Assets returns the boot assets directory, ${HEARTH_ASSETS:-/var/lib/hearth/assets},
// skipping the test when the host cannot boot guests.
func Assets(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (TAP devices and network namespaces); run as root")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not found; run scripts/install-deps")
	}
	dir := os.Getenv("HEARTH_ASSETS")
	if dir == "" {
		dir = "/var/lib/hearth/assets"
	}
	for _, name := range []string{"vmlinux", "initramfs.cpio", "rootfs.ext4"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Skipf("boot asset %s missing; run make assets", filepath.Join(dir, name))
		}
	}
	return dir
}

// NewNetns creates a network namespace with only lo, up, and deletes it
// when the test ends.
func NewNetns(t testing.TB) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "hearth-e2e-" + hex.EncodeToString(b[:])
	MustRun(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
	MustRun(t, "ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
	return name
}

// MustRun runs a command and fails the test when it fails.
func MustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// Daemon is one `hearth serve` process in a network namespace.
type Daemon struct {
	Bin     string
	Netns   string
	Assets  string
	DataDir string
	Socket  string
	// ConfigPath is the daemon's TOML file, written from Config.
	ConfigPath string
	Log        string
	cmd        *exec.Cmd
	exited     chan struct{}
	waitErr    error
}

// Host returns the daemon's address for --host.
func (d *Daemon) Host() string { return "unix://" + d.Socket }

// Config returns the TOML configuration of a daemon with its socket and
// data directory in dir. The QEMU accelerator is TCG unless
// HEARTH_E2E_ACCEL names another: the tests exercise the API, and a KVM
// probe boot per daemon would only add time.
func Config(dir, assets string) string {
	accel := os.Getenv("HEARTH_E2E_ACCEL")
	if accel == "" {
		accel = "tcg"
	}
	return fmt.Sprintf(`[hearth]
driver = "qemu"
data_dir = %q
assets_dir = %q
log_level = "debug"

[qemu]
accel = %q

[grpc]
unix_socket = %q
socket_mode = "0600"
`, filepath.Join(dir, "data"), assets, accel, filepath.Join(dir, "hearth.sock"))
}

// StartDaemon writes Config into a t.TempDir(), starts `hearth serve`
// inside netns and waits until its socket accepts connections. The
// daemon is stopped by its PID when the test ends, and its log is
// printed when the test failed.
func StartDaemon(t testing.TB, bin, netns, assets string) *Daemon {
	t.Helper()
	return StartDaemonIn(t, t.TempDir(), bin, netns, assets)
}

// StartDaemonIn is StartDaemon with the configuration, socket and data
// directory in dir, which the caller prepares: for example with a file
// system mounted at dir/data/snapshots. The daemon stops before the
// cleanups the caller registered before this call run.
func StartDaemonIn(t testing.TB, dir, bin, netns, assets string) *Daemon {
	t.Helper()
	d := &Daemon{
		Bin: bin, Netns: netns, Assets: assets,
		DataDir:    filepath.Join(dir, "data"),
		Socket:     filepath.Join(dir, "hearth.sock"),
		ConfigPath: filepath.Join(dir, "hearth.toml"),
		Log:        filepath.Join(dir, "hearth.log"),
		exited:     make(chan struct{}),
	}
	if err := os.WriteFile(d.ConfigPath, []byte(Config(dir, assets)), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(d.Log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()

	d.cmd = exec.Command("ip", "netns", "exec", netns, bin, "serve", "--config", d.ConfigPath)
	d.cmd.Stdout, d.cmd.Stderr = logFile, logFile
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start hearth serve: %v", err)
	}
	go func() {
		d.waitErr = d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		d.Stop(t)
		if t.Failed() {
			data, _ := os.ReadFile(d.Log)
			t.Logf("hearth serve log:\n%s", data)
		}
	})

	if err := d.waitListening(); err != nil {
		data, _ := os.ReadFile(d.Log)
		t.Fatalf("%v; log:\n%s", err, data)
	}
	return d
}

func (d *Daemon) waitListening() error {
	deadline := time.Now().Add(StartTimeout)
	for {
		conn, err := net.DialTimeout("unix", d.Socket, time.Second)
		if err == nil {
			return conn.Close()
		}
		select {
		case <-d.exited:
			return fmt.Errorf("hearth serve exited before listening: %v", d.waitErr)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("hearth serve did not listen on %s within %s: %v", d.Socket, StartTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop sends SIGTERM to the daemon's PID, waits for it to remove its
// sandboxes and exit, and kills it after stopTimeout. It fails the test
// when the daemon exits with an error. It is idempotent.
func (d *Daemon) Stop(t testing.TB) {
	t.Helper()
	select {
	case <-d.exited:
		return
	default:
	}
	// `ip netns exec` execs hearth in place, so this PID is the daemon.
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Errorf("signal hearth serve (pid %d): %v", d.cmd.Process.Pid, err)
	}
	select {
	case <-d.exited:
		if d.waitErr != nil {
			t.Errorf("hearth serve exited with %v", d.waitErr)
		}
	case <-time.After(stopTimeout):
		t.Errorf("hearth serve (pid %d) did not stop within %s; killing it", d.cmd.Process.Pid, stopTimeout)
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
}

// Dial returns a gRPC connection to the daemon's socket, closed when the
// test ends.
func (d *Daemon) Dial(t testing.TB) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+d.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial %s: %v", d.Socket, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Result is what one CLI invocation printed and returned.
type Result struct {
	Stdout, Stderr string
	Code           int
}

// CLI runs `hearth --host <daemon> args...` and returns its output and
// exit code.
func (d *Daemon) CLI(ctx context.Context, t testing.TB, args ...string) Result {
	t.Helper()
	cmd := exec.CommandContext(ctx, d.Bin, append([]string{"--host", d.Host()}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	var exitErr *exec.ExitError
	switch {
	case errors.As(err, &exitErr):
		res.Code = exitErr.ExitCode()
	case err != nil:
		t.Fatalf("run hearth %v: %v", args, err)
	}
	return res
}

// Links returns the names of the network devices in netns.
func Links(t testing.TB, netns string) []string {
	t.Helper()
	out := MustRun(t, "ip", "netns", "exec", netns, "ip", "-o", "link", "show")
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 2 {
			names = append(names, strings.TrimSuffix(strings.SplitN(fields[1], "@", 2)[0], ":"))
		}
	}
	return names
}

// ProcessesMentioning returns the PIDs whose command line contains s.
func ProcessesMentioning(s string) []string {
	var pids []string
	matches, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, m := range matches {
		data, err := os.ReadFile(m)
		if err == nil && bytes.Contains(data, []byte(s)) {
			pids = append(pids, filepath.Base(filepath.Dir(m)))
		}
	}
	return pids
}

// QEMUProcesses returns the PIDs of QEMU processes whose command line
// contains s, such as a daemon's data directory.
func QEMUProcesses(s string) []string {
	var pids []string
	for _, pid := range ProcessesMentioning(s) {
		data, err := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
		if err == nil && (bytes.HasPrefix(data, []byte("qemu-system")) || bytes.Contains(data, []byte("/qemu-system"))) {
			pids = append(pids, pid)
		}
	}
	return pids
}
