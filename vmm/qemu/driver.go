package qemu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"github.com/hearthvm/hearth/vmm"
)

// Driver boots QEMU microvm machines. It is safe for concurrent use.
type Driver struct {
	cfg     Config
	qemu    string // resolved path of the QEMU binary
	qemuImg string // resolved path of qemu-img
	log     *slog.Logger

	tscOnce sync.Once
	tscKHz  int
	tscErr  error

	qemuVerMu sync.Mutex
	qemuVer   string // cached after the first successful read

	// accelLock serialises the accel decision, so the KVM probe boots
	// once however many machines start together. It is a channel so that
	// a waiting Boot still honours its context.
	accelLock chan struct{}
	accel     Accel // decided accel for AccelAuto; guarded by accelLock
	probes    int   // probe boots run; guarded by accelLock
	// probeParent is where probe boots make their temporary directory;
	// empty means os.TempDir. Tests set it to tell their probe's QEMU
	// from another process's.
	probeParent string
}

var _ vmm.Driver = (*Driver)(nil)

// New returns a driver after checking that QEMU and qemu-img are
// installed. Errors for a missing binary wrap vmm.ErrUnavailable.
func New(cfg Config) (*Driver, error) {
	if !supported {
		return nil, fmt.Errorf("%w: the qemu driver runs only on Linux", vmm.ErrUnavailable)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}

	qemu, err := exec.LookPath(cfg.QEMU)
	if err != nil {
		return nil, fmt.Errorf("%w: find qemu binary %q: %w: install package qemu-system-x86 (run scripts/install-deps)",
			vmm.ErrUnavailable, cfg.QEMU, err)
	}
	qemuImg, err := exec.LookPath(cfg.QEMUImg)
	if err != nil {
		return nil, fmt.Errorf("%w: find %q: %w: install package qemu-utils (run scripts/install-deps)",
			vmm.ErrUnavailable, cfg.QEMUImg, err)
	}

	return &Driver{
		cfg:       cfg,
		qemu:      qemu,
		qemuImg:   qemuImg,
		log:       cfg.Logger.With("driver", "qemu"),
		accelLock: make(chan struct{}, 1),
	}, nil
}

// Name returns "qemu".
func (d *Driver) Name() string { return "qemu" }

// Boot creates the machine's disk overlay in spec.Dir, starts QEMU and
// connects to its QMP socket. It returns while the guest boots. On error
// it leaves no process running and removes the files it created.
//
// The first Boot with accel "auto" may first run the KVM probe (see
// ProbeKVM) unless a cached result matches this host, QEMU and guest.
func (d *Driver) Boot(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	m, err := d.boot(ctx, spec)
	if err != nil {
		return nil, err
	}
	return m, nil
}

func (d *Driver) boot(ctx context.Context, spec vmm.Spec) (_ *Machine, err error) {
	dir, err := checkSpec(spec)
	if err != nil {
		return nil, err
	}
	accel, err := d.resolveAccel(ctx, spec.Kernel, spec.Initrd)
	if err != nil {
		return nil, err
	}

	l := launch{
		Spec:      spec,
		Accel:     accel,
		AgentPort: d.cfg.AgentPort,
		Paths:     pathsIn(dir),
		ExtraArgs: d.cfg.ExtraArgs,
	}
	if spec.RootImage != "" {
		l.Disk = l.Paths.Overlay
	}
	if accel == AccelTCG {
		if l.TSCKHz, err = d.hostTSC(); err != nil {
			return nil, err
		}
	}
	// Build the arguments before creating anything, so an invalid spec
	// leaves no files behind.
	if _, err := buildArgs(l); err != nil {
		return nil, fmt.Errorf("boot %s: %w", spec.ID, err)
	}
	if err := checkFree(l.Paths); err != nil {
		return nil, fmt.Errorf("boot %s: %w", spec.ID, err)
	}

	if l.Disk != "" {
		if err := d.createOverlay(ctx, spec.RootImage, "raw", l.Disk); err != nil {
			return nil, fmt.Errorf("boot %s: %w", spec.ID, err)
		}
		defer func() {
			if err != nil {
				os.Remove(l.Disk)
			}
		}()
	}

	// The guest RAM lives in a memfd shared with QEMU, so Checkpoint can
	// leave it out of the migration stream and copy it directly.
	if l.MemFile, err = newGuestMemory(spec.ID, spec.MemoryMiB); err != nil {
		return nil, fmt.Errorf("boot %s: %w", spec.ID, err)
	}
	l.Memory = memoryBackend{Path: memFilePath, Shared: true}

	m, err := d.start(ctx, l)
	if err != nil {
		return nil, fmt.Errorf("boot %s: %w", spec.ID, err)
	}
	d.log.Info("machine started", "sandbox", spec.ID, "pid", m.PID(), "accel", accel,
		"qemu", m.QMP().Version().String())
	return m, nil
}

// checkSpec validates spec and returns its directory as an absolute path.
func checkSpec(spec vmm.Spec) (string, error) {
	if spec.Dir == "" {
		return "", fmt.Errorf("invalid spec for %q: no directory", spec.ID)
	}
	dir, err := filepath.Abs(spec.Dir)
	if err != nil {
		return "", fmt.Errorf("invalid spec for %q: %w", spec.ID, err)
	}
	if st, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("sandbox directory of %q: %w", spec.ID, err)
	} else if !st.IsDir() {
		return "", fmt.Errorf("sandbox directory %s of %q is not a directory", dir, spec.ID)
	}
	if spec.VCPUs < 1 {
		return "", fmt.Errorf("invalid spec for %q: %d vcpus, want at least 1", spec.ID, spec.VCPUs)
	}
	if spec.MemoryMiB < 1 {
		return "", fmt.Errorf("invalid spec for %q: %d MiB of memory, want at least 1", spec.ID, spec.MemoryMiB)
	}

	if err := checkAsset("kernel", spec.Kernel); err != nil {
		return "", err
	}
	if err := checkAsset("initramfs", spec.Initrd); err != nil {
		return "", err
	}
	if spec.RootImage != "" {
		if err := checkAsset("root image", spec.RootImage); err != nil {
			return "", err
		}
	}

	if spec.TAP != "" {
		if len(spec.MAC) == 0 {
			return "", fmt.Errorf("invalid spec for %q: tap %q has no guest mac address", spec.ID, spec.TAP)
		}
		if err := checkTun(); err != nil {
			return "", fmt.Errorf("%w: attach tap %q: %w", vmm.ErrUnavailable, spec.TAP, err)
		}
	}
	return dir, nil
}

func checkAsset(kind, path string) error {
	if path == "" {
		return fmt.Errorf("no guest %s given: build the boot assets with scripts/build-assets", kind)
	}
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("guest %s %s: %w: build the boot assets with scripts/build-assets", kind, path, err)
		}
		return fmt.Errorf("guest %s: %w", kind, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("guest %s %s is not a regular file", kind, path)
	}
	return nil
}

// checkFree rejects a directory that already holds another machine's
// sockets or disk, so a second Boot never takes over a running machine's
// files.
func checkFree(p machinePaths) error {
	for _, path := range []string{p.QMP, p.Agent, p.Overlay} {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%s already exists: the sandbox directory belongs to another machine", path)
		}
	}
	return nil
}

// createOverlay creates a qcow2 overlay at path backed by image, whose
// format is "raw" or "qcow2". The image path is stored absolute in the
// overlay, and QEMU opens a backing file read-only, so the image is never
// written.
func (d *Driver) createOverlay(ctx context.Context, image, format, path string) error {
	abs, err := filepath.Abs(image)
	if err != nil {
		return fmt.Errorf("create disk overlay: %w", err)
	}
	cmd := exec.CommandContext(ctx, d.qemuImg, "create", "-q", "-f", "qcow2", "-b", abs, "-F", format, path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("create disk overlay %s on %s: %w: %s", path, abs, err, bytesTrim(out))
	}
	return nil
}

// hostTSC returns the host TSC frequency for tsc_early_khz, read once.
func (d *Driver) hostTSC() (int, error) {
	d.tscOnce.Do(func() {
		if d.cfg.TSCKHz > 0 {
			d.tscKHz = d.cfg.TSCKHz
			return
		}
		var source string
		d.tscKHz, source, d.tscErr = hostTSCKHz()
		if d.tscErr == nil {
			d.log.Info("host tsc frequency", "khz", d.tscKHz, "source", source)
		}
	})
	return d.tscKHz, d.tscErr
}

// qemuVersion returns the first line of `qemu-system-x86_64 --version`.
func (d *Driver) qemuVersion(ctx context.Context) (string, error) {
	d.qemuVerMu.Lock()
	defer d.qemuVerMu.Unlock()

	if d.qemuVer != "" {
		return d.qemuVer, nil
	}
	out, err := exec.CommandContext(ctx, d.qemu, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("run %s --version: %w", d.qemu, err)
	}
	d.qemuVer = firstLine(string(out))
	return d.qemuVer, nil
}
