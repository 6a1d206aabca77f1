package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/sandbox"
)

// execRatioGoal is the exec round trip's goal on the Firecracker double:
// at most 1.3 times a local spawn.
var execRatioGoal = &Goal{Kind: GoalMaxRatio, Limit: 1.3}

// trueCmd is the command every exec measure runs: it does nothing, so
// the measure is the round trip itself.
var trueCmd = []string{"/bin/true"}

// runExecGroup measures the round trip of running /bin/true until its
// exit code arrives, against spawning it locally.
func (e *env) runExecGroup(ctx context.Context) []Result {
	floor := e.report(e.measureSpawnFloor())
	results := []Result{floor}
	results = append(results, e.report(e.measureExecDaemon(ctx, floor)))
	results = append(results, e.report(e.measureExecManager(ctx, driverFCDouble, floor)))
	results = append(results, e.report(e.measureExecManager(ctx, driverInstant, floor)))
	results = append(results, e.report(e.measureTransport(ctx)))
	return results
}

// measureTransport times opening a stream to the agent's control port
// and a PING round trip on the Firecracker double, without the manager:
// the part of every exec that is the transport, since each exec opens a
// stream of its own.
func (e *env) measureTransport(ctx context.Context) Result {
	const name, title = "exec.fcdouble.transport", "dial + PING via hybrid vsock, Firecracker double"
	if reason := e.fcDoubleMissing(); reason != "" {
		return skipped(name, title, reason)
	}
	m, err := e.startDoubleMachine(ctx, "bench-ping")
	if err != nil {
		return skippedErr(name, title, err)
	}
	defer m.close()
	samples, err := timeLoop(e.iterations(50, 5), e.iterations(1000, 100), func() error {
		return m.ping(ctx)
	})
	if err != nil {
		return skippedErr(name, title, err)
	}
	r := timed(name, title, samples)
	r.Note = "breakdown: connect to the VMM's vsock socket, CONNECT/OK, the double's relay to the agent, PING and ACK"
	return r
}

func (e *env) measureSpawnFloor() Result {
	const name, title = "exec.floor.spawn", "floor: spawn /bin/true locally (os/exec)"
	samples, err := timeLoop(e.iterations(50, 5), e.iterations(2000, 200), func() error {
		return exec.Command(trueCmd[0]).Run()
	})
	if err != nil {
		return skippedErr(name, title, err)
	}
	r := timed(name, title, samples)
	r.Note = "fork, exec and wait of /bin/true from Go, no hearth involved"
	return r
}

// measureExecDaemon runs /bin/true through the daemon's gRPC Run call,
// with the daemon's sandbox on the Firecracker double: client, gRPC over
// a Unix socket, daemon, hybrid vsock socket, the double's relay, agent.
func (e *env) measureExecDaemon(ctx context.Context, floor Result) Result {
	const name, title = "exec.fcdouble.daemon", "exec /bin/true via daemon gRPC, Firecracker double"
	if reason := e.fcDoubleMissing(); reason != "" {
		return skipped(name, title, reason)
	}
	d, err := e.startDaemon(ctx, driverFCDouble)
	if err != nil {
		return skippedErr(name, title, err)
	}
	defer d.stop()
	id, err := d.createReady(ctx)
	if err != nil {
		return skippedErr(name, title, err)
	}
	samples, err := timeLoop(e.iterations(50, 5), e.iterations(1000, 100), func() error {
		return d.run(ctx, id, trueCmd)
	})
	if err != nil {
		return skippedErr(name, title, err)
	}
	r := timed(name, title, samples)
	r.Floor, r.Goal = floorOf(floor), execRatioGoal
	return r
}

// measureExecManager runs /bin/true through an in-process manager's
// Exec, without the daemon and gRPC.
func (e *env) measureExecManager(ctx context.Context, driverName string, floor Result) Result {
	name := "exec." + driverName + ".manager"
	title := "exec /bin/true via in-process manager, Firecracker double"
	note := "breakdown: the daemon row without gRPC and the daemon process"
	if driverName == driverInstant {
		title = "exec /bin/true via in-process manager, instant double"
		note = "breakdown: the agent's own cost, with no transport (agent in-process over a pipe)"
	} else if reason := e.fcDoubleMissing(); reason != "" {
		return skipped(name, title, reason)
	}
	driver, err := newBenchDriver(driverName, e.agent, e.fakeFC, e.quiet)
	if err != nil {
		return skippedErr(name, title, err)
	}
	dir, err := os.MkdirTemp(e.dir, "m-")
	if err != nil {
		return skippedErr(name, title, err)
	}
	os.Chmod(dir, 0o755)
	mgr, err := newDoubleManager(filepath.Join(dir, "data"), driver, e.quiet)
	if err != nil {
		return skippedErr(name, title, err)
	}
	defer mgr.Close(context.WithoutCancel(ctx))

	id, err := createReady(ctx, mgr, sandbox.CreateOptions{Network: sandbox.NetworkNone})
	if err != nil {
		return skippedErr(name, title, err)
	}
	samples, err := timeLoop(e.iterations(50, 5), e.iterations(1000, 100), func() error {
		return managerExec(ctx, mgr, id, trueCmd)
	})
	if err != nil {
		return skippedErr(name, title, err)
	}
	r := timed(name, title, samples)
	r.Floor, r.Note = floorOf(floor), note
	return r
}

// createReady creates a sandbox and waits until it is ready.
func createReady(ctx context.Context, mgr *sandbox.Manager, opts sandbox.CreateOptions) (string, error) {
	info, err := mgr.Create(ctx, opts)
	if err != nil {
		return "", fmt.Errorf("create sandbox: %w", err)
	}
	sb, err := mgr.Get(info.ID)
	if err != nil {
		return "", err
	}
	if err := sb.WaitReady(ctx); err != nil {
		return "", fmt.Errorf("sandbox %s did not become ready: %w", info.ID, err)
	}
	return info.ID, nil
}

// managerExec runs cmd in sandbox id; a non-zero exit code is an error.
func managerExec(ctx context.Context, mgr *sandbox.Manager, id string, cmd []string) error {
	code, err := mgr.Exec(ctx, id, agentproto.StartRequest{Cmd: cmd}, agentclient.ExecIO{})
	if err != nil {
		return fmt.Errorf("exec %v in %s: %w", cmd, id, err)
	}
	if code != 0 {
		return fmt.Errorf("exec %v in %s: exit code %d", cmd, id, code)
	}
	return nil
}

// fcDoubleMissing returns why the Firecracker double cannot run here, or
// "" when it can.
func (e *env) fcDoubleMissing() string {
	if os.Geteuid() != 0 {
		return "needs root: the Firecracker double runs the agent in new namespaces; run as root"
	}
	if _, err := exec.LookPath("busybox"); err != nil {
		return "needs busybox for the double's guest commands: apt-get install busybox-static"
	}
	for _, bin := range []string{e.agent, e.fakeFC} {
		if _, err := os.Stat(bin); err != nil {
			return fmt.Sprintf("%s is missing: build it with make bench", bin)
		}
	}
	return ""
}
