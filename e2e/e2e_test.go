// Package e2e runs the hearth binary against real guests booted under
// QEMU. The tests need root, QEMU and the boot assets (scripts/build-assets);
// they skip with the reason when one is missing. Every test that creates a
// TAP runs hearth inside a network namespace the test creates, so no TAP
// or address ever appears in the host's namespace.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var (
	hearthBin string // built once by TestMain
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hearth-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	hearthBin = filepath.Join(dir, "hearth")
	out, err := exec.Command("go", "build", "-race", "-o", hearthBin, "../cmd/hearth").CombinedOutput()
	if err != nil {
		buildErr = fmt.Errorf("build hearth: %v\n%s", err, out)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// assetsDir returns the boot assets directory, skipping the test when the
// environment cannot boot guests.
func assetsDir(t *testing.T) string {
	t.Helper()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
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

// env is one test's hearth environment: a data directory and a network
// namespace with no route out.
type env struct {
	t       *testing.T
	assets  string
	dataDir string
	netns   string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, assets: assetsDir(t), dataDir: t.TempDir()}
	var b [4]byte
	_, _ = rand.Read(b[:])
	e.netns = "hearth-e2e-" + hex.EncodeToString(b[:])
	mustRun(t, "ip", "netns", "add", e.netns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", e.netns).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", e.netns, err, out)
		}
	})
	mustRun(t, "ip", "netns", "exec", e.netns, "ip", "link", "set", "lo", "up")
	return e
}

// result is what one hearth invocation printed and returned.
type result struct {
	stdout, stderr string
	code           int
}

// hearth runs the hearth binary inside the test's network namespace.
func (e *env) hearth(ctx context.Context, args ...string) result {
	e.t.Helper()
	cmd := e.command(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := result{stdout: stdout.String(), stderr: stderr.String()}
	if err != nil {
		exitErr, ok := err.(*exec.ExitError)
		if !ok {
			e.t.Fatalf("run hearth %v: %v", args, err)
		}
		res.code = exitErr.ExitCode()
	}
	return res
}

func (e *env) command(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"netns", "exec", e.netns, hearthBin, "--data-dir", e.dataDir}, args...)
	cmd := exec.CommandContext(ctx, "ip", full...)
	cmd.Env = append(os.Environ(), "HEARTH_ASSETS="+e.assets)
	return cmd
}

// links returns the names of the network devices in the test's namespace.
func (e *env) links() []string {
	e.t.Helper()
	out := mustRun(e.t, "ip", "netns", "exec", e.netns, "ip", "-o", "link", "show")
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 2 {
			names = append(names, strings.TrimSuffix(strings.SplitN(fields[1], "@", 2)[0], ":"))
		}
	}
	return names
}

// assertClean checks that nothing of the test's sandboxes is left: no
// device but lo in the namespace, no sandbox directory, and no QEMU
// process that refers to the data directory.
func (e *env) assertClean() {
	e.t.Helper()
	if links := e.links(); len(links) != 1 || links[0] != "lo" {
		e.t.Errorf("devices left in netns: got %v, want [lo]", links)
	}
	entries, _ := os.ReadDir(filepath.Join(e.dataDir, "sandboxes"))
	for _, ent := range entries {
		e.t.Errorf("sandbox directory left: %s", ent.Name())
	}
	if pids := processesMentioning(e.dataDir); len(pids) > 0 {
		e.t.Errorf("processes still refer to %s: %v", e.dataDir, pids)
	}
}

// processesMentioning returns the PIDs whose command line contains s.
func processesMentioning(s string) []string {
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

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// testContext bounds one test. Guests boot in software emulation on a
// shared two-core machine, so the bound is generous.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
