package vmm

import (
	"context"
	"time"
)

// Pauser is implemented by machines that can be paused and resumed in
// place. Agent streams may break across a pause; callers dial again after
// Resume.
type Pauser interface {
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
}

// Snapshot describes a checkpoint written by a Checkpointer into its
// directory. Paths in it are relative to that directory, so a snapshot
// directory can be renamed (the manager writes it under a temporary name
// and renames it into its catalog once complete).
type Snapshot struct {
	// Backend is the driver name ("qemu", "firecracker").
	Backend string `json:"backend"`
	// BackendVersion is the VMM's version; restoring needs a compatible
	// one.
	BackendVersion string `json:"backend_version"`
	// StateFile holds the device and vCPU state.
	StateFile string `json:"state_file"`
	// MemoryFile holds guest memory. A restored machine may map it for
	// its whole life, so it must stay unchanged while any clone runs.
	MemoryFile string `json:"memory_file"`
	// DiskFile is the copy of the root disk taken while the VM was paused.
	DiskFile string `json:"disk_file"`
	// DiskFormat is the disk file's format ("qcow2", "raw").
	DiskFormat string `json:"disk_format"`
	// Files maps every file of the snapshot to its size in bytes.
	Files map[string]int64 `json:"files"`
	// Took is how long the VM was paused for the checkpoint.
	Took time.Duration `json:"took_ns"`
}

// Checkpointer is implemented by machines that can be checkpointed.
type Checkpointer interface {
	// Checkpoint pauses the VM, writes its device state, its memory and a
	// copy-on-write copy of its disk into dir (which exists and is empty),
	// and resumes the VM, also when writing failed. The returned Snapshot
	// names the files relative to dir.
	Checkpoint(ctx context.Context, dir string) (Snapshot, error)
}

// Restorer is implemented by drivers that can start a machine from a
// snapshot. The spec describes the new machine (its own Dir, TAP and MAC;
// VCPUs, MemoryMiB, Kernel and Initrd as recorded at checkpoint time); the
// new machine gets its own copy of the snapshot's disk in spec.Dir and
// runs resumed when Restore returns. snapDir is the snapshot's directory.
type Restorer interface {
	Restore(ctx context.Context, spec Spec, snapDir string, snap Snapshot) (Machine, error)
}
