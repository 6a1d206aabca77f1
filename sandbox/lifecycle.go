package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/network"
	"github.com/hearthvm/hearth/vmm"
)

// cleanupTimeout bounds teardown work that runs detached from the
// caller's context.
const cleanupTimeout = 30 * time.Second

// DefaultStopTimeout is how long Stop waits for a guest to shut down when
// the caller gives no timeout.
const DefaultStopTimeout = 30 * time.Second

// Sandbox is one sandbox and the resources it holds.
type Sandbox struct {
	m         *Manager
	id        string
	dir       string
	opts      CreateOptions
	log       *slog.Logger
	createdAt time.Time
	// settled is closed once the boot has ended, ready or failed.
	settled chan struct{}

	mu           sync.Mutex
	state        State
	err          error
	readyAt      time.Time
	machine      vmm.Machine
	lease        *network.Lease
	workloads    int
	lastExitAt   time.Time
	lastExitCode int32
	cancelBoot   context.CancelFunc
	ttlTimer     *time.Timer
	expiresAt    time.Time
	removed      bool
	// checkpointing blocks new workloads and pauses during a checkpoint.
	checkpointing bool
	// restoredFrom is the snapshot the sandbox was restored from; its
	// memory file stays mapped while the sandbox's VM runs.
	restoredFrom string

	// running is the registry of the workloads, with its own lock.
	running workloadRegistry
}

// macReporter is implemented by machines whose guest MAC may differ from
// the one the manager asked for.
type macReporter interface {
	MAC() net.HardwareAddr
}

// ID returns the sandbox's ID.
func (sb *Sandbox) ID() string { return sb.id }

// Info returns a copy of the sandbox's record.
func (sb *Sandbox) Info() Info {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	info := Info{
		ID:           sb.id,
		State:        sb.state,
		Labels:       maps.Clone(sb.opts.Labels),
		VCPUs:        sb.opts.VCPUs,
		MemoryMiB:    sb.opts.MemoryMiB,
		CreatedAt:    sb.createdAt,
		ReadyAt:      sb.readyAt,
		LastExitedAt: sb.lastExitAt,
		LastExitCode: sb.lastExitCode,
		Workloads:    sb.workloads,
		ExpiresAt:    sb.expiresAt,
		Dir:          sb.dir,
	}
	if sb.err != nil {
		info.Error = sb.err.Error()
	}
	if sb.lease != nil {
		info.Network = NetworkInfo{
			IP:      sb.lease.IP.String(),
			Gateway: sb.lease.Gateway.String(),
			TAP:     sb.lease.TAP,
			MAC:     sb.lease.MAC.String(),
		}
		// A restored QEMU guest keeps its origin's MAC, whatever the
		// lease contains, so report the one the guest uses.
		if r, ok := sb.machine.(macReporter); ok {
			if mac := r.MAC(); len(mac) > 0 {
				info.Network.MAC = mac.String()
			}
		}
	}
	if sb.machine != nil {
		info.ConsolePath = sb.machine.ConsolePath()
	}
	return info
}

// emit publishes an event for this sandbox.
func (sb *Sandbox) emit(action string, attrs map[string]string) {
	sb.m.events.publish(Event{SandboxID: sb.id, Action: action, Time: time.Now(), Attributes: attrs})
}

// WaitReady blocks until the sandbox is ready, its boot failed, or ctx
// ends. It returns the boot error of a failed sandbox.
func (sb *Sandbox) WaitReady(ctx context.Context) error {
	select {
	case <-sb.settled:
	case <-ctx.Done():
		return ctx.Err()
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	switch sb.state {
	case StateFailed:
		return sb.err
	case StateReady, StateRunning:
		return nil
	default:
		return fmt.Errorf("%w: sandbox %q is %s", ErrWrongState, sb.id, sb.state)
	}
}

// boot brings the sandbox from starting to ready, or to failed with every
// resource released.
func (sb *Sandbox) boot(ctx context.Context) {
	sb.bootWith(ctx, sb.start)
}

// bootWith runs start (a boot or a restore) and records the outcome.
func (sb *Sandbox) bootWith(ctx context.Context, start func(context.Context) error) {
	ctx, cancel := context.WithTimeout(ctx, sb.m.cfg.ReadyTimeout)
	defer cancel()
	sb.mu.Lock()
	sb.cancelBoot = cancel
	sb.mu.Unlock()

	began := time.Now()
	err := sb.m.acquireBootSlot(ctx)
	if err == nil {
		err = start(ctx)
		sb.m.releaseBootSlot()
	}

	sb.mu.Lock()
	if sb.state != StateStarting {
		// Stop or Remove interrupted the boot and owns the teardown.
		sb.mu.Unlock()
		close(sb.settled)
		return
	}
	if err != nil {
		sb.mu.Unlock()
		sb.teardown()
		sb.mu.Lock()
		sb.state, sb.err = StateFailed, err
		sb.mu.Unlock()
		close(sb.settled)
		sb.log.Error("sandbox failed to start", "err", err)
		sb.emit(ActionFailed, map[string]string{"error": err.Error()})
		return
	}
	sb.state, sb.readyAt = StateReady, time.Now()
	sb.mu.Unlock()
	close(sb.settled)
	sb.log.Info("sandbox ready", "boot", time.Since(began).Round(time.Millisecond))
	sb.emit(ActionReady, nil)

	if len(sb.opts.Cmd) > 0 {
		go sb.runInitialCommand()
	}
}

func (sb *Sandbox) start(ctx context.Context) error {
	spec := vmm.Spec{
		ID:        sb.id,
		Dir:       sb.dir,
		VCPUs:     sb.opts.VCPUs,
		MemoryMiB: sb.opts.MemoryMiB,
		Kernel:    sb.opts.Kernel,
		Initrd:    sb.opts.Initrd,
		RootImage: sb.opts.RootFS,
		BootArgs:  sb.opts.BootArgs,
		AgentArgs: []string{"hearth_init=1", "hearth.hostname=" + sb.id, "hearth.root=/dev/vda"},
	}
	if dns := sb.m.cfg.Defaults.DNS; len(dns) > 0 {
		spec.AgentArgs = append(spec.AgentArgs, "hearth.dns="+strings.Join(dns, ","))
	}

	sb.mu.Lock()
	lease := sb.lease
	sb.mu.Unlock()
	if lease != nil {
		spec.TAP, spec.MAC = lease.TAP, lease.MAC
		spec.AgentArgs = append(spec.AgentArgs, lease.KernelArg())
	}

	machine, err := sb.m.cfg.Driver.Boot(ctx, spec)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	sb.attach(machine)
	return sb.waitAgent(ctx, machine)
}

// attach records a started machine, its PID for the cleanup of stale
// sandboxes, and watches for its exit.
func (sb *Sandbox) attach(machine vmm.Machine) {
	sb.mu.Lock()
	sb.machine = machine
	sb.mu.Unlock()
	if err := writeVMMOwner(sb.dir, machine.PID()); err != nil {
		sb.log.Warn("record VMM process", "err", err)
	}
	go sb.watch(machine)
}

// acquireNetwork takes the sandbox's address and TAP, or returns nil for
// network mode none.
func (sb *Sandbox) acquireNetwork(ctx context.Context) (*network.Lease, error) {
	if sb.opts.Network != NetworkTAP {
		return nil, nil
	}
	lease, err := sb.m.cfg.Network.AcquireWith(ctx, sb.id, sb.m.tapOptions())
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	sb.mu.Lock()
	sb.lease = &lease
	sb.mu.Unlock()
	sb.log.Info("network acquired", "ip", lease.IP, "tap", lease.TAP, "mac", lease.MAC.String())
	return &lease, nil
}

// waitAgent waits until the agent replies to PING, then sets the guest clock,
// which lags the host by up to a second after boot (the RTC has 1 s
// resolution).
func (sb *Sandbox) waitAgent(ctx context.Context, machine vmm.Machine) error {
	err := func() error {
		conn, err := machine.DialAgent(ctx, agentproto.PortControl)
		if err != nil {
			return err
		}
		return agentclient.Ping(ctx, conn)
	}()
	if err != nil {
		select {
		case <-machine.Done():
			return fmt.Errorf("the VM exited before its agent answered%s", consoleHint(machine))
		default:
		}
		if ctx.Err() != nil {
			return fmt.Errorf("the agent did not reply within %s%s", sb.m.cfg.ReadyTimeout, consoleHint(machine))
		}
		return fmt.Errorf("reach agent: %w%s", err, consoleHint(machine))
	}

	conn, err := machine.DialAgent(ctx, agentproto.PortExec)
	if err != nil {
		return fmt.Errorf("reach agent for clock sync: %w", err)
	}
	return agentclient.ClockSync(ctx, conn, time.Now())
}

// watch marks the sandbox failed when its VM exits on its own.
func (sb *Sandbox) watch(machine vmm.Machine) {
	<-machine.Done()
	sb.mu.Lock()
	if sb.machine != machine || (sb.state != StateReady && sb.state != StateRunning && sb.state != StatePaused) {
		sb.mu.Unlock()
		return
	}
	sb.state = StateFailed
	sb.err = fmt.Errorf("the VM exited unexpectedly%s", consoleHint(machine))
	err := sb.err
	sb.mu.Unlock()

	sb.log.Error("sandbox failed", "err", err)
	sb.emit(ActionFailed, map[string]string{"error": err.Error()})
	sb.teardown()
}

// Exec runs a command in the sandbox and returns its exit code. The
// command is killed when ctx ends, so a client that goes away never leaves
// a workload behind.
func (sb *Sandbox) Exec(ctx context.Context, req agentproto.StartRequest, stdio agentclient.ExecIO) (int32, error) {
	res, err := sb.ExecWorkload(ctx, req, stdio, nil)
	return res.Code, err
}

func (sb *Sandbox) exec(ctx context.Context, machine vmm.Machine, req agentproto.StartRequest, stdio agentclient.ExecIO) (agentclient.Result, error) {
	conn, err := machine.DialAgent(ctx, agentproto.PortExec)
	if err != nil {
		return agentclient.Result{}, fmt.Errorf("%w: reach agent of sandbox %q: %v", ErrUnavailable, sb.id, err)
	}
	return agentclient.Exec(ctx, conn, req, stdio)
}

// beginWorkload counts a new workload and moves the sandbox to running.
func (sb *Sandbox) beginWorkload() (vmm.Machine, error) {
	sb.mu.Lock()
	if sb.state != StateReady && sb.state != StateRunning {
		state := sb.state
		sb.mu.Unlock()
		hint := ""
		if state == StatePaused {
			hint = "; resume it first (hearth resume)"
		}
		return nil, fmt.Errorf("%w: sandbox %q is %s; commands run only in a ready sandbox%s", ErrWrongState, sb.id, state, hint)
	}
	if sb.checkpointing {
		sb.mu.Unlock()
		return nil, fmt.Errorf("%w: sandbox %q is being checkpointed; retry when the checkpoint is written", ErrWrongState, sb.id)
	}
	machine := sb.machine
	if machine == nil {
		sb.mu.Unlock()
		return nil, fmt.Errorf("%w: sandbox %q has no running VM", ErrWrongState, sb.id)
	}
	sb.workloads++
	first := sb.state == StateReady
	sb.state = StateRunning
	sb.mu.Unlock()
	if first {
		sb.emit(ActionRunning, nil)
	}
	return machine, nil
}

// endWorkload records a workload's end, emits idle with its exit code,
// and returns the sandbox to ready when no workload is left.
func (sb *Sandbox) endWorkload(code int32, err error) {
	sb.mu.Lock()
	sb.workloads--
	if err == nil {
		sb.lastExitAt, sb.lastExitCode = time.Now(), code
	}
	if sb.workloads == 0 && sb.state == StateRunning {
		sb.state = StateReady
	}
	sb.mu.Unlock()

	attrs := map[string]string{"exit_code": strconv.Itoa(int(code))}
	if err != nil {
		attrs = map[string]string{"exit_code": "-1", "error": err.Error()}
	}
	sb.emit(ActionIdle, attrs)
}

// runInitialCommand runs CreateOptions.Cmd with its output in
// init-cmd.log.
func (sb *Sandbox) runInitialCommand() {
	out, err := os.Create(filepath.Join(sb.dir, "init-cmd.log"))
	if err != nil {
		sb.log.Error("initial command not run", "err", err)
		return
	}
	defer out.Close()
	req := agentproto.StartRequest{
		Cmd: sb.opts.Cmd, Env: sb.opts.Env, WorkingDir: sb.opts.WorkingDir, User: sb.opts.User,
	}
	code, err := sb.Exec(context.Background(), req, agentclient.ExecIO{Stdout: out, Stderr: out})
	if err != nil {
		sb.log.Warn("initial command failed", "err", err)
		return
	}
	sb.log.Info("initial command exited", "exit_code", code)
}

// Stop shuts the guest down through its agent, waits up to timeout for the
// VM to exit, kills it after that, and releases the network. The record
// stays, in state stopped.
func (sb *Sandbox) Stop(ctx context.Context, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = DefaultStopTimeout
	}
	sb.mu.Lock()
	switch sb.state {
	case StateStopping, StateStopped:
		sb.mu.Unlock()
		return nil
	}
	wasPaused := sb.state == StatePaused
	sb.state = StateStopping
	cancelBoot := sb.cancelBoot
	sb.mu.Unlock()
	sb.log.Info("sandbox stopping")
	sb.emit(ActionStopping, nil)

	if cancelBoot != nil {
		cancelBoot()
	}
	<-sb.settled

	if !wasPaused {
		// A paused guest cannot run its shutdown; it is killed at once.
		sb.shutdownGuest(ctx, timeout)
	}
	sb.teardown()
	sb.mu.Lock()
	sb.state = StateStopped
	sb.mu.Unlock()
	sb.log.Info("sandbox stopped")
	sb.emit(ActionStopped, nil)
	return nil
}

// shutdownGuest requests the agent to end the VM and waits for it to exit.
func (sb *Sandbox) shutdownGuest(ctx context.Context, timeout time.Duration) {
	sb.mu.Lock()
	machine := sb.machine
	sb.mu.Unlock()
	if machine == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	conn, err := machine.DialAgent(ctx, agentproto.PortControl)
	if err == nil {
		err = agentclient.Shutdown(ctx, conn, 2*time.Second)
	}
	if err != nil {
		sb.log.Warn("graceful shutdown failed; killing the VM", "err", err)
		return
	}
	select {
	case <-machine.Done():
		sb.log.Info("guest shut down")
	case <-ctx.Done():
		sb.log.Warn("the VM did not exit after shutdown; killing it", "timeout", timeout)
	}
}

// remove tears the sandbox down and deletes its directory. It runs at
// most once; it reports whether this call did the removal.
func (sb *Sandbox) remove(ctx context.Context, force bool) (bool, error) {
	sb.mu.Lock()
	if sb.removed {
		sb.mu.Unlock()
		return false, nil
	}
	if sb.state == StateRunning && !force {
		sb.mu.Unlock()
		return false, fmt.Errorf("%w: sandbox %q has a running workload; remove it with force (hearth rm -f)", ErrWrongState, sb.id)
	}
	sb.removed = true
	switch sb.state {
	case StateStopped, StateFailed:
	default:
		// No new workload may start on a sandbox being removed.
		sb.state = StateStopping
	}
	cancelBoot := sb.cancelBoot
	if sb.ttlTimer != nil {
		sb.ttlTimer.Stop()
	}
	sb.mu.Unlock()

	if cancelBoot != nil {
		cancelBoot()
	}
	select {
	case <-sb.settled:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	sb.teardown()
	if err := os.RemoveAll(sb.dir); err != nil {
		return false, fmt.Errorf("remove sandbox directory: %w", err)
	}
	sb.log.Info("sandbox removed")
	return true, nil
}

// teardown kills the VM and releases the network. It is idempotent.
func (sb *Sandbox) teardown() {
	sb.mu.Lock()
	machine, lease := sb.machine, sb.lease
	sb.machine, sb.lease = nil, nil
	sb.mu.Unlock()

	if machine != nil {
		if err := machine.Kill(); err != nil {
			sb.log.Warn("kill VM", "err", err)
		}
	}
	if lease != nil {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := sb.m.cfg.Network.Release(ctx, sb.id); err != nil {
			sb.log.Warn("release network", "tap", lease.TAP, "err", err)
		}
	}
}

// consoleHint returns the last lines of the guest console for an error
// message, so a guest that failed to come up can be diagnosed.
func consoleHint(machine vmm.Machine) string {
	path := machine.ConsolePath()
	data, err := os.ReadFile(path)
	if err != nil || len(data) == 0 {
		return fmt.Sprintf(" (console log: %s)", path)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return fmt.Sprintf("; last console lines (%s):\n%s", path, bytes.Join(lines, []byte("\n")))
}
