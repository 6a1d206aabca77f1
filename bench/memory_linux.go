package bench

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/sandbox"
)

// idleSandboxes is how many idle sandboxes the daemon memory measure
// holds at once.
const idleSandboxes = 50

// settleTime lets the daemon finish the work that follows the last
// create (event delivery, goroutines ending) before its memory is read.
const settleTime = 2 * time.Second

// runMemoryGroup measures the daemon's memory per idle sandbox and the
// size of the agent binary.
func (e *env) runMemoryGroup(ctx context.Context) []Result {
	return []Result{
		e.report(e.measureDaemonRSS(ctx, driverInstant)),
		e.report(e.measureDaemonRSS(ctx, driverFCDouble)),
		e.report(e.measureAgentSize()),
	}
}

// measureDaemonRSS creates idleSandboxes sandboxes through the daemon's
// API and divides the growth of its VmRSS by their number.
func (e *env) measureDaemonRSS(ctx context.Context, driver string) Result {
	name := "memory.daemon." + driver
	title := fmt.Sprintf("daemon RSS per idle sandbox, %d on the instant double", idleSandboxes)
	note := "VmRSS growth of the daemon process over 50 idle sandboxes, divided by 50; " +
		"the instant double's agents run inside the daemon, so one idle in-process agent each is included"
	if driver == driverFCDouble {
		title = fmt.Sprintf("daemon RSS per idle sandbox, %d on the Firecracker double", idleSandboxes)
		note = "VmRSS growth of the daemon process over 50 idle sandboxes, divided by 50; " +
			"the VMM and the agent are processes of their own, as in production"
		if reason := e.fcDoubleMissing(); reason != "" {
			r := skipped(name, title, reason)
			r.Unit = UnitBytes
			return r
		}
	}
	fail := func(err error) Result {
		r := skippedErr(name, title, err)
		r.Unit = UnitBytes
		return r
	}
	d, err := e.startDaemon(ctx, driver)
	if err != nil {
		return fail(err)
	}
	defer d.stop()

	// Warm-up: the first sandboxes grow the heap and the gRPC buffers to
	// their working size.
	for i := 0; i < 3; i++ {
		id, err := d.createIdle(ctx)
		if err != nil {
			return fail(err)
		}
		if _, err := d.client.Remove(ctx, &sandboxv1.RemoveSandboxRequest{Id: id, Force: true}); err != nil {
			return fail(err)
		}
	}
	time.Sleep(settleTime)
	before, err := rssBytes(d.pid())
	if err != nil {
		return fail(err)
	}
	for i := 0; i < idleSandboxes; i++ {
		if _, err := d.createIdle(ctx); err != nil {
			return fail(err)
		}
	}
	time.Sleep(settleTime)
	after, err := rssBytes(d.pid())
	if err != nil {
		return fail(err)
	}
	perSandbox := float64(after-before) / idleSandboxes
	return Result{Name: name, Title: title, Unit: UnitBytes, Stats: Summarize([]float64{perSandbox}),
		Note: fmt.Sprintf("%s; VmRSS %s before, %s after", note,
			formatValue(float64(before), UnitBytes), formatValue(float64(after), UnitBytes))}
}

// createIdle creates a sandbox with network mode none and waits until
// the daemon reports it ready, without running anything in it.
func (p *daemonProcess) createIdle(ctx context.Context) (string, error) {
	resp, err := p.client.Create(ctx, &sandboxv1.CreateSandboxRequest{
		Network: &sandboxv1.NetworkSpec{Mode: sandbox.NetworkNone},
	})
	if err != nil {
		return "", fmt.Errorf("create sandbox: %w", err)
	}
	id := resp.GetId()
	deadline := time.Now().Add(60 * time.Second)
	for {
		info, err := p.client.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: id})
		if err != nil {
			return "", fmt.Errorf("inspect sandbox %s: %w", id, err)
		}
		switch sandbox.State(info.GetState()) {
		case sandbox.StateReady:
			return id, nil
		case sandbox.StateFailed:
			return "", fmt.Errorf("sandbox %s failed: %s", id, info.GetError())
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("sandbox %s not ready after 60 s (state %s)", id, info.GetState())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// measureAgentSize reports the size of the static agent binary.
func (e *env) measureAgentSize() Result {
	const name, title = "memory.agent.binary", "hearth-agent binary size"
	fi, err := os.Stat(e.agent)
	if err != nil {
		r := skipped(name, title, fmt.Sprintf("%s is missing: build it with make build", e.agent))
		r.Unit = UnitBytes
		return r
	}
	return Result{Name: name, Title: title, Unit: UnitBytes, Stats: Summarize([]float64{float64(fi.Size())}),
		Note: "static, stripped (CGO_ENABLED=0, -trimpath -ldflags='-s -w', as make build builds it)"}
}
