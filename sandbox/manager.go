package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/network"
	"github.com/hearthvm/hearth/vmm"
)

// Defaults are applied to every CreateOptions field left at its zero value.
type Defaults struct {
	VCPUs     int    // default 1
	MemoryMiB int    // default 256
	Kernel    string // guest kernel (vmlinux)
	Initrd    string // initramfs holding hearth-agent
	RootFS    string // shared root filesystem image (raw ext4)
	BootArgs  string // empty: the driver's default kernel arguments
	// DNS servers written to the guest's /etc/resolv.conf. Empty leaves
	// the image's file alone.
	DNS []string
}

// Config configures a Manager.
type Config struct {
	// DataDir holds one directory per sandbox under sandboxes/.
	DataDir string
	// Driver boots the machines.
	Driver vmm.Driver
	// Network hands out addresses and TAPs. Nil allows only network mode
	// none.
	Network  Network
	Defaults Defaults
	// ReadyTimeout bounds the wait from boot until the agent answers
	// (default 90 s: software emulation on a loaded host is slow).
	ReadyTimeout time.Duration
	// MaxSandboxes bounds the sandboxes that are not stopped or failed;
	// Create past it fails with ErrResourceExhausted. 0 means no limit.
	MaxSandboxes int
	// MaxConcurrentBoots bounds the boots and restores in progress; more
	// wait in state starting. 0 means no limit.
	MaxConcurrentBoots int
	Logger             *slog.Logger
}

// Network is the part of package network the manager uses; a
// *network.Allocator implements it.
type Network interface {
	// AcquireWith reserves an address for the sandbox and creates its TAP
	// with opts.
	AcquireWith(ctx context.Context, sandboxID string, opts network.TAPOptions) (network.Lease, error)
	// Release deletes the sandbox's TAP and frees its address. It is
	// idempotent.
	Release(ctx context.Context, sandboxID string) error
}

// Manager owns a set of sandboxes. It is safe for concurrent use.
type Manager struct {
	cfg Config
	log *slog.Logger

	events  *eventBus
	catalog *catalog
	// bootSlots holds one token per boot in progress when
	// MaxConcurrentBoots is set.
	bootSlots chan struct{}

	mu        sync.Mutex
	sandboxes map[string]*Sandbox
}

// New returns a Manager. It creates the data directory if needed.
func New(cfg Config) (*Manager, error) {
	if cfg.Driver == nil {
		return nil, fmt.Errorf("%w: no VMM driver configured", ErrInvalidArgument)
	}
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("%w: no data directory configured", ErrInvalidArgument)
	}
	if cfg.Defaults.VCPUs == 0 {
		cfg.Defaults.VCPUs = 1
	}
	if cfg.Defaults.MemoryMiB == 0 {
		cfg.Defaults.MemoryMiB = 256
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 90 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "sandboxes"), 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	cat, err := loadCatalog(filepath.Join(cfg.DataDir, "snapshots"))
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cfg: cfg, log: cfg.Logger, events: newEventBus(), catalog: cat,
		sandboxes: make(map[string]*Sandbox),
	}
	if cfg.MaxConcurrentBoots > 0 {
		m.bootSlots = make(chan struct{}, cfg.MaxConcurrentBoots)
	}
	m.removeStaleSandboxes()
	return m, nil
}

// Create validates opts, reserves the ID and starts the sandbox in the
// background. It returns at once with the sandbox in state starting; use
// WaitReady to wait for the agent. Boot failures are recorded on the
// sandbox (state failed) rather than returned.
func (m *Manager) Create(ctx context.Context, opts CreateOptions) (Info, error) {
	opts, err := m.applyDefaults(opts)
	if err != nil {
		return Info{}, err
	}
	if err := checkAssets(opts); err != nil {
		return Info{}, err
	}

	sb, err := m.reserve(opts)
	if err != nil {
		return Info{}, err
	}
	// The address is taken now, so Create can report it.
	if _, err := sb.acquireNetwork(ctx); err != nil {
		m.unreserve(sb)
		return Info{}, err
	}
	m.log.Info("sandbox created", "sandbox", sb.id, "vcpus", opts.VCPUs, "memory_mib", opts.MemoryMiB)
	sb.emit(ActionCreated, nil)
	if opts.TTL > 0 {
		m.armTTL(sb, sb.createdAt.Add(opts.TTL))
	}

	// The boot outlives the request that asked for it: the daemon, not
	// the caller, owns the VM.
	go sb.boot(context.WithoutCancel(ctx))
	return sb.Info(), nil
}

func (m *Manager) applyDefaults(opts CreateOptions) (CreateOptions, error) {
	d := m.cfg.Defaults
	if opts.ID == "" {
		opts.ID = newID()
	} else if err := ValidateID(opts.ID); err != nil {
		return opts, err
	}
	if opts.VCPUs == 0 {
		opts.VCPUs = d.VCPUs
	}
	if opts.VCPUs < 1 || opts.VCPUs > MaxVCPUs {
		return opts, fmt.Errorf("%w: vcpus %d: use 1 to %d", ErrInvalidArgument, opts.VCPUs, MaxVCPUs)
	}
	if opts.TTL < 0 {
		return opts, fmt.Errorf("%w: ttl %s is negative", ErrInvalidArgument, opts.TTL)
	}
	if len(opts.Cmd) > 0 && opts.Cmd[0] == "" {
		return opts, fmt.Errorf("%w: cmd starts with an empty program name", ErrInvalidArgument)
	}
	if opts.MemoryMiB == 0 {
		opts.MemoryMiB = d.MemoryMiB
	}
	if opts.MemoryMiB < MinMemoryMiB {
		return opts, fmt.Errorf("%w: memory %d MiB is below the minimum of %d MiB",
			ErrInvalidArgument, opts.MemoryMiB, MinMemoryMiB)
	}
	if total := hostMemoryMiB(); total > 0 && opts.MemoryMiB > total {
		return opts, fmt.Errorf("%w: memory %d MiB is more than this host has (%d MiB)",
			ErrInvalidArgument, opts.MemoryMiB, total)
	}
	if err := ValidateLabels(opts.Labels); err != nil {
		return opts, err
	}
	opts.Kernel = firstNonEmpty(opts.Kernel, d.Kernel)
	opts.Initrd = firstNonEmpty(opts.Initrd, d.Initrd)
	opts.RootFS = firstNonEmpty(opts.RootFS, d.RootFS)
	opts.BootArgs = firstNonEmpty(opts.BootArgs, d.BootArgs)
	switch opts.Network {
	case "":
		opts.Network = NetworkTAP
	case NetworkTAP, NetworkNone:
	default:
		return opts, fmt.Errorf("%w: network mode %q: use %q or %q",
			ErrInvalidArgument, opts.Network, NetworkTAP, NetworkNone)
	}
	if opts.Network == NetworkTAP && m.cfg.Network == nil {
		return opts, fmt.Errorf("%w: network mode tap needs a network pool, and none is configured",
			ErrUnavailable)
	}
	return opts, nil
}

// checkAssets reports missing boot assets before anything is started.
func checkAssets(opts CreateOptions) error {
	for _, a := range []struct{ what, path string }{
		{"kernel", opts.Kernel}, {"initramfs", opts.Initrd}, {"root filesystem", opts.RootFS},
	} {
		if a.path == "" {
			return fmt.Errorf("%w: no %s configured; build the boot assets with scripts/build-assets",
				ErrInvalidArgument, a.what)
		}
		if _, err := os.Stat(a.path); err != nil {
			return fmt.Errorf("%w: %s %s: %v; build the boot assets with scripts/build-assets",
				ErrInvalidArgument, a.what, a.path, err)
		}
	}
	return nil
}

// reserve records a new sandbox under its ID. The directory is created
// with Mkdir, so two hearth processes sharing a data directory cannot
// both take one ID.
func (m *Manager) reserve(opts CreateOptions) (*Sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.sandboxes[opts.ID]; ok {
		return nil, fmt.Errorf("%w: sandbox %q", ErrAlreadyExists, opts.ID)
	}
	if max := m.cfg.MaxSandboxes; max > 0 && m.activeLocked() >= max {
		return nil, fmt.Errorf("%w: %d sandboxes exist, the configured maximum; remove one first",
			ErrResourceExhausted, max)
	}
	dir := filepath.Join(m.cfg.DataDir, "sandboxes", opts.ID)
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("%w: sandbox %q (directory %s exists)", ErrAlreadyExists, opts.ID, dir)
		}
		return nil, fmt.Errorf("create sandbox directory: %w", err)
	}
	sb := &Sandbox{
		m:         m,
		id:        opts.ID,
		dir:       dir,
		opts:      opts,
		log:       m.log.With("sandbox", opts.ID),
		createdAt: time.Now(),
		settled:   make(chan struct{}),
		state:     StateStarting,
	}
	if err := writeOwner(dir); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	m.sandboxes[opts.ID] = sb
	return sb, nil
}

// unreserve drops the record of a sandbox whose creation failed before its boot
// started, and deletes its directory.
func (m *Manager) unreserve(sb *Sandbox) {
	m.mu.Lock()
	if m.sandboxes[sb.id] == sb {
		delete(m.sandboxes, sb.id)
	}
	m.mu.Unlock()
	sb.teardown()
	if err := os.RemoveAll(sb.dir); err != nil {
		sb.log.Warn("remove sandbox directory", "err", err)
	}
}

// activeLocked counts the sandboxes that are neither stopped nor failed.
// The caller holds m.mu.
func (m *Manager) activeLocked() int {
	n := 0
	for _, sb := range m.sandboxes {
		sb.mu.Lock()
		if sb.state != StateStopped && sb.state != StateFailed {
			n++
		}
		sb.mu.Unlock()
	}
	return n
}

// Get returns the sandbox with the given ID.
func (m *Manager) Get(id string) (*Sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sb, ok := m.sandboxes[id]
	if !ok {
		return nil, fmt.Errorf("%w: sandbox %q", ErrNotFound, id)
	}
	return sb, nil
}

// ListFilter selects sandboxes; empty fields match everything, and every
// label pair must match.
type ListFilter struct {
	State  State
	Labels map[string]string
}

func (f ListFilter) match(info Info) bool {
	if f.State != "" && f.State != info.State {
		return false
	}
	return labelsMatch(info.Labels, f.Labels)
}

// List returns the records of the sandboxes that match filter, oldest
// first.
func (m *Manager) List(filter ListFilter) []Info {
	m.mu.Lock()
	all := make([]*Sandbox, 0, len(m.sandboxes))
	for _, sb := range m.sandboxes {
		all = append(all, sb)
	}
	m.mu.Unlock()
	infos := make([]Info, 0, len(all))
	for _, sb := range all {
		if info := sb.Info(); filter.match(info) {
			infos = append(infos, info)
		}
	}
	sort.Slice(infos, func(i, j int) bool {
		if !infos[i].CreatedAt.Equal(infos[j].CreatedAt) {
			return infos[i].CreatedAt.Before(infos[j].CreatedAt)
		}
		return infos[i].ID < infos[j].ID
	})
	return infos
}

// Inspect returns the record of one sandbox.
func (m *Manager) Inspect(id string) (Info, error) {
	sb, err := m.Get(id)
	if err != nil {
		return Info{}, err
	}
	return sb.Info(), nil
}

// Subscribe returns a subscription to the events that match filter. A
// subscriber that falls more than backlog events behind (0 means
// DefaultEventBacklog) is ended with ErrEventsOverflow; the manager never
// waits for it.
func (m *Manager) Subscribe(filter EventFilter, backlog int) *Subscription {
	return m.events.subscribe(filter, backlog)
}

// Stop shuts a sandbox's guest down and releases its VM and network; the
// record stays in state stopped until Remove. A timeout of 0 means
// DefaultStopTimeout.
func (m *Manager) Stop(ctx context.Context, id string, timeout time.Duration) error {
	sb, err := m.Get(id)
	if err != nil {
		return err
	}
	return sb.Stop(ctx, timeout)
}

// SetTTL makes the sandbox expire ttl from now, or never when ttl is 0.
func (m *Manager) SetTTL(id string, ttl time.Duration) (Info, error) {
	if ttl < 0 {
		return Info{}, fmt.Errorf("%w: ttl %s is negative", ErrInvalidArgument, ttl)
	}
	sb, err := m.Get(id)
	if err != nil {
		return Info{}, err
	}
	if ttl == 0 {
		sb.mu.Lock()
		if sb.ttlTimer != nil {
			sb.ttlTimer.Stop()
			sb.ttlTimer = nil
		}
		sb.expiresAt = time.Time{}
		sb.mu.Unlock()
	} else {
		m.armTTL(sb, time.Now().Add(ttl))
	}
	return sb.Info(), nil
}

// armTTL (re)schedules the sandbox's removal at deadline. The timer holds
// the *Sandbox, not its ID, so a later sandbox that reuses the ID is never
// removed by an old timer.
func (m *Manager) armTTL(sb *Sandbox, deadline time.Time) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.ttlTimer != nil {
		sb.ttlTimer.Stop()
	}
	sb.expiresAt = deadline
	sb.ttlTimer = time.AfterFunc(time.Until(deadline), func() {
		sb.log.Info("sandbox TTL expired")
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := m.removeSandbox(ctx, sb, true); err != nil {
			sb.log.Error("remove expired sandbox", "err", err)
		}
	})
}

// Remove destroys a sandbox and releases everything it holds. A sandbox
// with a running workload needs force.
func (m *Manager) Remove(ctx context.Context, id string, force bool) error {
	sb, err := m.Get(id)
	if err != nil {
		return err
	}
	return m.removeSandbox(ctx, sb, force)
}

// removeSandbox removes sb and drops its record, unless the ID now names another
// sandbox.
func (m *Manager) removeSandbox(ctx context.Context, sb *Sandbox, force bool) error {
	removed, err := sb.remove(ctx, force)
	if err != nil || !removed {
		return err
	}
	m.mu.Lock()
	if m.sandboxes[sb.id] == sb {
		delete(m.sandboxes, sb.id)
	}
	m.mu.Unlock()
	// Emitted after the ID is free, so a subscriber that reacts at once
	// can create a sandbox with the same ID.
	sb.emit(ActionRemoved, nil)
	return nil
}

// Close removes every sandbox. It is meant for a program that embeds the
// manager and exits.
func (m *Manager) Close(ctx context.Context) error {
	var errs []error
	for _, info := range m.List(ListFilter{}) {
		if err := m.Remove(ctx, info.ID, true); err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Exec runs a command in a ready sandbox and returns its exit code.
func (m *Manager) Exec(ctx context.Context, id string, req agentproto.StartRequest, stdio agentclient.ExecIO) (int32, error) {
	sb, err := m.Get(id)
	if err != nil {
		return 0, err
	}
	return sb.Exec(ctx, req, stdio)
}

func newID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "sb-" + hex.EncodeToString(b[:])
}

func firstNonEmpty(values ...string) string {
	for _, v := range values {
		if strings.TrimSpace(v) != "" {
			return v
		}
	}
	return ""
}

// tapOptions places TAP devices where the driver's VMM can open them.
func (m *Manager) tapOptions() network.TAPOptions {
	placer, ok := m.cfg.Driver.(vmm.TAPPlacer)
	if !ok {
		return network.TAPOptions{}
	}
	p := placer.TAPPlacement()
	opts := network.TAPOptions{NetNSPath: p.NetNSPath}
	if p.Owner != nil {
		opts.User = &network.TAPUser{UID: p.Owner.UID, GID: p.Owner.GID}
	}
	return opts
}

// hostMemoryMiB returns the host's total memory from /proc/meminfo, or 0
// when it cannot be read.
func hostMemoryMiB() int {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			var kib int
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kib); err == nil {
				return kib / 1024
			}
		}
	}
	return 0
}
