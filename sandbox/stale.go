package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/hearthvm/hearth/network"
)

// ownerFile records, in each sandbox directory, which hearth process owns
// the sandbox and which process runs its VM. Several hearth processes
// (one-shot runs next to a daemon) share a data directory, so a sandbox
// directory is cleaned up only once its owner has exited.
const ownerFile = "owner.json"

type ownerRecord struct {
	Owner network.Owner  `json:"owner"`
	VMM   *network.Owner `json:"vmm,omitempty"`
}

func writeOwner(dir string) error {
	owner, err := network.CurrentOwner()
	if err != nil {
		return err
	}
	return writeOwnerRecord(dir, ownerRecord{Owner: owner})
}

// writeVMMOwner adds the VMM's process to the owner record.
func writeVMMOwner(dir string, pid int) error {
	rec, err := readOwnerRecord(dir)
	if err != nil {
		return err
	}
	vmmOwner, err := network.ProcessOwner(pid)
	if err != nil {
		return err
	}
	rec.VMM = &vmmOwner
	return writeOwnerRecord(dir, rec)
}

func writeOwnerRecord(dir string, rec ownerRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, ownerFile+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write sandbox owner: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, ownerFile))
}

func readOwnerRecord(dir string) (ownerRecord, error) {
	var rec ownerRecord
	data, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return rec, err
	}
	return rec, json.Unmarshal(data, &rec)
}

// removeStaleSandboxes deletes the directories of sandboxes whose owning
// hearth process has exited (a crashed one-shot run or daemon), killing
// a VMM that outlived it. Their addresses are reclaimed by the network
// pool, which tracks the same owners.
//
// NOTE: sandboxes do not survive a restart of the process that owns them;
// they are cleaned up, not adopted.
func (m *Manager) removeStaleSandboxes() {
	root := filepath.Join(m.cfg.DataDir, "sandboxes")
	entries, err := os.ReadDir(root)
	if err != nil {
		m.log.Warn("list sandbox directories", "err", err)
		return
	}
	for _, e := range entries {
		dir := filepath.Join(root, e.Name())
		rec, err := readOwnerRecord(dir)
		if errors.Is(err, os.ErrNotExist) {
			// Created by a process that is still between Mkdir and
			// writing its owner, or left before owner records existed;
			// leave it to a later start.
			continue
		}
		if err != nil {
			m.log.Warn("stale sandbox has an unreadable owner record", "dir", dir, "err", err)
			continue
		}
		if rec.Owner.Alive() {
			continue
		}
		if rec.VMM != nil && rec.VMM.Alive() {
			if err := syscall.Kill(rec.VMM.PID, syscall.SIGKILL); err != nil {
				m.log.Warn("kill orphaned VMM", "dir", dir, "pid", rec.VMM.PID, "err", err)
				continue
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			m.log.Warn("remove stale sandbox", "dir", dir, "err", err)
			continue
		}
		m.log.Info("removed stale sandbox", "sandbox", e.Name(), "owner_pid", rec.Owner.PID)
	}
	m.reclaimStaleLeases()
}

// staleReclaimer is implemented by network allocators that can end the
// leases of exited processes (network.Allocator).
type staleReclaimer interface {
	ReclaimStale(ctx context.Context) ([]network.Lease, error)
}

// reclaimStaleLeases deletes the TAPs and addresses of hearth processes
// that exited without releasing them.
func (m *Manager) reclaimStaleLeases() {
	r, ok := m.cfg.Network.(staleReclaimer)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	// The pool logs each lease it reclaims.
	if _, err := r.ReclaimStale(ctx); err != nil {
		m.log.Warn("reclaim stale network leases", "err", err)
	}
}

// acquireBootSlot waits for a free boot slot when MaxConcurrentBoots is
// set.
func (m *Manager) acquireBootSlot(ctx context.Context) error {
	if m.bootSlots == nil {
		return nil
	}
	select {
	case m.bootSlots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for a boot slot (max_concurrent_boots %d): %w", cap(m.bootSlots), ctx.Err())
	}
}

func (m *Manager) releaseBootSlot() {
	if m.bootSlots != nil {
		<-m.bootSlots
	}
}
