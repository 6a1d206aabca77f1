package e2e

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/e2e/harness"
)

// execID is the sandbox of TestExec.
const execID = "exec"

// execEnv is a daemon with one booted sandbox.
type execEnv struct {
	d       *harness.Daemon
	client  sandboxv1.SandboxServiceClient
	control sandboxv1.SandboxControlServiceClient
}

// TestExec runs commands as other users, with a timeout, with signals
// and with Ctrl-C in a real guest, and ends with a clean stop whose
// effect is read back from the sandbox's disk.
func TestExec(t *testing.T) {
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	assets := harness.Assets(t)
	netns := harness.NewNetns(t)
	d := harness.StartDaemon(t, hearthBin, netns, assets)
	conn := d.Dial(t)
	e := &execEnv{
		d: d, client: sandboxv1.NewSandboxServiceClient(conn), control: sandboxv1.NewSandboxControlServiceClient(conn),
	}
	ctx := testContext(t)
	if res := d.CLI(ctx, t, "create", "--id", execID, "--network", "none", "--wait"); res.Code != 0 {
		t.Fatalf("create: exit %d, stderr %q", res.Code, res.Stderr)
	}

	t.Run("run as nobody", e.testRunAsNobody)
	t.Run("exec as uid without passwd entry", e.testExecAsUID)
	t.Run("timeout kills the process group", e.testTimeout)
	t.Run("kill sends SIGTERM", e.testKillTerm)
	t.Run("ctrl-c in a terminal", e.testCtrlC)
	t.Run("clean stop", e.testCleanStop)

	if res := d.CLI(ctx, t, "rm", "-f", execID); res.Code != 0 {
		t.Errorf("remove: exit %d, stderr %q", res.Code, res.Stderr)
	}
}

func (e *execEnv) testRunAsNobody(t *testing.T) {
	res := e.d.CLI(testContext(t), t, "run", "--network", "none", "--user", "nobody", "--", "id", "-u")
	if res.Code != 0 || res.Stdout != "65534\n" {
		t.Errorf("hearth run --user nobody -- id -u: got exit %d stdout %q stderr %q, want 0 and 65534", res.Code, res.Stdout, res.Stderr)
	}
}

func (e *execEnv) testExecAsUID(t *testing.T) {
	res := e.d.CLI(testContext(t), t, "exec", "--user", "1000:1000", execID, "--", "id")
	if res.Code != 0 || !strings.Contains(res.Stdout, "uid=1000") || !strings.Contains(res.Stdout, "gid=1000") {
		t.Errorf("hearth exec --user 1000:1000 -- id: got exit %d stdout %q stderr %q, want uid=1000 and gid=1000",
			res.Code, res.Stdout, res.Stderr)
	}
}

// runToEnd reads a Run stream to the message marked done.
func runToEnd(t *testing.T, stream interface {
	Recv() (*sandboxv1.RunOutput, error)
}) *sandboxv1.RunOutput {
	t.Helper()
	for {
		out, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			t.Fatal("run ended without a message marked done")
		}
		if err != nil {
			t.Fatalf("run: %v", err)
		}
		if out.GetDone() {
			return out
		}
	}
}

func (e *execEnv) testTimeout(t *testing.T) {
	ctx := testContext(t)
	stream, err := e.client.Run(ctx, &sandboxv1.RunRequest{
		Id: execID, Cmd: []string{"sh", "-c", "sleep 100 & sleep 100"}, TimeoutSeconds: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	last := runToEnd(t, stream)
	if last.GetExitCode() != 124 || last.GetReason() != "timed out" || !last.GetTimedOut() {
		t.Errorf("timed-out run: got code %d reason %q timed_out %v, want 124, timed out, true",
			last.GetExitCode(), last.GetReason(), last.GetTimedOut())
	}

	// The script names no sleep, so only the timed-out sleeps could
	// match.
	script := `for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < "$f"; echo; done 2>/dev/null | grep -c '^sleep' || true`
	res := e.d.CLI(ctx, t, "exec", execID, "--", "sh", "-c", script)
	if res.Code != 0 || strings.TrimSpace(res.Stdout) != "0" {
		t.Errorf("sleep processes after the timeout: got exit %d stdout %q stderr %q, want 0 of them", res.Code, res.Stdout, res.Stderr)
	}

	res = e.d.CLI(ctx, t, "exec", "--timeout", "1s", execID, "--", "sleep", "100")
	if res.Code != 124 || !strings.Contains(res.Stderr, "timed out") {
		t.Errorf("hearth exec --timeout 1s: got exit %d stderr %q, want 124 and the reason on stderr", res.Code, res.Stderr)
	}
}

func (e *execEnv) testKillTerm(t *testing.T) {
	ctx := testContext(t)
	stream, err := e.client.Run(ctx, &sandboxv1.RunRequest{
		Id: execID, Cmd: []string{"sleep", "100"}, AnnounceWorkload: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetWorkloadId() == "" {
		t.Fatalf("run first message: got %v, %v; want the workload ID", first, err)
	}
	workload := first.GetWorkloadId()

	res := e.d.CLI(ctx, t, "ps", execID)
	if res.Code != 0 || !regexp.MustCompile(`(?m)^`+workload+`\s.*sleep 100$`).MatchString(res.Stdout) {
		t.Errorf("hearth ps: got exit %d stdout\n%s\nwant a row for %s running sleep 100", res.Code, res.Stdout, workload)
	}
	if res := e.d.CLI(ctx, t, "kill", "-s", "TERM", execID, workload); res.Code != 0 {
		t.Fatalf("hearth kill -s TERM: exit %d, stderr %q", res.Code, res.Stderr)
	}
	last := runToEnd(t, stream)
	if last.GetExitCode() != 143 || last.GetSignal() != "SIGTERM" || last.GetReason() != "signaled" {
		t.Errorf("run after kill -s TERM: got code %d signal %q reason %q, want 143, SIGTERM, signaled",
			last.GetExitCode(), last.GetSignal(), last.GetReason())
	}
}

// testCtrlC runs `hearth exec -it` in a tmux pane and presses Ctrl-C,
// which the guest terminal turns into SIGINT.
func (e *execEnv) testCtrlC(t *testing.T) {
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("tmux not found; install the Debian package tmux")
	}
	ctx := testContext(t)
	sock := filepath.Join(t.TempDir(), "tmux.sock")
	tmux := func(args ...string) string {
		t.Helper()
		return harness.MustRun(t, "tmux", append([]string{"-S", sock}, args...)...)
	}
	script := fmt.Sprintf("%s --host %s exec -it %s -- sleep 100; echo hearth-exit=$?; sleep 600",
		hearthBin, e.d.Host(), execID)
	tmux("-f", "/dev/null", "new-session", "-d", "-s", "e2e", "-x", "100", "-y", "30", "sh", "-c", script)
	t.Cleanup(func() { killTmuxServer(t, sock) })

	// hearth puts the local terminal in raw mode before it calls Exec,
	// so once ps lists the command the key reaches the guest as a byte.
	// The agent reads that byte only after it started the command with
	// the terminal as its controlling terminal.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		res := e.d.CLI(ctx, t, "ps", "-q", execID)
		if res.Code == 0 && strings.TrimSpace(res.Stdout) != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hearth ps never listed the exec -it command: %q %q", res.Stdout, res.Stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	tmux("send-keys", "-t", "e2e", "C-c")

	exitLine := regexp.MustCompile(`hearth-exit=(\d+)`)
	deadline = time.Now().Add(time.Minute)
	for {
		out := tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", "e2e")
		if m := exitLine.FindStringSubmatch(out); m != nil {
			if m[1] != "130" {
				t.Errorf("exit code of hearth exec -it after Ctrl-C: pane\n%s\nwant hearth-exit=130", out)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("hearth exec -it did not end after Ctrl-C: pane\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// testCleanStop writes a file just before `hearth stop`, checks that the
// guest shut down through its agent rather than being killed, and reads
// the file back from the stopped sandbox's disk.
func (e *execEnv) testCleanStop(t *testing.T) {
	for _, tool := range []string{"qemu-img", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found; install the Debian packages qemu-utils and e2fsprogs", tool)
		}
	}
	ctx := testContext(t)
	if res := e.d.CLI(ctx, t, "exec", execID, "--", "sh", "-c", "echo persisted > /root/marker"); res.Code != 0 {
		t.Fatalf("write the marker: exit %d, stderr %q", res.Code, res.Stderr)
	}
	if res := e.d.CLI(ctx, t, "stop", execID); res.Code != 0 {
		t.Fatalf("hearth stop: exit %d, stderr %q", res.Code, res.Stderr)
	}

	dir := filepath.Join(e.d.DataDir, "sandboxes", execID)
	console, err := os.ReadFile(filepath.Join(dir, "console.log"))
	if err != nil {
		t.Fatalf("read the console log: %v", err)
	}
	requested := strings.Index(string(console), "shutdown requested")
	shutting := strings.Index(string(console), "guest shutting down")
	if requested < 0 || shutting < requested {
		t.Errorf("console log: want the agent's \"shutdown requested\" and then \"guest shutting down\"; got\n%s", consoleTail(console, 30))
	}
	log, err := os.ReadFile(e.d.Log)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(log), "\n") {
		if !strings.Contains(line, "sandbox="+execID) {
			continue
		}
		if strings.Contains(line, "killing the VM") || strings.Contains(line, "killing it") {
			t.Errorf("daemon log: the stop fell back to a kill: %s", line)
		}
	}
	if !strings.Contains(string(log), "guest shut down") {
		t.Errorf("daemon log: no \"guest shut down\" record of the clean stop")
	}

	raw := filepath.Join(t.TempDir(), "root.raw")
	harness.MustRun(t, "qemu-img", "convert", "-O", "raw", filepath.Join(dir, "root.qcow2"), raw)
	out, err := exec.CommandContext(ctx, "debugfs", "-R", "cat /root/marker", raw).Output()
	if err != nil {
		t.Fatalf("debugfs cat /root/marker: %v", err)
	}
	if string(out) != "persisted\n" {
		t.Errorf("/root/marker on the stopped sandbox's disk: got %q, want %q", out, "persisted\n")
	}
}

// consoleTail returns the last n lines of data.
func consoleTail(data []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
