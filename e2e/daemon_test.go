package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/e2e/harness"
)

// daemonEnv is a running `hearth serve` in its own network namespace,
// with one booted sandbox ("shared") for the subtests that need no fresh
// one: each boot takes seconds under TCG.
type daemonEnv struct {
	d      *harness.Daemon
	client sandboxv1.SandboxServiceClient
}

const sharedID = "shared"

// TestDaemon runs the daemon scenarios in order against one daemon.
// Subtests that create sandboxes of their own remove them again, so the
// TAP and process counts they check see only the shared sandbox besides
// their own.
func TestDaemon(t *testing.T) {
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	assets := harness.Assets(t)
	netns := harness.NewNetns(t)
	d := harness.StartDaemon(t, hearthBin, netns, assets)
	e := &daemonEnv{d: d, client: sandboxv1.NewSandboxServiceClient(d.Dial(t))}
	ctx := testContext(t)

	res := d.CLI(ctx, t, "create", "--id", sharedID, "--wait", "--label", "e2e=shared")
	if res.Code != 0 {
		t.Fatalf("create the shared sandbox: exit %d, stderr %q", res.Code, res.Stderr)
	}

	t.Run("cli verbs", e.testCLIVerbs)
	t.Run("run disconnect kills workload", e.testRunDisconnect)
	t.Run("concurrent runs", e.testConcurrentRuns)
	t.Run("exec tty follows resize", e.testExecTTYResize)
	t.Run("checkpoint and restore", e.testCheckpointRestore)
	t.Run("one-shot run", e.testOneShotRun)
	t.Run("concurrent create same id", e.testConcurrentCreate)
	t.Run("ttl", e.testTTL)
	t.Run("bad input", e.testBadInput)

	if res := d.CLI(ctx, t, "rm", "-f", sharedID); res.Code != 0 {
		t.Errorf("remove the shared sandbox: exit %d, stderr %q", res.Code, res.Stderr)
	}
	d.Stop(t)
	if links := harness.Links(t, netns); !slices.Equal(links, []string{"lo"}) {
		t.Errorf("devices left in the namespace after the daemon stopped: got %v, want [lo]", links)
	}
	if pids := harness.QEMUProcesses(d.DataDir); len(pids) > 0 {
		t.Errorf("QEMU processes left after the daemon stopped: %v", pids)
	}
	entries, _ := os.ReadDir(filepath.Join(d.DataDir, "sandboxes"))
	for _, ent := range entries {
		t.Errorf("sandbox directory left after the daemon stopped: %s", ent.Name())
	}
}

func (e *daemonEnv) testCLIVerbs(t *testing.T) {
	ctx := testContext(t)
	res := e.d.CLI(ctx, t, "ls")
	row := regexp.MustCompile(`(?m)^shared\s+ready\s+172\.20\.\d+\.\d+\s+.*e2e=shared`)
	if res.Code != 0 || !row.MatchString(res.Stdout) {
		t.Errorf("ls: got exit %d stdout\n%s\nwant a row: shared, ready, an address of 172.20.0.0/16, e2e=shared", res.Code, res.Stdout)
	}

	res = e.d.CLI(ctx, t, "exec", sharedID, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
	if res.Code != 3 || res.Stdout != "out\n" || res.Stderr != "err\n" {
		t.Errorf("exec: got exit %d stdout %q stderr %q, want 3, %q, %q", res.Code, res.Stdout, res.Stderr, "out\n", "err\n")
	}

	res = e.d.CLI(ctx, t, "inspect", sharedID)
	if res.Code != 0 || !regexp.MustCompile(`(?m)^Last exit:\s+3 at `).MatchString(res.Stdout) {
		t.Errorf("inspect after exit 3: got exit %d stdout\n%s\nwant Last exit: 3", res.Code, res.Stdout)
	}

	cmd := exec.CommandContext(ctx, hearthBin, "--host", e.d.Host(), "exec", "-i", sharedID, "--", "sh", "-c", "cat; exit 4")
	cmd.Stdin = strings.NewReader("line one\nline two\n")
	out, err := cmd.Output()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 4 || string(out) != "line one\nline two\n" {
		t.Errorf("exec -i: got %q, %v; want the input back and exit 4", out, err)
	}
}

// testRunDisconnect checks that a client that goes away in the middle of
// Run leaves no workload behind.
func (e *daemonEnv) testRunDisconnect(t *testing.T) {
	ctx := testContext(t)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := e.client.Run(runCtx, &sandboxv1.RunRequest{
		Id: sharedID, Cmd: []string{"sh", "-c", "echo started; exec sleep 100"},
	})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	// Output proves the command runs in the guest; the state alone turns
	// running before the agent is reached.
	first, err := stream.Recv()
	if err != nil || string(first.GetData()) != "started\n" {
		t.Fatalf("first output of the run: got %v, %v; want started", first, err)
	}

	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("recv after cancel: got %v, want Canceled", err)
	}
	// The deadline is the behaviour under test.
	gone := time.Now().Add(time.Second)
	for {
		info, err := e.client.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: sharedID})
		if err != nil {
			t.Fatalf("inspect: %v", err)
		}
		if info.GetState() == "ready" && info.GetWorkloads() == 0 {
			break
		}
		if time.Now().After(gone) {
			t.Fatalf("1 s after the client left: state %q, workloads %d; want ready, 0", info.GetState(), info.GetWorkloads())
		}
		time.Sleep(20 * time.Millisecond)
	}

	res := e.run(t, sharedID, "ps", "-o", "pid,args")
	if res.code != 0 || strings.Contains(res.stdout, "sleep 100") {
		t.Errorf("guest processes after the disconnect: got exit %d\n%s\nwant no sleep 100", res.code, res.stdout)
	}
}

func (e *daemonEnv) testConcurrentRuns(t *testing.T) {
	var wg sync.WaitGroup
	results := make([]runResult, 3)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = e.run(t, sharedID, "sh", "-c", fmt.Sprintf("sleep 1; echo run-%d; exit %d", i, 10+i))
		}()
	}
	wg.Wait()
	for i, res := range results {
		if res.err != nil {
			t.Errorf("run %d: %v", i, res.err)
			continue
		}
		if want := fmt.Sprintf("run-%d\n", i); res.stdout != want {
			t.Errorf("run %d stdout: got %q, want %q", i, res.stdout, want)
		}
		if res.code != int32(10+i) {
			t.Errorf("run %d exit code: got %d, want %d", i, res.code, 10+i)
		}
	}
	e.waitState(t, sharedID, "ready")
}

// testExecTTYResize runs `hearth exec -it` in a tmux pane of a tmux
// server of its own, and checks the guest terminal's size before and
// after the pane is resized, the exit code, and that the pane's terminal
// left raw mode.
func (e *daemonEnv) testExecTTYResize(t *testing.T) {
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("tmux not found; install the Debian package tmux")
	}
	sock := filepath.Join(t.TempDir(), "tmux.sock")
	tmux := func(args ...string) string {
		t.Helper()
		return harness.MustRun(t, "tmux", append([]string{"-S", sock}, args...)...)
	}
	script := fmt.Sprintf("%s --host %s exec -it %s -- sh; echo hearth-exit=$?; stty -a; sleep 600",
		hearthBin, e.d.Host(), sharedID)
	tmux("-f", "/dev/null", "new-session", "-d", "-s", "e2e", "-x", "100", "-y", "30", "sh", "-c", script)
	t.Cleanup(func() { killTmuxServer(t, sock) })

	pane := func() string {
		return tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", "e2e")
	}
	waitPane := func(want *regexp.Regexp, sendKeys string) string {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			if sendKeys != "" {
				tmux("send-keys", "-t", "e2e", sendKeys, "Enter")
				sendKeys = ""
			}
			out := pane()
			if want.MatchString(out) {
				return out
			}
			if time.Now().After(deadline) {
				t.Fatalf("tmux pane: got\n%s\nwant a match of %s", out, want)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	// stty size prints rows, then columns.
	paneSize := func() *regexp.Regexp {
		size := strings.TrimSpace(tmux("display-message", "-p", "-t", "e2e", "#{pane_height} #{pane_width}"))
		return regexp.MustCompile(`(?m)^` + size + `\s*$`)
	}
	initial := paneSize()
	waitPane(initial, "stty size")

	tmux("resize-window", "-t", "e2e", "-x", "120", "-y", "40")
	resized := paneSize()
	if resized.String() == initial.String() {
		t.Fatalf("pane size after tmux resize-window: unchanged, %s", initial)
	}
	// The resize reaches the guest asynchronously, so ask again until it
	// shows.
	deadline := time.Now().Add(60 * time.Second)
	for !resized.MatchString(pane()) {
		if time.Now().After(deadline) {
			t.Fatalf("guest terminal size after resizing the pane: got pane\n%s\nwant a line matching %s", pane(), resized)
		}
		tmux("send-keys", "-t", "e2e", "stty size", "Enter")
		time.Sleep(500 * time.Millisecond)
	}

	out := waitPane(regexp.MustCompile(`hearth-exit=\d+`), "exit 3")
	if !strings.Contains(out, "hearth-exit=3") {
		t.Errorf("exit code of hearth exec -it: pane\n%s\nwant hearth-exit=3", out)
	}
	out = waitPane(regexp.MustCompile(`(?s)hearth-exit=\d+.*\bicanon\b`), "")
	after := out[strings.Index(out, "hearth-exit="):]
	if strings.Contains(after, "-icanon") || strings.Contains(after, "-echo ") || !strings.Contains(after, " echo ") {
		t.Errorf("local terminal after hearth exec -it exited: stty -a shows raw mode\n%s", after)
	}
}

// killTmuxServer ends the test's tmux server by its PID.
func killTmuxServer(t *testing.T, sock string) {
	out, err := exec.Command("tmux", "-S", sock, "display-message", "-p", "#{pid}").Output()
	if err != nil {
		return // the server has already exited
	}
	var pid int
	if _, err := fmt.Sscan(string(out), &pid); err != nil || pid <= 1 {
		t.Errorf("tmux server pid: got %q", out)
		return
	}
	p, err := os.FindProcess(pid)
	if err == nil {
		err = p.Kill()
	}
	if err != nil {
		t.Errorf("kill tmux server %d: %v", pid, err)
	}
}

var snapshotID = regexp.MustCompile(`^snap-[0-9a-f]+\n$`)

// testCheckpointRestore checkpoints the shared sandbox with the CLI and
// restores a clone from it. It skips when the daemon's driver cannot
// checkpoint.
func (e *daemonEnv) testCheckpointRestore(t *testing.T) {
	ctx := testContext(t)
	if res := e.run(t, sharedID, "sh", "-c", "echo before-checkpoint > /e2e-marker"); res.code != 0 {
		t.Fatalf("write marker: exit %d, %v, stderr %q", res.code, res.err, res.stderr)
	}
	res := e.d.CLI(ctx, t, "checkpoint", "--name", "e2e", "--label", "k=v", sharedID)
	if res.Code != 0 && strings.Contains(res.Stderr, "cannot checkpoint") {
		t.Skipf("the daemon's driver cannot checkpoint yet: %s", strings.TrimSpace(res.Stderr))
	}
	if res.Code != 0 || !snapshotID.MatchString(res.Stdout) {
		t.Fatalf("checkpoint: got exit %d stdout %q stderr %q, want a snapshot id", res.Code, res.Stdout, res.Stderr)
	}
	snap := strings.TrimSpace(res.Stdout)
	defer e.d.CLI(context.WithoutCancel(ctx), t, "snapshots", "rm", snap)

	res = e.d.CLI(ctx, t, "snapshots", "ls", "--sandbox", sharedID)
	if res.Code != 0 || !regexp.MustCompile(`(?m)^`+snap+`\s+shared\s+e2e\s+.*k=v`).MatchString(res.Stdout) {
		t.Errorf("snapshots ls: got exit %d stdout\n%s\nwant a row for %s", res.Code, res.Stdout, snap)
	}

	res = e.d.CLI(ctx, t, "restore", "--id", "clone", snap)
	if res.Code != 0 || res.Stdout != "clone\n" {
		t.Fatalf("restore: got exit %d stdout %q stderr %q, want clone", res.Code, res.Stdout, res.Stderr)
	}
	defer e.d.CLI(context.WithoutCancel(ctx), t, "rm", "-f", "clone")
	info, err := e.client.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: "clone"})
	if err != nil || info.GetState() != "ready" {
		t.Fatalf("clone right after restore: got %v, %v; want ready", info, err)
	}
	shared, err := e.client.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: sharedID})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetNetwork().GetIpAddress() == shared.GetNetwork().GetIpAddress() {
		t.Errorf("clone address %s: want one different from the origin's", info.GetNetwork().GetIpAddress())
	}
	if got := e.run(t, "clone", "cat", "/e2e-marker"); got.stdout != "before-checkpoint\n" {
		t.Errorf("marker in clone: got %q (exit %d, %v), want %q", got.stdout, got.code, got.err, "before-checkpoint\n")
	}
	if got := e.run(t, "clone", "ip", "-4", "addr", "show", "eth0"); !strings.Contains(got.stdout, info.GetNetwork().GetIpAddress()+"/") {
		t.Errorf("clone's eth0: got %q, want its new address %s", got.stdout, info.GetNetwork().GetIpAddress())
	}

	res = e.d.CLI(ctx, t, "snapshots", "rm", snap)
	if res.Code != 125 || !strings.Contains(res.Stderr, "clone") {
		t.Errorf("snapshots rm while the clone runs: got exit %d stderr %q, want 125 naming the clone", res.Code, res.Stderr)
	}
	if res := e.d.CLI(ctx, t, "rm", "-f", "clone"); res.Code != 0 {
		t.Errorf("rm clone: exit %d stderr %q", res.Code, res.Stderr)
	}
	if res := e.d.CLI(ctx, t, "snapshots", "rm", snap); res.Code != 0 {
		t.Errorf("snapshots rm: exit %d stderr %q", res.Code, res.Stderr)
	}
}

func (e *daemonEnv) testOneShotRun(t *testing.T) {
	ctx := testContext(t)
	res := e.d.CLI(ctx, t, "run", "--network", "none", "--", "sh", "-c", "echo one-shot; exit 7")
	if res.Code != 7 || res.Stdout != "one-shot\n" {
		t.Errorf("run through the daemon: got exit %d stdout %q stderr %q, want 7 and %q", res.Code, res.Stdout, res.Stderr, "one-shot\n")
	}
	if res := e.d.CLI(ctx, t, "ls", "-q"); res.Stdout != sharedID+"\n" {
		t.Errorf("ls after run: got %q, want only %s", res.Stdout, sharedID)
	}
}

// testConcurrentCreate creates one ID twice at once: one call wins, the
// other gets AlreadyExists and leaves no TAP or VM behind.
func (e *daemonEnv) testConcurrentCreate(t *testing.T) {
	ctx := testContext(t)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = e.client.Create(ctx, &sandboxv1.CreateSandboxRequest{Id: "twin"})
		}()
	}
	wg.Wait()
	var ok, exists int
	for _, err := range errs {
		switch status.Code(err) {
		case codes.OK:
			ok++
		case codes.AlreadyExists:
			exists++
		default:
			t.Errorf("create: got %v, want OK or AlreadyExists", err)
		}
	}
	if ok != 1 || exists != 1 {
		t.Fatalf("two creates of one id: got %d OK and %d AlreadyExists, want 1 and 1", ok, exists)
	}
	e.waitState(t, "twin", "ready")

	// shared and twin: one TAP and one QEMU each.
	if taps := e.taps(t); len(taps) != 2 {
		t.Errorf("TAPs with shared and twin: got %v, want 2", taps)
	}
	if pids := harness.QEMUProcesses(e.d.DataDir); len(pids) != 2 {
		t.Errorf("QEMU processes with shared and twin: got %v, want 2", pids)
	}
	if _, err := e.client.Remove(ctx, &sandboxv1.RemoveSandboxRequest{Id: "twin", Force: true}); err != nil {
		t.Fatalf("remove twin: %v", err)
	}
	if taps := e.taps(t); len(taps) != 1 {
		t.Errorf("TAPs after removing twin: got %v, want 1", taps)
	}
	if pids := harness.QEMUProcesses(e.d.DataDir); len(pids) != 1 {
		t.Errorf("QEMU processes after removing twin: got %v, want 1", pids)
	}
}

func (e *daemonEnv) testTTL(t *testing.T) {
	ctx := testContext(t)
	none := &sandboxv1.NetworkSpec{Mode: "none"}

	created := time.Now()
	if _, err := e.client.Create(ctx, &sandboxv1.CreateSandboxRequest{Id: "brief", TtlSeconds: 2, Network: none}); err != nil {
		t.Fatalf("create with ttl 2: %v", err)
	}
	e.waitGone(t, "brief", 30*time.Second)
	// Generous bounds: the timer runs from creation, and the removal of
	// a booting VM takes a moment under TCG.
	if took := time.Since(created); took < 1500*time.Millisecond || took > 15*time.Second {
		t.Errorf("sandbox with ttl 2 s gone after %s, want about 2 s", took)
	}

	created = time.Now()
	if _, err := e.client.Create(ctx, &sandboxv1.CreateSandboxRequest{Id: "reborn", TtlSeconds: 2, Network: none}); err != nil {
		t.Fatalf("create the first reborn: %v", err)
	}
	if _, err := e.client.Remove(ctx, &sandboxv1.RemoveSandboxRequest{Id: "reborn", Force: true}); err != nil {
		t.Fatalf("remove the first reborn: %v", err)
	}
	if _, err := e.client.Create(ctx, &sandboxv1.CreateSandboxRequest{Id: "reborn", Network: none}); err != nil {
		t.Fatalf("create the second reborn: %v", err)
	}
	defer e.client.Remove(context.WithoutCancel(ctx), &sandboxv1.RemoveSandboxRequest{Id: "reborn", Force: true})
	time.Sleep(time.Until(created.Add(3500 * time.Millisecond)))
	info, err := e.client.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: "reborn"})
	if err != nil {
		t.Fatalf("the second reborn after the first one's TTL passed: %v", err)
	}
	if info.GetExpiresAt() != 0 {
		t.Errorf("the second reborn: got expires_at %d, want 0", info.GetExpiresAt())
	}
}

func (e *daemonEnv) testBadInput(t *testing.T) {
	none := &sandboxv1.NetworkSpec{Mode: "none"}
	tests := []struct {
		name     string
		call     func(ctx context.Context) error
		code     codes.Code
		contains string
	}{
		{"unknown sandbox", func(ctx context.Context) error {
			_, err := e.client.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: "nobody"})
			return err
		}, codes.NotFound, "nobody"},
		{"path as id", func(ctx context.Context) error {
			_, err := e.client.Create(ctx, &sandboxv1.CreateSandboxRequest{Id: "../x", Network: none})
			return err
		}, codes.InvalidArgument, "../x"},
		{"1 MiB of memory", func(ctx context.Context) error {
			_, err := e.client.Create(ctx, &sandboxv1.CreateSandboxRequest{
				Limits: &sandboxv1.ResourceLimits{MemoryMib: 1}, Network: none,
			})
			return err
		}, codes.InvalidArgument, "minimum of 64 MiB"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call(testContext(t))
			if got := status.Code(err); got != tc.code {
				t.Fatalf("got code %s (%v), want %s", got, err, tc.code)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, tc.contains) {
				t.Errorf("got message %q, want it to contain %q", msg, tc.contains)
			}
		})
	}

	res := e.d.CLI(testContext(t), t, "inspect", "nobody")
	if res.Code != 125 || !strings.Contains(res.Stderr, `not found: sandbox "nobody"`) || strings.Contains(res.Stderr, "rpc error") {
		t.Errorf("hearth inspect nobody: got exit %d stderr %q, want 125 and a plain not found message", res.Code, res.Stderr)
	}
}

// TestServeRejectsBadCIDR checks that an invalid [network].cidr stops the
// daemon at start, before it builds anything.
func TestServeRejectsBadCIDR(t *testing.T) {
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	dir := t.TempDir()
	cfg := strings.Replace(harness.Config(dir, dir), "[grpc]", "[network]\ncidr = \"10.0.0.0/33\"\n\n[grpc]", 1)
	path := filepath.Join(dir, "hearth.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// A daemon that wrongly accepted the file would serve until killed.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, hearthBin, "serve", "--config", path).CombinedOutput()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) {
		t.Fatalf("hearth serve with cidr 10.0.0.0/33: got %v, want a failed exit; output:\n%s", err, out)
	}
	if !strings.Contains(string(out), "[network].cidr") || !strings.Contains(string(out), "10.0.0.0/33") {
		t.Errorf("hearth serve output: got %q, want the key [network].cidr and the value", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "hearth.sock")); !os.IsNotExist(err) {
		t.Errorf("socket after a refused start: got %v, want none", err)
	}
}

// runResult is the collected output of one Run call.
type runResult struct {
	stdout, stderr string
	code           int32
	err            error
}

// run runs a command with the Run call and collects its output.
func (e *daemonEnv) run(t *testing.T, id string, cmd ...string) runResult {
	stream, err := e.client.Run(testContext(t), &sandboxv1.RunRequest{Id: id, Cmd: cmd})
	if err != nil {
		return runResult{err: err}
	}
	var res runResult
	for {
		out, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			res.err = errors.New("the output ended without done")
			return res
		}
		if err != nil {
			res.err = err
			return res
		}
		switch out.GetStream() {
		case "stdout":
			res.stdout += string(out.GetData())
		case "stderr":
			res.stderr += string(out.GetData())
		}
		if out.GetDone() {
			res.code = out.GetExitCode()
			return res
		}
	}
}

func (e *daemonEnv) waitState(t *testing.T, id, want string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		info, err := e.client.Inspect(testContext(t), &sandboxv1.InspectSandboxRequest{Id: id})
		if err != nil {
			t.Fatalf("inspect %s: %v", id, err)
		}
		if info.GetState() == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s: state %q, want %q", id, info.GetState(), want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *daemonEnv) waitGone(t *testing.T, id string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		_, err := e.client.Inspect(testContext(t), &sandboxv1.InspectSandboxRequest{Id: id})
		if status.Code(err) == codes.NotFound {
			return
		}
		if err != nil {
			t.Fatalf("inspect %s: %v", id, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s still exists after %s", id, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// taps returns the devices in the daemon's namespace other than lo.
func (e *daemonEnv) taps(t *testing.T) []string {
	var taps []string
	for _, l := range harness.Links(t, e.d.Netns) {
		if l != "lo" {
			taps = append(taps, l)
		}
	}
	return taps
}
