package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hearthvm/hearth/vmm"
	"github.com/hearthvm/hearth/vmm/firecracker/api"
)

// File names of a snapshot.
const (
	snapshotStateName = "snapshot.state"
	snapshotMemName   = "snapshot.mem"
	snapshotDiskName  = "snapshot.ext4"
)

// Snapshot is a paused machine written to disk: Firecracker's state and
// memory files, plus a copy of the root disk, which Firecracker does not
// include.
type Snapshot struct {
	StatePath string
	MemPath   string
	DiskPath  string
	// VsockPath and DrivePath are the paths the machine's Firecracker was
	// given. The state file names them, so a restore must provide the same
	// paths or override them.
	VsockPath string
	DrivePath string
	// TAP is the host device of eth0 that the state file names; empty
	// when the machine had no network device. A restore into another
	// TAP overrides it.
	TAP string
	// Version is the Firecracker version that wrote the snapshot; a
	// snapshot generally loads only in the same version.
	Version api.Version
}

// CreateSnapshot writes a snapshot of the paused machine into dir
// (Config.DataDir, or the sandbox directory, when empty) and copies the
// root disk while the machine is still paused.
func (m *Machine) CreateSnapshot(ctx context.Context, dir string) (Snapshot, error) {
	info, err := m.client.DescribeInstance(ctx)
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot sandbox %s: %w", m.id, err)
	}
	if info.State != api.StatePaused {
		return Snapshot{}, fmt.Errorf("snapshot sandbox %s: machine is %q; pause it first", m.id, info.State)
	}
	if dir == "" {
		dir = m.driver.cfg.DataDir
	}
	if dir == "" {
		dir = m.dir
	}
	v, err := m.client.Version(ctx)
	if err != nil {
		return Snapshot{}, err
	}
	snap := Snapshot{
		StatePath: filepath.Join(dir, snapshotStateName), MemPath: filepath.Join(dir, snapshotMemName),
		DiskPath: filepath.Join(dir, snapshotDiskName), VsockPath: m.vsockAPI, DrivePath: m.diskAPI,
		TAP: m.info().tap, Version: v,
	}
	req := api.SnapshotCreate{SnapshotPath: snap.StatePath, MemFilePath: snap.MemPath, SnapshotType: api.SnapshotFull}
	if m.jailDir != "" {
		// Firecracker writes inside its chroot, in run/, the only
		// directory the jailed user may write; the files are moved out.
		req.SnapshotPath, req.MemFilePath = jailRunDir+snapshotStateName, jailRunDir+snapshotMemName
	}
	for _, p := range []string{snap.StatePath, snap.MemPath, snap.DiskPath} {
		os.Remove(p)
	}
	if err := m.client.CreateSnapshot(ctx, req); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot sandbox %s: %w", m.id, err)
	}
	if m.jailDir != "" {
		for name, dst := range map[string]string{snapshotStateName: snap.StatePath, snapshotMemName: snap.MemPath} {
			if err := moveFile(filepath.Join(m.root, jailRunDir, name), dst); err != nil {
				return Snapshot{}, fmt.Errorf("snapshot sandbox %s: %w", m.id, err)
			}
		}
	}
	if err := copyImage(filepath.Join(m.root, rootDiskName), snap.DiskPath, 0o600); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot sandbox %s: %w", m.id, err)
	}
	return snap, nil
}

func moveFile(src, dst string) error {
	if err := os.Rename(src, dst); err == nil {
		return nil
	}
	if err := copyImage(src, dst, 0o600); err != nil {
		return err
	}
	return os.Remove(src)
}

// RestoreSnapshot starts a fresh Firecracker and loads snap into it for
// spec. The machine is left paused; call Resume. A failed load leaves Firecracker
// unusable, so the process is killed and the load is tried once more in
// a new process before Restore gives up.
//
// NOTE: Firecracker has no drive override on load: the load opens the
// drive path named in the state file. The driver names the drive by a
// path relative to the jail's root, or in direct mode to the sandbox
// directory, so each restore opens its own copy. A snapshot that names
// another path needs that file at load time; the driver then repoints
// the drive to this sandbox's copy before returning.
func (d *Driver) RestoreSnapshot(ctx context.Context, spec vmm.Spec, snap Snapshot) (*Machine, error) {
	var errs []error
	for attempt := 1; attempt <= 2; attempt++ {
		m, err := d.start(ctx, spec, &snap)
		if err == nil {
			return m, nil
		}
		errs = append(errs, fmt.Errorf("attempt %d: %w", attempt, err))
		if errors.Is(err, api.ErrUnsupported) || ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("restore sandbox %s: %w", spec.ID, errors.Join(errs...))
}

func (d *Driver) load(ctx context.Context, m *Machine, spec vmm.Spec, l layout, snap *Snapshot) error {
	req := api.SnapshotLoad{
		SnapshotPath:    snap.StatePath,
		MemBackend:      api.MemBackend{BackendType: api.MemBackendFile, BackendPath: snap.MemPath},
		TrackDirtyPages: true,
	}
	if d.cfg.Jailer != nil {
		req.SnapshotPath, req.MemBackend.BackendPath = snapshotStateName, snapshotMemName
	}
	if snap.VsockPath != l.vsockAPI {
		// Only 1.16.0 and later accept vsock_override; the client returns
		// ErrUnsupported before sending anything on older versions.
		req.VsockOverride = &api.VsockOverride{UDSPath: l.vsockAPI}
	}
	if snap.TAP != "" && spec.TAP != "" && snap.TAP != spec.TAP {
		// 1.12.0 and later; the guest keeps the MAC address it had.
		req.NetworkOverrides = []api.NetworkOverride{{IfaceID: ifaceID, HostDevName: spec.TAP}}
	}
	if !snap.Version.IsZero() {
		v, err := m.client.Version(ctx)
		if err != nil {
			return err
		}
		if v != snap.Version {
			return fmt.Errorf("snapshot was written by firecracker %s, but this is firecracker %s: restore it with %s: %w",
				snap.Version, v, snap.Version, api.ErrUnsupported)
		}
	}
	if err := m.client.LoadSnapshot(ctx, req); err != nil {
		return err
	}
	m.vsockAPI = l.vsockAPI
	if snap.DrivePath != l.diskAPI {
		if err := m.client.PatchDrive(ctx, api.DrivePatch{DriveID: "rootfs", PathOnHost: l.diskAPI}); err != nil {
			return err
		}
	}
	return nil
}
