package cli

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/server/servertest"
)

// startExec runs `hearth exec box -- args` in the background and returns
// the channel its result arrives on, once ps lists the command.
func startExec(t *testing.T, host string, args ...string) (<-chan cliResult, string) {
	t.Helper()
	result := make(chan cliResult, 1)
	go func() {
		result <- hearth(t, host, "", append([]string{"exec", "box", "--"}, args...)...)
	}()
	deadline := time.Now().Add(servertest.Deadline)
	for {
		if ids := strings.Fields(mustHearth(t, host, "ps", "-q", "box")); len(ids) == 1 {
			return result, ids[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("ps never listed the command")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitResult(t *testing.T, result <-chan cliResult) cliResult {
	t.Helper()
	select {
	case res := <-result:
		return res
	case <-time.After(servertest.Deadline):
		t.Fatal("exec did not end")
		return cliResult{}
	}
}

func TestPsAndKill(t *testing.T) {
	host := testDaemon(t)
	mustHearth(t, host, "create", "--id", "box", "--network", "none", "--wait")

	result, workload := startExec(t, host, "sleep", "100")
	table := mustHearth(t, host, "ps", "box")
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "WORKLOAD") || !strings.HasPrefix(lines[1], workload+" ") ||
		!strings.Contains(lines[1], "sleep 100") {
		t.Errorf("ps: got\n%s\nwant a header and a row for %s running sleep 100", table, workload)
	}
	var list sandboxv1.ListWorkloadsResponse
	if err := protojson.Unmarshal([]byte(mustHearth(t, host, "ps", "--json", "box")), &list); err != nil {
		t.Fatalf("ps --json: %v", err)
	}
	if len(list.GetWorkloads()) != 1 || list.GetWorkloads()[0].GetId() != workload {
		t.Errorf("ps --json: got %v, want workload %s", list.GetWorkloads(), workload)
	}

	if got := mustHearth(t, host, "kill", "-s", "TERM", "box", workload); got != workload+"\n" {
		t.Errorf("kill: got stdout %q, want %q", got, workload+"\n")
	}
	res := waitResult(t, result)
	if res.code != 143 || !strings.Contains(res.stderr, "killed by SIGTERM (exit code 143)") {
		t.Errorf("exec after kill -s TERM: got exit %d stderr %q, want 143 naming SIGTERM", res.code, res.stderr)
	}

	res = hearth(t, host, "", "kill", "box", workload)
	if res.code != exitUsage || !strings.Contains(res.stderr, "not found") {
		t.Errorf("kill of an ended workload: got exit %d stderr %q, want %d and not found", res.code, res.stderr, exitUsage)
	}
	res = hearth(t, host, "", "kill", "-s", "NOPE", "box", "w1")
	if res.code != exitUsage || !strings.Contains(res.stderr, `unknown signal "NOPE"`) {
		t.Errorf("kill -s NOPE: got exit %d stderr %q, want %d naming the signal", res.code, res.stderr, exitUsage)
	}
}

func TestExecTimeoutReason(t *testing.T) {
	host := testDaemon(t)
	mustHearth(t, host, "create", "--id", "box", "--network", "none", "--wait")
	res := hearth(t, host, "", "exec", "--timeout", "1s", "box", "--", "sh", "-c", "sleep 100 & sleep 100")
	if res.code != 124 || !strings.Contains(res.stderr, "timed out") {
		t.Errorf("exec --timeout 1s: got exit %d stderr %q, want 124 and timed out", res.code, res.stderr)
	}
	res = hearth(t, host, "", "exec", "box", "--", "sh", "-c", "exit 4")
	if res.code != 4 || res.stderr != "" {
		t.Errorf("exec of a normal exit: got exit %d stderr %q, want 4 and no reason", res.code, res.stderr)
	}
}

func TestExecForwardsInterrupt(t *testing.T) {
	host := testDaemon(t)
	mustHearth(t, host, "create", "--id", "box", "--network", "none", "--wait")

	// By the time ps lists the command, exec has registered for SIGINT,
	// so the signal below goes to it and not to the test's default
	// handler.
	result, _ := startExec(t, host, "sleep", "100")
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	res := waitResult(t, result)
	if res.code != 130 || !strings.Contains(res.stderr, "SIGINT") {
		t.Errorf("exec after SIGINT: got exit %d stderr %q, want 130 naming SIGINT", res.code, res.stderr)
	}
}
