package server

import (
	"context"
	"time"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

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

// Pause pauses a ready sandbox's VM in place and returns its record in
// state paused.
func (h *controlService) Pause(ctx context.Context, req *sandboxv1.PauseSandboxRequest) (*sandboxv1.SandboxInfo, error) {
	if err := checkID(req.GetId()); err != nil {
		return nil, toStatus(err)
	}
	if err := h.s.mgr.Pause(ctx, req.GetId()); err != nil {
		return nil, toStatus(err)
	}
	return h.inspect(req.GetId())
}

// Resume resumes a paused sandbox and returns its record in state ready.
func (h *controlService) Resume(ctx context.Context, req *sandboxv1.ResumeSandboxRequest) (*sandboxv1.SandboxInfo, error) {
	if err := checkID(req.GetId()); err != nil {
		return nil, toStatus(err)
	}
	if err := h.s.mgr.Resume(ctx, req.GetId()); err != nil {
		return nil, toStatus(err)
	}
	return h.inspect(req.GetId())
}

func (h *controlService) inspect(id string) (*sandboxv1.SandboxInfo, error) {
	info, err := h.s.mgr.Inspect(id)
	if err != nil {
		return nil, toStatus(err)
	}
	return sandboxInfo(info), nil
}
