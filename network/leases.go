package network

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
)

// AllocateRequest describes a lease to allocate.
type AllocateRequest struct {
	// SandboxID is the sandbox the lease is for. Required, and at most one
	// lease per ID.
	SandboxID string
	// Owner is the process whose exit ends the lease. The zero value means
	// the calling process.
	Owner Owner
	// NetNSPath is the network namespace the TAP will be created in, stored
	// so that a reclaim deletes the TAP in the right namespace. Empty means
	// the namespace of the process that creates the TAP.
	NetNSPath string
}

// Allocate leases the lowest free guest address to a sandbox. It first
// reclaims stale leases, whose owner process has exited, and deletes their
// TAP devices. An address is free when no lease holds it or its TAP name,
// including leases from an earlier pool configuration.
//
// Allocate returns an error wrapping ErrExists when the sandbox already has
// a lease and ErrExhausted when every guest address is leased. It creates
// no TAP device; see Allocator.Acquire.
func (p *Pool) Allocate(ctx context.Context, req AllocateRequest) (Lease, error) {
	if req.SandboxID == "" {
		return Lease{}, fmt.Errorf("allocate address: empty sandbox id: %w", ErrInvalid)
	}
	owner := req.Owner
	if owner == (Owner{}) {
		var err error
		if owner, err = CurrentOwner(); err != nil {
			return Lease{}, fmt.Errorf("allocate address for sandbox %q: %w", req.SandboxID, err)
		}
	}

	var lease Lease
	err := p.update(ctx, func(leases map[string]Lease) (bool, error) {
		changed := len(p.reclaim(leases)) > 0
		var err error
		lease, err = p.allocate(leases, req, owner)
		if err != nil {
			return changed, fmt.Errorf("allocate address for sandbox %q: %w", req.SandboxID, err)
		}
		leases[req.SandboxID] = lease
		return true, nil
	})
	if err != nil {
		return Lease{}, err
	}
	return lease, nil
}

func (p *Pool) allocate(leases map[string]Lease, req AllocateRequest, owner Owner) (Lease, error) {
	if existing, ok := leases[req.SandboxID]; ok {
		return Lease{}, fmt.Errorf("sandbox already has lease %s (tap %s): %w", existing.IP, existing.TAP, ErrExists)
	}

	gateway := p.addrAt(p.gateway)
	usedIPs := make(map[netip.Addr]bool, len(leases))
	usedTAPs := make(map[string]bool, len(leases))
	for _, l := range leases {
		ip, _ := netip.AddrFromSlice(l.IP)
		if ip.Unmap() == gateway {
			return Lease{}, fmt.Errorf("gateway %s is the address of sandbox %q, leased under an earlier pool configuration; release that sandbox or choose another gateway: %w", gateway, l.SandboxID, ErrInvalid)
		}
		usedIPs[ip.Unmap()] = true
		usedTAPs[l.TAP] = true
	}

	// Each offset skipped is the gateway or belongs to a lease, so this
	// loop runs at most 2*len(leases)+2 times before it finds a free
	// address or passes the end of a full pool.
	for offset := uint64(1); offset < p.size-1; offset++ {
		if !p.isGuestOffset(offset) {
			continue
		}
		ip := p.addrAt(uint32(offset))
		name := tapName(uint32(offset))
		if usedIPs[ip] || usedTAPs[name] {
			continue
		}
		return Lease{
			SandboxID: req.SandboxID,
			IP:        ip.AsSlice(),
			Gateway:   gateway.AsSlice(),
			Netmask:   p.Netmask(),
			Prefix:    p.Prefix(),
			TAP:       name,
			MAC:       MACAddress(req.SandboxID),
			Owner:     owner,
			NetNSPath: req.NetNSPath,
		}, nil
	}
	return Lease{}, fmt.Errorf("all %d guest addresses of %s are leased: %w", p.Capacity(), p.network, ErrExhausted)
}

// reclaim removes the stale leases from leases, deleting each one's TAP
// first, and returns the removed leases. A lease whose TAP cannot be
// deleted stays, so its address is not handed out while the device exists.
func (p *Pool) reclaim(leases map[string]Lease) []Lease {
	var reclaimed []Lease
	for id, l := range leases {
		if p.alive(l.Owner) {
			continue
		}
		if err := p.deleteTAP(l.TAP, l.NetNSPath); err != nil {
			p.log.Warn("keeping stale lease: deleting its tap failed",
				"sandbox", id, "ip", l.IP, "tap", l.TAP, "owner_pid", l.Owner.PID, "err", err)
			continue
		}
		delete(leases, id)
		reclaimed = append(reclaimed, l)
		p.log.Info("reclaimed stale lease",
			"sandbox", id, "ip", l.IP, "tap", l.TAP, "owner_pid", l.Owner.PID)
	}
	sortLeases(reclaimed)
	return reclaimed
}

// ReclaimStale removes every lease whose owner process has exited,
// deleting its TAP device first, and returns the removed leases.
// Allocate does the same before every allocation.
func (p *Pool) ReclaimStale(ctx context.Context) ([]Lease, error) {
	var reclaimed []Lease
	err := p.update(ctx, func(leases map[string]Lease) (bool, error) {
		reclaimed = p.reclaim(leases)
		return len(reclaimed) > 0, nil
	})
	return reclaimed, err
}

// Release ends the sandbox's lease. It does not touch the TAP device (see
// Allocator.Release). Releasing a sandbox without a lease succeeds.
func (p *Pool) Release(ctx context.Context, sandboxID string) error {
	return p.release(ctx, sandboxID, nil)
}

// release ends the sandbox's lease after running beforeRemove, if not nil,
// under the state lock. An error from beforeRemove keeps the lease.
func (p *Pool) release(ctx context.Context, sandboxID string, beforeRemove func(Lease) error) error {
	return p.update(ctx, func(leases map[string]Lease) (bool, error) {
		l, ok := leases[sandboxID]
		if !ok {
			return false, nil
		}
		if beforeRemove != nil {
			if err := beforeRemove(l); err != nil {
				return false, fmt.Errorf("release lease of sandbox %q: %w", sandboxID, err)
			}
		}
		delete(leases, sandboxID)
		return true, nil
	})
}

// SetOwner hands the sandbox's lease to another process, for example to
// the VMM process once it runs, or to a restarted daemon that adopts the
// sandbox. It returns the updated lease, or an error wrapping ErrNotFound.
func (p *Pool) SetOwner(ctx context.Context, sandboxID string, owner Owner) (Lease, error) {
	if owner.PID <= 0 {
		return Lease{}, fmt.Errorf("set lease owner of sandbox %q: invalid pid %d: %w", sandboxID, owner.PID, ErrInvalid)
	}
	var lease Lease
	err := p.update(ctx, func(leases map[string]Lease) (bool, error) {
		l, ok := leases[sandboxID]
		if !ok {
			return false, fmt.Errorf("set lease owner of sandbox %q: %w", sandboxID, ErrNotFound)
		}
		l.Owner = owner
		leases[sandboxID] = l
		lease = l
		return true, nil
	})
	if err != nil {
		return Lease{}, err
	}
	return lease, nil
}

// Lookup returns the sandbox's lease, or an error wrapping ErrNotFound.
func (p *Pool) Lookup(sandboxID string) (Lease, error) {
	leases, err := p.load()
	if err != nil {
		return Lease{}, err
	}
	l, ok := leases[sandboxID]
	if !ok {
		return Lease{}, fmt.Errorf("lease of sandbox %q: %w", sandboxID, ErrNotFound)
	}
	return l, nil
}

// List returns every lease, stale ones included, ordered by address.
func (p *Pool) List() ([]Lease, error) {
	leases, err := p.load()
	if err != nil {
		return nil, err
	}
	list := make([]Lease, 0, len(leases))
	for _, l := range leases {
		list = append(list, l)
	}
	sortLeases(list)
	return list, nil
}

func sortLeases(leases []Lease) {
	sort.Slice(leases, func(i, j int) bool {
		a, _ := netip.AddrFromSlice(leases[i].IP)
		b, _ := netip.AddrFromSlice(leases[j].IP)
		if a != b {
			return a.Less(b)
		}
		return leases[i].SandboxID < leases[j].SandboxID
	})
}
