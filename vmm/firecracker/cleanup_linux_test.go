package firecracker_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hearthvm/hearth/network"
	"github.com/hearthvm/hearth/vmm"
	"github.com/hearthvm/hearth/vmm/firecracker"
)

// newNetNS creates a network namespace for the test and deletes it in
// cleanup. It has only a loopback device and no route out.
func newNetNS(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip to create a network namespace: apt-get install iproute2")
	}
	var b [4]byte
	rand.Read(b[:])
	name := "hearth-fct-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	return "/var/run/netns/" + name
}

// createTAP creates a TAP in the namespace at nsPath, owned by owner when
// set, and deletes it in cleanup.
func createTAP(t *testing.T, name, nsPath string, owner *network.TAPUser) {
	t.Helper()
	opts := network.TAPOptions{NetNSPath: nsPath, User: owner}
	err := network.CreateTAP(name, net.IPv4(172, 31, 0, 1), net.IPv4(172, 31, 0, 2), opts)
	if err != nil {
		t.Fatalf("create tap %s in %s: %v", name, nsPath, err)
	}
	t.Cleanup(func() {
		if err := network.DeleteTAP(name, opts); err != nil {
			t.Errorf("delete tap %s: %v", name, err)
		}
	})
}

func jailerConfig(env testEnv, base, netns string, extra ...string) firecracker.Config {
	cfg := env.config("1.16.1", extra...)
	cfg.Jailer = &firecracker.JailerConfig{Binary: tools.jailer, UID: 65534, GID: 65534,
		ChrootBaseDir: base, NetNS: netns}
	return cfg
}

func TestTAPPlacement(t *testing.T) {
	tests := []struct {
		name   string
		jailer *firecracker.JailerConfig
		want   vmm.TAPPlacement
	}{
		{"direct", nil, vmm.TAPPlacement{}},
		{"jailed without netns", &firecracker.JailerConfig{UID: 123, GID: 456},
			vmm.TAPPlacement{Owner: &vmm.TAPOwner{UID: 123, GID: 456}}},
		{"jailed with netns", &firecracker.JailerConfig{UID: 123, GID: 456, NetNS: "/var/run/netns/x"},
			vmm.TAPPlacement{NetNSPath: "/var/run/netns/x", Owner: &vmm.TAPOwner{UID: 123, GID: 456}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := firecracker.New(firecracker.Config{Jailer: tc.jailer}, nil)
			if err != nil {
				t.Fatal(err)
			}
			got := d.TAPPlacement()
			if got.NetNSPath != tc.want.NetNSPath {
				t.Errorf("NetNSPath: got %q, want %q", got.NetNSPath, tc.want.NetNSPath)
			}
			if (got.Owner == nil) != (tc.want.Owner == nil) {
				t.Fatalf("Owner: got %v, want %v", got.Owner, tc.want.Owner)
			}
			if got.Owner != nil && *got.Owner != *tc.want.Owner {
				t.Errorf("Owner: got %+v, want %+v", *got.Owner, *tc.want.Owner)
			}
		})
	}
}

// TestFailedStartRetry boots a sandbox whose InstanceStart fails after
// its TAP was handed over, then boots it again with the same id,
// directory and TAP. The first Boot must have reaped Firecracker and
// removed its sockets and chroot, or the retry fails.
func TestFailedStartRetry(t *testing.T) {
	requireDoubles(t)
	tests := []struct {
		name   string
		jailed bool
	}{
		{"direct", false},
		{"jailed in netns", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t)
			const tap = "hthretry0"
			failing, working := env.config("1.16.1", "--fail-instance-start"), env.config("1.16.1")
			var jailDir string
			if tc.jailed {
				base, ns := t.TempDir(), newNetNS(t)
				createTAP(t, tap, ns, &network.TAPUser{UID: 65534, GID: 65534})
				failing = jailerConfig(env, base, ns, "--fail-instance-start")
				working = jailerConfig(env, base, ns)
				jailDir = filepath.Join(base, "firecracker", "retry-1")
			}
			spec := env.spec(t, "retry-1")
			spec.TAP = tap
			spec.MAC = net.HardwareAddr{0xaa, 0xfc, 0, 0, 0, 2}

			before := testDoubleProcesses()
			_, err := newDriver(t, failing).Boot(context.Background(), spec)
			if err == nil {
				t.Fatal("first boot: got nil error, want InstanceStart's failure")
			}
			if pids := newProcessesSince(before, testDoubleProcesses); len(pids) > 0 {
				t.Errorf("processes after the failed boot: got %v, want none", pids)
			}
			if jailDir != "" {
				if _, err := os.Stat(jailDir); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("chroot %s after the failed boot: got present (err %v), want removed", jailDir, err)
				}
			}

			m := boot(t, newDriver(t, working), spec)
			exerciseMachine(t, m)
			if err := m.Kill(); err != nil {
				t.Errorf("kill: %v", err)
			}
			var nics int
			for _, r := range checkRequestLog(t, env.requestLog) {
				if r["path"] == "/network-interfaces/eth0" {
					nics++
				}
			}
			if nics != 2 {
				t.Errorf("PUT /network-interfaces/eth0 requests: got %d, want 2 (one per boot)", nics)
			}
		})
	}
}

// newProcessesSince waits up to 10 s for the processes that list returns
// and that were not in before to exit, and returns those still alive.
// Processes alive before belong to earlier tests, and a double's agent
// dies on its parent-death signal only after the double is reaped.
func newProcessesSince(before []int, list func() []int) []int {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var pids []int
		for _, pid := range list() {
			if !slices.Contains(before, pid) {
				pids = append(pids, pid)
			}
		}
		if len(pids) == 0 || time.Now().After(deadline) {
			return pids
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testDoubleProcesses lists live processes started from this test's
// binaries: the doubles (whose command lines name the agent) and the
// agent itself.
func testDoubleProcesses() []int {
	pids := agentProcesses()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), tools.agent) && !processGone(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func TestJailedTAPMustExist(t *testing.T) {
	requireDoubles(t)
	tests := []struct {
		name    string
		create  bool
		owner   *network.TAPUser
		wantErr string
	}{
		{"missing", false, nil, "no such device"},
		{"owned by another uid", true, &network.TAPUser{UID: 1000, GID: 1000}, "not the jailed uid"},
		{"owned by the jailed uid", true, &network.TAPUser{UID: 65534, GID: 65534}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t)
			ns := newNetNS(t)
			const tap = "hthjail0"
			if tc.create {
				createTAP(t, tap, ns, tc.owner)
			}
			d := newDriver(t, jailerConfig(env, t.TempDir(), ns))
			spec := env.spec(t, "tap-1")
			spec.TAP = tap
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			vm, err := d.Boot(ctx, spec)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("boot: %v", err)
				}
				vm.Kill()
				return
			}
			if err == nil {
				vm.Kill()
				t.Fatalf("boot: got nil error, want %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("boot error %q: want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestStaleChroot(t *testing.T) {
	requireDoubles(t)
	sleepBin, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("needs sleep to stand in for a live firecracker")
	}
	tests := []struct {
		name    string
		live    bool
		wantErr string
	}{
		{"dead process", false, ""},
		{"live process without socket", true, "live firecracker process"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t)
			base := t.TempDir()
			const id = "stale-jail-1"
			root := filepath.Join(base, "firecracker", id, "root")
			// A chroot left behind: the jailer's device nodes and pid
			// file, and a socket file with no listener.
			for _, d := range []string{"dev/net", "run"} {
				if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(root, "dev/net/tun"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(root, "run/api.sock"), Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			ln.SetUnlinkOnClose(false)
			ln.Close()

			exe := filepath.Join(root, "firecracker")
			copyExecutable(t, sleepBin, exe)
			pid := deadPID(t)
			if tc.live {
				cmd := exec.Command(exe, "100")
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
				pid = cmd.Process.Pid
			}
			if err := os.WriteFile(exe+".pid", []byte(strconv.Itoa(pid)), 0o644); err != nil {
				t.Fatal(err)
			}

			d := newDriver(t, jailerConfig(env, base, ""))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			vm, err := d.Boot(ctx, env.spec(t, id))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("boot over a stale chroot: %v", err)
				}
				exerciseMachine(t, vm.(*firecracker.Machine))
				vm.Kill()
				return
			}
			if err == nil {
				vm.Kill()
				t.Fatalf("boot: got nil error, want %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("boot error %q: want it to contain %q", err, tc.wantErr)
			}
			if _, err := os.Stat(exe); err != nil {
				t.Errorf("chroot of the live process: got %v, want it left in place", err)
			}
		})
	}
}

func copyExecutable(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// deadPID returns the PID of a process that has exited and been reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

func TestSocketPathLimit(t *testing.T) {
	requireDoubles(t)
	env := newEnv(t)
	tests := []struct {
		name    string
		jailed  bool
		symlink bool
		length  int
		wantErr bool
	}{
		{"direct 108 bytes", false, false, 108, true},
		{"direct 107 bytes", false, false, 107, false},
		// The jailer resolves its base directory, so the resolved path
		// counts, not the configured one.
		{"jailed symlinked base 108 bytes", true, true, 108, true},
		{"jailed symlinked base 107 bytes", true, true, 107, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			const id = "plimit-1"
			top := shortTempDir(t)
			var suffix int
			if tc.jailed {
				suffix = len("/firecracker/" + id + "/root/run/v.sock_54")
			} else {
				suffix = len("/v.sock_54")
			}
			pad := tc.length - suffix - len(top) - 1
			if pad < 1 {
				t.Skipf("temporary directory %s is too long for this test", top)
			}
			long := filepath.Join(top, strings.Repeat("p", pad))
			if err := os.Mkdir(long, 0o755); err != nil {
				t.Fatal(err)
			}
			spec := env.spec(t, id)
			cfg := env.config("1.16.1")
			longest := filepath.Join(long, "v.sock_54")
			if tc.jailed {
				link := filepath.Join(shortTempDir(t), "b")
				if err := os.Symlink(long, link); err != nil {
					t.Fatal(err)
				}
				cfg = jailerConfig(env, link, "")
				longest = filepath.Join(long, "firecracker", id, "root", "run", "v.sock_54")
			} else {
				spec.Dir = long
			}
			if len(longest) != tc.length {
				t.Fatalf("test setup: path is %d bytes, want %d", len(longest), tc.length)
			}

			vm, err := newDriver(t, cfg).Boot(context.Background(), spec)
			if !tc.wantErr {
				if err != nil {
					t.Fatalf("boot: %v", err)
				}
				vm.Kill()
				return
			}
			if err == nil {
				vm.Kill()
				t.Fatal("boot: got nil error, want a sun_path error")
			}
			for _, want := range []string{"107", longest} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q: want it to name %q", err, want)
				}
			}
			if _, err := os.Stat(filepath.Join(spec.Dir, "console.log")); err == nil {
				t.Errorf("console.log exists: want nothing spawned")
			}
		})
	}
}

// shortTempDir returns a temporary directory whose path, unlike
// t.TempDir's, does not contain the test's name, so tests can pad socket
// paths up to the limit.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fcp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
