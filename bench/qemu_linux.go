package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentlink"
	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/sandbox"
	"github.com/hearthvm/hearth/vmm/qemu"
)

// restoreGoal is the restore's goal: a ready agent in under a tenth of
// the time of a cold boot.
var restoreGoal = &Goal{Kind: GoalMaxRatio, Limit: 0.1}

// qemuBootDeadline bounds one boot or restore to a ready agent. Software
// emulation on a loaded 2-core host takes a few seconds, so a guest that
// needs more than this hangs.
const qemuBootDeadline = 90 * time.Second

// Rows of the QEMU group, so a skipped group still lists every measure.
var qemuRows = []struct{ name, title string }{
	{"exec.qemu.manager", "exec /bin/true in a QEMU guest (TCG), manager"},
	{"memory.agent.guest", "agent VmRSS in an idle QEMU guest"},
	{"boot.qemu.bare", "floor: bare QEMU boot to agent PING (TCG)"},
	{"boot.qemu.manager", "cold boot to ready, QEMU (TCG), manager"},
	{"snapshot.checkpoint.256", "checkpoint a 256 MiB QEMU guest"},
	{"snapshot.checkpoint.1024", "checkpoint a 1 GiB QEMU guest"},
	{"snapshot.restore", "restore to ready, 256 MiB QEMU guest"},
}

// qemuBench is the state of the QEMU group.
type qemuBench struct {
	e   *env
	mgr *sandbox.Manager
	dir string
	// args are the QEMU arguments the driver used for a 256 MiB guest in
	// the sandbox directory argsDir; the bare boot copies them.
	args    []string
	argsDir string
}

// runQEMUGroup boots QEMU guests through the manager and bare, and
// checkpoints and restores them. It runs guests one at a time.
func (e *env) runQEMUGroup(ctx context.Context) []Result {
	skipAll := func(reason string) []Result {
		var results []Result
		for _, r := range qemuRows {
			results = append(results, e.report(skipped(r.name, r.title, reason)))
		}
		return results
	}
	if reason := e.qemuMissing(); reason != "" {
		return skipAll(reason)
	}
	q, err := e.newQEMUBench()
	if err != nil {
		return skipAll("failed: " + err.Error())
	}
	defer q.close(ctx)

	var results []Result
	guestRows, err := q.measureGuest(ctx)
	if err != nil {
		return skipAll("failed: " + err.Error())
	}
	results = append(results, guestRows...)
	bare, cold := q.measureBoots(ctx)
	results = append(results, e.report(bare), e.report(cold))
	if cold.Skipped == "" {
		e.coldBoot = &cold.Stats
	}
	return append(results, q.measureSnapshots(ctx, cold)...)
}

func (e *env) qemuMissing() string {
	for _, bin := range []string{qemu.DefaultQEMU, qemu.DefaultQEMUImg} {
		if _, err := exec.LookPath(bin); err != nil {
			return bin + " is missing: apt-get install qemu-system-x86 qemu-utils"
		}
	}
	for _, name := range []string{"vmlinux", "initramfs.cpio", "rootfs.ext4"} {
		if _, err := os.Stat(filepath.Join(e.opts.Assets, name)); err != nil {
			return fmt.Sprintf("boot asset %s is missing in %s: run make assets", name, e.opts.Assets)
		}
	}
	return ""
}

func (e *env) newQEMUBench() (*qemuBench, error) {
	dir, err := os.MkdirTemp(e.dir, "q-")
	if err != nil {
		return nil, err
	}
	driver, err := qemu.New(qemu.Config{
		Accel:      qemu.Accel(e.opts.QEMUAccel),
		ProbeCache: filepath.Join(dir, "kvm-probe.json"),
		Logger:     e.quiet,
	})
	if err != nil {
		return nil, err
	}
	mgr, err := sandbox.New(sandbox.Config{
		DataDir: filepath.Join(dir, "data"),
		Driver:  driver,
		Defaults: sandbox.Defaults{
			MemoryMiB: 256,
			Kernel:    filepath.Join(e.opts.Assets, "vmlinux"),
			Initrd:    filepath.Join(e.opts.Assets, "initramfs.cpio"),
			RootFS:    filepath.Join(e.opts.Assets, "rootfs.ext4"),
		},
		ReadyTimeout: qemuBootDeadline,
		Logger:       e.quiet,
	})
	if err != nil {
		return nil, err
	}
	return &qemuBench{e: e, mgr: mgr, dir: dir}, nil
}

func (q *qemuBench) close(ctx context.Context) {
	q.mgr.Close(context.WithoutCancel(ctx))
}

// boot creates a sandbox with network mode none and waits until it is
// ready.
func (q *qemuBench) boot(ctx context.Context, memoryMiB int) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, qemuBootDeadline)
	defer cancel()
	return createReady(ctx, q.mgr, sandbox.CreateOptions{Network: sandbox.NetworkNone, MemoryMiB: memoryMiB})
}

func (q *qemuBench) remove(ctx context.Context, id string) error {
	return q.mgr.Remove(context.WithoutCancel(ctx), id, true)
}

// measureGuest boots one guest, which also warms the page cache for the
// boot measures, and measures exec and the agent's memory in it.
func (q *qemuBench) measureGuest(ctx context.Context) ([]Result, error) {
	id, err := q.boot(ctx, 256)
	if err != nil {
		return nil, err
	}
	defer q.remove(ctx, id)
	if q.args, err = qemuArgsOf(id); err != nil {
		return nil, err
	}
	info, err := q.mgr.Inspect(id)
	if err != nil {
		return nil, err
	}
	q.argsDir = info.Dir

	// The agent's memory is read first, while the guest is still idle.
	rssResult := q.measureAgentRSS(ctx, id)
	execRow := qemuRows[0]
	var execResult Result
	samples, err := timeLoop(q.e.iterations(20, 3), q.e.iterations(1000, 30), func() error {
		return managerExec(ctx, q.mgr, id, trueCmd)
	})
	if err != nil {
		execResult = skippedErr(execRow.name, execRow.title, err)
	} else {
		execResult = timed(execRow.name, execRow.title, samples)
		execResult.Note = "software emulation, so not held to the spawn floor; over the virtio-serial multiplexer"
	}
	if after := q.measureAgentRSS(ctx, id); rssResult.Skipped == "" && after.Skipped == "" {
		rssResult.Note += fmt.Sprintf("; %s after the exec measure", formatValue(after.Stats.Median, UnitBytes))
	}
	return []Result{q.e.report(execResult), q.e.report(rssResult)}, nil
}

// measureAgentRSS reads the VmRSS of PID 1, the agent, inside the guest.
func (q *qemuBench) measureAgentRSS(ctx context.Context, id string) Result {
	row := qemuRows[1]
	var out bytes.Buffer
	code, err := q.mgr.Exec(ctx, id, agentproto.StartRequest{Cmd: []string{"cat", "/proc/1/status"}},
		agentclient.ExecIO{Stdout: &out})
	if err == nil && code != 0 {
		err = fmt.Errorf("cat /proc/1/status exited with code %d", code)
	}
	if err != nil {
		return skippedErr(row.name, row.title, err)
	}
	rss, err := parseVmRSS(out.String())
	if err != nil {
		return skippedErr(row.name, row.title, err)
	}
	return Result{Name: row.name, Title: row.title, Unit: UnitBytes, Stats: Summarize([]float64{float64(rss)}),
		Note: "VmRSS of PID 1 (hearth-agent) in a 256 MiB guest right after boot, read by the first command run in it"}
}

// measureBoots alternates bare boots and manager boots, so both see the
// same background load.
func (q *qemuBench) measureBoots(ctx context.Context) (bare, cold Result) {
	bareRow, coldRow := qemuRows[2], qemuRows[3]
	if _, err := q.bareBoot(ctx); err != nil {
		err = fmt.Errorf("warm-up: %w", err)
		return skippedErr(bareRow.name, bareRow.title, err), skippedErr(coldRow.name, coldRow.title, err)
	}
	n := q.e.iterations(30, 2)
	var bareSamples, coldSamples []time.Duration
	var bareErr, coldErr error
	for i := 0; i < n && (bareErr == nil || coldErr == nil); i++ {
		if bareErr == nil {
			var d time.Duration
			if d, bareErr = q.bareBoot(ctx); bareErr == nil {
				bareSamples = append(bareSamples, d)
			}
		}
		if coldErr == nil {
			start := time.Now()
			id, err := q.boot(ctx, 256)
			d := time.Since(start)
			if coldErr = err; err == nil {
				coldSamples = append(coldSamples, d)
				coldErr = q.remove(ctx, id)
			}
		}
	}
	if bareErr != nil {
		bare = skippedErr(bareRow.name, bareRow.title, bareErr)
	} else {
		bare = timed(bareRow.name, bareRow.title, bareSamples)
		bare.Note = "qemu-system-x86_64 with the driver's command line minus QMP and the shared memory file; " +
			"timed from exec to the agent's ACK of PING, the disk overlay made beforehand"
	}
	if coldErr != nil {
		cold = skippedErr(coldRow.name, coldRow.title, coldErr)
	} else {
		cold = timed(coldRow.name, coldRow.title, coldSamples)
		cold.Floor = floorOf(bare)
		cold.Note = "Create until ready (agent PING and clock sync), network mode none; the ratio is the manager's and driver's overhead"
	}
	return bare, cold
}

// bareBoot starts QEMU without the manager, with the same kernel command
// line and agent port as the driver, and times it from exec until the
// agent acknowledges PING. The disk overlay is made before the clock
// starts.
func (q *qemuBench) bareBoot(ctx context.Context) (_ time.Duration, err error) {
	dir, err := os.MkdirTemp(q.dir, "bare-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	// The driver names the overlay root.qcow2 in the sandbox directory.
	overlay := filepath.Join(dir, "root.qcow2")
	rootfs := filepath.Join(q.e.opts.Assets, "rootfs.ext4")
	if out, err := exec.CommandContext(ctx, qemu.DefaultQEMUImg, "create", "-q", "-f", "qcow2",
		"-b", rootfs, "-F", "raw", overlay).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("create disk overlay: %v: %s", err, out)
	}
	args, err := q.bareArgs(dir)
	if err != nil {
		return 0, err
	}
	cmd := exec.Command(qemu.DefaultQEMU, args...)
	logFile, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		return 0, err
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	ctx, cancel := context.WithTimeout(ctx, qemuBootDeadline)
	defer cancel()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start qemu: %w", err)
	}
	mux := agentlink.NewSerialMux(filepath.Join(dir, "agent.sock"))
	defer func() {
		mux.Close()
		cmd.Process.Kill()
		cmd.Wait()
	}()
	conn, err := mux.DialAgent(ctx, agentproto.PortControl)
	if err == nil {
		err = agentclient.Ping(ctx, conn)
	}
	elapsed := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("bare boot: %w; console: %s", err, tail(filepath.Join(dir, "console.log")))
	}
	return elapsed, nil
}

// bareArgs returns the driver's QEMU command line for a 256 MiB guest
// with its paths moved into dir. It drops what only the manager uses: the
// QMP monitor, an incoming migration and the guest memory file shared
// with the driver, so the bare guest gets anonymous memory.
func (q *qemuBench) bareArgs(dir string) ([]string, error) {
	managerOnly := func(flag, value string) bool {
		switch flag {
		case "-mon", "-incoming":
			return true
		case "-chardev":
			return strings.HasPrefix(value, "socket,id=qmp,")
		case "-object":
			return strings.HasPrefix(value, "memory-backend-")
		case "-machine":
			return strings.HasPrefix(value, "memory-backend=")
		}
		return false
	}
	var args []string
	for i := 1; i < len(q.args); i++ { // q.args[0] is the binary
		flag := q.args[i]
		if !strings.HasPrefix(flag, "-") || i+1 == len(q.args) || strings.HasPrefix(q.args[i+1], "-") {
			args = append(args, flag) // a flag without a value, such as -nodefaults
			continue
		}
		value := q.args[i+1]
		i++
		if managerOnly(flag, value) {
			continue
		}
		args = append(args, flag, strings.ReplaceAll(value, q.argsDir, dir))
	}
	if !slices.Contains(args, "-append") || !slices.Contains(args, "-kernel") {
		return nil, fmt.Errorf("the driver's QEMU command line has no -kernel or -append: %q", q.args)
	}
	return args, nil
}

// qemuArgsOf returns the arguments of the QEMU process the driver started
// for sandbox id, found by its -name.
func qemuArgsOf(id string) ([]string, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(data) == 0 {
			continue
		}
		args := strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00")
		if name, err := argValue(args, "-name"); err == nil && name == id {
			return args, nil
		}
	}
	return nil, fmt.Errorf("no QEMU process named %s found", id)
}

// argValue returns the argument that follows flag in args.
func argValue(args []string, flag string) (string, error) {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			return args[i+1], nil
		}
	}
	return "", fmt.Errorf("no %s argument in the QEMU command line", flag)
}

// measureSnapshots times checkpoints of 256 MiB and 1 GiB guests and
// restores of the 256 MiB one, against the cold boot.
func (q *qemuBench) measureSnapshots(ctx context.Context, cold Result) []Result {
	cp256, restore := q.measureCheckpoint(ctx, 256, q.e.iterations(10, 1), qemuRows[4], true)
	cp1024, _ := q.measureCheckpoint(ctx, 1024, q.e.iterations(5, 1), qemuRows[5], false)
	results := []Result{q.e.report(cp256), q.e.report(cp1024)}

	row := qemuRows[6]
	if restore == "" {
		reason := "no snapshot to restore: " + cp256.Skipped
		return append(results, q.e.report(skipped(row.name, row.title, reason)))
	}
	defer q.mgr.DeleteSnapshot(restore)
	samples, err := timeLoop(q.e.iterations(1, 1), q.e.iterations(30, 2), func() error {
		rctx, cancel := context.WithTimeout(ctx, qemuBootDeadline)
		defer cancel()
		info, err := q.mgr.Restore(rctx, sandbox.RestoreOptions{SnapshotID: restore})
		if info.ID != "" {
			defer q.remove(ctx, info.ID)
		}
		return err
	})
	if err != nil {
		return append(results, q.e.report(skippedErr(row.name, row.title, err)))
	}
	r := timed(row.name, row.title, samples)
	if cold.Skipped == "" {
		r.Floor = &Floor{Name: cold.Name, Stats: cold.Stats}
	}
	r.Goal = restoreGoal
	r.Note = "Restore until ready (agent PING and clock sync); the ratio is to the manager's cold boot, not to a floor"
	return append(results, q.e.report(r))
}

// measureCheckpoint boots a guest of memoryMiB and checkpoints it
// repeatedly. With keep it returns the ID of the last snapshot for the
// restore measure; every other snapshot is deleted.
func (q *qemuBench) measureCheckpoint(ctx context.Context, memoryMiB, n int, row struct{ name, title string },
	keep bool) (Result, string) {
	id, err := q.boot(ctx, memoryMiB)
	if err != nil {
		return skippedErr(row.name, row.title, err), ""
	}
	defer q.remove(ctx, id)
	var last string
	var paused []time.Duration
	var sizes int64
	samples, err := timeLoop(q.e.iterations(1, 0), n, func() error {
		info, err := q.mgr.Checkpoint(ctx, id, "bench", nil)
		if err != nil {
			return err
		}
		if last != "" {
			if err := q.mgr.DeleteSnapshot(last); err != nil {
				return err
			}
		}
		last = info.ID
		paused = append(paused, info.VM.Took)
		sizes = 0
		for _, size := range info.VM.Files {
			sizes += size
		}
		return nil
	})
	if err != nil {
		if last != "" {
			q.mgr.DeleteSnapshot(last)
		}
		if errors.Is(err, sandbox.ErrUnavailable) {
			return skipped(row.name, row.title, err.Error()), ""
		}
		return skippedErr(row.name, row.title, err), ""
	}
	paused = paused[len(paused)-len(samples):] // without the warm-up
	r := timed(row.name, row.title, samples)
	r.Note = fmt.Sprintf("Checkpoint call until the snapshot is in the catalog; guest paused for a median of %s; "+
		"snapshot files %s", formatValue(Summarize(seconds(paused)).Median, UnitSeconds), formatValue(float64(sizes), UnitBytes))
	if !keep {
		q.mgr.DeleteSnapshot(last)
		last = ""
	}
	return r, last
}
