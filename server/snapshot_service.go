package server

import (
	"context"
	"time"

	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/sandbox"
)

// snapshotService implements sandboxv1.SandboxSnapshotServiceServer.
type snapshotService struct {
	sandboxv1.UnimplementedSandboxSnapshotServiceServer
	s *Server
}

// Checkpoint pauses a ready sandbox, writes a snapshot of it and resumes
// it. A sandbox with a running workload is refused with
// FAILED_PRECONDITION, and a driver that cannot checkpoint with
// UNAVAILABLE.
func (h *snapshotService) Checkpoint(ctx context.Context, req *sandboxv1.CheckpointRequest) (*sandboxv1.CheckpointResponse, error) {
	if req.GetSandboxId() == "" {
		return nil, invalidArgument("sandbox_id", "the sandbox id is empty")
	}
	if err := sandbox.ValidateID(req.GetSandboxId()); err != nil {
		return nil, toStatus(err)
	}
	snap, err := h.s.mgr.Checkpoint(ctx, req.GetSandboxId(), req.GetName(), req.GetLabels())
	if err != nil {
		return nil, toStatus(err)
	}
	return &sandboxv1.CheckpointResponse{
		SnapshotId:  snap.ID,
		SnapshotDir: snap.Dir,
		CreatedAt:   rfc3339(snap.CreatedAt),
	}, nil
}

// Restore starts a new sandbox from a snapshot and returns once it is
// ready. The clone always gets a fresh address and TAP, whatever the
// value of network_override, because the origin may still use its own.
func (h *snapshotService) Restore(ctx context.Context, req *sandboxv1.RestoreRequest) (*sandboxv1.RestoreResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, invalidArgument("snapshot_id", "the snapshot id is empty; list snapshots with ListSnapshots")
	}
	if id := req.GetId(); id != "" {
		if err := sandbox.ValidateID(id); err != nil {
			return nil, toStatus(err)
		}
	}
	info, err := h.s.restore(ctx, sandbox.RestoreOptions{
		ID:         req.GetId(),
		SnapshotID: req.GetSnapshotId(),
		Labels:     req.GetLabels(),
		TTL:        time.Duration(req.GetTtlSeconds()) * time.Second,
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &sandboxv1.RestoreResponse{Id: info.ID, IpAddress: info.Network.IP}, nil
}

// ListSnapshots returns the snapshots of one origin sandbox, or of all,
// that carry every requested label, oldest first.
func (h *snapshotService) ListSnapshots(_ context.Context, req *sandboxv1.ListSnapshotsRequest) (*sandboxv1.ListSnapshotsResponse, error) {
	snaps := h.s.mgr.ListSnapshots(sandbox.SnapshotFilter{SandboxID: req.GetSandboxId(), Labels: req.GetLabels()})
	resp := &sandboxv1.ListSnapshotsResponse{Snapshots: make([]*sandboxv1.SnapshotSummary, 0, len(snaps))}
	for _, snap := range snaps {
		resp.Snapshots = append(resp.Snapshots, snapshotSummary(snap))
	}
	return resp, nil
}

// DeleteSnapshot removes a snapshot and its files. While a sandbox
// restored from it still runs, it fails with FAILED_PRECONDITION.
func (h *snapshotService) DeleteSnapshot(_ context.Context, req *sandboxv1.DeleteSnapshotRequest) (*sandboxv1.Empty, error) {
	if req.GetSnapshotId() == "" {
		return nil, invalidArgument("snapshot_id", "the snapshot id is empty; list snapshots with ListSnapshots")
	}
	if err := h.s.mgr.DeleteSnapshot(req.GetSnapshotId()); err != nil {
		return nil, toStatus(err)
	}
	return &sandboxv1.Empty{}, nil
}
