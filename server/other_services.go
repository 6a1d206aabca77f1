package server

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

// errNoCheckpoints is the result of every snapshot method until the
// manager can pause, snapshot and restore sandboxes.
var errNoCheckpoints = status.Error(codes.Unimplemented,
	"checkpoints are not implemented yet: hearth cannot snapshot or restore sandboxes")

// snapshotService implements sandboxv1.SandboxSnapshotServiceServer.
type snapshotService struct {
	sandboxv1.UnimplementedSandboxSnapshotServiceServer
}

func (snapshotService) Checkpoint(context.Context, *sandboxv1.CheckpointRequest) (*sandboxv1.CheckpointResponse, error) {
	return nil, errNoCheckpoints
}

func (snapshotService) Restore(context.Context, *sandboxv1.RestoreRequest) (*sandboxv1.RestoreResponse, error) {
	return nil, errNoCheckpoints
}

func (snapshotService) ListSnapshots(context.Context, *sandboxv1.ListSnapshotsRequest) (*sandboxv1.ListSnapshotsResponse, error) {
	return nil, errNoCheckpoints
}

func (snapshotService) DeleteSnapshot(context.Context, *sandboxv1.DeleteSnapshotRequest) (*sandboxv1.Empty, error) {
	return nil, errNoCheckpoints
}

// controlService implements sandboxv1.SandboxControlServiceServer.
type controlService struct {
	sandboxv1.UnimplementedSandboxControlServiceServer
	s *Server
}

// SetTTL makes a sandbox expire ttl_seconds from now, or never for 0.
func (h *controlService) SetTTL(_ context.Context, req *sandboxv1.SetTTLRequest) (*sandboxv1.SandboxInfo, error) {
	if err := checkID(req.GetId()); err != nil {
		return nil, toStatus(err)
	}
	info, err := h.s.mgr.SetTTL(req.GetId(), time.Duration(req.GetTtlSeconds())*time.Second)
	if err != nil {
		return nil, toStatus(err)
	}
	return sandboxInfo(info), nil
}
