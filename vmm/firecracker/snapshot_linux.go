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
		DiskPath: filepath.Join(dir, snapshotDiskName), VsockPath: m.vsockAPI, DrivePath: m.diskAPI, Version: v,
	}
	req := api.SnapshotCreate{SnapshotPath: snap.StatePath, MemFilePath: snap.MemPath, SnapshotType: api.SnapshotFull}
	if m.jailDir != "" {
		// Firecracker writes inside its chroot; the files are moved out.
		req.SnapshotPath, req.MemFilePath = snapshotStateName, snapshotMemName
	}
	for _, p := range []string{snap.StatePath, snap.MemPath, snap.DiskPath} {
		os.Remove(p)
	}
	if err := m.client.CreateSnapshot(ctx, req); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot sandbox %s: %w", m.id, err)
	}
	if m.jailDir != "" {
		for name, dst := range map[string]string{snapshotStateName: snap.StatePath, snapshotMemName: snap.MemPath} {
			if err := moveFile(filepath.Join(m.root, name), dst); err != nil {
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

// Restore starts a fresh Firecracker and loads snap into it for spec. The
// machine is left paused; call Resume. A failed load leaves Firecracker
// unusable, so the process is killed and the load is tried once more in
// a new process before Restore gives up.
//
// NOTE: Firecracker has no drive override on load: the load opens the
// drive path named in the state file. In direct mode that is the original
// sandbox's disk, which must still exist; the driver then repoints the
// drive to this sandbox's copy before returning. Jailer mode uses the
// same relative paths in every jail and needs neither.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, snap Snapshot) (*Machine, error) {
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
