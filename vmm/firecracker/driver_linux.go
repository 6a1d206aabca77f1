package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hearthvm/hearth/vmm"
	"github.com/hearthvm/hearth/vmm/firecracker/api"
)

// Driver boots Firecracker machines. It is safe for concurrent use.
type Driver struct {
	cfg Config
	log *slog.Logger
	// machines maps each live *Machine to its machineInfo, which
	// Checkpoint and MAC read.
	machines sync.Map
}

var _ vmm.Driver = (*Driver)(nil)

// New returns a driver for cfg. It checks the configuration but not the
// binaries, which Boot looks up.
func New(cfg Config, log *slog.Logger) (*Driver, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	return &Driver{cfg: cfg, log: log}, nil
}

// Name returns "firecracker".
func (d *Driver) Name() string { return "firecracker" }

var _ vmm.TAPPlacer = (*Driver)(nil)

// TAPPlacement reports where the manager must create TAP devices. A jailed
// Firecracker runs as JailerConfig.UID and GID without CAP_NET_ADMIN, so
// it can only open a TAP that already exists in its network namespace
// (JailerConfig.NetNS, or the manager's when empty) and is owned by that
// uid and gid. A direct Firecracker runs as root in the manager's
// namespace and needs nothing placed.
func (d *Driver) TAPPlacement() vmm.TAPPlacement {
	j := d.cfg.Jailer
	if j == nil {
		return vmm.TAPPlacement{}
	}
	return vmm.TAPPlacement{NetNSPath: j.NetNS, Owner: &vmm.TAPOwner{UID: j.UID, GID: j.GID}}
}

// layout is where one sandbox's files are, as host paths and as the paths
// Firecracker is given.
type layout struct {
	jailDir  string // <base>/<exec name>/<id>, jailer mode only
	execFile string // resolved firecracker binary, jailer mode only
	root     string // chroot directory, or the sandbox directory

	apiSockHost, vsockHost string
	apiSockArg, vsockAPI   string
	diskHost, diskAPI      string
	logArg, metricsArg     string
	consoleHost            string
}

func (d *Driver) layout(spec vmm.Spec) (layout, error) {
	l := layout{consoleHost: filepath.Join(spec.Dir, consoleName)}
	if d.cfg.Jailer == nil {
		l.root = spec.Dir
		l.apiSockHost = filepath.Join(spec.Dir, apiSocketName)
		l.vsockHost = filepath.Join(spec.Dir, vsockName)
		l.apiSockArg, l.vsockAPI = l.apiSockHost, l.vsockHost
		l.diskHost = filepath.Join(spec.Dir, rootDiskName)
		// Relative to Firecracker's working directory, the sandbox
		// directory (see directCommand). The state file of a snapshot
		// names the drive by this path and Firecracker opens it during
		// the load, so every restore finds its own copy there, as in
		// jailer mode, also after the origin sandbox was removed.
		l.diskAPI = rootDiskName
		l.logArg = filepath.Join(spec.Dir, logName)
		l.metricsArg = filepath.Join(spec.Dir, metricsName)
		return l, nil
	}
	bin, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		return l, fmt.Errorf("firecracker binary %q: %w: install firecracker or set its path", d.cfg.Binary, vmm.ErrUnavailable)
	}
	// The jailer names the jail after the resolved file name.
	resolved, err := filepath.EvalSymlinks(bin)
	if err != nil {
		return l, fmt.Errorf("resolve firecracker binary %q: %w", bin, err)
	}
	// The jailer canonicalizes --chroot-base-dir, so the socket paths the
	// driver checks and dials are built from the same resolved directory.
	base, err := filepath.Abs(d.cfg.Jailer.ChrootBaseDir)
	if err != nil {
		return l, err
	}
	if base, err = filepath.EvalSymlinks(base); err != nil {
		return l, fmt.Errorf("jailer chroot base directory: %w: create it or set chroot_base_dir", err)
	}
	l.execFile = resolved
	l.jailDir = filepath.Join(base, filepath.Base(resolved), spec.ID)
	l.root = filepath.Join(l.jailDir, "root")
	// The jailed uid can create sockets only in run/, which the jailer
	// makes and gives to it.
	l.apiSockArg = "/run/" + apiSocketName
	l.vsockAPI = "run/" + vsockName
	l.apiSockHost = filepath.Join(l.root, "run", apiSocketName)
	l.vsockHost = filepath.Join(l.root, "run", vsockName)
	l.diskHost = filepath.Join(l.root, rootDiskName)
	l.diskAPI = rootDiskName
	l.logArg = "/" + logName
	l.metricsArg = "/" + metricsName
	return l, nil
}

// Boot starts a Firecracker machine for spec and returns once InstanceStart
// succeeded. On error every process it started is killed and reaped, and
// the sockets and chroot it created are removed.
func (d *Driver) Boot(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	m, err := d.start(ctx, spec, nil)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// start prepares the files, spawns Firecracker and either boots spec or,
// with snap set, loads the snapshot.
func (d *Driver) start(ctx context.Context, spec vmm.Spec, snap *Snapshot) (_ *Machine, err error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	l, err := d.layout(spec)
	if err != nil {
		return nil, err
	}
	// Every host socket path must fit in sun_path; check before anything
	// is created or spawned.
	if err := checkSocketPaths(socketPaths(l.apiSockHost, l.vsockHost)...); err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	if _, err := exec.LookPath(d.cfg.Binary); err != nil {
		return nil, fmt.Errorf("firecracker binary %q: %w: install firecracker or set its path", d.cfg.Binary, vmm.ErrUnavailable)
	}
	for _, p := range []string{l.apiSockHost, l.vsockHost} {
		if err := removeStaleSocket(p); err != nil {
			return nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
		}
	}

	var cleanup []func()
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
		}
	}()
	if err := d.prepareFiles(spec, l, snap, &cleanup); err != nil {
		return nil, err
	}

	m, err := d.spawn(ctx, spec, l)
	if err != nil {
		return nil, err
	}
	// Kill reaps the process before Boot returns, so the caller may
	// reuse the TAP and the sandbox id at once. A process that could not
	// be reaped is reported with the boot error.
	cleanup = append(cleanup, func() {
		if kerr := m.Kill(); kerr != nil {
			err = errors.Join(err, kerr)
		}
	})

	if snap == nil {
		err = d.configureAndStart(ctx, m, spec, l)
	} else {
		err = d.load(ctx, m, spec, l, snap)
	}
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	d.track(m, spec)
	d.log.Info("firecracker machine started", "sandbox", spec.ID, "pid", m.pid, "jailed", d.cfg.Jailer != nil)
	return m, nil
}

// removeStaleSocket removes a socket file left by an earlier process,
// after making sure no live process listens on it.
func removeStaleSocket(path string) error {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("socket %s is in use by a live process: stop that process (another VM with the same sandbox directory?) before starting this one", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOTSOCK) {
		return fmt.Errorf("check leftover socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove leftover socket %s: %w", path, err)
	}
	return nil
}

func (d *Driver) prepareFiles(spec vmm.Spec, l layout, snap *Snapshot, cleanup *[]func()) error {
	image := spec.RootImage
	if snap != nil {
		image = snap.DiskPath
	}
	privateDisk := filepath.Join(spec.Dir, rootDiskName)
	// A stale disk from an earlier boot of this sandbox is replaced: the
	// machine gets a fresh private copy of the image.
	os.Remove(privateDisk)
	if err := copyImage(image, privateDisk, 0o600); err != nil {
		return fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	*cleanup = append(*cleanup, func() { os.Remove(privateDisk) })

	if d.cfg.Jailer == nil {
		for _, f := range []string{l.logArg, l.metricsArg} {
			if err := os.WriteFile(f, nil, 0o600); err != nil {
				return fmt.Errorf("sandbox %s: create %s: %w", spec.ID, f, err)
			}
		}
		return nil
	}
	return d.prepareJail(spec, l, snap, privateDisk, cleanup)
}

func (d *Driver) prepareJail(spec vmm.Spec, l layout, snap *Snapshot, privateDisk string, cleanup *[]func()) error {
	j := d.cfg.Jailer
	if err := checkJailLive(l); err != nil {
		return err
	}
	// The real jailer cannot reuse a chroot (mknod has no EEXIST
	// handling), so a stale one for this id goes first.
	if err := os.RemoveAll(l.jailDir); err != nil {
		return fmt.Errorf("sandbox %s: remove stale chroot %s: %w", spec.ID, l.jailDir, err)
	}
	if err := os.MkdirAll(l.root, 0o755); err != nil {
		return fmt.Errorf("sandbox %s: create chroot %s: %w", spec.ID, l.root, err)
	}
	*cleanup = append(*cleanup, func() { os.RemoveAll(l.jailDir) })

	// The writable disk belongs to the jailed user; it is the sandbox's
	// private copy, never the shared image.
	if err := linkOrCopy(privateDisk, l.diskHost, 0o600); err != nil {
		return fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	if err := os.Chown(l.diskHost, int(j.UID), int(j.GID)); err != nil {
		return fmt.Errorf("sandbox %s: chown %s: %w", spec.ID, l.diskHost, err)
	}
	// Shared read-only files keep their owner; the jailed user only
	// needs to read them.
	shared := map[string]string{}
	if snap == nil {
		shared[spec.Kernel] = "vmlinux"
		if spec.Initrd != "" {
			shared[spec.Initrd] = "initrd"
		}
	} else {
		shared[snap.StatePath] = snapshotStateName
		shared[snap.MemPath] = snapshotMemName
	}
	if d.cfg.SeccompFilter != "" {
		shared[d.cfg.SeccompFilter] = "seccomp.bpf"
	}
	for src, name := range shared {
		if err := checkReadable(src, j.UID, j.GID); err != nil {
			return fmt.Errorf("sandbox %s: %w", spec.ID, err)
		}
		if err := linkOrCopy(src, filepath.Join(l.root, name), 0o444); err != nil {
			return fmt.Errorf("sandbox %s: %w", spec.ID, err)
		}
	}
	for _, name := range []string{logName, metricsName} {
		p := filepath.Join(l.root, name)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			return fmt.Errorf("sandbox %s: create %s: %w", spec.ID, p, err)
		}
		if err := os.Chown(p, int(j.UID), int(j.GID)); err != nil {
			return fmt.Errorf("sandbox %s: chown %s: %w", spec.ID, p, err)
		}
	}
	return nil
}

// checkJailLive rejects a chroot that still belongs to a live
// Firecracker with the same id. That is the case when its API socket
// accepts connections, or when its pid file names a live process that
// runs the chroot's copy of the binary, because a Firecracker whose socket
// file was deleted still holds its TAP and disk.
func checkJailLive(l layout) error {
	if c, err := net.DialTimeout("unix", l.apiSockHost, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("chroot %s belongs to a live firecracker (its API socket accepts connections): kill it before reusing the sandbox id", l.jailDir)
	}
	exe := filepath.Join(l.root, filepath.Base(l.execFile))
	raw, err := os.ReadFile(exe + ".pid")
	if err != nil {
		return nil
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || pid <= 0 {
		return nil
	}
	if verifyExe(pid, exe) == nil {
		return fmt.Errorf("chroot %s belongs to the live firecracker process %d: kill it before reusing the sandbox id", l.jailDir, pid)
	}
	return nil
}

// checkReadable reports whether uid:gid may read path by its mode bits.
func checkReadable(path string, uid, gid uint32) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	perm := uint32(fi.Mode().Perm())
	ok := perm&0o004 != 0 ||
		(st.Gid == gid && perm&0o040 != 0) ||
		(st.Uid == uid && perm&0o400 != 0)
	if !ok {
		return fmt.Errorf("%s is not readable by the jailed uid %d gid %d: make it world-readable or give it to group %d", path, uid, gid, gid)
	}
	return nil
}

func (d *Driver) firecrackerArgs(spec vmm.Spec, l layout) []string {
	args := []string{"--api-sock", l.apiSockArg, "--level", d.cfg.LogLevel,
		"--log-path", l.logArg, "--metrics-path", l.metricsArg}
	if d.cfg.Jailer == nil {
		args = append([]string{"--id", spec.ID}, args...)
	}
	switch {
	case d.cfg.NoSeccomp:
		args = append(args, "--no-seccomp")
	case d.cfg.SeccompFilter != "" && d.cfg.Jailer != nil:
		args = append(args, "--seccomp-filter", "/seccomp.bpf")
	case d.cfg.SeccompFilter != "":
		args = append(args, "--seccomp-filter", d.cfg.SeccompFilter)
	}
	if d.cfg.HTTPAPIMaxPayloadSize > 0 {
		args = append(args, "--http-api-max-payload-size", strconv.Itoa(d.cfg.HTTPAPIMaxPayloadSize))
	}
	if d.cfg.MMDSSizeLimit > 0 {
		args = append(args, "--mmds-size-limit", strconv.Itoa(d.cfg.MMDSSizeLimit))
	}
	return append(args, d.cfg.ExtraArgs...)
}

func (d *Driver) jailerArgs(spec vmm.Spec, l layout) []string {
	j := d.cfg.Jailer
	args := []string{"--id", spec.ID, "--exec-file", l.execFile,
		"--uid", strconv.FormatUint(uint64(j.UID), 10), "--gid", strconv.FormatUint(uint64(j.GID), 10),
		"--chroot-base-dir", filepath.Dir(filepath.Dir(l.jailDir))}
	if j.NetNS != "" {
		args = append(args, "--netns", j.NetNS)
	}
	if j.CgroupVersion != 0 {
		args = append(args, "--cgroup-version", strconv.Itoa(j.CgroupVersion))
	}
	if j.ParentCgroup != "" {
		args = append(args, "--parent-cgroup", j.ParentCgroup)
	}
	for _, c := range j.Cgroups {
		args = append(args, "--cgroup", c)
	}
	noFile := false
	for _, r := range j.ResourceLimits {
		args = append(args, "--resource-limit", r)
		noFile = noFile || len(r) > 8 && r[:8] == "no-file="
	}
	if !noFile {
		args = append(args, "--resource-limit", "no-file="+strconv.FormatUint(d.cfg.OpenFilesLimit, 10))
	}
	if j.Daemonize {
		args = append(args, "--daemonize")
	}
	if j.NewPIDNS {
		args = append(args, "--new-pid-ns")
	}
	args = append(args, "--")
	return append(args, d.firecrackerArgs(spec, l)...)
}

func (d *Driver) newClient(sock string) *api.Client {
	var opts []api.Option
	if d.cfg.APITimeout > 0 {
		opts = append(opts, api.WithTimeout(d.cfg.APITimeout))
	}
	if d.cfg.SnapshotTimeout > 0 {
		opts = append(opts, api.WithSnapshotTimeout(d.cfg.SnapshotTimeout))
	}
	return api.New(sock, opts...)
}

func (d *Driver) configureAndStart(ctx context.Context, m *Machine, spec vmm.Spec, l layout) error {
	c := m.client
	off, on := false, true
	if err := c.PutMachineConfig(ctx, api.MachineConfig{VCPUCount: spec.VCPUs, MemSizeMiB: spec.MemoryMiB,
		SMT: &off, TrackDirtyPages: &on}); err != nil {
		return err
	}
	boot := api.BootSource{KernelImagePath: spec.Kernel, InitrdPath: spec.Initrd, BootArgs: BootArgs(spec)}
	if d.cfg.Jailer != nil {
		boot.KernelImagePath = "vmlinux"
		if spec.Initrd != "" {
			boot.InitrdPath = "initrd"
		}
	}
	if err := c.PutBootSource(ctx, boot); err != nil {
		return err
	}
	if err := c.PutDrive(ctx, api.Drive{DriveID: "rootfs", PathOnHost: l.diskAPI, IsRootDevice: true}); err != nil {
		return err
	}
	if spec.TAP != "" {
		ni := api.NetworkInterface{IfaceID: "eth0", HostDevName: spec.TAP}
		if spec.MAC != nil {
			ni.GuestMAC = spec.MAC.String()
		}
		if err := c.PutNetworkInterface(ctx, ni); err != nil {
			return err
		}
		if err := d.configureMMDS(ctx, c, spec); err != nil {
			return err
		}
	}
	if err := c.PutVsock(ctx, api.Vsock{GuestCID: GuestCID, UDSPath: l.vsockAPI}); err != nil {
		return err
	}
	m.vsockAPI = l.vsockAPI
	return c.InstanceStart(ctx)
}

func (d *Driver) configureMMDS(ctx context.Context, c *api.Client, spec vmm.Spec) error {
	if d.cfg.MMDS == nil {
		return nil
	}
	version := d.cfg.MMDS.Version
	if version == "" {
		version = "V2"
	}
	if err := c.PutMMDSConfig(ctx, api.MMDSConfig{Version: version, NetworkInterfaces: []string{"eth0"}}); err != nil {
		return err
	}
	if d.cfg.MMDS.Data == nil {
		return nil
	}
	return c.PutMMDS(ctx, d.cfg.MMDS.Data(spec))
}
