package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/vmm"
)

// Snapshot actions, hearth additions to the contract's event actions.
const (
	ActionCheckpointed = "checkpointed" // attribute snapshot_id
	ActionPaused       = "paused"
	ActionResumed      = "resumed"
)

// StatePaused is a hearth addition: the sandbox's VM is paused in place.
const StatePaused State = "paused"

// snapshotMetaFile is the metadata file in every snapshot directory.
const snapshotMetaFile = "snapshot.json"

// SnapshotInfo is the catalog record of one checkpoint.
type SnapshotInfo struct {
	ID        string            `json:"id"`
	SandboxID string            `json:"sandbox_id"` // the origin
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	VCPUs     int               `json:"vcpus"`
	MemoryMiB int               `json:"memory_mib"`
	Kernel    string            `json:"kernel"`
	Initrd    string            `json:"initrd"`
	RootFS    string            `json:"rootfs"`
	BootArgs  string            `json:"boot_args"`
	Network   string            `json:"network"`
	// Dir is the snapshot's directory; it is derived, not stored.
	Dir string `json:"-"`
	// VM is the driver's record of the snapshot: backend, version, files
	// and sizes.
	VM vmm.Snapshot `json:"vm"`
}

// SnapshotFilter selects snapshots; empty fields match everything, and
// every label pair must match.
type SnapshotFilter struct {
	SandboxID string
	Labels    map[string]string
}

// RestoreOptions describes a sandbox to start from a snapshot.
type RestoreOptions struct {
	ID         string // empty: generated
	SnapshotID string
	Labels     map[string]string
	TTL        time.Duration
}

// catalog is the set of snapshots under <data>/snapshots, one directory
// each. It is loaded from disk at start, so it survives restarts.
type catalog struct {
	dir string

	mu    sync.Mutex
	snaps map[string]SnapshotInfo
}

func loadCatalog(dir string) (*catalog, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create snapshot directory: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read snapshot directory: %w", err)
	}
	c := &catalog{dir: dir, snaps: make(map[string]SnapshotInfo)}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), ".tmp-") {
			// A checkpoint that did not complete; it never entered the
			// catalog.
			if err := os.RemoveAll(path); err != nil {
				return nil, fmt.Errorf("remove incomplete snapshot %s: %w", path, err)
			}
			continue
		}
		data, err := os.ReadFile(filepath.Join(path, snapshotMetaFile))
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", path, err)
		}
		var info SnapshotInfo
		if err := json.Unmarshal(data, &info); err != nil {
			return nil, fmt.Errorf("snapshot %s: invalid %s: %w", path, snapshotMetaFile, err)
		}
		info.Dir = path
		c.snaps[info.ID] = info
	}
	return c, nil
}

func (c *catalog) get(id string) (SnapshotInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	info, ok := c.snaps[id]
	if !ok {
		return SnapshotInfo{}, fmt.Errorf("%w: snapshot %q", ErrNotFound, id)
	}
	return info, nil
}

// Checkpoint pauses a ready sandbox, writes its memory, device state and
// a copy of its disk into a new snapshot, and resumes it, also when the
// checkpoint fails. A sandbox with a running workload is refused: on
// Firecracker a snapshot resets every vsock connection, which would cut
// the workload's output stream.
func (m *Manager) Checkpoint(ctx context.Context, sandboxID, name string, labels map[string]string) (SnapshotInfo, error) {
	if err := validateName(name); err != nil {
		return SnapshotInfo{}, err
	}
	if err := ValidateLabels(labels); err != nil {
		return SnapshotInfo{}, err
	}
	sb, err := m.Get(sandboxID)
	if err != nil {
		return SnapshotInfo{}, err
	}
	sb.mu.Lock()
	if sb.state != StateReady {
		state := sb.state
		sb.mu.Unlock()
		return SnapshotInfo{}, fmt.Errorf("%w: sandbox %q is %s; only a ready sandbox (no running workload) can be checkpointed",
			ErrWrongState, sandboxID, state)
	}
	cp, ok := sb.machine.(vmm.Checkpointer)
	if !ok {
		sb.mu.Unlock()
		return SnapshotInfo{}, fmt.Errorf("%w: the %s driver cannot checkpoint", ErrUnavailable, m.cfg.Driver.Name())
	}
	if sb.checkpointing {
		sb.mu.Unlock()
		return SnapshotInfo{}, fmt.Errorf("%w: sandbox %q is already being checkpointed", ErrWrongState, sandboxID)
	}
	// The sandbox stays ready (the contract has no checkpointing state),
	// but no workload may start and no pause happen until the checkpoint
	// is written.
	sb.checkpointing = true
	sb.mu.Unlock()
	defer func() {
		sb.mu.Lock()
		sb.checkpointing = false
		sb.mu.Unlock()
	}()

	id := newSnapshotID()
	tmp := filepath.Join(m.catalog.dir, ".tmp-"+id)
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return SnapshotInfo{}, fmt.Errorf("create snapshot directory: %w", err)
	}
	info := SnapshotInfo{
		ID: id, SandboxID: sandboxID, Name: name, Labels: maps.Clone(labels),
		CreatedAt: time.Now().UTC(), VCPUs: sb.opts.VCPUs, MemoryMiB: sb.opts.MemoryMiB,
		Kernel: sb.opts.Kernel, Initrd: sb.opts.Initrd, RootFS: sb.opts.RootFS,
		BootArgs: sb.opts.BootArgs, Network: sb.opts.Network,
	}
	if err := m.writeSnapshot(ctx, cp, tmp, &info); err != nil {
		if rmErr := os.RemoveAll(tmp); rmErr != nil {
			sb.log.Error("remove incomplete snapshot", "dir", tmp, "err", rmErr)
		}
		return SnapshotInfo{}, err
	}
	info.Dir = filepath.Join(m.catalog.dir, id)

	m.catalog.mu.Lock()
	m.catalog.snaps[id] = info
	m.catalog.mu.Unlock()
	sb.log.Info("sandbox checkpointed", "snapshot", id, "paused", info.VM.Took)
	sb.emit(ActionCheckpointed, map[string]string{"snapshot_id": id})
	return info, nil
}

// writeSnapshot runs the driver's checkpoint into tmp, writes the
// metadata, and renames tmp into the catalog.
func (m *Manager) writeSnapshot(ctx context.Context, cp vmm.Checkpointer, tmp string, info *SnapshotInfo) error {
	snap, err := cp.Checkpoint(ctx, tmp)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	info.VM = snap
	data, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(tmp, snapshotMetaFile), data); err != nil {
		return fmt.Errorf("write snapshot metadata: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(m.catalog.dir, info.ID)); err != nil {
		return fmt.Errorf("add snapshot to catalog: %w", err)
	}
	return nil
}

func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ListSnapshots returns the snapshots that match filter, oldest first.
func (m *Manager) ListSnapshots(filter SnapshotFilter) []SnapshotInfo {
	m.catalog.mu.Lock()
	defer m.catalog.mu.Unlock()
	var out []SnapshotInfo
	for _, s := range m.catalog.snaps {
		if filter.SandboxID != "" && s.SandboxID != filter.SandboxID {
			continue
		}
		if !labelsMatch(s.Labels, filter.Labels) {
			continue
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

func labelsMatch(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// DeleteSnapshot removes a snapshot and every file of it. It is refused
// while a sandbox restored from it still runs, because the clone's VMM
// maps the snapshot's memory file for its whole life.
func (m *Manager) DeleteSnapshot(id string) error {
	info, err := m.catalog.get(id)
	if err != nil {
		return err
	}
	if users := m.snapshotUsers(id); len(users) > 0 {
		return fmt.Errorf("%w: snapshot %q is in use by running clones %s; stop or remove them first",
			ErrWrongState, id, strings.Join(users, ", "))
	}
	m.catalog.mu.Lock()
	delete(m.catalog.snaps, id)
	m.catalog.mu.Unlock()
	if err := os.RemoveAll(info.Dir); err != nil {
		return fmt.Errorf("remove snapshot %q: %w", id, err)
	}
	m.log.Info("snapshot deleted", "snapshot", id)
	return nil
}

// snapshotUsers returns the IDs of live sandboxes restored from snapshot id.
func (m *Manager) snapshotUsers(id string) []string {
	var users []string
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, sb := range m.sandboxes {
		sb.mu.Lock()
		if sb.restoredFrom == id && sb.machine != nil {
			users = append(users, sb.id)
		}
		sb.mu.Unlock()
	}
	sort.Strings(users)
	return users
}

// Restore starts a new sandbox from a snapshot and returns it once its
// agent answers, in state ready. The clone gets its own disk, a fresh
// address and TAP (the origin may still be running with its own), and its
// guest clock set from the host.
func (m *Manager) Restore(ctx context.Context, opts RestoreOptions) (Info, error) {
	snap, err := m.catalog.get(opts.SnapshotID)
	if err != nil {
		return Info{}, err
	}
	restorer, ok := m.cfg.Driver.(vmm.Restorer)
	if !ok {
		return Info{}, fmt.Errorf("%w: the %s driver cannot restore snapshots", ErrUnavailable, m.cfg.Driver.Name())
	}
	if snap.VM.Backend != m.cfg.Driver.Name() {
		return Info{}, fmt.Errorf("%w: snapshot %q was taken with the %s driver; this daemon runs %s",
			ErrInvalidArgument, snap.ID, snap.VM.Backend, m.cfg.Driver.Name())
	}
	create, err := m.applyDefaults(CreateOptions{
		ID: opts.ID, Labels: opts.Labels, VCPUs: snap.VCPUs, MemoryMiB: snap.MemoryMiB,
		Kernel: snap.Kernel, Initrd: snap.Initrd, RootFS: snap.RootFS, BootArgs: snap.BootArgs,
		Network: snap.Network, TTL: opts.TTL,
	})
	if err != nil {
		return Info{}, err
	}
	sb, err := m.reserve(create)
	if err != nil {
		return Info{}, err
	}
	sb.restoredFrom = snap.ID
	if _, err := sb.acquireNetwork(ctx); err != nil {
		m.unreserve(sb)
		return Info{}, err
	}
	sb.emit(ActionCreated, map[string]string{"snapshot_id": snap.ID})
	if create.TTL > 0 {
		m.armTTL(sb, sb.createdAt.Add(create.TTL))
	}

	// Like a boot, the restore belongs to the manager, not the request.
	go sb.bootWith(context.WithoutCancel(ctx), func(ctx context.Context) error {
		return sb.restore(ctx, restorer, snap)
	})
	if err := sb.WaitReady(ctx); err != nil {
		return sb.Info(), err
	}
	return sb.Info(), nil
}

// restore is the restore counterpart of start.
//
// NOTE: a clone without a network keeps its origin's hostname, because
// the guest's UTS state is in the snapshot. A clone with a network gets
// its own ID as hostname through NETCONFIG.
func (sb *Sandbox) restore(ctx context.Context, restorer vmm.Restorer, snap SnapshotInfo) error {
	spec := vmm.Spec{
		ID: sb.id, Dir: sb.dir, VCPUs: snap.VCPUs, MemoryMiB: snap.MemoryMiB,
		Kernel: snap.Kernel, Initrd: snap.Initrd, RootImage: snap.RootFS, BootArgs: snap.BootArgs,
	}
	sb.mu.Lock()
	lease := sb.lease
	sb.mu.Unlock()
	if lease != nil {
		spec.TAP, spec.MAC = lease.TAP, lease.MAC
	}
	machine, err := restorer.Restore(ctx, spec, snap.Dir, snap.VM)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	sb.attach(machine)

	if lease != nil {
		if err := sb.configureGuestNetwork(ctx, machine); err != nil {
			return err
		}
	}
	return sb.waitAgent(ctx, machine)
}

// configureGuestNetwork gives a restored guest its new address and its
// own hostname: the snapshot carries the origin's, which the origin may
// still be using.
func (sb *Sandbox) configureGuestNetwork(ctx context.Context, machine vmm.Machine) error {
	sb.mu.Lock()
	lease := sb.lease
	sb.mu.Unlock()
	conn, err := machine.DialAgent(ctx, agentproto.PortControl)
	if err != nil {
		return fmt.Errorf("reach restored agent: %w%s", err, consoleHint(machine))
	}
	ones, _ := lease.Netmask.Size()
	addr := fmt.Sprintf("%s/%d", lease.IP, ones)
	if err := agentclient.ConfigureNetwork(ctx, conn, agentproto.NetConfigRequest{
		Address: addr, Gateway: lease.Gateway.String(), Hostname: sb.id,
	}); err != nil {
		return fmt.Errorf("apply address %s in restored guest: %w", addr, err)
	}
	return nil
}

// Pause pauses a ready sandbox's VM in place.
func (m *Manager) Pause(ctx context.Context, id string) error {
	sb, err := m.Get(id)
	if err != nil {
		return err
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.state != StateReady || sb.checkpointing {
		return fmt.Errorf("%w: sandbox %q is %s; only a ready sandbox (no running workload, no checkpoint) can be paused",
			ErrWrongState, id, sb.state)
	}
	p, ok := sb.machine.(vmm.Pauser)
	if !ok {
		return fmt.Errorf("%w: the %s driver cannot pause", ErrUnavailable, m.cfg.Driver.Name())
	}
	if err := p.Pause(ctx); err != nil {
		return fmt.Errorf("pause sandbox %q: %w", id, err)
	}
	sb.state = StatePaused
	sb.log.Info("sandbox paused")
	sb.emit(ActionPaused, nil)
	return nil
}

// Resume resumes a paused sandbox and sets its guest clock, which stood
// still while paused.
func (m *Manager) Resume(ctx context.Context, id string) error {
	sb, err := m.Get(id)
	if err != nil {
		return err
	}
	sb.mu.Lock()
	if sb.state != StatePaused {
		state := sb.state
		sb.mu.Unlock()
		return fmt.Errorf("%w: sandbox %q is %s, not paused", ErrWrongState, id, state)
	}
	machine := sb.machine
	if err := machine.(vmm.Pauser).Resume(ctx); err != nil {
		sb.mu.Unlock()
		return fmt.Errorf("resume sandbox %q: %w", id, err)
	}
	sb.state = StateReady
	sb.mu.Unlock()

	conn, err := machine.DialAgent(ctx, agentproto.PortExec)
	if err == nil {
		err = agentclient.ClockSync(ctx, conn, time.Now())
	}
	if err != nil {
		sb.log.Warn("set guest clock after resume", "err", err)
	}
	sb.log.Info("sandbox resumed")
	sb.emit(ActionResumed, nil)
	return nil
}

func newSnapshotID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "snap-" + hex.EncodeToString(b[:])
}
