package agent

import (
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agentproto"
)

func signalPayload(sig uint32) []byte {
	return binary.LittleEndian.AppendUint32(nil, sig)
}

func decodeDetail(t *testing.T, res execResult) agentproto.ExitDetail {
	t.Helper()
	if res.detail == nil {
		t.Fatalf("got no EXIT_DETAIL before EXIT %d, want one", res.code)
	}
	var d agentproto.ExitDetail
	if err := json.Unmarshal(res.detail, &d); err != nil {
		t.Fatalf("EXIT_DETAIL payload %q: %v", res.detail, err)
	}
	return d
}

// waitStdout reads frames until the STDOUT collected so far contains s.
func waitStdout(t *testing.T, conn interface{ Read([]byte) (int, error) }, s string) {
	t.Helper()
	var out []byte
	for !strings.Contains(string(out), s) {
		f, err := readRawFrame(conn)
		if err != nil {
			t.Fatalf("waiting for %q in output %q: %v", s, out, err)
		}
		if f.typ != wireStdout {
			t.Fatalf("waiting for %q: got frame 0x%02x %q, want STDOUT", s, f.typ, f.payload)
		}
		out = append(out, f.payload...)
	}
}

func TestExecExitDetail(t *testing.T) {
	tests := []struct {
		name string
		req  agentproto.StartRequest
		want agentproto.ExitDetail
	}{
		{"exit status", agentproto.StartRequest{Cmd: []string{"sh", "-c", "exit 3"}},
			agentproto.ExitDetail{ExitCode: 3, Reason: "exited"}},
		{"killed by signal", agentproto.StartRequest{Cmd: []string{"sh", "-c", "kill -KILL $$"}},
			agentproto.ExitDetail{ExitCode: 137, Signal: "SIGKILL", Reason: "signaled"}},
		{"timeout", agentproto.StartRequest{Cmd: []string{"sleep", "100"}, TimeoutSeconds: 1},
			agentproto.ExitDetail{ExitCode: 124, Signal: "SIGKILL", TimedOut: true, Reason: "timed out"}},
		{"command not found", agentproto.StartRequest{Cmd: []string{"hearth-no-such-command"}},
			agentproto.ExitDetail{ExitCode: 127, Reason: "not found"}},
		{"cannot start", agentproto.StartRequest{Cmd: []string{"true"}, WorkingDir: "/nonexistent/hearth-dir"},
			agentproto.ExitDetail{ExitCode: 126, Reason: "cannot start"}},
		{"invalid env", agentproto.StartRequest{Cmd: []string{"true"}, Env: map[string]string{"A=B": "c"}},
			agentproto.ExitDetail{ExitCode: 125, Reason: "protocol error"}},
	}
	srv := newTestServer(t, Options{})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.ExitDetail = true
			res := runCommand(t, srv, tc.req)
			if got := decodeDetail(t, res); got != tc.want {
				t.Errorf("got EXIT_DETAIL %+v, want %+v", got, tc.want)
			}
			if res.code != tc.want.ExitCode {
				t.Errorf("got EXIT %d, want %d", res.code, tc.want.ExitCode)
			}
		})
	}
}

// TestExecNoExitDetailByDefault checks that a reference host, which never
// sets exit_detail, gets no hearth frame.
func TestExecNoExitDetailByDefault(t *testing.T) {
	srv := newTestServer(t, Options{})
	for _, req := range []agentproto.StartRequest{
		{Cmd: []string{"sh", "-c", "exit 3"}},
		{Cmd: []string{"hearth-no-such-command"}},
		{Cmd: []string{"sleep", "100"}, TimeoutSeconds: 1},
	} {
		res := runCommand(t, srv, req)
		if res.detail != nil {
			t.Errorf("%v: got EXIT_DETAIL %q, want none", req.Cmd, res.detail)
		}
	}
}

func TestExecMalformedStartExitDetail(t *testing.T) {
	srv := newTestServer(t, Options{})
	conn := dial(t, srv, agentproto.PortExec)
	writeRawFrame(t, conn, wireStart, []byte(`{"cmd":[],"exit_detail":true}`))
	res := collect(t, conn)
	want := agentproto.ExitDetail{ExitCode: 125, Reason: "protocol error"}
	if got := decodeDetail(t, res); got != want {
		t.Errorf("got EXIT_DETAIL %+v, want %+v", got, want)
	}
}

func TestExecSignal(t *testing.T) {
	tests := []struct {
		name string
		req  agentproto.StartRequest
		sig  uint32
		want agentproto.ExitDetail
	}{
		{"SIGTERM to pipe session", agentproto.StartRequest{Cmd: []string{"sh", "-c", "echo ready; exec sleep 100"}},
			15, agentproto.ExitDetail{ExitCode: 143, Signal: "SIGTERM", Reason: "signaled"}},
		{"SIGINT to pipe session", agentproto.StartRequest{Cmd: []string{"sh", "-c", "echo ready; exec sleep 100"}},
			2, agentproto.ExitDetail{ExitCode: 130, Signal: "SIGINT", Reason: "signaled"}},
		{"trapped SIGUSR1", agentproto.StartRequest{Cmd: []string{"sh", "-c", `trap "exit 42" USR1; echo ready; while :; do sleep 0.05; done`}},
			10, agentproto.ExitDetail{ExitCode: 42, Reason: "exited"}},
		// In terminal mode the signal goes to the foreground process
		// group, here the one the interactive shell gave to sleep.
		{"SIGTERM to terminal foreground job", agentproto.StartRequest{
			Cmd: []string{"sh", "-ic", `trap "exit 9" TERM; echo ready; sleep 100; exit 5`}, TTY: true},
			15, agentproto.ExitDetail{ExitCode: 5, Reason: "exited"}},
	}
	srv := newTestServer(t, Options{})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn := dial(t, srv, agentproto.PortExec)
			tc.req.ExitDetail = true
			writeStart(t, conn, tc.req)
			waitStdout(t, conn, "ready")
			if tc.req.TTY {
				// Give the shell time to put sleep in the foreground.
				time.Sleep(300 * time.Millisecond)
			}
			writeRawFrame(t, conn, wireSignal, signalPayload(tc.sig))

			res := collect(t, conn)
			if got := decodeDetail(t, res); got != tc.want {
				t.Errorf("got EXIT_DETAIL %+v, want %+v (stderr %q)", got, tc.want, res.stderr)
			}
			if res.code != tc.want.ExitCode {
				t.Errorf("got EXIT %d, want %d", res.code, tc.want.ExitCode)
			}
		})
	}
}

func TestExecSignalInvalid(t *testing.T) {
	tests := []struct {
		name       string
		payload    []byte
		wantStderr string
	}{
		{"short payload", []byte{15, 0}, "invalid SIGNAL payload: 2 bytes, want 4"},
		{"signal zero", signalPayload(0), "signal number 0 out of range"},
		{"signal 65", signalPayload(65), "signal number 65 out of range"},
	}
	srv := newTestServer(t, Options{})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn := dial(t, srv, agentproto.PortExec)
			writeStart(t, conn, agentproto.StartRequest{Cmd: []string{"sleep", "100"}})
			writeRawFrame(t, conn, wireSignal, tc.payload)
			res := collect(t, conn)
			if res.code != ExitProtocolError {
				t.Errorf("got exit code %d, want %d", res.code, ExitProtocolError)
			}
			if !strings.Contains(string(res.stderr), tc.wantStderr) {
				t.Errorf("got stderr %q, want it to contain %q", res.stderr, tc.wantStderr)
			}
		})
	}
}

// TestExecPTYInterrupt checks that Ctrl-C written on a terminal's stdin
// reaches the command as SIGINT through the line discipline.
func TestExecPTYInterrupt(t *testing.T) {
	srv := newTestServer(t, Options{})
	conn := dial(t, srv, agentproto.PortExec)
	writeStart(t, conn, agentproto.StartRequest{Cmd: []string{"sleep", "100"}, TTY: true, ExitDetail: true})
	// sleep has nothing to print, so a short pause lets it start before
	// the terminal delivers the interrupt.
	time.Sleep(200 * time.Millisecond)
	writeRawFrame(t, conn, wireStdin, []byte("\x03"))

	res := collect(t, conn)
	if res.code != 130 {
		t.Errorf("got exit code %d, want 130 (128 + SIGINT)", res.code)
	}
	want := agentproto.ExitDetail{ExitCode: 130, Signal: "SIGINT", Reason: "signaled"}
	if got := decodeDetail(t, res); got != want {
		t.Errorf("got EXIT_DETAIL %+v, want %+v", got, want)
	}
}

func TestExecSessionLimit(t *testing.T) {
	srv := newTestServer(t, Options{MaxSessions: 2})
	var running []interface{ Read([]byte) (int, error) }
	for range 2 {
		conn := dial(t, srv, agentproto.PortExec)
		writeStart(t, conn, agentproto.StartRequest{Cmd: []string{"sh", "-c", "echo ready; exec sleep 100"}})
		waitStdout(t, conn, "ready")
		running = append(running, conn)
	}

	conn := dial(t, srv, agentproto.PortExec)
	writeStart(t, conn, agentproto.StartRequest{Cmd: []string{"true"}, ExitDetail: true})
	res := collect(t, conn)
	if res.code != ExitSessionLimit {
		t.Errorf("got exit code %d, want %d", res.code, ExitSessionLimit)
	}
	if want := "too many commands running: the agent runs at most 2 at a time"; !strings.Contains(string(res.stderr), want) {
		t.Errorf("got stderr %q, want it to contain %q", res.stderr, want)
	}
	if got := decodeDetail(t, res).Reason; got != "rejected" {
		t.Errorf("got reason %q, want \"rejected\"", got)
	}

	// Ending one command frees a place.
	first := running[0].(interface{ Close() error })
	first.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		res := runCommand(t, srv, agentproto.StartRequest{Cmd: []string{"echo", "ok"}})
		if res.code == 0 && string(res.stdout) == "ok\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("got exit code %d and stderr %q 10 s after a session ended, want a free place", res.code, res.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
