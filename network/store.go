package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/gofrs/flock"
)

// stateVersion is the version of the lease state file format.
const stateVersion = 1

// lockRetryDelay is the pause between attempts to take the state lock.
const lockRetryDelay = 5 * time.Millisecond

// stateFile is the JSON layout of leases.json.
type stateFile struct {
	Version int           `json:"version"`
	Leases  []leaseRecord `json:"leases"`
}

// leaseRecord is one lease as stored. Network and gateway are stored per
// lease, so a lease keeps its own addressing when the pool configuration
// changes.
type leaseRecord struct {
	SandboxID      string `json:"sandbox_id"`
	IP             string `json:"ip"`
	Network        string `json:"network"`
	Gateway        string `json:"gateway"`
	TAP            string `json:"tap"`
	MAC            string `json:"mac"`
	OwnerPID       int    `json:"owner_pid"`
	OwnerStartTime uint64 `json:"owner_start_time"`
	NetNSPath      string `json:"netns_path,omitempty"`
}

func recordFromLease(l Lease) leaseRecord {
	ip, _ := netip.AddrFromSlice(l.IP)
	network := netip.PrefixFrom(ip.Unmap(), l.Prefix).Masked()
	return leaseRecord{
		SandboxID:      l.SandboxID,
		IP:             l.IP.String(),
		Network:        network.String(),
		Gateway:        l.Gateway.String(),
		TAP:            l.TAP,
		MAC:            l.MAC.String(),
		OwnerPID:       l.Owner.PID,
		OwnerStartTime: l.Owner.StartTime,
		NetNSPath:      l.NetNSPath,
	}
}

func (r leaseRecord) lease() (Lease, error) {
	ip, err := netip.ParseAddr(r.IP)
	if err != nil || !ip.Is4() {
		return Lease{}, fmt.Errorf("sandbox %q: invalid ip %q", r.SandboxID, r.IP)
	}
	network, err := netip.ParsePrefix(r.Network)
	if err != nil || !network.Contains(ip) {
		return Lease{}, fmt.Errorf("sandbox %q: invalid network %q for ip %s", r.SandboxID, r.Network, ip)
	}
	gateway, err := netip.ParseAddr(r.Gateway)
	if err != nil || !network.Contains(gateway) {
		return Lease{}, fmt.Errorf("sandbox %q: invalid gateway %q for network %s", r.SandboxID, r.Gateway, network)
	}
	mac, err := net.ParseMAC(r.MAC)
	if err != nil {
		return Lease{}, fmt.Errorf("sandbox %q: invalid mac %q", r.SandboxID, r.MAC)
	}
	if r.SandboxID == "" || r.TAP == "" {
		return Lease{}, fmt.Errorf("lease for %s: empty sandbox id or tap name", ip)
	}
	return Lease{
		SandboxID: r.SandboxID,
		IP:        ip.AsSlice(),
		Gateway:   gateway.AsSlice(),
		Netmask:   net.CIDRMask(network.Bits(), 32),
		Prefix:    network.Bits(),
		TAP:       r.TAP,
		MAC:       mac,
		Owner:     Owner{PID: r.OwnerPID, StartTime: r.OwnerStartTime},
		NetNSPath: r.NetNSPath,
	}, nil
}

// load reads the state file. A missing file is an empty state. Readers
// need no lock because save replaces the file by rename.
func (p *Pool) load() (map[string]Lease, error) {
	path := p.StatePath()
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]Lease{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read lease state: %w", err)
	}

	var state stateFile
	if err := json.Unmarshal(data, &state); err != nil {
		return nil, fmt.Errorf("parse lease state %s: %w; if no sandbox is running, move the file aside", path, err)
	}
	if state.Version != stateVersion {
		return nil, fmt.Errorf("lease state %s: version %d, want %d; it was written by another hearth version", path, state.Version, stateVersion)
	}

	leases := make(map[string]Lease, len(state.Leases))
	ips := make(map[string]string, len(state.Leases))
	taps := make(map[string]string, len(state.Leases))
	for _, r := range state.Leases {
		l, err := r.lease()
		if err != nil {
			return nil, fmt.Errorf("lease state %s: %w; if no sandbox is running, move the file aside", path, err)
		}
		if _, dup := leases[r.SandboxID]; dup {
			return nil, fmt.Errorf("lease state %s: sandbox %q has two leases; if no sandbox is running, move the file aside", path, r.SandboxID)
		}
		if other, dup := ips[l.IP.String()]; dup {
			return nil, fmt.Errorf("lease state %s: ip %s is leased to both %q and %q; if no sandbox is running, move the file aside", path, l.IP, other, r.SandboxID)
		}
		if other, dup := taps[l.TAP]; dup {
			return nil, fmt.Errorf("lease state %s: tap %q is leased to both %q and %q; if no sandbox is running, move the file aside", path, l.TAP, other, r.SandboxID)
		}
		leases[r.SandboxID] = l
		ips[l.IP.String()] = r.SandboxID
		taps[l.TAP] = r.SandboxID
	}
	return leases, nil
}

// save writes the state file atomically: a temporary file in the same
// directory, fsync, rename over the old file, fsync of the directory.
func (p *Pool) save(leases map[string]Lease) error {
	state := stateFile{Version: stateVersion, Leases: make([]leaseRecord, 0, len(leases))}
	for _, l := range leases {
		state.Leases = append(state.Leases, recordFromLease(l))
	}
	sort.Slice(state.Leases, func(i, j int) bool {
		return state.Leases[i].SandboxID < state.Leases[j].SandboxID
	})
	data, err := json.MarshalIndent(state, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lease state: %w", err)
	}
	if err := writeFileAtomic(p.StatePath(), append(data, '\n')); err != nil {
		return fmt.Errorf("write lease state: %w", err)
	}
	return nil
}

func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()

	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}

	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// update runs fn on the current leases while holding the state lock, and
// saves the leases when fn reports a change. The change is saved even when
// fn also returns an error, so a stale lease reclaimed before a failed
// allocation stays reclaimed.
func (p *Pool) update(ctx context.Context, fn func(leases map[string]Lease) (bool, error)) error {
	unlock, err := p.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()

	leases, err := p.load()
	if err != nil {
		return err
	}
	changed, fnErr := fn(leases)
	if changed {
		if err := p.save(leases); err != nil {
			return errors.Join(fnErr, err)
		}
	}
	return fnErr
}

// lock takes the exclusive state lock. Each call opens its own lock file
// descriptor, so goroutines of one process exclude each other as well as
// other processes do.
func (p *Pool) lock(ctx context.Context) (unlock func(), err error) {
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create lease state directory: %w", err)
	}
	fl := flock.New(filepath.Join(p.dir, "leases.lock"))
	locked, err := fl.TryLockContext(ctx, lockRetryDelay)
	if err != nil {
		fl.Close()
		return nil, fmt.Errorf("lock lease state %s: %w", fl.Path(), err)
	}
	if !locked {
		fl.Close()
		return nil, fmt.Errorf("lock lease state %s: not acquired", fl.Path())
	}
	return func() { fl.Close() }, nil
}
