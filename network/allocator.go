package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// rollbackTimeout bounds the lease release after a failed Acquire.
const rollbackTimeout = 10 * time.Second

// AllocatorConfig configures an Allocator.
type AllocatorConfig struct {
	// Owner owns the leases Acquire takes. The zero value means the
	// calling process, looked up once by NewAllocator.
	Owner Owner
	// TAP holds the options Acquire creates TAP devices with.
	TAP TAPOptions
	// Logger receives a warning when Acquire replaces an orphaned TAP.
	// Default slog.Default().
	Logger *slog.Logger
}

// Allocator gives sandboxes their network: a lease from a Pool plus the
// lease's TAP device. It is safe for concurrent use.
type Allocator struct {
	pool  *Pool
	owner Owner
	tap   TAPOptions
	log   *slog.Logger

	// createTAP, deleteTAP and deleteDetachedTAP are replaced by tests.
	createTAP         func(name string, gateway, guest net.IP, opts TAPOptions) error
	deleteTAP         func(name string, opts TAPOptions) error
	deleteDetachedTAP func(name string, opts TAPOptions) (bool, error)
}

// NewAllocator returns an Allocator that leases from pool.
func NewAllocator(pool *Pool, cfg AllocatorConfig) (*Allocator, error) {
	a := &Allocator{
		pool:              pool,
		owner:             cfg.Owner,
		tap:               cfg.TAP,
		log:               cfg.Logger,
		createTAP:         CreateTAP,
		deleteTAP:         DeleteTAP,
		deleteDetachedTAP: deleteDetachedTAP,
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	if a.owner == (Owner{}) {
		owner, err := CurrentOwner()
		if err != nil {
			return nil, fmt.Errorf("network allocator: %w", err)
		}
		a.owner = owner
	}
	return a, nil
}

// Pool returns the pool the allocator leases from.
func (a *Allocator) Pool() *Pool {
	return a.pool
}

// Acquire leases an address for the sandbox and creates its TAP device
// with the allocator's TAP options. See AcquireWith.
func (a *Allocator) Acquire(ctx context.Context, sandboxID string) (Lease, error) {
	return a.AcquireWith(ctx, sandboxID, a.tap)
}

// AcquireWith leases an address for the sandbox and creates its TAP device
// with opts. When the TAP cannot be created, the lease is released before
// AcquireWith returns, even if ctx has ended.
//
// A TAP of the lease's name that exists with no process attached is an
// orphan: no live lease owns the name, so it was left by a process that
// exited without deleting it. AcquireWith deletes it and creates the TAP
// again. A TAP that a process still has open is never touched.
func (a *Allocator) AcquireWith(ctx context.Context, sandboxID string, opts TAPOptions) (lease Lease, err error) {
	lease, err = a.pool.Allocate(ctx, AllocateRequest{
		SandboxID: sandboxID,
		Owner:     a.owner,
		NetNSPath: opts.NetNSPath,
	})
	if err != nil {
		return Lease{}, err
	}
	defer func() {
		if err == nil {
			return
		}
		// The lease must go even when the caller's ctx is cancelled.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		if rerr := a.pool.Release(rctx, sandboxID); rerr != nil {
			err = errors.Join(err, fmt.Errorf("release the lease after the failure: %w", rerr))
		}
	}()

	err = a.createTAP(lease.TAP, lease.Gateway, lease.IP, opts)
	if errors.Is(err, ErrExists) {
		err = a.replaceOrphanTAP(lease, opts, err)
	}
	if err != nil {
		return Lease{}, fmt.Errorf("acquire network for sandbox %q: %w", sandboxID, err)
	}
	return lease, nil
}

// replaceOrphanTAP deletes the lease's TAP if no process has it open and
// creates it again. It returns createErr when the device is in use.
func (a *Allocator) replaceOrphanTAP(lease Lease, opts TAPOptions, createErr error) error {
	deleted, err := a.deleteDetachedTAP(lease.TAP, opts)
	if err != nil {
		return errors.Join(createErr, err)
	}
	if !deleted {
		return fmt.Errorf("%w; a process has it open, or it is not a TAP, so it is left alone: delete it by hand if no sandbox uses it", createErr)
	}
	a.log.Warn("deleted an orphaned tap that no lease owned", "sandbox", lease.SandboxID, "tap", lease.TAP)
	return a.createTAP(lease.TAP, lease.Gateway, lease.IP, opts)
}

// Release deletes the sandbox's TAP device, then ends its lease. Both run
// under the pool's lock, so no other process can lease the address in
// between. When deleting the TAP fails, the lease stays so that its
// address is not handed out while the device exists. Releasing a sandbox
// without a lease succeeds.
func (a *Allocator) Release(ctx context.Context, sandboxID string) error {
	return a.pool.release(ctx, sandboxID, func(l Lease) error {
		return a.deleteTAP(l.TAP, TAPOptions{NetNSPath: l.NetNSPath})
	})
}

// ReclaimStale ends the leases whose owner process has exited and deletes
// their TAP devices, as the next allocation would. A process that starts
// after another one crashed calls it so the dead process's TAPs do not
// wait for an allocation that may never come.
func (a *Allocator) ReclaimStale(ctx context.Context) ([]Lease, error) {
	return a.pool.ReclaimStale(ctx)
}
