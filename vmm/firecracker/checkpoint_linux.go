package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/hearthvm/hearth/vmm"
	"github.com/hearthvm/hearth/vmm/firecracker/api"
)

var (
	_ vmm.Checkpointer = (*Machine)(nil)
	_ vmm.Restorer     = (*Driver)(nil)
)

const (
	// snapshotConfigName is the driver's own file in a snapshot
	// directory. It records the paths the state file names, which
	// Restore must match or override.
	snapshotConfigName = "firecracker.json"
	// snapshotConfigFormat is the version of snapshotConfig's layout.
	snapshotConfigFormat = 1
	// ifaceID is the id of the guest's only network interface.
	ifaceID = "eth0"
	// jailRunDir is the only jail directory, relative to the jail's
	// root, that the jailed user may write.
	jailRunDir = "run/"
	// resumeTimeout bounds the resume that ends a checkpoint, which runs
	// even after the caller's context ended.
	resumeTimeout = 5 * time.Second
)

// machineInfo is what the driver remembers of a machine beyond Machine's
// fields: the spec it runs with.
type machineInfo struct {
	tap       string
	mac       net.HardwareAddr
	vcpus     int
	memoryMiB int
}

// track remembers spec for m until m's process has exited.
func (d *Driver) track(m *Machine, spec vmm.Spec) {
	d.machines.Store(m, machineInfo{tap: spec.TAP, mac: append(net.HardwareAddr(nil), spec.MAC...),
		vcpus: spec.VCPUs, memoryMiB: spec.MemoryMiB})
	go func() {
		<-m.done
		d.machines.Delete(m)
	}()
}

// info returns what the driver remembers of m; the zero value once m has
// exited.
func (m *Machine) info() machineInfo {
	v, _ := m.driver.machines.Load(m)
	info, _ := v.(machineInfo)
	return info
}

// MAC returns the guest's MAC address: the one the machine was booted
// with, or for a restored machine its snapshot's, which the guest keeps.
// It is nil without a network device, when Firecracker chose the address,
// or once the process has exited.
func (m *Machine) MAC() net.HardwareAddr {
	mac := m.info().mac
	if len(mac) == 0 {
		return nil
	}
	return append(net.HardwareAddr(nil), mac...)
}

// snapshotConfig is what Restore needs beyond vmm.Snapshot. Checkpoint
// writes it to snapshotConfigName.
type snapshotConfig struct {
	Format    int    `json:"format"`
	Version   string `json:"firecracker_version"`
	Jailed    bool   `json:"jailed"`
	VCPUs     int    `json:"vcpus"`
	MemoryMiB int    `json:"memory_mib"`
	// VsockPath, DrivePath and TAP are the vsock socket, root drive and
	// eth0 TAP as the state file names them, in Firecracker's view
	// (inside the jail, or relative to the sandbox directory). TAP is
	// empty when the machine had no network device.
	VsockPath string `json:"vsock_path"`
	DrivePath string `json:"drive_path"`
	TAP       string `json:"tap,omitempty"`
	// MAC is eth0's MAC address, which is part of the device state.
	MAC string `json:"mac,omitempty"`
}

// Checkpoint pauses the machine, writes a Full snapshot into dir (which
// must exist and be empty), copies the root disk while the machine is
// still paused, and resumes it, also when a step failed. A machine that
// was already paused stays paused. Checkpoints of one machine must not
// overlap; the caller runs them one at a time. On error the files
// Checkpoint created are removed.
//
// In jailer mode Firecracker writes the state and memory files into the
// jail's run/ directory, and they are moved into dir after the resume.
// The snapshot's files are synced to disk and made read-only: the state
// and memory files for root and, in jailer mode, the jailed group, which
// a restore hard-links them to.
//
// Creating a snapshot resets the guest's vsock device: every agent
// stream open before it is closed once the guest runs again.
//
// Took is the time from pause to resume: the state, the memory and the
// disk copy.
func (m *Machine) Checkpoint(ctx context.Context, dir string) (vmm.Snapshot, error) {
	snap, err := m.checkpoint(ctx, dir)
	if err != nil {
		return vmm.Snapshot{}, fmt.Errorf("checkpoint sandbox %s into %s: %w", m.id, dir, err)
	}
	return snap, nil
}

func (m *Machine) checkpoint(ctx context.Context, dir string) (_ vmm.Snapshot, err error) {
	dir, err = filepath.Abs(dir)
	if err != nil {
		return vmm.Snapshot{}, err
	}
	select {
	case <-m.done:
		return vmm.Snapshot{}, fmt.Errorf("firecracker has exited: %v", m.waitErr)
	default:
	}
	info := m.info()
	version, err := m.client.Version(ctx)
	if err != nil {
		return vmm.Snapshot{}, err
	}
	inst, err := m.client.DescribeInstance(ctx)
	if err != nil {
		return vmm.Snapshot{}, err
	}
	if inst.State != api.StateRunning && inst.State != api.StatePaused {
		return vmm.Snapshot{}, fmt.Errorf("machine is %q; only a started machine can be checkpointed", inst.State)
	}

	snap := vmm.Snapshot{
		Backend:        "firecracker",
		BackendVersion: version.String(),
		StateFile:      snapshotStateName,
		MemoryFile:     snapshotMemName,
		DiskFile:       snapshotDiskName,
		DiskFormat:     "raw",
		Files:          map[string]int64{},
	}
	// Where Firecracker writes the state and memory, as it is told and
	// as host paths.
	req := api.SnapshotCreate{SnapshotPath: filepath.Join(dir, snapshotStateName),
		MemFilePath: filepath.Join(dir, snapshotMemName), SnapshotType: api.SnapshotFull}
	written := []string{req.SnapshotPath, req.MemFilePath}
	if m.jailDir != "" {
		req.SnapshotPath, req.MemFilePath = jailRunDir+snapshotStateName, jailRunDir+snapshotMemName
		written = []string{filepath.Join(m.root, req.SnapshotPath), filepath.Join(m.root, req.MemFilePath)}
		for _, p := range written {
			// Leftovers of an earlier checkpoint that failed.
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return vmm.Snapshot{}, err
			}
		}
	}
	var created []string
	defer func() {
		if err != nil {
			for _, p := range created {
				os.Remove(p)
			}
		}
	}()

	// The deferred resume also covers a pause that Firecracker applied
	// after ctx ended. A machine that was paused is left paused.
	resumed := inst.State == api.StatePaused
	defer func() {
		if !resumed {
			err = errors.Join(err, m.resumeDetached(ctx))
		}
	}()
	began := time.Now()
	if !resumed {
		if err := m.Pause(ctx); err != nil {
			return vmm.Snapshot{}, err
		}
	}
	created = append(created, written...)
	if err := m.client.CreateSnapshot(ctx, req); err != nil {
		return vmm.Snapshot{}, err
	}
	saved := time.Now()
	disk := filepath.Join(dir, snapshotDiskName)
	// Firecracker does not flush the disk on snapshot; the copy reads
	// through the page cache, so it sees every write the guest made.
	if err := copyImage(filepath.Join(m.root, rootDiskName), disk, 0o600); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("copy root disk: %w", err)
	}
	created = append(created, disk)
	snap.Took = time.Since(began)
	m.driver.log.Debug("checkpoint paused steps", "sandbox", m.id, "state_and_memory", saved.Sub(began),
		"disk", time.Since(saved))
	if !resumed {
		resumed = true
		if err := m.resumeDetached(ctx); err != nil {
			return vmm.Snapshot{}, err
		}
	}

	files := []string{filepath.Join(dir, snapshotStateName), filepath.Join(dir, snapshotMemName)}
	if m.jailDir != "" {
		for i, src := range written {
			created = append(created, files[i])
			if err := moveFile(src, files[i]); err != nil {
				return vmm.Snapshot{}, err
			}
		}
	}
	if err := m.driver.protectSnapshotFiles(files); err != nil {
		return vmm.Snapshot{}, err
	}
	cfg := snapshotConfig{
		Format: snapshotConfigFormat, Version: version.String(), Jailed: m.jailDir != "",
		VCPUs: info.vcpus, MemoryMiB: info.memoryMiB,
		VsockPath: m.vsockAPI, DrivePath: m.diskAPI, TAP: info.tap,
	}
	if len(info.mac) > 0 {
		cfg.MAC = info.mac.String()
	}
	config := filepath.Join(dir, snapshotConfigName)
	created = append(created, config)
	if err := writeSnapshotConfig(config, cfg); err != nil {
		return vmm.Snapshot{}, err
	}
	paths := append(files, disk, config)
	if err := syncFiles(dir, paths); err != nil {
		return vmm.Snapshot{}, err
	}
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return vmm.Snapshot{}, err
		}
		snap.Files[filepath.Base(p)] = st.Size()
	}
	m.driver.log.Info("machine checkpointed", "sandbox", m.id, "dir", dir, "took", snap.Took)
	return snap, nil
}

// resumeDetached resumes the machine on a context that outlives ctx, so
// a cancelled checkpoint still leaves the machine running.
func (m *Machine) resumeDetached(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resumeTimeout)
	defer cancel()
	return m.Resume(ctx)
}

// protectSnapshotFiles makes the state and memory files read-only. In
// jailer mode they belong to root and the jailed group, which restores
// read through hard links in their jails; in direct mode only their
// owner may read them.
func (d *Driver) protectSnapshotFiles(paths []string) error {
	mode := os.FileMode(0o400)
	for _, p := range paths {
		if j := d.cfg.Jailer; j != nil {
			mode = 0o440
			if err := os.Chown(p, os.Getuid(), int(j.GID)); err != nil {
				return fmt.Errorf("protect snapshot file: %w", err)
			}
		}
		if err := os.Chmod(p, mode); err != nil {
			return fmt.Errorf("protect snapshot file: %w", err)
		}
	}
	return nil
}

func writeSnapshotConfig(path string, cfg snapshotConfig) error {
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write snapshot config: %w", err)
	}
	return nil
}

func readSnapshotConfig(dir string) (snapshotConfig, error) {
	path := filepath.Join(dir, snapshotConfigName)
	b, err := os.ReadFile(path)
	if err != nil {
		return snapshotConfig{}, fmt.Errorf("read snapshot config: %w", err)
	}
	var cfg snapshotConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return snapshotConfig{}, fmt.Errorf("parse snapshot config %s: %w", path, err)
	}
	if cfg.Format != snapshotConfigFormat {
		return snapshotConfig{}, fmt.Errorf("snapshot config %s has format %d, want %d: take a new snapshot with this version of hearth",
			path, cfg.Format, snapshotConfigFormat)
	}
	if cfg.VCPUs < 1 || cfg.MemoryMiB < 1 || cfg.VsockPath == "" || cfg.DrivePath == "" {
		return snapshotConfig{}, fmt.Errorf("snapshot config %s is incomplete: %d vcpus, %d MiB, vsock %q, drive %q",
			path, cfg.VCPUs, cfg.MemoryMiB, cfg.VsockPath, cfg.DrivePath)
	}
	return cfg, nil
}

// syncFiles flushes the files and then dir to stable storage.
func syncFiles(dir string, paths []string) error {
	for _, p := range append(paths, dir) {
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("sync snapshot: %w", err)
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("sync snapshot file %s: %w", p, err)
		}
	}
	return nil
}

// Restore starts a machine from the snapshot in snapDir, written by
// Checkpoint. The machine gets spec's ID, directory, sockets and TAP, and
// its own copy of the snapshot's disk in spec.Dir (the snapshot's disk is
// never written). It runs resumed when Restore returns; the guest's clock
// lags by the time since the checkpoint until the caller sets it.
//
// spec.VCPUs and spec.MemoryMiB may be 0, meaning the snapshot's values;
// other values must equal them. spec.Kernel, spec.Initrd and
// spec.RootImage are not used: the guest keeps running the kernel it
// had. The network device keeps the snapshot's MAC address, which is
// part of the device state, so spec.MAC is ignored and MAC returns the
// address in use. A snapshot with a network device needs a spec with a
// TAP, and one without needs a spec without.
//
// The load overrides what the state file names and this machine has
// elsewhere: the vsock socket (vsock_override, Firecracker 1.16.0 and
// later) and eth0's TAP (network_overrides, 1.12.0 and later). When the
// snapshot's version lacks an override that is needed, Restore fails
// with an error wrapping api.ErrUnsupported before it creates or starts
// anything. In jailer mode every path is the same in each jail, so only
// a differing TAP needs an override.
//
// Firecracker has no drive override: the load opens the drive path the
// state file names. Checkpoint records a path relative to the jail's
// root or, in direct mode, to the sandbox directory, where this
// machine's own disk copy is, so the origin sandbox may be gone.
//
// Firecracker maps the snapshot's memory file privately for the
// machine's whole life: it must not change or be removed while the
// machine runs. A failed load leaves Firecracker unusable, so the process
// is killed and the load tried once more in a new one. On error nothing
// Restore started is left running.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, snapDir string, snap vmm.Snapshot) (vmm.Machine, error) {
	m, err := d.restore(ctx, spec, snapDir, snap)
	if err != nil {
		return nil, fmt.Errorf("restore sandbox %s from snapshot %s: %w", spec.ID, snapDir, err)
	}
	return m, nil
}

func (d *Driver) restore(ctx context.Context, spec vmm.Spec, snapDir string, vsnap vmm.Snapshot) (_ *Machine, err error) {
	began := time.Now()
	if vsnap.Backend != d.Name() {
		return nil, fmt.Errorf("snapshot was taken by the %q driver, not by firecracker", vsnap.Backend)
	}
	if vsnap.DiskFormat != "raw" {
		return nil, fmt.Errorf("snapshot disk format is %q, want raw", vsnap.DiskFormat)
	}
	snapDir, err = filepath.Abs(snapDir)
	if err != nil {
		return nil, err
	}
	cfg, err := readSnapshotConfig(snapDir)
	if err != nil {
		return nil, err
	}
	snap, err := snapshotFiles(snapDir, vsnap, cfg)
	if err != nil {
		return nil, err
	}
	if spec, err = restoreSpec(spec, cfg); err != nil {
		return nil, err
	}
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	l, err := d.layout(spec)
	if err != nil {
		return nil, err
	}
	if err := d.checkLoadable(spec, l, snap); err != nil {
		return nil, err
	}

	m, err := d.RestoreSnapshot(ctx, spec, snap)
	if err != nil {
		return nil, err
	}
	if err := m.Resume(ctx); err != nil {
		if kerr := m.Kill(); kerr != nil {
			err = errors.Join(err, kerr)
		}
		os.Remove(filepath.Join(spec.Dir, rootDiskName))
		return nil, err
	}
	d.log.Info("machine restored", "sandbox", spec.ID, "pid", m.PID(), "snapshot", snapDir,
		"took", time.Since(began))
	return m, nil
}

// snapshotFiles checks the snapshot's files and describes them for
// RestoreSnapshot.
func snapshotFiles(dir string, vsnap vmm.Snapshot, cfg snapshotConfig) (Snapshot, error) {
	version, err := api.ParseVersion(cfg.Version)
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot config: %w", err)
	}
	if vsnap.BackendVersion != "" && vsnap.BackendVersion != cfg.Version {
		return Snapshot{}, fmt.Errorf("snapshot record names firecracker %s, but its config names %s: the snapshot is damaged",
			vsnap.BackendVersion, cfg.Version)
	}
	snap := Snapshot{VsockPath: cfg.VsockPath, DrivePath: cfg.DrivePath, TAP: cfg.TAP, Version: version}
	for _, f := range []struct {
		kind, name string
		path       *string
	}{
		{"state", vsnap.StateFile, &snap.StatePath},
		{"memory", vsnap.MemoryFile, &snap.MemPath},
		{"disk", vsnap.DiskFile, &snap.DiskPath},
	} {
		if f.name == "" || f.name != filepath.Base(f.name) || f.name == "." || f.name == ".." {
			return Snapshot{}, fmt.Errorf("invalid snapshot %s file name %q: want a file name inside the snapshot directory", f.kind, f.name)
		}
		*f.path = filepath.Join(dir, f.name)
		if _, err := os.Stat(*f.path); err != nil {
			return Snapshot{}, fmt.Errorf("snapshot %s file: %w", f.kind, err)
		}
	}
	st, _ := os.Stat(snap.MemPath)
	if want := int64(cfg.MemoryMiB) << 20; st.Size() != want {
		return Snapshot{}, fmt.Errorf("snapshot memory file %s has %d bytes, want %d for %d MiB: the snapshot is damaged",
			snap.MemPath, st.Size(), want, cfg.MemoryMiB)
	}
	return snap, nil
}

// restoreSpec checks spec against the snapshot's machine and fills in
// what the snapshot fixes.
func restoreSpec(spec vmm.Spec, cfg snapshotConfig) (vmm.Spec, error) {
	if spec.VCPUs == 0 {
		spec.VCPUs = cfg.VCPUs
	}
	if spec.MemoryMiB == 0 {
		spec.MemoryMiB = cfg.MemoryMiB
	}
	if spec.VCPUs != cfg.VCPUs || spec.MemoryMiB != cfg.MemoryMiB {
		return spec, fmt.Errorf("spec asks for %d vcpus and %d MiB, but the snapshot has %d vcpus and %d MiB: use the snapshot's values",
			spec.VCPUs, spec.MemoryMiB, cfg.VCPUs, cfg.MemoryMiB)
	}
	switch {
	case spec.TAP != "" && cfg.TAP == "":
		return spec, fmt.Errorf("spec has tap %q, but the snapshot has no network device: restore without a tap", spec.TAP)
	case spec.TAP == "" && cfg.TAP != "":
		return spec, fmt.Errorf("the snapshot has a network device on tap %q, but the spec has no tap: restore with a tap", cfg.TAP)
	}
	spec.MAC = nil
	if cfg.MAC != "" {
		mac, err := net.ParseMAC(cfg.MAC)
		if err != nil {
			return spec, fmt.Errorf("snapshot config has invalid mac address %q: %w", cfg.MAC, err)
		}
		spec.MAC = mac
	}
	return spec, nil
}

// checkLoadable fails before anything is created when the load cannot
// succeed: an override the snapshot's Firecracker version lacks, or a
// drive path in the state file that is not this machine's and is gone.
func (d *Driver) checkLoadable(spec vmm.Spec, l layout, snap Snapshot) error {
	need := func(field string, since api.Version, what string) error {
		if snap.Version.AtLeast(since) {
			return nil
		}
		return fmt.Errorf("%s; %s needs firecracker %s or later, and the snapshot was taken with %s: %w",
			what, field, since, snap.Version, api.ErrUnsupported)
	}
	if snap.VsockPath != l.vsockAPI {
		what := fmt.Sprintf("the snapshot's vsock socket is %s and this machine's is %s", snap.VsockPath, l.vsockAPI)
		if d.cfg.Jailer == nil {
			what += " (restore into the origin's sandbox directory, or run under the jailer)"
		}
		if err := need("vsock_override", api.VersionVsockOverride, what); err != nil {
			return err
		}
	}
	if snap.TAP != "" && snap.TAP != spec.TAP {
		what := fmt.Sprintf("the snapshot's tap is %s and this machine's is %s", snap.TAP, spec.TAP)
		if err := need("network_overrides", api.VersionNetworkOverrides, what); err != nil {
			return err
		}
	}
	if snap.DrivePath != l.diskAPI {
		p := snap.DrivePath
		switch {
		case l.jailDir != "":
			p = filepath.Join(l.root, filepath.Clean("/"+p))
		case !filepath.IsAbs(p):
			p = filepath.Join(spec.Dir, p)
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("the snapshot's state file names the drive %s, which firecracker opens during the load and cannot override: %w; take a new snapshot",
				snap.DrivePath, err)
		}
	}
	return nil
}
