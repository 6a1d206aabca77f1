package firecracker_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/internal/fcdouble/swagger"
	"github.com/hearthvm/hearth/vmm"
	"github.com/hearthvm/hearth/vmm/firecracker"
)

// tools are the binaries the driver tests run, built once by TestMain.
var tools struct {
	dir, firecracker, jailer, agent string
	err                             error
}

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "fcdriver-tools-")
		if err != nil {
			tools.err = err
			return m.Run()
		}
		defer os.RemoveAll(dir)
		tools.dir = dir
		tools.firecracker = filepath.Join(dir, "firecracker")
		tools.jailer = filepath.Join(dir, "jailer")
		tools.agent = filepath.Join(dir, "hearth-agent")
		for bin, pkg := range map[string]string{
			tools.firecracker: "./internal/fcdouble/cmd/fake-firecracker",
			tools.jailer:      "./internal/fcdouble/cmd/fake-jailer",
			tools.agent:       "./cmd/hearth-agent",
		} {
			cmd := exec.Command("go", "build", "-o", bin, pkg)
			cmd.Dir = repoRoot()
			// Static binaries, because the agent runs in a root that has
			// no C library.
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				tools.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				break
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Join(wd, "..", "..")
}

// requireDoubles skips unless the test runs as root (the double needs
// namespaces) and the doubles and the agent built.
func requireDoubles(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the firecracker double runs the agent in new mount, PID and network namespaces; run as root")
	}
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("needs busybox for the double's guest commands: apt-get install busybox-static")
	}
	if tools.err != nil {
		t.Skipf("test binaries did not build: %v", tools.err)
	}
}

type testEnv struct {
	kernel, initrd, image string
	requestLog            string
}

func newEnv(t *testing.T) testEnv {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	e := testEnv{kernel: filepath.Join(dir, "vmlinux"), initrd: filepath.Join(dir, "initrd.cpio"),
		image: filepath.Join(dir, "rootfs.ext4"), requestLog: filepath.Join(dir, "requests.jsonl")}
	for _, p := range []string{e.kernel, e.initrd} {
		if err := os.WriteFile(p, []byte("not a kernel"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Create(e.image)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("ext4 superblock stand-in"), 1024)
	f.Truncate(16 << 20)
	f.Close()
	return e
}

func (e testEnv) spec(t *testing.T, id string) vmm.Spec {
	dir := t.TempDir()
	return vmm.Spec{ID: id, Dir: dir, VCPUs: 1, MemoryMiB: 64, Kernel: e.kernel, Initrd: e.initrd,
		RootImage: e.image, AgentArgs: []string{"hearth.hostname=" + id}}
}

func (e testEnv) config(version string, extra ...string) firecracker.Config {
	return firecracker.Config{
		Binary:    tools.firecracker,
		NoSeccomp: true,
		ExtraArgs: append([]string{"--claim-version", version, "--agent", tools.agent, "--request-log", e.requestLog}, extra...),
	}
}

func newDriver(t *testing.T, cfg firecracker.Config) *firecracker.Driver {
	t.Helper()
	d, err := firecracker.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func boot(t *testing.T, d *firecracker.Driver, spec vmm.Spec) *firecracker.Machine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	before := agentProcesses()
	vm, err := d.Boot(ctx, spec)
	if err != nil {
		t.Fatalf("boot: %v", err)
	}
	m := vm.(*firecracker.Machine)
	agentsBefore.Store(m, before)
	t.Cleanup(func() { m.Kill() })
	return m
}

// agentsBefore maps each booted machine to the agent processes that were
// alive before it booted. The package's tests share one agent binary, so
// a machine's cleanup check ignores agents that an earlier test left
// still exiting on a loaded host.
var agentsBefore sync.Map

// agentsOf returns the live agent processes that were not alive before m
// booted.
func agentsOf(m *firecracker.Machine) []int {
	var before []int
	if v, ok := agentsBefore.Load(m); ok {
		before = v.([]int)
	}
	var pids []int
	for _, pid := range agentProcesses() {
		if !slices.Contains(before, pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ping sends PING on the control port and expects ACK.
func ping(ctx context.Context, m *firecracker.Machine) error {
	c, err := m.DialAgent(ctx, agentproto.PortControl)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := agentproto.WriteFrame(c, agentproto.TypePing, nil); err != nil {
		return err
	}
	f, err := agentproto.ReadFrame(c)
	if err != nil {
		return err
	}
	if f.Type != agentproto.TypeAck {
		return fmt.Errorf("got frame %s, want ACK", f.Type)
	}
	return nil
}

// execEcho runs `echo hi` on the exec port and returns stdout and the
// exit code.
func execEcho(t *testing.T, m *firecracker.Machine) (string, int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := m.DialAgent(ctx, agentproto.PortExec)
	if err != nil {
		t.Fatalf("dial exec port: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req, _ := json.Marshal(agentproto.StartRequest{Cmd: []string{"echo", "hi"}})
	if err := agentproto.WriteFrame(c, agentproto.TypeStart, req); err != nil {
		t.Fatal(err)
	}
	agentproto.WriteFrame(c, agentproto.TypeEOF, nil)
	var stdout strings.Builder
	// One reader for the whole stream: a new bufio.Reader per frame
	// would drop the bytes the previous one buffered.
	r := bufio.NewReader(c)
	for {
		f, err := agentproto.ReadFrame(r)
		if err != nil {
			t.Fatalf("read exec frame: %v (stdout so far %q)", err, stdout.String())
		}
		switch f.Type {
		case agentproto.TypeStdout:
			stdout.Write(f.Payload)
		case agentproto.TypeExit:
			code, err := agentproto.DecodeExit(f.Payload)
			if err != nil {
				t.Fatal(err)
			}
			return stdout.String(), code
		case agentproto.TypeStderr:
		default:
			t.Fatalf("unexpected frame %s %q", f.Type, f.Payload)
		}
	}
}

// agentProcesses lists live processes running the test's agent binary.
func agentProcesses() []int {
	return processesOf(tools.agent)
}

func processesOf(bin string) []int {
	want, err := os.Stat(bin)
	if err != nil {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		got, err := os.Stat(filepath.Join("/proc", e.Name(), "exe"))
		if err == nil && os.SameFile(got, want) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func processGone(pid int) bool {
	err := syscall.Kill(pid, 0)
	if errors.Is(err, syscall.ESRCH) {
		return true
	}
	// A zombie still passes kill(0), but its exe link is gone.
	_, err = os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err != nil
}

// checkRequestLog validates every request the driver sent against the
// Firecracker specification, when it is available.
func checkRequestLog(t *testing.T, path string) []map[string]any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read request log: %v", err)
	}
	specPath, specErr := swagger.Find(".")
	var spec *swagger.Spec
	if specErr == nil {
		if spec, err = swagger.Load(specPath); err != nil {
			t.Fatal(err)
		}
	}
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var r struct {
			Method string          `json:"method"`
			Path   string          `json:"path"`
			Body   json.RawMessage `json:"body"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("request log line %q: %v", line, err)
		}
		if spec != nil {
			for _, p := range spec.ValidateRequest(r.Method, r.Path, r.Body) {
				t.Errorf("driver request against the spec: %s", p)
			}
		}
		var body map[string]any
		json.Unmarshal(r.Body, &body)
		recs = append(recs, map[string]any{"method": r.Method, "path": r.Path, "body": body})
	}
	return recs
}

func assertCleanedUp(t *testing.T, m *firecracker.Machine, paths ...string) {
	t.Helper()
	if !processGone(m.PID()) {
		t.Errorf("firecracker %d: got still running, want gone", m.PID())
	}
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: got present (err %v), want removed", p, err)
		}
	}
	// The agent dies on its parent-death signal after the double is
	// reaped, and later on a loaded host, so the check waits for it.
	deadline := time.Now().Add(10 * time.Second)
	for len(agentsOf(m)) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if pids := agentsOf(m); len(pids) > 0 {
		t.Errorf("agent processes: got %v, want none", pids)
	}
}

func exerciseMachine(t *testing.T, m *firecracker.Machine) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ping(ctx, m); err != nil {
		t.Fatalf("ping: %v", err)
	}
	out, code := execEcho(t, m)
	if out != "hi\n" {
		t.Errorf("echo stdout: got %q, want %q", out, "hi\n")
	}
	if code != 0 {
		t.Errorf("echo exit code: got %d, want 0", code)
	}

	if err := m.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	err := ping(short, m)
	cancelShort()
	if err == nil {
		t.Errorf("ping while paused: got nil error, want the connection dropped")
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if err := ping(ctx, m); err != nil {
		t.Fatalf("ping after resume: %v", err)
	}
	// The spare exec stream dialled before the pause is gone; the first
	// exec dials anew and the second takes the spare dialled after it.
	for i := range 2 {
		if out, code := execEcho(t, m); out != "hi\n" || code != 0 {
			t.Errorf("echo %d after resume: got %q and exit code %d, want %q and 0", i+1, out, code, "hi\n")
		}
	}
}

func TestBootDirect(t *testing.T) {
	requireDoubles(t)
	env := newEnv(t)
	d := newDriver(t, env.config("1.16.1"))
	spec := env.spec(t, "direct-1")
	m := boot(t, d, spec)

	exerciseMachine(t, m)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Shutdown(ctx, 5*time.Second); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if err := m.Wait(ctx); err != nil {
		t.Errorf("wait after shutdown: got %v, want nil (exit 0)", err)
	}
	if err := m.Kill(); err != nil {
		t.Errorf("kill after shutdown: got %v, want nil", err)
	}
	assertCleanedUp(t, m, filepath.Join(spec.Dir, "api.sock"), filepath.Join(spec.Dir, "v.sock"))

	recs := checkRequestLog(t, env.requestLog)
	var bootArgs string
	for _, r := range recs {
		if r["path"] == "/boot-source" {
			bootArgs, _ = r["body"].(map[string]any)["boot_args"].(string)
		}
	}
	want := "console=ttyS0 reboot=k panic=1 pci=off hearth.hostname=direct-1 hearth.transport=vsock hearth.modules=virtio_mmio,virtio_blk,virtio_net,vsock,vmw_vsock_virtio_transport_common,vmw_vsock_virtio_transport"
	if bootArgs != want {
		t.Errorf("boot_args: got %q, want %q", bootArgs, want)
	}
}

func TestBootJailer(t *testing.T) {
	requireDoubles(t)
	tests := []struct {
		name     string
		newPIDNS bool
	}{
		{"exec in place", false},
		{"new pid namespace", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t)
			cfg := env.config("1.16.1")
			base := t.TempDir()
			cfg.Jailer = &firecracker.JailerConfig{Binary: tools.jailer, UID: 65534, GID: 65534,
				ChrootBaseDir: base, NewPIDNS: tc.newPIDNS}
			d := newDriver(t, cfg)
			spec := env.spec(t, "jailed-1")
			m := boot(t, d, spec)
			jailDir := filepath.Join(base, "firecracker", spec.ID)
			root := filepath.Join(jailDir, "root")

			disk, err := os.Stat(filepath.Join(root, "rootfs.ext4"))
			if err != nil {
				t.Fatalf("disk in chroot: %v", err)
			}
			if st := disk.Sys().(*syscall.Stat_t); st.Uid != 65534 || st.Gid != 65534 {
				t.Errorf("disk owner: got %d:%d, want 65534:65534", st.Uid, st.Gid)
			}
			kernel, err := os.Stat(filepath.Join(root, "vmlinux"))
			if err != nil {
				t.Fatalf("kernel in chroot: %v", err)
			}
			if st := kernel.Sys().(*syscall.Stat_t); st.Uid != 0 {
				t.Errorf("kernel owner: got %d, want 0 (shared file keeps its owner)", st.Uid)
			}
			image, _ := os.Stat(env.image)
			if os.SameFile(image, disk) {
				t.Errorf("disk in chroot is the shared image, want a private copy")
			}

			exerciseMachine(t, m)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := m.Shutdown(ctx, 5*time.Second); err != nil {
				t.Fatalf("shutdown: %v", err)
			}
			assertCleanedUp(t, m, jailDir)

			for _, r := range checkRequestLog(t, env.requestLog) {
				body, _ := r["body"].(map[string]any)
				for _, k := range []string{"kernel_image_path", "initrd_path", "path_on_host", "uds_path"} {
					if p, ok := body[k].(string); ok && filepath.IsAbs(p) {
						t.Errorf("%s %s: %s is %q, want a path relative to the chroot", r["method"], r["path"], k, p)
					}
				}
			}
		})
	}
}

func TestLeftoverAPISocket(t *testing.T) {
	requireDoubles(t)
	env := newEnv(t)
	d := newDriver(t, env.config("1.16.1"))

	t.Run("stale file", func(t *testing.T) {
		spec := env.spec(t, "stale-1")
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(spec.Dir, "api.sock"), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		l.SetUnlinkOnClose(false)
		l.Close()
		m := boot(t, d, spec)
		m.Kill()
	})
	t.Run("live listener", func(t *testing.T) {
		spec := env.spec(t, "live-1")
		l, err := net.Listen("unix", filepath.Join(spec.Dir, "api.sock"))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		vm, err := d.Boot(context.Background(), spec)
		if err == nil {
			vm.Kill()
			t.Fatal("boot: got nil error, want the live socket rejected")
		}
		if !strings.Contains(err.Error(), "in use by a live process") {
			t.Errorf("error: got %q, want it to say the socket is in use by a live process", err)
		}
		if _, err := os.Stat(filepath.Join(spec.Dir, "console.log")); err == nil {
			t.Errorf("console.log exists: want nothing spawned")
		}
	})
}

func TestJailerSocketPathLimit(t *testing.T) {
	requireDoubles(t)
	env := newEnv(t)
	const id = "limit-1"
	// The longest host socket path is <base>/firecracker/<id>/root/run/v.sock_54.
	suffix := len("/firecracker/" + id + "/root/run/v.sock_54")
	tests := []struct {
		name    string
		length  int
		wantErr bool
	}{
		{"108 bytes", 108, true},
		{"107 bytes", 107, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			top := t.TempDir()
			pad := tc.length - suffix - len(top) - 1
			if pad < 1 {
				t.Skipf("temporary directory %s is too long for this test", top)
			}
			base := filepath.Join(top, strings.Repeat("b", pad))
			if err := os.Mkdir(base, 0o755); err != nil {
				t.Fatal(err)
			}
			longest := filepath.Join(base, "firecracker", id, "root", "run", "v.sock_54")
			if len(longest) != tc.length {
				t.Fatalf("test setup: path is %d bytes, want %d", len(longest), tc.length)
			}
			cfg := env.config("1.16.1")
			cfg.Jailer = &firecracker.JailerConfig{Binary: tools.jailer, UID: 65534, GID: 65534, ChrootBaseDir: base}
			d := newDriver(t, cfg)
			spec := env.spec(t, id)
			vm, err := d.Boot(context.Background(), spec)
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
			if _, err := os.Stat(filepath.Join(base, "firecracker")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("chroot tree: got created (err %v), want nothing before the check", err)
			}
			if _, err := os.Stat(filepath.Join(spec.Dir, "console.log")); err == nil {
				t.Errorf("console.log exists: want nothing spawned")
			}
		})
	}
}

func TestShutdownIgnoredCtrlAltDel(t *testing.T) {
	requireDoubles(t)
	env := newEnv(t)
	d := newDriver(t, env.config("1.16.1", "--ignore-ctrl-alt-del"))
	spec := env.spec(t, "stubborn-1")
	m := boot(t, d, spec)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := m.Shutdown(ctx, 300*time.Millisecond)
	if err == nil {
		t.Fatal("shutdown: got nil error, want a report that the machine was killed")
	}
	select {
	case <-m.Done():
	default:
		t.Fatal("Done: got open after Shutdown, want closed (process reaped)")
	}
	if err := m.Wait(ctx); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("wait: got %v, want a killed-by-signal error", err)
	}
	assertCleanedUp(t, m, filepath.Join(spec.Dir, "api.sock"), filepath.Join(spec.Dir, "v.sock"))
}

func TestFailedStartKillsProcess(t *testing.T) {
	requireDoubles(t)
	env := newEnv(t)
	d := newDriver(t, env.config("1.16.1", "--fail-instance-start"))
	spec := env.spec(t, "failing-1")
	// The double does not open TAPs, so a name is enough to have the
	// interface handed to Firecracker before InstanceStart fails.
	spec.TAP = "hearthtap0"
	spec.MAC = net.HardwareAddr{0xaa, 0xfc, 0, 0, 0, 1}

	_, err := d.Boot(context.Background(), spec)
	if err == nil {
		t.Fatal("boot: got nil error, want InstanceStart's failure")
	}
	if !strings.Contains(err.Error(), "InstanceStart") && !strings.Contains(err.Error(), "/actions") {
		t.Errorf("error %q: want it to name the failed request", err)
	}
	if pids := processesOf(tools.firecracker); len(pids) > 0 {
		t.Errorf("firecracker processes after failed boot: got %v, want none", pids)
	}
	for _, p := range []string{"api.sock", "v.sock"} {
		if _, err := os.Lstat(filepath.Join(spec.Dir, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: got present, want removed", p)
		}
	}
	var sawTAP bool
	for _, r := range checkRequestLog(t, env.requestLog) {
		if r["path"] == "/network-interfaces/eth0" {
			sawTAP = true
		}
	}
	if !sawTAP {
		t.Errorf("requests: got no PUT /network-interfaces/eth0, want the TAP handed over before the failure")
	}
}

func TestSnapshotLoadVsockOverride(t *testing.T) {
	requireDoubles(t)
	tests := []struct {
		name         string
		version      string
		sameDir      bool
		wantErr      bool
		wantOverride bool
	}{
		{"1.16.1 new directory", "1.16.1", false, false, true},
		{"1.16.1 same directory", "1.16.1", true, false, false},
		{"1.15.1 new directory", "1.15.1", false, true, false},
		{"1.15.1 same directory", "1.15.1", true, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t)
			d := newDriver(t, env.config(tc.version))
			spec := env.spec(t, "snap-1")
			m := boot(t, d, spec)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := ping(ctx, m); err != nil {
				t.Fatalf("ping: %v", err)
			}
			if _, err := m.CreateSnapshot(ctx, ""); err == nil {
				t.Errorf("snapshot while running: got nil error, want pause-first error")
			}
			if err := m.Pause(ctx); err != nil {
				t.Fatal(err)
			}
			snap, err := m.CreateSnapshot(ctx, t.TempDir())
			if err != nil {
				t.Fatalf("create snapshot: %v", err)
			}
			m.Kill()
			os.Truncate(env.requestLog, 0)

			target := spec
			if !tc.sameDir {
				target = env.spec(t, "snap-2")
			}
			r, err := d.RestoreSnapshot(ctx, target, snap)
			if tc.wantErr {
				if err == nil {
					r.Kill()
					t.Fatal("restore: got nil error, want vsock_override unsupported")
				}
				if !strings.Contains(err.Error(), "vsock_override") {
					t.Errorf("error %q: want it to name vsock_override", err)
				}
			} else {
				if err != nil {
					t.Fatalf("restore: %v", err)
				}
				defer r.Kill()
				if err := r.Resume(ctx); err != nil {
					t.Fatal(err)
				}
				if err := ping(ctx, r); err != nil {
					t.Fatalf("ping after restore: %v", err)
				}
			}
			var loads int
			for _, rec := range checkRequestLog(t, env.requestLog) {
				if rec["path"] != "/snapshot/load" {
					continue
				}
				loads++
				_, has := rec["body"].(map[string]any)["vsock_override"]
				if has != tc.wantOverride {
					t.Errorf("load body %v: vsock_override present %v, want %v", rec["body"], has, tc.wantOverride)
				}
			}
			if wantLoads := map[bool]int{true: 0, false: 1}[tc.wantErr]; loads != wantLoads {
				t.Errorf("load requests: got %d, want %d", loads, wantLoads)
			}
		})
	}
}
