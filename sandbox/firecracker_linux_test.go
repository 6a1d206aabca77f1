package sandbox_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/network"
	"github.com/hearthvm/hearth/sandbox"
	"github.com/hearthvm/hearth/vmm/firecracker"
)

// fcTools are the Firecracker and jailer doubles and the agent, built for
// one test.
type fcTools struct {
	firecracker, jailer, agent string
	// kernel, initrd and rootfs are stand-in boot assets: the double
	// checks that they exist and are readable, and boots nothing.
	kernel, initrd, rootfs string
}

// buildFCTools skips unless the test runs as root with busybox, then
// builds the doubles and the agent into a temporary directory.
func buildFCTools(t *testing.T) fcTools {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the firecracker double runs the agent in new mount, PID and network namespaces; run as root")
	}
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("needs busybox for the double's guest commands: apt-get install busybox-static")
	}
	dir := t.TempDir()
	// The jailed uid reads the kernel and initrd through this directory.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tools := fcTools{
		firecracker: filepath.Join(dir, "firecracker"),
		jailer:      filepath.Join(dir, "jailer"),
		agent:       filepath.Join(dir, "hearth-agent"),
		kernel:      filepath.Join(dir, "vmlinux"),
		initrd:      filepath.Join(dir, "initramfs.cpio"),
		rootfs:      filepath.Join(dir, "rootfs.ext4"),
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for bin, pkg := range map[string]string{
		tools.firecracker: "./internal/fcdouble/cmd/fake-firecracker",
		tools.jailer:      "./internal/fcdouble/cmd/fake-jailer",
		tools.agent:       "./cmd/hearth-agent",
	} {
		cmd := exec.Command("go", "build", "-o", bin, pkg)
		cmd.Dir = filepath.Dir(wd)
		// Static binaries, because the agent runs in a root that has no
		// C library.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	for _, p := range []string{tools.kernel, tools.initrd} {
		if err := os.WriteFile(p, []byte("not a kernel"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(tools.rootfs, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	return tools
}

// fcSetup describes one manager under test.
type fcSetup struct {
	jailed bool
	// netns, when set, is the jail's network namespace; the manager then
	// gets a network pool and creates TAPs there.
	netns string
	// doubleArgs are extra flags for the Firecracker double.
	doubleArgs []string
}

// fcManager is a manager on the Firecracker driver with what the test
// inspects.
type fcManager struct {
	*sandbox.Manager
	tools      fcTools
	chrootBase string
	log        *syncBuffer
	leases     string
}

func newFCManager(t *testing.T, tools fcTools, setup fcSetup) *fcManager {
	t.Helper()
	cfg := firecracker.Config{
		Binary:    tools.firecracker,
		NoSeccomp: true,
		ExtraArgs: append([]string{"--agent", tools.agent}, setup.doubleArgs...),
	}
	fm := &fcManager{tools: tools, log: &syncBuffer{}}
	if setup.jailed {
		fm.chrootBase = t.TempDir()
		cfg.Jailer = &firecracker.JailerConfig{Binary: tools.jailer, UID: 65534, GID: 65534,
			ChrootBaseDir: fm.chrootBase, NetNS: setup.netns}
	}
	logger := slog.New(slog.NewTextHandler(fm.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	driver, err := firecracker.New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}

	dataDir := t.TempDir()
	mcfg := sandbox.Config{
		DataDir:      dataDir,
		Driver:       driver,
		Defaults:     sandbox.Defaults{Kernel: tools.kernel, Initrd: tools.initrd, RootFS: tools.rootfs},
		ReadyTimeout: 20 * time.Second,
		Logger:       logger,
	}
	if setup.netns != "" {
		pool, err := network.NewPool(network.Config{DataDir: dataDir})
		if err != nil {
			t.Fatal(err)
		}
		alloc, err := network.NewAllocator(pool, network.AllocatorConfig{Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		mcfg.Network = alloc
		fm.leases = filepath.Join(dataDir, "network", "leases.json")
	}
	m, err := sandbox.New(mcfg)
	if err != nil {
		t.Fatal(err)
	}
	fm.Manager = m
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := m.Close(ctx); err != nil {
			t.Errorf("close manager: %v", err)
		}
		if t.Failed() {
			t.Logf("manager log:\n%s", fm.log.String())
		}
	})
	return fm
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newTestNetNS creates a network namespace for the test, with only a
// loopback device and no route out, and deletes it in cleanup.
func newTestNetNS(t *testing.T) (name, path string) {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip to create a network namespace: apt-get install iproute2")
	}
	var b [4]byte
	rand.Read(b[:])
	name = "hearth-sbt-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	return name, "/var/run/netns/" + name
}

// expectEvents reads events until it has seen len(want), and checks their
// actions in order.
func expectEvents(t *testing.T, sub *sandbox.Subscription, want ...string) []sandbox.Event {
	t.Helper()
	var got []sandbox.Event
	timeout := time.After(30 * time.Second)
	for len(got) < len(want) {
		select {
		case ev, ok := <-sub.C():
			if !ok {
				t.Fatalf("subscription ended (%v) after %v, want %v", sub.Err(), actions(got), want)
			}
			got = append(got, ev)
		case <-timeout:
			t.Fatalf("events: got %v within 30s, want %v", actions(got), want)
		}
	}
	if fmt.Sprint(actions(got)) != fmt.Sprint(want) {
		t.Fatalf("events: got %v, want %v", actions(got), want)
	}
	return got
}

func actions(evs []sandbox.Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.Action)
	}
	return out
}

// doubleProcesses lists live processes of this test's doubles and agent:
// every process whose command line names the agent binary (the doubles
// and their guest helper), and every process running it.
func (fm *fcManager) doubleProcesses() []int {
	var pids []int
	agent, _ := os.Stat(fm.tools.agent)
	for _, pid := range allPIDs() {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		exe, err := os.Stat(fmt.Sprintf("/proc/%d/exe", pid))
		if strings.Contains(string(cmdline), fm.tools.agent) || (err == nil && agent != nil && os.SameFile(exe, agent)) {
			if !zombie(pid) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// doubleProcessesAfterExit waits up to 10 s for the doubles and agents
// to be gone and returns those still alive. A double's agent dies on its
// parent-death signal, which the kernel delivers after the double has
// already been reaped, so an immediate check would race it.
func (fm *fcManager) doubleProcessesAfterExit() []int {
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := fm.doubleProcesses()
		if len(pids) == 0 || time.Now().After(deadline) {
			return pids
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// workloads lists live processes started by this test's agent whose
// command line is argv.
func (fm *fcManager) workloads(argv ...string) []int {
	agent, err := os.Stat(fm.tools.agent)
	if err != nil {
		return nil
	}
	want := strings.Join(argv, "\x00") + "\x00"
	var pids []int
	for _, pid := range allPIDs() {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if string(cmdline) != want || zombie(pid) {
			continue
		}
		parent, err := os.Stat(fmt.Sprintf("/proc/%d/exe", parentPID(pid)))
		if err == nil && os.SameFile(parent, agent) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func allPIDs() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// procStat returns the fields of /proc/PID/stat after the command name.
func procStat(pid int) []string {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(raw[i+1:]))
}

func parentPID(pid int) int {
	f := procStat(pid)
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// zombie reports whether pid is gone or has exited without being reaped.
func zombie(pid int) bool {
	f := procStat(pid)
	return len(f) == 0 || f[0] == "Z" || f[0] == "X"
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func execEcho(t *testing.T, m *fcManager, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code, err := m.Exec(ctx, id, agentproto.StartRequest{Cmd: []string{"echo", "hi"}},
		agentclient.ExecIO{Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		t.Fatalf("exec echo hi: %v (stderr %q)", err, stderr.String())
	}
	if got := stdout.String(); got != "hi\n" {
		t.Errorf("echo hi stdout: got %q, want %q", got, "hi\n")
	}
	if code != 0 {
		t.Errorf("echo hi exit code: got %d, want 0", code)
	}
}

// sandboxFiles are the host paths a sandbox's machine uses.
func (fm *fcManager) sandboxFiles(info sandbox.Info) []string {
	if fm.chrootBase == "" {
		return []string{filepath.Join(info.Dir, "api.sock"), filepath.Join(info.Dir, "v.sock"), info.Dir}
	}
	jail := filepath.Join(fm.chrootBase, "firecracker", info.ID)
	return []string{filepath.Join(jail, "root", "run", "api.sock"), filepath.Join(jail, "root", "run", "v.sock"),
		jail, info.Dir}
}

func TestFirecrackerManager(t *testing.T) {
	tools := buildFCTools(t)
	tests := []struct {
		name   string
		jailed bool
	}{
		{"direct", false},
		{"jailer", true},
	}
	for _, tc := range tests {
		t.Run(tc.name+" lifecycle", func(t *testing.T) {
			testLifecycle(t, tools, fcSetup{jailed: tc.jailed})
		})
		t.Run(tc.name+" ttl", func(t *testing.T) {
			testTTL(t, tools, fcSetup{jailed: tc.jailed})
		})
	}
	t.Run("jailer tap in netns", func(t *testing.T) {
		testTAPInNetNS(t, tools)
	})
	t.Run("stop falls back to kill", func(t *testing.T) {
		testStopFallsBackToKill(t, tools)
	})
}

// guestBootDelay is how long the double waits before it starts the agent,
// so that a ready event sent before the agent replied would show.
const guestBootDelay = 500 * time.Millisecond

func testLifecycle(t *testing.T, tools fcTools, setup fcSetup) {
	setup.doubleArgs = append(setup.doubleArgs, "--guest-boot-delay", guestBootDelay.String())
	m := newFCManager(t, tools, setup)
	const id = "fc-life-1"
	sub := m.Subscribe(sandbox.EventFilter{SandboxID: id}, 0)
	defer sub.Close()
	ctx := context.Background()

	info, err := m.Create(ctx, sandbox.CreateOptions{ID: id, Network: sandbox.NetworkNone})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if info.State != sandbox.StateStarting {
		t.Errorf("state after create: got %s, want %s", info.State, sandbox.StateStarting)
	}
	evs := expectEvents(t, sub, sandbox.ActionCreated, sandbox.ActionReady)
	if took := evs[1].Time.Sub(evs[0].Time); took < guestBootDelay {
		t.Errorf("ready %s after created: want at least the agent's start delay %s", took, guestBootDelay)
	}
	info, err = m.Inspect(id)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != sandbox.StateReady {
		t.Fatalf("state after ready event: got %s, want %s (error %q)", info.State, sandbox.StateReady, info.Error)
	}
	if len(m.doubleProcesses()) == 0 {
		t.Fatalf("processes of the double: got none, want the running machine")
	}

	t.Run("exec", func(t *testing.T) {
		execEcho(t, m, id)
		evs := expectEvents(t, sub, sandbox.ActionRunning, sandbox.ActionIdle)
		if got := evs[1].Attributes["exit_code"]; got != "0" {
			t.Errorf("idle exit_code: got %q, want %q", got, "0")
		}
		info, _ := m.Inspect(id)
		if info.LastExitedAt.IsZero() {
			t.Errorf("LastExitedAt: got zero, want the time echo exited")
		}
		if info.LastExitCode != 0 {
			t.Errorf("LastExitCode: got %d, want 0", info.LastExitCode)
		}
		if info.State != sandbox.StateReady {
			t.Errorf("state after exec: got %s, want %s", info.State, sandbox.StateReady)
		}
	})

	t.Run("exit code", func(t *testing.T) {
		code, err := m.Exec(ctx, id, agentproto.StartRequest{Cmd: []string{"sh", "-c", "exit 7"}}, agentclient.ExecIO{})
		if err != nil {
			t.Fatal(err)
		}
		if code != 7 {
			t.Errorf("exit code: got %d, want 7", code)
		}
		evs := expectEvents(t, sub, sandbox.ActionRunning, sandbox.ActionIdle)
		if got := evs[1].Attributes["exit_code"]; got != "7" {
			t.Errorf("idle exit_code: got %q, want %q", got, "7")
		}
		info, _ := m.Inspect(id)
		if info.LastExitCode != 7 {
			t.Errorf("LastExitCode: got %d, want 7", info.LastExitCode)
		}
	})

	t.Run("three at once", func(t *testing.T) {
		var wg sync.WaitGroup
		outputs := make([]bytes.Buffer, 3)
		codes := make([]int32, 3)
		errs := make([]error, 3)
		for i := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req := agentproto.StartRequest{Cmd: []string{"sh", "-c", fmt.Sprintf("sleep 0.3; echo %d", i)}}
				codes[i], errs[i] = m.Exec(ctx, id, req, agentclient.ExecIO{Stdout: &outputs[i]})
			}()
		}
		wg.Wait()
		for i := range 3 {
			if errs[i] != nil {
				t.Errorf("exec %d: %v", i, errs[i])
				continue
			}
			if got, want := outputs[i].String(), fmt.Sprintf("%d\n", i); got != want {
				t.Errorf("exec %d stdout: got %q, want %q", i, got, want)
			}
			if codes[i] != 0 {
				t.Errorf("exec %d exit code: got %d, want 0", i, codes[i])
			}
		}
		var idle int
		for _, ev := range expectEvents(t, sub, sandbox.ActionRunning, sandbox.ActionIdle, sandbox.ActionIdle, sandbox.ActionIdle)[1:] {
			if ev.Attributes["exit_code"] == "0" {
				idle++
			}
		}
		if idle != 3 {
			t.Errorf("idle events with exit_code 0: got %d, want 3", idle)
		}
		if info, _ := m.Inspect(id); info.State != sandbox.StateReady || info.Workloads != 0 {
			t.Errorf("after three execs: got state %s with %d workloads, want ready with 0", info.State, info.Workloads)
		}
	})

	t.Run("client cancels", func(t *testing.T) {
		execCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		result := make(chan error, 1)
		go func() {
			_, err := m.Exec(execCtx, id, agentproto.StartRequest{Cmd: []string{"sleep", "100"}}, agentclient.ExecIO{})
			result <- err
		}()
		expectEvents(t, sub, sandbox.ActionRunning)
		if !waitFor(10*time.Second, func() bool { return len(m.workloads("sleep", "100")) == 1 }) {
			t.Fatalf("sleep 100 processes: got %v, want one running in the guest", m.workloads("sleep", "100"))
		}
		cancel()
		if !waitFor(time.Second, func() bool { return len(m.workloads("sleep", "100")) == 0 }) {
			t.Errorf("sleep 100 one second after the client cancelled: got %v, want gone", m.workloads("sleep", "100"))
		}
		select {
		case err := <-result:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("exec error: got %v, want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("exec did not return after its context was cancelled")
		}
		evs := expectEvents(t, sub, sandbox.ActionIdle)
		if got := evs[0].Attributes["exit_code"]; got != "-1" {
			t.Errorf("idle exit_code after cancel: got %q, want %q", got, "-1")
		}
		if info, _ := m.Inspect(id); info.State != sandbox.StateReady {
			t.Errorf("state after the cancelled exec: got %s, want %s", info.State, sandbox.StateReady)
		}
	})

	t.Run("stop", func(t *testing.T) {
		if err := m.Stop(ctx, id, 10*time.Second); err != nil {
			t.Fatalf("stop: %v", err)
		}
		expectEvents(t, sub, sandbox.ActionStopping, sandbox.ActionStopped)
		logs := m.log.String()
		if !strings.Contains(logs, "guest shut down") {
			t.Errorf("manager log: got no %q, want the VM to exit after the agent's SHUTDOWN", "guest shut down")
		}
		if strings.Contains(logs, "graceful shutdown failed") {
			t.Errorf("manager log: got %q, want a graceful shutdown", "graceful shutdown failed")
		}
		if info, _ := m.Inspect(id); info.State != sandbox.StateStopped {
			t.Errorf("state after stop: got %s, want %s", info.State, sandbox.StateStopped)
		}
		if pids := m.doubleProcessesAfterExit(); len(pids) > 0 {
			t.Errorf("processes after stop: got %v, want none", pids)
		}
	})

	t.Run("remove", func(t *testing.T) {
		info, _ := m.Inspect(id)
		if err := m.Remove(ctx, id, false); err != nil {
			t.Fatalf("remove: %v", err)
		}
		expectEvents(t, sub, sandbox.ActionRemoved)
		if _, err := m.Inspect(id); !errors.Is(err, sandbox.ErrNotFound) {
			t.Errorf("inspect after remove: got %v, want ErrNotFound", err)
		}
		m.assertNothingLeft(t, info)
	})
}

// assertNothingLeft checks that no process, socket, chroot or directory
// of the sandbox remains.
func (fm *fcManager) assertNothingLeft(t *testing.T, info sandbox.Info) {
	t.Helper()
	if pids := fm.doubleProcessesAfterExit(); len(pids) > 0 {
		t.Errorf("processes: got %v, want none", pids)
	}
	for _, p := range fm.sandboxFiles(info) {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: got present (err %v), want removed", p, err)
		}
	}
}

func testTTL(t *testing.T, tools fcTools, setup fcSetup) {
	m := newFCManager(t, tools, setup)
	const id = "fc-ttl-1"
	sub := m.Subscribe(sandbox.EventFilter{SandboxID: id}, 0)
	defer sub.Close()

	info, err := m.Create(context.Background(), sandbox.CreateOptions{ID: id, Network: sandbox.NetworkNone, TTL: 2 * time.Second})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if want := info.CreatedAt.Add(2 * time.Second); !info.ExpiresAt.Equal(want) {
		t.Errorf("ExpiresAt: got %s, want %s", info.ExpiresAt, want)
	}
	evs := expectEvents(t, sub, sandbox.ActionCreated, sandbox.ActionReady, sandbox.ActionRemoved)
	if took := evs[2].Time.Sub(info.CreatedAt); took < 2*time.Second {
		t.Errorf("removed %s after creation: want no earlier than the 2s TTL", took)
	}
	// The manager sends the removed event just before it deletes the ID
	// from its table.
	notFound := func() bool { _, err := m.Inspect(id); return errors.Is(err, sandbox.ErrNotFound) }
	if !waitFor(5*time.Second, notFound) {
		_, err := m.Inspect(id)
		t.Errorf("inspect after the TTL: got %v, want ErrNotFound", err)
	}
	m.assertNothingLeft(t, info)
}

// tapInNetNS reports whether the TAP exists in the named namespace.
func tapInNetNS(nsName, tap string) bool {
	return exec.Command("ip", "-n", nsName, "link", "show", "dev", tap).Run() == nil
}

func testTAPInNetNS(t *testing.T, tools fcTools) {
	nsName, nsPath := newTestNetNS(t)
	m := newFCManager(t, tools, fcSetup{jailed: true, netns: nsPath})
	const id = "fc-tap-1"
	ctx := context.Background()
	if _, err := m.Create(ctx, sandbox.CreateOptions{ID: id, Network: sandbox.NetworkTAP}); err != nil {
		t.Fatalf("create: %v", err)
	}
	sb, err := m.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	readyCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := sb.WaitReady(readyCtx); err != nil {
		t.Fatalf("wait ready: %v", err)
	}
	info := sb.Info()
	tap := info.Network.TAP
	if tap == "" {
		t.Fatalf("network: got no TAP, want one in mode tap")
	}

	if !tapInNetNS(nsName, tap) {
		t.Errorf("TAP %s in namespace %s: got missing, want present while the sandbox lives", tap, nsName)
	}
	if _, err := net.InterfaceByName(tap); err == nil {
		t.Errorf("TAP %s in the manager's namespace: got present, want only in %s", tap, nsName)
	}
	// ip prints the owner's name when the uid has one.
	owner := "65534"
	if u, err := user.LookupId(owner); err == nil {
		owner = u.Username
	}
	out, err := exec.Command("ip", "-n", nsName, "-d", "link", "show", "dev", tap).CombinedOutput()
	if err != nil {
		t.Errorf("ip -d link show %s: %v\n%s", tap, err, out)
	} else if !strings.Contains(string(out), "user "+owner+" ") {
		t.Errorf("TAP %s details %q: want it owned by the jailed user %s (uid 65534)", tap, out, owner)
	}
	execEcho(t, m, id)

	if err := m.Remove(ctx, id, false); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if tapInNetNS(nsName, tap) {
		t.Errorf("TAP %s in namespace %s after remove: got present, want deleted", tap, nsName)
	}
	m.assertNothingLeft(t, info)
	assertNoLease(t, m, id)
}

// assertNoLease checks that the pool holds no lease for the sandbox.
func assertNoLease(t *testing.T, m *fcManager, id string) {
	t.Helper()
	raw, err := os.ReadFile(m.leases)
	if err != nil {
		t.Fatalf("read leases: %v", err)
	}
	if bytes.Contains(raw, []byte(strconv.Quote(id))) {
		t.Errorf("leases %s: got an entry for %s, want it released", raw, id)
	}
}

// testStopFallsBackToKill stops a sandbox whose agent acknowledges
// SHUTDOWN but whose VM then keeps running, as a guest whose reboot
// hangs: the manager must kill the VM after the timeout and still release
// the TAP and the address.
func testStopFallsBackToKill(t *testing.T, tools fcTools) {
	nsName, nsPath := newTestNetNS(t)
	m := newFCManager(t, tools, fcSetup{jailed: true, netns: nsPath,
		doubleArgs: []string{"--hang-on-reboot", "--ignore-ctrl-alt-del"}})
	const id = "fc-hang-1"
	sub := m.Subscribe(sandbox.EventFilter{SandboxID: id}, 0)
	defer sub.Close()
	ctx := context.Background()
	if _, err := m.Create(ctx, sandbox.CreateOptions{ID: id, Network: sandbox.NetworkTAP}); err != nil {
		t.Fatalf("create: %v", err)
	}
	expectEvents(t, sub, sandbox.ActionCreated, sandbox.ActionReady)
	info, _ := m.Inspect(id)
	if !tapInNetNS(nsName, info.Network.TAP) {
		t.Fatalf("TAP %s in namespace %s: got missing, want present", info.Network.TAP, nsName)
	}
	pids := m.doubleProcesses()

	if err := m.Stop(ctx, id, time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	expectEvents(t, sub, sandbox.ActionStopping, sandbox.ActionStopped)
	if logs := m.log.String(); !strings.Contains(logs, "the VM did not exit after shutdown; killing it") {
		t.Errorf("manager log: want the timeout reported before the kill, got:\n%s", logs)
	}
	for _, pid := range pids {
		if !zombie(pid) {
			t.Errorf("process %d of the hung machine: got running after stop, want killed", pid)
		}
	}
	if tapInNetNS(nsName, info.Network.TAP) {
		t.Errorf("TAP %s after stop: got present, want deleted", info.Network.TAP)
	}
	assertNoLease(t, m, id)

	if err := m.Remove(ctx, id, false); err != nil {
		t.Fatalf("remove: %v", err)
	}
	m.assertNothingLeft(t, info)
}
