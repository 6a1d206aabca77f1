package cli

import (
	"bytes"
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/server"
	"github.com/hearthvm/hearth/server/servertest"
	"github.com/hearthvm/hearth/vmm/instant"
)

// testDaemon serves the API on a Unix socket in t.TempDir(), with
// sandboxes of the instant driver, whose commands run on the host.
func testDaemon(t *testing.T) string {
	t.Helper()
	mgr := servertest.NewManager(t, &instant.Driver{})
	srv, err := server.New(server.Options{Manager: mgr, Logger: servertest.QuietLogger})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	sock := filepath.Join(t.TempDir(), "hearth.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(func() {
		srv.BeginShutdown()
		g.Stop()
	})
	return "unix://" + sock
}

// cliResult is the outcome of one CLI invocation.
type cliResult struct {
	stdout, stderr string
	code           int
}

// hearth runs the CLI in-process against host.
func hearth(t *testing.T, host, stdin string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), servertest.Deadline)
	defer cancel()
	var stdout, stderr bytes.Buffer
	full := append([]string{"--host", host}, args...)
	code := execute(ctx, full, strings.NewReader(stdin), &stdout, &stderr)
	return cliResult{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

// mustHearth runs the CLI and fails the test unless it exits 0.
func mustHearth(t *testing.T, host string, args ...string) string {
	t.Helper()
	res := hearth(t, host, "", args...)
	if res.code != 0 {
		t.Fatalf("hearth %v: exit %d, stderr %q", args, res.code, res.stderr)
	}
	return res.stdout
}

func TestVerbsLifecycle(t *testing.T) {
	host := testDaemon(t)

	if got := mustHearth(t, host, "create", "--id", "box", "--network", "none", "--label", "team=a", "--wait"); got != "box\n" {
		t.Errorf("create: got stdout %q, want %q", got, "box\n")
	}

	table := mustHearth(t, host, "ls")
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "ID") || !strings.HasPrefix(lines[1], "box ") ||
		!strings.Contains(lines[1], "ready") || !strings.Contains(lines[1], "team=a") {
		t.Errorf("ls: got\n%s\nwant a header and one row for box, ready, team=a", table)
	}
	if got := mustHearth(t, host, "ls", "-q", "--label", "team=b"); got != "" {
		t.Errorf("ls -q --label team=b: got %q, want nothing", got)
	}
	var list sandboxv1.ListSandboxesResponse
	if err := protojson.Unmarshal([]byte(mustHearth(t, host, "ls", "--json")), &list); err != nil {
		t.Fatalf("ls --json: %v", err)
	}
	if len(list.GetSandboxes()) != 1 || list.GetSandboxes()[0].GetState() != "ready" {
		t.Errorf("ls --json: got %v, want box ready", list.GetSandboxes())
	}

	res := hearth(t, host, "", "exec", "box", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
	if res.code != 3 || res.stdout != "out\n" || res.stderr != "err\n" {
		t.Errorf("exec: got exit %d stdout %q stderr %q, want 3, %q, %q", res.code, res.stdout, res.stderr, "out\n", "err\n")
	}
	res = hearth(t, host, "", "exec", "box", "ls", "-d", "/")
	if res.code != 0 || res.stdout != "/\n" {
		t.Errorf("exec with the command's own flags: got exit %d stdout %q stderr %q, want 0 and %q", res.code, res.stdout, res.stderr, "/\n")
	}
	res = hearth(t, host, "hello\nworld\n", "exec", "-i", "box", "--", "sh", "-c", "cat; exit 5")
	if res.code != 5 || res.stdout != "hello\nworld\n" {
		t.Errorf("exec -i: got exit %d stdout %q stderr %q, want 5 and the input back", res.code, res.stdout, res.stderr)
	}

	inspect := mustHearth(t, host, "inspect", "box")
	for _, want := range []string{"State:", "ready", "Last exit:", "5 at"} {
		if !strings.Contains(inspect, want) {
			t.Errorf("inspect: got\n%s\nwant it to contain %q", inspect, want)
		}
	}
	var info sandboxv1.SandboxInfo
	if err := protojson.Unmarshal([]byte(mustHearth(t, host, "inspect", "--json", "box")), &info); err != nil {
		t.Fatalf("inspect --json: %v", err)
	}
	if info.GetId() != "box" || info.GetLastExitCode() != 5 {
		t.Errorf("inspect --json: got id %q last exit %d, want box and 5", info.GetId(), info.GetLastExitCode())
	}

	if got := mustHearth(t, host, "ttl", "box", "1h"); !strings.HasPrefix(got, "box expires at ") {
		t.Errorf("ttl 1h: got %q, want the expiry time", got)
	}
	if got := mustHearth(t, host, "ttl", "box", "0"); got != "box expires never\n" {
		t.Errorf("ttl 0: got %q, want %q", got, "box expires never\n")
	}

	if got := mustHearth(t, host, "pause", "box"); got != "box\n" {
		t.Errorf("pause: got %q, want %q", got, "box\n")
	}
	if got := mustHearth(t, host, "ls", "-q", "--state", "paused"); got != "box\n" {
		t.Errorf("ls --state paused: got %q, want box", got)
	}
	mustHearth(t, host, "resume", "box")

	if got := mustHearth(t, host, "stop", "box"); got != "box\n" {
		t.Errorf("stop: got %q, want %q", got, "box\n")
	}
	if got := mustHearth(t, host, "rm", "box"); got != "box\n" {
		t.Errorf("rm: got %q, want %q", got, "box\n")
	}
	res = hearth(t, host, "", "inspect", "box")
	if res.code != exitUsage || !strings.Contains(res.stderr, `not found: sandbox "box"`) || strings.Contains(res.stderr, "rpc error") {
		t.Errorf("inspect after rm: got exit %d stderr %q, want %d and a plain not found message", res.code, res.stderr, exitUsage)
	}
}

func TestVerbsSnapshots(t *testing.T) {
	host := testDaemon(t)
	mustHearth(t, host, "create", "--id", "origin", "--network", "none", "--wait")

	snap := strings.TrimSpace(mustHearth(t, host, "checkpoint", "--name", "warm", "-l", "k=v", "origin"))
	if !strings.HasPrefix(snap, "snap-") {
		t.Fatalf("checkpoint: got %q, want a snapshot id", snap)
	}
	table := mustHearth(t, host, "snapshots", "ls", "--sandbox", "origin")
	if !strings.Contains(table, snap) || !strings.Contains(table, "warm") || !strings.Contains(table, "k=v") {
		t.Errorf("snapshots ls: got\n%s\nwant a row for %s named warm with k=v", table, snap)
	}
	if got := mustHearth(t, host, "restore", "--id", "clone", snap); got != "clone\n" {
		t.Errorf("restore: got %q, want %q", got, "clone\n")
	}
	res := hearth(t, host, "", "exec", "clone", "--", "echo", "cloned")
	if res.code != 0 || res.stdout != "cloned\n" {
		t.Errorf("exec in clone: got exit %d stdout %q, want 0 and %q", res.code, res.stdout, "cloned\n")
	}

	res = hearth(t, host, "", "snapshots", "rm", snap)
	if res.code != exitUsage || !strings.Contains(res.stderr, "clone") {
		t.Errorf("snapshots rm while a clone runs: got exit %d stderr %q, want %d naming the clone", res.code, res.stderr, exitUsage)
	}
	mustHearth(t, host, "rm", "-f", "clone")
	if got := mustHearth(t, host, "snapshots", "rm", snap); got != snap+"\n" {
		t.Errorf("snapshots rm: got %q, want %q", got, snap+"\n")
	}
	if got := mustHearth(t, host, "snapshots", "ls", "--json"); !strings.Contains(got, `"snapshots":[]`) &&
		!strings.Contains(got, `"snapshots": []`) {
		t.Errorf("snapshots ls --json after rm: got %q, want an empty list", got)
	}
}

func TestRunThroughDaemon(t *testing.T) {
	host := testDaemon(t)
	res := hearth(t, host, "", "run", "--network", "none", "--", "sh", "-c", "echo once; exit 4")
	if res.code != 4 || res.stdout != "once\n" {
		t.Errorf("run: got exit %d stdout %q stderr %q, want 4 and %q", res.code, res.stdout, res.stderr, "once\n")
	}
	if got := mustHearth(t, host, "ls", "-q"); got != "" {
		t.Errorf("ls after run: got %q, want no sandbox left", got)
	}
	res = hearth(t, host, "", "run", "--driver", "qemu", "--network", "none", "--", "true")
	if res.code != exitUsage || !strings.Contains(res.stderr, "--local") {
		t.Errorf("run --driver with a daemon: got exit %d stderr %q, want %d pointing at --local", res.code, res.stderr, exitUsage)
	}
}

func TestEventsVerb(t *testing.T) {
	host := testDaemon(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &lockedBuffer{}
	done := make(chan int)
	go func() {
		done <- execute(ctx, []string{"--host", host, "events", "--id", "watched"}, strings.NewReader(""), out, io.Discard)
	}()

	// The stream may start after the first create; create until its
	// events show.
	deadline := time.Now().Add(servertest.Deadline)
	for i := 0; !strings.Contains(out.String(), " watched ready"); i++ {
		if time.Now().After(deadline) {
			t.Fatalf("events: got %q, want watched's created and ready", out.String())
		}
		mustHearth(t, host, "create", "--id", "watched", "--network", "none", "--wait")
		mustHearth(t, host, "rm", "-f", "watched")
		time.Sleep(100 * time.Millisecond)
	}
	mustHearth(t, host, "create", "--id", "other", "--network", "none", "--wait")
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("events after interrupt: got exit %d, want 0", code)
	}
	if strings.Contains(out.String(), "other") {
		t.Errorf("events --id watched: got %q, want no event of other", out.String())
	}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if f := strings.Fields(line); len(f) < 3 || f[1] != "watched" {
			t.Errorf("event line %q: want TIME watched ACTION", line)
		}
	}
}

func TestNoDaemon(t *testing.T) {
	host := "unix://" + filepath.Join(t.TempDir(), "absent.sock")
	for _, args := range [][]string{{"ls"}, {"inspect", "x"}, {"run", "--", "true"}} {
		res := hearth(t, host, "", args...)
		if res.code != exitUsage || !strings.Contains(res.stderr, "start one with `hearth serve`") {
			t.Errorf("hearth %v without a daemon: got exit %d stderr %q, want %d telling to start hearth serve",
				args, res.code, res.stderr, exitUsage)
		}
	}
}

// lockedBuffer is a bytes.Buffer safe for one writer and one reader.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
