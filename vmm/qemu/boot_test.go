package qemu

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hearthvm/hearth/vmm"
)

// guestAssets returns the boot assets built by scripts/build-assets, or
// skips the test when they are missing.
func guestAssets(t *testing.T) (kernel, initrd, rootfs string) {
	t.Helper()
	dir := os.Getenv("HEARTH_ASSETS")
	if dir == "" {
		dir = "/var/lib/hearth/assets"
	}
	kernel = filepath.Join(dir, "vmlinux")
	initrd = filepath.Join(dir, "initramfs.cpio")
	rootfs = filepath.Join(dir, "rootfs.ext4")
	for _, p := range []string{kernel, initrd, rootfs} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("boot asset missing: %v: build the boot assets with scripts/build-assets (or set HEARTH_ASSETS)", err)
		}
	}
	return kernel, initrd, rootfs
}

func TestRealBootAndKill(t *testing.T) {
	requireQEMU(t)
	kernel, initrd, rootfs := guestAssets(t)
	d, err := New(Config{Accel: AccelTCG})
	if err != nil {
		t.Fatal(err)
	}
	dir := shortTempDir(t)
	spec := vmm.Spec{
		ID:        "boot-test",
		Dir:       dir,
		VCPUs:     1,
		MemoryMiB: 256,
		Kernel:    kernel,
		Initrd:    initrd,
		RootImage: rootfs,
		// Without "quiet", so the console shows the kernel starting /init.
		BootArgs:  probeBootArgs,
		AgentArgs: []string{"hearth_init=1", "hearth.root=/dev/vda", "hearth.hostname=boot-test"},
	}

	began := time.Now()
	vm, err := d.Boot(t.Context(), spec)
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	m := vm.(*Machine)
	t.Cleanup(func() { m.Kill() })
	t.Logf("Boot returned after %v (pid %d)", time.Since(began).Round(time.Millisecond), m.PID())

	// Under TCG on a loaded 2-core host a boot takes a few seconds; 90 s
	// only bounds a hung guest.
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	var pingErr error
	for ctx.Err() == nil {
		attempt, stop := context.WithTimeout(ctx, 5*time.Second)
		pingErr = pingAgent(attempt, m)
		stop()
		if pingErr == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if pingErr != nil {
		t.Fatalf("agent did not answer PING within 90s: %v; console ends with: %s",
			pingErr, readTail(m.ConsolePath(), 2048))
	}
	t.Logf("agent answered PING after %v", time.Since(began).Round(time.Millisecond))
	if !consoleContains(m.ConsolePath(), probeInitLine) {
		t.Errorf("console does not show %q", probeInitLine)
	}

	checkKill(t, m, dir)
}

func TestRealKVMProbe(t *testing.T) {
	requireQEMU(t)
	kernel, initrd, _ := guestAssets(t)
	if err := openKVM(); err != nil {
		t.Skipf("open /dev/kvm: %v: the probe boots only where /dev/kvm opens; run as root on a host with /dev/kvm", err)
	}
	cache := filepath.Join(t.TempDir(), "kvm-probe.json")
	d, err := New(Config{ProbeCache: cache})
	if err != nil {
		t.Fatal(err)
	}

	// Other packages' tests may run a probe at the same time; this one's
	// QEMU is told apart by its directory.
	d.probeParent = t.TempDir()
	res, err := d.ProbeKVM(t.Context(), kernel, initrd)
	if err != nil {
		t.Fatalf("ProbeKVM: %v", err)
	}
	t.Logf("probe: kvm=%v after %v: %s", res.KVM, res.Duration.Round(time.Millisecond), res.Reason)
	if res.Reason == "" {
		t.Error("probe result has no reason")
	}
	if d.probes != 1 {
		t.Errorf("ran %d probe boots, want 1", d.probes)
	}
	rec, err := readProbeCache(cache)
	if err != nil {
		t.Fatalf("read probe cache: %v", err)
	}
	if rec.KVM != res.KVM || rec.Reason != res.Reason {
		t.Errorf("cache holds kvm=%v %q, want kvm=%v %q", rec.KVM, rec.Reason, res.KVM, res.Reason)
	}

	// The next decision comes from the cache, without a second boot.
	accel, err := d.resolveAccel(t.Context(), kernel, initrd)
	if err != nil {
		t.Fatalf("resolveAccel: %v", err)
	}
	want := AccelTCG
	if res.KVM {
		want = AccelKVM
	}
	if accel != want {
		t.Errorf("resolveAccel = %q, want %q", accel, want)
	}
	if d.probes != 1 {
		t.Errorf("ran %d probe boots after resolveAccel, want 1", d.probes)
	}
	if pids := processesMentioning(t, d.probeParent); len(pids) != 0 {
		t.Errorf("probe processes %v still run", pids)
	}
}
