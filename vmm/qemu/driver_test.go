package qemu

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearthvm/hearth/vmm"
)

// multibootKernel writes a 4 KiB multiboot image that QEMU's -kernel
// loads directly. With reset false it halts forever. With reset true it
// triple-faults, which QEMU under -no-reboot turns into a clean exit. Tests
// use it where they need a running QEMU but not a booted Linux.
func multibootKernel(t *testing.T, reset bool) string {
	t.Helper()
	const load = 0x100000
	const magic, flags = 0x1BADB002, 0x00010000 // flags: load addresses in the header
	img := make([]byte, 4096)
	hdr := []uint32{magic, flags, -(magic + flags) & 0xffffffff, load, load, load + 4096, load + 4096, load + 64}
	for i, v := range hdr {
		binary.LittleEndian.PutUint32(img[i*4:], v)
	}

	code := []byte{0xfa, 0xf4, 0xeb, 0xfd} // cli; hlt; jmp back to hlt
	if reset {
		// cli; lidt [load+128] (an empty IDT); int3: the breakpoint finds
		// no handler, which escalates to a triple fault.
		code = []byte{0xfa, 0x0f, 0x01, 0x1d, 0, 0, 0, 0, 0xcc}
		binary.LittleEndian.PutUint32(code[4:], load+128)
	}
	copy(img[64:], code)

	path := filepath.Join(t.TempDir(), "kernel.bin")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func writeFile(t *testing.T, name string, size int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func requireQEMU(t *testing.T) {
	t.Helper()
	for _, bin := range []string{DefaultQEMU, DefaultQEMUImg} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed: install packages qemu-system-x86 and qemu-utils (run scripts/install-deps)", bin)
		}
	}
}

// newTCGDriver returns a driver that always uses TCG with a fixed TSC
// frequency, so no test depends on the host's KVM or TSC.
func newTCGDriver(t *testing.T, extra ...string) *Driver {
	t.Helper()
	requireQEMU(t)
	d, err := New(Config{Accel: AccelTCG, TSCKHz: 2596130, ExtraArgs: extra})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return d
}

// shortTempDir returns a directory under /tmp, because t.TempDir's paths
// can exceed the socket path limit for long test names.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hq-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func fakeSpec(t *testing.T, dir, kernel string) vmm.Spec {
	return vmm.Spec{
		ID:        "test-" + filepath.Base(dir),
		Dir:       dir,
		VCPUs:     1,
		MemoryMiB: 64,
		Kernel:    kernel,
		Initrd:    writeFile(t, "initramfs.cpio", 512),
		RootImage: writeFile(t, "rootfs.ext4", 1<<20),
	}
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// processesMentioning returns the PIDs whose command line contains s.
func processesMentioning(t *testing.T, s string) []string {
	t.Helper()
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(s)) {
			pids = append(pids, filepath.Base(filepath.Dir(p)))
		}
	}
	return pids
}

func TestNewMissingBinary(t *testing.T) {
	requireQEMU(t)
	tests := []struct {
		name     string
		cfg      Config
		wantHint string
	}{
		{"qemu", Config{QEMU: "/nonexistent/qemu-system-x86_64"}, "install package qemu-system-x86"},
		{"qemu-img", Config{QEMUImg: "/nonexistent/qemu-img"}, "install package qemu-utils"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if !errors.Is(err, vmm.ErrUnavailable) {
				t.Fatalf("got %v, want an error wrapping vmm.ErrUnavailable", err)
			}
			if !strings.Contains(err.Error(), tc.wantHint) {
				t.Errorf("error %q does not contain %q", err, tc.wantHint)
			}
		})
	}
}

func TestBootRejectsBadSpec(t *testing.T) {
	d := newTCGDriver(t)
	tests := []struct {
		name    string
		modify  func(*vmm.Spec)
		wantErr string
	}{
		{"missing kernel", func(s *vmm.Spec) { s.Kernel = "/nonexistent/vmlinux" }, "scripts/build-assets"},
		{"missing initramfs", func(s *vmm.Spec) { s.Initrd = "/nonexistent/initramfs.cpio" }, "scripts/build-assets"},
		{"missing root image", func(s *vmm.Spec) { s.RootImage = "/nonexistent/rootfs.ext4" }, "scripts/build-assets"},
		{"no vcpus", func(s *vmm.Spec) { s.VCPUs = 0 }, "vcpus"},
		{"no memory", func(s *vmm.Spec) { s.MemoryMiB = 0 }, "memory"},
		{"tap without mac", func(s *vmm.Spec) { s.TAP = "hvtap9" }, "mac"},
		{"long kernel command line", func(s *vmm.Spec) { s.AgentArgs = []string{strings.Repeat("a", 2100)} }, "2047"},
		{"missing directory", func(s *vmm.Spec) { s.Dir = "/nonexistent/sandbox" }, "/nonexistent/sandbox"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := shortTempDir(t)
			spec := fakeSpec(t, dir, multibootKernel(t, false))
			tc.modify(&spec)
			m, err := d.Boot(t.Context(), spec)
			if err == nil {
				m.Kill()
				t.Fatal("Boot succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
			if got := dirEntries(t, dir); len(got) != 0 {
				t.Errorf("Boot left %v in the sandbox directory, want nothing", got)
			}
		})
	}
}

func TestBootSocketPathTooLong(t *testing.T) {
	d := newTCGDriver(t)
	base := shortTempDir(t)
	// Make <dir>/agent.sock exactly 108 bytes.
	dir := filepath.Join(base, strings.Repeat("s", 108-len(base)-len("/agent.sock")-1))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}

	spec := fakeSpec(t, dir, multibootKernel(t, false))
	m, err := d.Boot(t.Context(), spec)
	if err == nil {
		m.Kill()
		t.Fatal("Boot succeeded, want a socket path error")
	}
	for _, want := range []string{filepath.Join(dir, "agent.sock"), "107"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if got := dirEntries(t, dir); len(got) != 0 {
		t.Errorf("Boot left %v, want nothing", got)
	}
}

func TestBootQEMUExitsDuringStartup(t *testing.T) {
	d := newTCGDriver(t, "-no-such-option")
	dir := shortTempDir(t)

	m, err := d.Boot(t.Context(), fakeSpec(t, dir, multibootKernel(t, false)))
	if err == nil {
		m.Kill()
		t.Fatal("Boot succeeded with an invalid QEMU option, want an error")
	}
	// The error quotes qemu.log, where QEMU names the bad option.
	if !strings.Contains(err.Error(), "-no-such-option") {
		t.Errorf("error %q does not quote qemu.log", err)
	}
	if got := dirEntries(t, dir); len(got) != 0 {
		t.Errorf("Boot left %v, want nothing", got)
	}
	if pids := processesMentioning(t, dir); len(pids) != 0 {
		t.Errorf("processes %v still run for %s", pids, dir)
	}
}

func TestBootRejectsUsedDirectory(t *testing.T) {
	d := newTCGDriver(t)
	dir := shortTempDir(t)
	if err := os.WriteFile(filepath.Join(dir, "root.qcow2"), []byte("in use"), 0o644); err != nil {
		t.Fatal(err)
	}

	m, err := d.Boot(t.Context(), fakeSpec(t, dir, multibootKernel(t, false)))
	if err == nil {
		m.Kill()
		t.Fatal("Boot succeeded in a directory with a disk, want an error")
	}
	b, err := os.ReadFile(filepath.Join(dir, "root.qcow2"))
	if err != nil || string(b) != "in use" {
		t.Errorf("existing root.qcow2 changed: %q, %v", b, err)
	}
}

func queryStatus(t *testing.T, m *Machine) string {
	t.Helper()
	ret, err := m.QMP().Execute(t.Context(), "query-status", nil)
	if err != nil {
		t.Fatalf("query-status: %v", err)
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(ret, &st); err != nil {
		t.Fatalf("decode query-status %s: %v", ret, err)
	}
	return st.Status
}

func TestMachineLifecycle(t *testing.T) {
	d := newTCGDriver(t)
	dir := shortTempDir(t)
	spec := fakeSpec(t, dir, multibootKernel(t, false))

	vm, err := d.Boot(t.Context(), spec)
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	m := vm.(*Machine)
	t.Cleanup(func() { m.Kill() })

	// The overlay is backed by the shared image, which stays raw.
	info, err := exec.Command(DefaultQEMUImg, "info", "-U", "--output=json", filepath.Join(dir, "root.qcow2")).Output()
	if err != nil {
		t.Fatalf("qemu-img info root.qcow2: %v", err)
	}
	var img struct {
		Format        string `json:"format"`
		BackingFile   string `json:"backing-filename"`
		BackingFormat string `json:"backing-filename-format"`
	}
	if err := json.Unmarshal(info, &img); err != nil {
		t.Fatal(err)
	}
	if img.Format != "qcow2" || img.BackingFile != spec.RootImage || img.BackingFormat != "raw" {
		t.Errorf("overlay is %+v, want qcow2 backed by raw %s", img, spec.RootImage)
	}

	if got := m.ConsolePath(); got != filepath.Join(dir, "console.log") {
		t.Errorf("ConsolePath() = %q, want %q", got, filepath.Join(dir, "console.log"))
	}
	if got := m.QMP().Version(); !got.AtLeast(7, 0) {
		t.Errorf("QMP version %v, want at least 7.0", got)
	}
	if got := queryStatus(t, m); got != "running" {
		t.Errorf("status after Boot = %q, want running", got)
	}
	if err := m.Pause(t.Context()); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if got := queryStatus(t, m); got != "paused" {
		t.Errorf("status after Pause = %q, want paused", got)
	}
	if err := m.Resume(t.Context()); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if got := queryStatus(t, m); got != "running" {
		t.Errorf("status after Resume = %q, want running", got)
	}

	checkKill(t, m, dir)
}

// checkKill kills m from several goroutines at once and checks that QEMU
// is reaped and its sockets and process are gone.
func checkKill(t *testing.T, m *Machine, dir string) {
	t.Helper()
	pid := m.PID()

	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() { errs[i] = m.Kill() })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Kill call %d: %v", i, err)
		}
	}

	select {
	case <-m.Done():
	default:
		t.Fatal("Done() not closed after Kill returned")
	}
	if err := m.Wait(t.Context()); !errors.Is(err, ErrKilled) {
		t.Errorf("Wait after Kill = %v, want ErrKilled", err)
	}
	// Reaped: the PID no longer exists, not even as a zombie.
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("kill(%d, 0) after Kill = %v, want ESRCH", pid, err)
	}
	for _, name := range []string{"qmp.sock", "agent.sock"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after Kill: %v, want it removed", name, err)
		}
	}
	if pids := processesMentioning(t, dir); len(pids) != 0 {
		t.Errorf("processes %v still run for %s", pids, dir)
	}
	if err := m.Kill(); err != nil {
		t.Errorf("Kill after Kill: %v", err)
	}
}

func TestMachineGuestResetExitsCleanly(t *testing.T) {
	// -S holds the vCPU until Resume, so the guest cannot exit before
	// Boot has connected QMP.
	d := newTCGDriver(t, "-S")
	dir := shortTempDir(t)

	vm, err := d.Boot(t.Context(), fakeSpec(t, dir, multibootKernel(t, true)))
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	m := vm.(*Machine)
	t.Cleanup(func() { m.Kill() })

	if err := m.Resume(t.Context()); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := m.Wait(ctx); err != nil {
		t.Fatalf("Wait after a guest reset = %v, want nil", err)
	}

	// The reader has handled every event once the connection ended.
	<-m.QMP().Done()
	if got := m.ShutdownReason(); got != "guest-reset" {
		t.Errorf("ShutdownReason() = %q, want guest-reset", got)
	}
	if err := m.Kill(); err != nil {
		t.Errorf("Kill after exit: %v", err)
	}
	for _, name := range []string{"qmp.sock", "agent.sock"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after Kill: %v, want it removed", name, err)
		}
	}
}

func TestWaitHonoursContext(t *testing.T) {
	d := newTCGDriver(t)
	dir := shortTempDir(t)

	vm, err := d.Boot(t.Context(), fakeSpec(t, dir, multibootKernel(t, false)))
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	t.Cleanup(func() { vm.Kill() })

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := vm.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait on a running machine = %v, want context.DeadlineExceeded", err)
	}
}

func TestResolveAccelUsesCache(t *testing.T) {
	requireQEMU(t)
	if err := openKVM(); err != nil {
		t.Skipf("open /dev/kvm: %v: the cache is consulted only when /dev/kvm opens; run as root on a host with /dev/kvm", err)
	}
	kernel := multibootKernel(t, false)
	initrd := writeFile(t, "initramfs.cpio", 512)

	tests := []struct {
		name   string
		cached bool
		want   Accel
	}{
		{"cached kvm", true, AccelKVM},
		{"cached no kvm", false, AccelTCG},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cache := filepath.Join(t.TempDir(), "kvm-probe.json")
			d, err := New(Config{ProbeCache: cache, TSCKHz: 2596130})
			if err != nil {
				t.Fatal(err)
			}
			key, err := d.probeKey(t.Context(), kernel, initrd)
			if err != nil {
				t.Fatal(err)
			}
			rec := probeRecord{Key: key, KVM: tc.cached, Reason: "test record"}
			if err := writeProbeCache(cache, rec); err != nil {
				t.Fatal(err)
			}

			for range 2 {
				got, err := d.resolveAccel(t.Context(), kernel, initrd)
				if err != nil {
					t.Fatalf("resolveAccel: %v", err)
				}
				if got != tc.want {
					t.Errorf("resolveAccel = %q, want %q", got, tc.want)
				}
			}
			if d.probes != 0 {
				t.Errorf("ran %d probe boots with a matching cache, want 0", d.probes)
			}
		})
	}
}

func TestProbeKeyChangesWithKernel(t *testing.T) {
	requireQEMU(t)
	d, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	kernel := multibootKernel(t, false)
	initrd := writeFile(t, "initramfs.cpio", 512)

	before, err := d.probeKey(t.Context(), kernel, initrd)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kernel, make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	after, err := d.probeKey(t.Context(), kernel, initrd)
	if err != nil {
		t.Fatal(err)
	}
	if before == after {
		t.Errorf("probe key unchanged after the kernel changed: %+v", after)
	}
	if before.QEMU == "" || before.HostKernel == "" {
		t.Errorf("probe key lacks the qemu version or host kernel: %+v", before)
	}
}

func TestReadProbeCacheRejectsGarbage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kvm-probe.json")
	if err := os.WriteFile(path, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readProbeCache(path); err == nil {
		t.Error("got nil error for a corrupt cache file, want an error")
	}
}

func TestParseCPUInfoKHz(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    int
		wantErr bool
	}{
		{"rounds", "processor\t: 0\ncpu MHz\t\t: 2596.1304\n", 2596130, false},
		{"rounds up", "cpu MHz\t\t: 2999.9996\n", 3000000, false},
		{"first cpu", "cpu MHz : 2000.000\ncpu MHz : 3000.000\n", 2000000, false},
		{"missing", "processor\t: 0\n", 0, true},
		{"invalid", "cpu MHz\t: fast\n", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCPUInfoKHz(strings.NewReader(tc.in))
			if tc.wantErr {
				if err == nil {
					t.Errorf("got %d, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v", err)
			}
			if got != tc.want {
				t.Errorf("got %d kHz, want %d", got, tc.want)
			}
		})
	}
}

func TestHostTSCKHz(t *testing.T) {
	khz, source, err := hostTSCKHz()
	if err != nil {
		t.Skipf("host tsc frequency unknown here: %v", err)
	}
	// Any x86 TSC from the last two decades runs between 100 MHz and
	// 10 GHz; outside that range the value was misparsed.
	if khz < 100_000 || khz > 10_000_000 {
		t.Errorf("host tsc %d kHz from %s, want between 100000 and 10000000", khz, source)
	}
	t.Logf("host tsc %d kHz from %s", khz, source)
}
