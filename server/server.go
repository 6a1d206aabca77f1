// Package server implements hearth's gRPC API, the services of package
// sandboxv1, on top of a *sandbox.Manager. It translates requests and
// responses, maps the manager's error kinds to gRPC codes, and enforces
// the daemon's admission limits (sandbox count, concurrent boots).
//
// It owns no listener and no lifecycle logic: package daemon listens and
// authenticates, and package sandbox runs the sandboxes.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/sandbox"
)

// Options configures a Server.
type Options struct {
	// Manager runs the sandboxes. Required.
	Manager *sandbox.Manager
	// MaxSandboxes is the number of sandboxes that may exist at once,
	// stopped and failed ones excluded. 0 means no limit.
	MaxSandboxes int
	// MaxConcurrentBoots is the number of sandboxes that may boot at once.
	// A Create past it waits for a slot, bounded by its request context.
	// 0 means no limit.
	MaxConcurrentBoots int
	// EventBacklog is the number of events an Events stream may fall
	// behind by before it ends with RESOURCE_EXHAUSTED. 0 means
	// sandbox.DefaultEventBacklog.
	EventBacklog int
	// Logger receives the server's records. Nil means slog.Default().
	Logger *slog.Logger
}

// Server serves the sandbox.v1 services. It is safe for concurrent use.
type Server struct {
	mgr          *sandbox.Manager
	log          *slog.Logger
	maxSandboxes int
	eventBacklog int
	// boots has one slot per boot allowed at once; nil means no limit.
	boots chan struct{}

	// closing is closed by BeginShutdown.
	closing      chan struct{}
	shutdownOnce sync.Once

	// admitMu makes counting the sandboxes and creating one atomic, so
	// concurrent creates cannot both take the last place.
	admitMu sync.Mutex
	// restoring counts the restores admitted and not yet returned. A
	// restore waits until its clone is ready, which is too long to hold
	// admitMu, so admit counts these as well. A clone already in the
	// manager's list is counted twice, which errs on the safe side.
	restoring int
}

// removeTimeout bounds the removal of a failed restore's clone.
const removeTimeout = 30 * time.Second

// errShuttingDown is returned to requests that arrive while the daemon stops.
var errShuttingDown = status.Error(codes.Unavailable,
	"the hearth daemon is shutting down and removing its sandboxes; retry once it is back")

// BeginShutdown makes the server reject new sandboxes and end every
// Events stream with UNAVAILABLE, so that a graceful stop of the gRPC
// server does not wait for streams that never end. Once it has returned,
// no Create succeeds, so a following sandbox.Manager.Close removes every
// sandbox. It is idempotent.
func (s *Server) BeginShutdown() {
	s.admitMu.Lock()
	defer s.admitMu.Unlock()
	s.shutdownOnce.Do(func() { close(s.closing) })
}

// New returns a Server for opts.
func New(opts Options) (*Server, error) {
	if opts.Manager == nil {
		return nil, errors.New("server: no sandbox manager configured")
	}
	if opts.MaxSandboxes < 0 || opts.MaxConcurrentBoots < 0 || opts.EventBacklog < 0 {
		return nil, errors.New("server: limits must not be negative; use 0 for no limit")
	}
	s := &Server{
		mgr:          opts.Manager,
		log:          opts.Logger,
		maxSandboxes: opts.MaxSandboxes,
		eventBacklog: opts.EventBacklog,
		closing:      make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if opts.MaxConcurrentBoots > 0 {
		s.boots = make(chan struct{}, opts.MaxConcurrentBoots)
	}
	return s, nil
}

// Register adds every service of the API to r: SandboxService,
// SandboxSnapshotService, SandboxControlService and SandboxFileService.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	sandboxv1.RegisterSandboxServiceServer(r, &sandboxService{s: s})
	sandboxv1.RegisterSandboxSnapshotServiceServer(r, &snapshotService{s: s})
	sandboxv1.RegisterSandboxControlServiceServer(r, &controlService{s: s})
	sandboxv1.RegisterSandboxFileServiceServer(r, &fileService{s: s})
}

// create admits a sandbox under the limits and creates it.
func (s *Server) create(ctx context.Context, opts sandbox.CreateOptions) (sandbox.Info, error) {
	release, err := s.acquireBootSlot(ctx)
	if err != nil {
		return sandbox.Info{}, err
	}

	s.admitMu.Lock()
	if err := s.admit(); err != nil {
		s.admitMu.Unlock()
		release()
		return sandbox.Info{}, err
	}
	info, err := s.mgr.Create(ctx, opts)
	s.admitMu.Unlock()
	if err != nil {
		release()
		return sandbox.Info{}, err
	}

	go s.releaseAfterBoot(info.ID, release)
	return info, nil
}

// restore admits a sandbox under the limits and restores it from a
// snapshot. The boot slot is held until the clone is ready or failed.
func (s *Server) restore(ctx context.Context, opts sandbox.RestoreOptions) (sandbox.Info, error) {
	release, err := s.acquireBootSlot(ctx)
	if err != nil {
		return sandbox.Info{}, err
	}
	defer release()

	s.admitMu.Lock()
	if err := s.admit(); err != nil {
		s.admitMu.Unlock()
		return sandbox.Info{}, err
	}
	s.restoring++
	s.admitMu.Unlock()
	defer func() {
		s.admitMu.Lock()
		s.restoring--
		s.admitMu.Unlock()
	}()

	info, err := s.mgr.Restore(ctx, opts)
	if err != nil && info.ID != "" {
		s.discardClone(ctx, info.ID)
	}
	return info, err
}

// discardClone removes the clone of a restore that failed or whose
// client went away. The client got an error and, for a generated ID,
// never learned the ID, so a failed record or a clone that became ready
// later would stay behind unseen.
func (s *Server) discardClone(ctx context.Context, id string) {
	cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), removeTimeout)
	defer cancel()
	if err := s.mgr.Remove(cleanup, id, true); err != nil && !errors.Is(err, sandbox.ErrNotFound) {
		s.log.Error("remove the clone of a failed restore", "sandbox", id, "err", err)
	}
}

// acquireBootSlot waits for a free boot slot and returns its release
// function.
func (s *Server) acquireBootSlot(ctx context.Context) (release func(), err error) {
	if s.boots == nil {
		return func() {}, nil
	}
	select {
	case s.boots <- struct{}{}:
		var once sync.Once
		return func() { once.Do(func() { <-s.boots }) }, nil
	case <-s.closing:
		return nil, errShuttingDown
	case <-ctx.Done():
		return nil, status.Errorf(codes.DeadlineExceeded,
			"no boot slot became free before the request ended (at most %d sandboxes boot at once): %v",
			cap(s.boots), ctx.Err())
	}
}

// releaseAfterBoot frees a boot slot once the sandbox is ready, failed or
// removed. The wait needs no deadline of its own: the manager ends every
// boot within its ready timeout.
func (s *Server) releaseAfterBoot(id string, release func()) {
	defer release()
	sb, err := s.mgr.Get(id)
	if err != nil {
		return
	}
	_ = sb.WaitReady(context.Background())
}

// admit checks that a sandbox may be created now. It runs under admitMu.
func (s *Server) admit() error {
	select {
	case <-s.closing:
		return errShuttingDown
	default:
	}
	if s.maxSandboxes == 0 {
		return nil
	}
	active := s.restoring
	for _, info := range s.mgr.List(sandbox.ListFilter{}) {
		if info.State != sandbox.StateStopped && info.State != sandbox.StateFailed {
			active++
		}
	}
	if active >= s.maxSandboxes {
		return fmt.Errorf("%w: %d sandboxes exist, the configured maximum ([limits].max_sandboxes); remove one first",
			sandbox.ErrResourceExhausted, active)
	}
	return nil
}

// readySandbox returns the sandbox id, waiting while it is still
// starting, so a client may run a command right after Create.
func (s *Server) readySandbox(ctx context.Context, id string) (*sandbox.Sandbox, error) {
	if id == "" {
		return nil, invalidArgument("id", "the sandbox id is empty")
	}
	sb, err := s.mgr.Get(id)
	if err != nil {
		return nil, err
	}
	if sb.Info().State == sandbox.StateStarting {
		if err := sb.WaitReady(ctx); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("%w: sandbox %q did not become ready: %v", sandbox.ErrWrongState, id, err)
		}
	}
	return sb, nil
}
