package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hearthvm/hearth/vmm"
	"github.com/hearthvm/hearth/vmm/qemu/qmp"
)

var (
	_ vmm.Pauser       = (*Machine)(nil)
	_ vmm.Checkpointer = (*Machine)(nil)
	_ vmm.Restorer     = (*Driver)(nil)
)

// Files of a snapshot directory.
const (
	snapStateFile  = "state"      // QEMU's migration stream
	snapMemoryFile = "memory"     // sparse guest RAM, absent when the stream has it
	snapDiskFile   = "disk.qcow2" // copy of the root disk overlay
	snapConfigFile = "qemu.json"  // snapshotConfig
)

// snapshotFormat is the version of snapshotConfig's layout.
const snapshotFormat = 1

// Migration settings.
const (
	// migrationBandwidth replaces QEMU's default max-bandwidth of
	// 128 MiB/s, which also throttles the migration of a stopped VM. It
	// is in bytes per second.
	migrationBandwidth = 1 << 40
	// migrationPoll is the interval of query-migrate while a migration
	// runs.
	migrationPoll = 2 * time.Millisecond
	// resumeTimeout bounds the cont that ends a checkpoint, which runs
	// even after the caller's context ended.
	resumeTimeout = 5 * time.Second
	// saveFDName and loadFDName name the descriptors passed with getfd.
	saveFDName = "hearth-save"
	loadFDName = "hearth-load"
)

// snapshotConfig is what Restore needs beyond vmm.Snapshot to rebuild a
// machine with the device set of the one checkpointed. Checkpoint writes
// it to snapConfigFile.
type snapshotConfig struct {
	Format int `json:"format"`
	// QEMUVersion is the version from the QMP greeting. A migration
	// stream of the microvm machine loads only into the same version.
	QEMUVersion string `json:"qemu_version"`
	Accel       Accel  `json:"accel"`
	VCPUs       int    `json:"vcpus"`
	MemoryMiB   int    `json:"memory_mib"`
	AgentPort   string `json:"agent_port"`
	// RootImage is the absolute path of the shared raw image that the
	// snapshot's disk copy is backed by; empty when the machine had no
	// disk.
	RootImage string `json:"root_image,omitempty"`
	// Net is whether the machine had a network device.
	Net bool `json:"net"`
	// MAC is the network device's MAC address, which is part of the
	// device state in the stream.
	MAC string `json:"mac,omitempty"`
	// IgnoreShared is whether the stream was written with the migration
	// capability x-ignore-shared, leaving the RAM to the memory file.
	// Without it the RAM is in the stream.
	IgnoreShared bool `json:"ignore_shared"`
}

// Checkpoint pauses the machine, writes a snapshot into dir (which must
// exist and should be empty) and resumes the machine, also when writing
// failed. A machine that was already paused stays stopped: QEMU then
// reports the run state "postmigrate", with the block devices inactive,
// until Resume (QMP cont) runs it and reactivates them. Checkpoints of
// one machine run one at a time; Pause and Resume must not be called
// while one runs. On error the files Checkpoint created are removed.
//
// The snapshot holds QEMU's migration stream, the guest RAM and a copy of
// the root disk overlay. For a booted machine the RAM is the memfd QEMU
// maps shared: the stream is written with x-ignore-shared, so it holds
// only the device state (about 70 KB), and the memfd's pages are copied
// into the memory file. A restored machine maps its snapshot's memory
// file privately, which the x-ignore-shared capability does not skip, so
// its checkpoint writes the RAM into the stream and has no memory file.
//
// QEMU drains and flushes the block devices on stop, and the migration's
// completion inactivates them, which writes out the qcow2 caches, so the
// overlay is consistent when it is copied. The copy of a restored
// machine's overlay is backed by its own snapshot's disk; it is rebased
// onto the shared raw image after the machine resumed, so every snapshot
// directory depends only on the raw image.
//
// Took is the time from stop to cont: the migration plus the copies of
// RAM and disk. The snapshot's files are synced to disk after the machine
// resumed.
func (m *Machine) Checkpoint(ctx context.Context, dir string) (vmm.Snapshot, error) {
	snap, err := m.checkpoint(ctx, dir)
	if err != nil {
		return vmm.Snapshot{}, fmt.Errorf("checkpoint %s into %s: %w", m.id, dir, err)
	}
	return snap, nil
}

func (m *Machine) checkpoint(ctx context.Context, dir string) (_ vmm.Snapshot, err error) {
	m.checkpointMu.Lock()
	defer m.checkpointMu.Unlock()

	dir, err = filepath.Abs(dir)
	if err != nil {
		return vmm.Snapshot{}, err
	}
	if m.exited() {
		return vmm.Snapshot{}, errors.New("qemu has exited")
	}
	cfg := m.snapshotConfig()
	status, err := m.runStatus(ctx)
	if err != nil {
		return vmm.Snapshot{}, err
	}
	if err := m.prepareMigration(ctx, cfg.IgnoreShared); err != nil {
		return vmm.Snapshot{}, err
	}

	snap := vmm.Snapshot{
		Backend:        "qemu",
		BackendVersion: cfg.QEMUVersion,
		StateFile:      snapStateFile,
		Files:          map[string]int64{},
	}
	if cfg.IgnoreShared {
		snap.MemoryFile = snapMemoryFile
	}
	if cfg.RootImage != "" {
		snap.DiskFile, snap.DiskFormat = snapDiskFile, "qcow2"
	}
	var created []string
	defer func() {
		if err != nil {
			removeFiles(created...)
		}
	}()
	add := func(name string) string {
		created = append(created, filepath.Join(dir, name))
		return filepath.Join(dir, name)
	}

	// The deferred resume also covers a stop that QEMU ran after ctx
	// ended. A machine that was not running is left stopped.
	resumed := status != "running"
	defer func() {
		if !resumed {
			err = errors.Join(err, m.resumeDetached(ctx))
		}
	}()
	began := time.Now()
	if err := m.Pause(ctx); err != nil {
		return vmm.Snapshot{}, err
	}

	if err := m.saveState(ctx, add(snap.StateFile)); err != nil {
		return vmm.Snapshot{}, err
	}
	saved := time.Now()
	if snap.MemoryFile != "" {
		if err := copyFile(m.memFile, add(snap.MemoryFile), false); err != nil {
			return vmm.Snapshot{}, fmt.Errorf("copy guest memory: %w", err)
		}
	}
	copiedMemory := time.Now()
	if snap.DiskFile != "" {
		if err := copyPath(m.launch.Disk, add(snap.DiskFile), true); err != nil {
			return vmm.Snapshot{}, fmt.Errorf("copy root disk: %w", err)
		}
	}
	snap.Took = time.Since(began)
	m.log.Debug("checkpoint paused steps", "state", saved.Sub(began),
		"memory", copiedMemory.Sub(saved), "disk", time.Since(copiedMemory))
	if !resumed {
		resumed = true
		if err := m.resumeDetached(ctx); err != nil {
			return vmm.Snapshot{}, err
		}
	}

	if snap.DiskFile != "" && m.snapshotBase != nil {
		if err := m.rebaseDisk(ctx, filepath.Join(dir, snap.DiskFile), cfg.RootImage); err != nil {
			return vmm.Snapshot{}, err
		}
	}
	if err := writeSnapshotConfig(add(snapConfigFile), cfg); err != nil {
		return vmm.Snapshot{}, err
	}
	if err := syncFiles(dir, created); err != nil {
		return vmm.Snapshot{}, err
	}
	for _, path := range created {
		st, err := os.Stat(path)
		if err != nil {
			return vmm.Snapshot{}, err
		}
		snap.Files[filepath.Base(path)] = st.Size()
	}
	m.log.Info("machine checkpointed", "dir", dir, "took", snap.Took, "state_bytes", snap.Files[snap.StateFile])
	return snap, nil
}

// snapshotConfig returns the description of this machine's device set.
func (m *Machine) snapshotConfig() snapshotConfig {
	s := m.launch.Spec
	cfg := snapshotConfig{
		Format:       snapshotFormat,
		QEMUVersion:  m.qmp.Version().String(),
		Accel:        m.launch.Accel,
		VCPUs:        s.VCPUs,
		MemoryMiB:    s.MemoryMiB,
		AgentPort:    m.launch.AgentPort,
		Net:          s.TAP != "" || m.launch.NetNoBackend,
		IgnoreShared: m.launch.Memory.Shared,
	}
	if cfg.Net {
		cfg.MAC = s.MAC.String()
	}
	switch {
	case m.snapshotBase != nil:
		cfg.RootImage = m.snapshotBase.RootImage
	case m.launch.Disk != "":
		cfg.RootImage, _ = filepath.Abs(s.RootImage)
	}
	return cfg
}

func (m *Machine) runStatus(ctx context.Context) (string, error) {
	raw, err := m.qmp.Execute(ctx, "query-status", nil)
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return "", fmt.Errorf("decode query-status reply %s: %w", raw, err)
	}
	return st.Status, nil
}

// prepareMigration raises the bandwidth limit and sets x-ignore-shared.
func (m *Machine) prepareMigration(ctx context.Context, ignoreShared bool) error {
	params := map[string]any{"max-bandwidth": migrationBandwidth}
	if _, err := m.qmp.Execute(ctx, "migrate-set-parameters", params); err != nil {
		return err
	}
	return m.setIgnoreShared(ctx, ignoreShared)
}

func (m *Machine) setIgnoreShared(ctx context.Context, on bool) error {
	caps := map[string]any{"capabilities": []map[string]any{
		{"capability": "x-ignore-shared", "state": on},
	}}
	_, err := m.qmp.Execute(ctx, "migrate-set-capabilities", caps)
	return err
}

// resumeDetached resumes the machine on a context that outlives ctx, so
// a cancelled checkpoint still leaves the machine running.
func (m *Machine) resumeDetached(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resumeTimeout)
	defer cancel()
	return m.Resume(ctx)
}

// saveState writes the migration stream of the stopped machine to a new
// file at path, passing its descriptor to QEMU with getfd.
func (m *Machine) saveState(ctx context.Context, path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create state file: %w", err)
	}
	defer f.Close()

	if _, err := m.qmp.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": saveFDName}, f); err != nil {
		return err
	}
	if _, err := m.qmp.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + saveFDName}); err != nil {
		m.closeFD(saveFDName)
		return err
	}
	if err := m.waitMigration(ctx, true); err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	return nil
}

// closeFD drops a descriptor that getfd passed but no command used.
func (m *Machine) closeFD(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), quitTimeout)
	defer cancel()
	m.qmp.Execute(ctx, "closefd", map[string]any{"fdname": name})
}

// waitMigration polls query-migrate until the migration completed or
// failed, QEMU exited, or ctx ended. When ctx ends during an outgoing
// migration it cancels that migration.
func (m *Machine) waitMigration(ctx context.Context, outgoing bool) error {
	for {
		raw, err := m.qmp.Execute(ctx, "query-migrate", nil)
		if err != nil {
			if errors.Is(err, qmp.ErrClosed) {
				// QEMU closes QMP when it exits, as it does after a failed
				// load, and its log gives the reason.
				select {
				case <-m.done:
				case <-time.After(quitTimeout):
				}
			}
			if m.exited() {
				return fmt.Errorf("qemu exited: %s", m.logTail())
			}
			if ctx.Err() != nil && outgoing {
				m.cancelMigration()
			}
			return err
		}
		var st struct {
			Status string `json:"status"`
			Error  string `json:"error-desc"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return fmt.Errorf("decode query-migrate reply %s: %w", raw, err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.Error)
		}

		select {
		case <-m.done:
			return fmt.Errorf("qemu exited: %s", m.logTail())
		case <-ctx.Done():
			if outgoing {
				m.cancelMigration()
			}
			return ctx.Err()
		case <-time.After(migrationPoll):
		}
	}
}

// cancelMigration cancels a running outgoing migration and waits until
// QEMU reports it ended, so the caller can resume the machine.
func (m *Machine) cancelMigration() {
	ctx, cancel := context.WithTimeout(context.Background(), resumeTimeout)
	defer cancel()
	if _, err := m.qmp.Execute(ctx, "migrate_cancel", nil); err != nil {
		return
	}
	for ctx.Err() == nil {
		raw, err := m.qmp.Execute(ctx, "query-migrate", nil)
		if err != nil || !strings.Contains(string(raw), `"active"`) && !strings.Contains(string(raw), `"cancelling"`) {
			return
		}
		time.Sleep(migrationPoll)
	}
}

// rebaseDisk makes the snapshot disk at path independent of the snapshot
// the machine was restored from: qemu-img rebase in safe mode copies into
// it every cluster in which the old backing chain differs from image.
func (m *Machine) rebaseDisk(ctx context.Context, path, image string) error {
	cmd := exec.CommandContext(ctx, m.qemuImg, "rebase", "-q", "-f", "qcow2", "-b", image, "-F", "raw", path)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("rebase disk copy %s onto %s: %w: %s", path, image, err, bytesTrim(out))
	}
	return nil
}

func writeSnapshotConfig(path string, cfg snapshotConfig) error {
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write snapshot config: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write snapshot config %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write snapshot config %s: %w", path, err)
	}
	return nil
}

func readSnapshotConfig(dir string) (snapshotConfig, error) {
	path := filepath.Join(dir, snapConfigFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return snapshotConfig{}, fmt.Errorf("read snapshot config: %w", err)
	}
	var cfg snapshotConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return snapshotConfig{}, fmt.Errorf("parse snapshot config %s: %w", path, err)
	}
	if cfg.Format != snapshotFormat {
		return snapshotConfig{}, fmt.Errorf("snapshot config %s has format %d, want %d: take a new snapshot with this version of hearth",
			path, cfg.Format, snapshotFormat)
	}
	if cfg.VCPUs < 1 || cfg.MemoryMiB < 1 || cfg.AgentPort == "" {
		return snapshotConfig{}, fmt.Errorf("snapshot config %s is incomplete: %d vcpus, %d MiB, agent port %q",
			path, cfg.VCPUs, cfg.MemoryMiB, cfg.AgentPort)
	}
	if cfg.Accel != AccelKVM && cfg.Accel != AccelTCG {
		return snapshotConfig{}, fmt.Errorf("snapshot config %s has invalid accel %q", path, cfg.Accel)
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

func copyPath(src, dst string, reflink bool) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	return copyFile(f, dst, reflink)
}

// Restore starts a machine from the snapshot in snapDir. The machine gets
// spec's ID, directory, sockets and TAP, its own qcow2 overlay on the
// snapshot's disk copy (which is never written), and the snapshot's
// device set: the same vCPUs, memory size, agent port, disk and network
// device. It runs resumed when Restore returns, and the agent serves
// a new serial session once the host dials it. The guest's clock lags by
// the time since the checkpoint until the manager sets it.
//
// spec.VCPUs and spec.MemoryMiB may be 0, meaning the snapshot's values;
// other values must equal them. spec.RootImage is not used: the disk
// copy's backing file is the raw image recorded at checkpoint time.
// spec.Kernel and spec.Initrd must exist because QEMU loads them at
// start, but the guest keeps running the kernel it had, with its
// original command line. The network device keeps the snapshot's MAC
// address, which is part of the migrated device state (QEMU's virtio-net
// state overwrites the command line's mac= on load); spec.MAC is
// ignored and MAC returns the address in use. A snapshot with a network
// device restores into a spec without TAP with that device unconnected;
// a snapshot without one cannot restore into a spec with a TAP.
//
// With a memory file, QEMU maps it privately (share=off) for the
// machine's whole life: the guest's writes go to copy-on-write pages, so
// one snapshot restores any number of times, but its memory file must
// not change or be removed while a restored machine runs. Otherwise the
// RAM is loaded from the stream into a new memfd.
//
// On error Restore kills and reaps the QEMU it started and removes the
// files it created in spec.Dir.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, snapDir string, snap vmm.Snapshot) (vmm.Machine, error) {
	m, err := d.restore(ctx, spec, snapDir, snap)
	if err != nil {
		return nil, fmt.Errorf("restore %s from snapshot %s: %w", spec.ID, snapDir, err)
	}
	return m, nil
}

func (d *Driver) restore(ctx context.Context, spec vmm.Spec, snapDir string, snap vmm.Snapshot) (_ *Machine, err error) {
	began := time.Now()
	if snap.Backend != d.Name() {
		return nil, fmt.Errorf("snapshot was taken by the %q driver, not by qemu", snap.Backend)
	}
	snapDir, err = filepath.Abs(snapDir)
	if err != nil {
		return nil, err
	}
	cfg, err := readSnapshotConfig(snapDir)
	if err != nil {
		return nil, err
	}
	if spec, err = restoreSpec(spec, cfg); err != nil {
		return nil, err
	}
	dir, err := checkSpec(spec)
	if err != nil {
		return nil, err
	}

	l := launch{
		Spec:         spec,
		Accel:        cfg.Accel,
		AgentPort:    cfg.AgentPort,
		Paths:        pathsIn(dir),
		ExtraArgs:    d.cfg.ExtraArgs,
		Incoming:     true,
		NetNoBackend: cfg.Net && spec.TAP == "",
	}
	if l.Accel == AccelTCG {
		if l.TSCKHz, err = d.hostTSC(); err != nil {
			return nil, err
		}
	}
	state, err := openSnapshotFile(snapDir, "state", snap.StateFile)
	if err != nil {
		return nil, err
	}
	defer state.Close()
	if err := d.restoreMemory(&l, snapDir, snap, cfg); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && l.MemFile != nil {
			l.MemFile.Close() // also done by start if it got that far
		}
	}()
	if _, err := buildArgs(l); err != nil {
		return nil, err
	}
	if err := checkFree(l.Paths); err != nil {
		return nil, err
	}

	if cfg.RootImage != "" {
		if err := d.restoreDisk(ctx, &l, snapDir, snap, cfg); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				os.Remove(l.Disk)
			}
		}()
	}

	m, err := d.start(ctx, l)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.Kill()
			removeFiles(l.Paths.Console, l.Paths.QEMULog)
		}
	}()
	m.snapshotBase = &cfg
	if err := m.loadState(ctx, state, cfg); err != nil {
		return nil, err
	}

	d.log.Info("machine restored", "sandbox", spec.ID, "pid", m.PID(), "snapshot", snapDir,
		"took", time.Since(began))
	return m, nil
}

// restoreSpec checks spec against the snapshot's device set and fills in
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
	if spec.TAP != "" && !cfg.Net {
		return spec, fmt.Errorf("spec has tap %q, but the snapshot has no network device: restore without a tap", spec.TAP)
	}
	spec.MAC = nil
	if cfg.Net {
		mac, err := net.ParseMAC(cfg.MAC)
		if err != nil {
			return spec, fmt.Errorf("snapshot config has invalid mac address %q: %w", cfg.MAC, err)
		}
		spec.MAC = mac
	}
	// The disk comes from the snapshot; its backing image is checked
	// where the overlay is created.
	spec.RootImage = ""
	return spec, nil
}

// openSnapshotFile opens a file named in vmm.Snapshot, which must be a
// plain name inside dir.
func openSnapshotFile(dir, kind, name string) (*os.File, error) {
	path, err := snapshotPath(dir, kind, name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open snapshot %s file: %w", kind, err)
	}
	return f, nil
}

func snapshotPath(dir, kind, name string) (string, error) {
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return "", fmt.Errorf("invalid snapshot %s file name %q: want a file name inside the snapshot directory", kind, name)
	}
	return filepath.Join(dir, name), nil
}

// restoreMemory sets l's memory backend: the snapshot's memory file
// mapped privately, or a new memfd when the RAM is in the stream.
func (d *Driver) restoreMemory(l *launch, snapDir string, snap vmm.Snapshot, cfg snapshotConfig) error {
	if !cfg.IgnoreShared {
		f, err := newGuestMemory(l.Spec.ID, l.Spec.MemoryMiB)
		if err != nil {
			return err
		}
		l.MemFile = f
		l.Memory = memoryBackend{Path: memFilePath, Shared: true}
		return nil
	}

	path, err := snapshotPath(snapDir, "memory", snap.MemoryFile)
	if err != nil {
		return err
	}
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("snapshot memory file: %w", err)
	}
	if want := int64(cfg.MemoryMiB) << 20; st.Size() != want {
		return fmt.Errorf("snapshot memory file %s has %d bytes, want %d for %d MiB: the snapshot is damaged",
			path, st.Size(), want, cfg.MemoryMiB)
	}
	l.Memory = memoryBackend{Path: path, Shared: false}
	return nil
}

// restoreDisk creates the machine's overlay on the snapshot's disk copy.
func (d *Driver) restoreDisk(ctx context.Context, l *launch, snapDir string, snap vmm.Snapshot, cfg snapshotConfig) error {
	if snap.DiskFormat != "qcow2" {
		return fmt.Errorf("snapshot disk format is %q, want qcow2", snap.DiskFormat)
	}
	path, err := snapshotPath(snapDir, "disk", snap.DiskFile)
	if err != nil {
		return err
	}
	if err := checkAsset("root image", cfg.RootImage); err != nil {
		return fmt.Errorf("backing image of the snapshot disk: %w", err)
	}
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("snapshot disk file: %w", err)
	}
	l.Disk = l.Paths.Overlay
	l.Spec.RootImage = cfg.RootImage
	return d.createOverlay(ctx, path, "qcow2", l.Disk)
}

// loadState feeds the stream in state to QEMU, which waits for it under
// -incoming defer, and resumes the guest. QEMU 7.2 exits when the stream
// does not load.
func (m *Machine) loadState(ctx context.Context, state *os.File, cfg snapshotConfig) error {
	if got := m.qmp.Version().String(); got != cfg.QEMUVersion {
		return fmt.Errorf("snapshot was taken with qemu %s, but this is qemu %s: restore it with qemu %s",
			cfg.QEMUVersion, got, cfg.QEMUVersion)
	}
	if err := m.setIgnoreShared(ctx, cfg.IgnoreShared); err != nil {
		return err
	}
	if _, err := m.qmp.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": loadFDName}, state); err != nil {
		return err
	}
	if _, err := m.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + loadFDName}); err != nil {
		m.closeFD(loadFDName)
		return err
	}
	if err := m.waitMigration(ctx, false); err != nil {
		return fmt.Errorf("load state file %s: %w", state.Name(), err)
	}
	return m.Resume(ctx)
}

// MAC returns the guest's MAC address, nil without a network device. For
// a restored machine it is the snapshot's.
func (m *Machine) MAC() net.HardwareAddr {
	if len(m.launch.Spec.MAC) == 0 {
		return nil
	}
	return append(net.HardwareAddr(nil), m.launch.Spec.MAC...)
}
