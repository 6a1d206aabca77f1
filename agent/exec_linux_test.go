package agent

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agentproto"
)

// TestExecSeqOutputComplete runs a command that writes more than a pipe
// buffer and exits right away, many times, checking that every byte
// arrives before EXIT and that EXIT carries the exit status.
func TestExecSeqOutputComplete(t *testing.T) {
	const (
		runs    = 200
		workers = 8
	)
	var want bytes.Buffer
	for i := 1; i <= 100000; i++ {
		fmt.Fprintf(&want, "%d\n", i)
	}
	srv := newTestServer(t, Options{})

	var wg sync.WaitGroup
	jobs := make(chan int)
	for range workers {
		wg.Go(func() {
			for run := range jobs {
				t.Run(fmt.Sprintf("run%03d", run), func(t *testing.T) {
					res := runCommand(t, srv, agentproto.StartRequest{Cmd: []string{"sh", "-c", "seq 1 100000; exit 7"}})
					if !bytes.Equal(res.stdout, want.Bytes()) {
						t.Errorf("got %d bytes of stdout, want %d; first difference at byte %d",
							len(res.stdout), want.Len(), firstDifference(res.stdout, want.Bytes()))
					}
					if len(res.stderr) != 0 {
						t.Errorf("got stderr %q, want none", res.stderr)
					}
					if res.code != 7 {
						t.Errorf("got exit code %d, want 7", res.code)
					}
				})
			}
		})
	}
	for run := range runs {
		jobs <- run
	}
	close(jobs)
	wg.Wait()
}

func firstDifference(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestExecExitCodes(t *testing.T) {
	dir := t.TempDir()
	notExecutable := filepath.Join(dir, "script.sh")
	if err := os.WriteFile(notExecutable, []byte("#!/bin/sh\necho hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name       string
		req        agentproto.StartRequest
		wantCode   int32
		wantStderr string
	}{
		{"exit status", agentproto.StartRequest{Cmd: []string{"sh", "-c", "exit 7"}}, 7, ""},
		{"command not in PATH", agentproto.StartRequest{Cmd: []string{"hearth-no-such-command"}}, 127, "command not found"},
		{"missing path", agentproto.StartRequest{Cmd: []string{"/nonexistent/hearth-cmd"}}, 127, "no such file or directory"},
		{"file not executable", agentproto.StartRequest{Cmd: []string{notExecutable}}, 126, "permission denied"},
		{"directory", agentproto.StartRequest{Cmd: []string{dir}}, 126, "permission denied"},
		{"killed by SIGKILL", agentproto.StartRequest{Cmd: []string{"sh", "-c", "kill -9 $$"}}, 128 + 9, ""},
		{"killed by SIGTERM", agentproto.StartRequest{Cmd: []string{"sh", "-c", "kill -15 $$"}}, 128 + 15, ""},
		{"missing working directory", agentproto.StartRequest{Cmd: []string{"true"}, WorkingDir: "/nonexistent/hearth-dir"}, 126, "working directory"},
		{"unknown user", agentproto.StartRequest{Cmd: []string{"true"}, User: "hearth-no-such-user"}, 126, "not found"},
		{"unknown group", agentproto.StartRequest{Cmd: []string{"true"}, User: "0:hearth-no-such-group"}, 126, "not found"},
		{"invalid env key", agentproto.StartRequest{Cmd: []string{"true"}, Env: map[string]string{"A=B": "c"}}, 125, "env entry"},
	}
	srv := newTestServer(t, Options{})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := runCommand(t, srv, tc.req)
			if res.code != tc.wantCode {
				t.Errorf("got exit code %d, want %d (stderr %q)", res.code, tc.wantCode, res.stderr)
			}
			if !strings.Contains(string(res.stderr), tc.wantStderr) {
				t.Errorf("got stderr %q, want it to contain %q", res.stderr, tc.wantStderr)
			}
		})
	}
}

func TestExecStdoutAndStderr(t *testing.T) {
	srv := newTestServer(t, Options{})
	res := runCommand(t, srv, agentproto.StartRequest{Cmd: []string{"sh", "-c", "echo out; echo err >&2"}})
	if got := string(res.stdout); got != "out\n" {
		t.Errorf("got stdout %q, want %q", got, "out\n")
	}
	if got := string(res.stderr); got != "err\n" {
		t.Errorf("got stderr %q, want %q", got, "err\n")
	}
	if res.code != 0 {
		t.Errorf("got exit code %d, want 0", res.code)
	}
}

func TestExecStdin(t *testing.T) {
	srv := newTestServer(t, Options{})
	conn := dial(t, srv, agentproto.PortExec)
	writeStart(t, conn, agentproto.StartRequest{Cmd: []string{"cat"}})
	writeRawFrame(t, conn, wireStdin, []byte("hello\n"))
	writeRawFrame(t, conn, wireStdin, []byte("world\n"))
	writeRawFrame(t, conn, wireEOF, nil)

	res := collect(t, conn)
	if got := string(res.stdout); got != "hello\nworld\n" {
		t.Errorf("got stdout %q, want %q", got, "hello\nworld\n")
	}
	if res.code != 0 {
		t.Errorf("got exit code %d, want 0", res.code)
	}
}

// TestExecExitWithStdinOpen checks that EXIT does not wait for EOF.
func TestExecExitWithStdinOpen(t *testing.T) {
	srv := newTestServer(t, Options{})
	conn := dial(t, srv, agentproto.PortExec)
	writeStart(t, conn, agentproto.StartRequest{Cmd: []string{"sh", "-c", "echo bye; exit 5"}})

	res := collect(t, conn)
	if got := string(res.stdout); got != "bye\n" {
		t.Errorf("got stdout %q, want %q", got, "bye\n")
	}
	if res.code != 5 {
		t.Errorf("got exit code %d, want 5", res.code)
	}
}

func TestExecEnvAndWorkingDir(t *testing.T) {
	dir := t.TempDir()
	srv := newTestServer(t, Options{})
	res := runCommand(t, srv, agentproto.StartRequest{
		Cmd:        []string{"sh", "-c", `echo "$FOO"; pwd; echo "$HOME"; echo "$PATH"`},
		Env:        map[string]string{"FOO": "bar baz"},
		WorkingDir: dir,
	})
	want := "bar baz\n" + dir + "\n/root\n" + defaultPath + "\n"
	if got := string(res.stdout); got != want {
		t.Errorf("got stdout %q, want %q", got, want)
	}
	if res.code != 0 {
		t.Errorf("got exit code %d, want 0 (stderr %q)", res.code, res.stderr)
	}
}

func TestExecUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running a command as another user needs root; run the tests as root")
	}
	nobody, err := lookupUser("nobody", passwdFile, groupFile)
	if err != nil {
		t.Skipf("this machine has no user nobody: %v", err)
	}
	root, err := lookupUser("root", passwdFile, groupFile)
	if err != nil {
		t.Skipf("this machine has no user root in %s: %v", passwdFile, err)
	}

	tests := []struct {
		name string
		user string
		want string
	}{
		{"name", "nobody", fmt.Sprintf("%d %d %s\n", nobody.uid, nobody.gid, nobody.home)},
		{"uid without passwd entry", "4242", "4242 0 /\n"},
		{"uid and gid", "4242:4343", "4242 4343 /\n"},
		{"root", "root", fmt.Sprintf("0 %d %s\n", root.gid, root.home)},
	}
	srv := newTestServer(t, Options{})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := runCommand(t, srv, agentproto.StartRequest{
				Cmd:  []string{"sh", "-c", `echo "$(id -u) $(id -g) $HOME"`},
				User: tc.user,
			})
			if got := string(res.stdout); got != tc.want {
				t.Errorf("got %q, want %q (stderr %q)", got, tc.want, res.stderr)
			}
			if res.code != 0 {
				t.Errorf("got exit code %d, want 0", res.code)
			}
		})
	}
}

// TestExecTimeoutKillsProcessGroup checks that the timeout kills the
// command and its background children, and reports 124.
func TestExecTimeoutKillsProcessGroup(t *testing.T) {
	srv := newTestServer(t, Options{})
	res := runCommand(t, srv, agentproto.StartRequest{
		Cmd:            []string{"sh", "-c", "echo $$; sleep 100 & sleep 100"},
		TimeoutSeconds: 1,
	})
	if res.code != ExitTimeout {
		t.Errorf("got exit code %d, want %d", res.code, ExitTimeout)
	}

	pgid := firstLineInt(t, res.stdout)
	if left := waitForNoProcs(t, 10*time.Second, liveInGroup(pgid)); len(left) > 0 {
		t.Errorf("got %d live processes in group %d 10 s after the timeout, want none: %+v", len(left), pgid, left)
	}
}

// TestExecBackgroundChildDoesNotDelayExit checks that a background
// process holding stdout open does not keep the session alive.
func TestExecBackgroundChildDoesNotDelayExit(t *testing.T) {
	srv := newTestServer(t, Options{})
	conn := dial(t, srv, agentproto.PortExec)
	// The connection deadline is the behaviour under test: EXIT must come
	// long before the background sleep ends.
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	writeStart(t, conn, agentproto.StartRequest{Cmd: []string{"sh", "-c", "sleep 30 & echo hi $$"}})

	res := collect(t, conn)
	var pgid int
	if _, err := fmt.Sscanf(string(res.stdout), "hi %d\n", &pgid); err != nil {
		t.Fatalf("got stdout %q, want \"hi <pid>\": %v", res.stdout, err)
	}
	t.Cleanup(func() { syscall.Kill(-pgid, syscall.SIGKILL) })
	if res.code != 0 {
		t.Errorf("got exit code %d, want 0", res.code)
	}
}

// TestExecHostCloseKillsCommand checks that a command dies when the host
// closes the connection before it exits.
func TestExecHostCloseKillsCommand(t *testing.T) {
	srv := newTestServer(t, Options{})
	conn := dial(t, srv, agentproto.PortExec)
	writeStart(t, conn, agentproto.StartRequest{Cmd: []string{"sh", "-c", "echo $$; sleep 100"}})

	f, err := readRawFrame(conn)
	if err != nil {
		t.Fatal(err)
	}
	if f.typ != wireStdout {
		t.Fatalf("got frame 0x%02x, want STDOUT with the shell's PID", f.typ)
	}
	pgid := firstLineInt(t, f.payload)
	conn.Close()

	if left := waitForNoProcs(t, 10*time.Second, liveInGroup(pgid)); len(left) > 0 {
		t.Errorf("got %d live processes in group %d after the host closed the connection, want none: %+v", len(left), pgid, left)
	}
}

// ptyOutput collects the STDOUT of a terminal session in the background.
type ptyOutput struct {
	mu     sync.Mutex
	stdout []byte
	stderr []byte
	exit   chan int32
	err    error
}

func readPTYSession(conn interface{ Read([]byte) (int, error) }) *ptyOutput {
	out := &ptyOutput{exit: make(chan int32, 1)}
	go func() {
		for {
			f, err := readRawFrame(conn)
			if err != nil {
				out.mu.Lock()
				out.err = err
				out.mu.Unlock()
				close(out.exit)
				return
			}
			out.mu.Lock()
			switch f.typ {
			case wireStdout:
				out.stdout = append(out.stdout, f.payload...)
			case wireStderr:
				out.stderr = append(out.stderr, f.payload...)
			case wireExit:
				out.exit <- int32(binary.LittleEndian.Uint32(f.payload))
				out.mu.Unlock()
				return
			}
			out.mu.Unlock()
		}
	}()
	return out
}

// waitFor waits until the terminal output contains s.
func (o *ptyOutput) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		o.mu.Lock()
		found := strings.Contains(string(o.stdout), s)
		o.mu.Unlock()
		if found {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	t.Fatalf("terminal output %q does not contain %q after 20 s (read error %v)", o.stdout, s, o.err)
}

func TestExecPTYSizeAndResize(t *testing.T) {
	srv := newTestServer(t, Options{})
	conn := dial(t, srv, agentproto.PortExec)
	writeStart(t, conn, agentproto.StartRequest{Cmd: []string{"sh"}, TTY: true, TTYWidth: 120, TTYHeight: 40})
	out := readPTYSession(conn)

	writeRawFrame(t, conn, wireStdin, []byte("stty size\n"))
	out.waitFor(t, "40 120")

	writeRawFrame(t, conn, wireResize, []byte{200, 0, 50, 0})
	writeRawFrame(t, conn, wireStdin, []byte("stty size\n"))
	out.waitFor(t, "50 200")

	writeRawFrame(t, conn, wireStdin, []byte("exit 3\n"))
	code, ok := <-out.exit
	if !ok {
		t.Fatalf("session ended without EXIT: %v", out.err)
	}
	if code != 3 {
		t.Errorf("got exit code %d, want 3", code)
	}
}

func TestExecPTYStdio(t *testing.T) {
	srv := newTestServer(t, Options{})
	conn := dial(t, srv, agentproto.PortExec)
	writeStart(t, conn, agentproto.StartRequest{
		Cmd: []string{"sh", "-c", `test -t 0 && test -t 1 && test -t 2 && echo "terminal $TERM"; echo err >&2`},
		TTY: true,
	})

	res := collect(t, conn)
	if got, want := string(res.stdout), "terminal xterm\r\nerr\r\n"; got != want {
		t.Errorf("got terminal output %q, want %q", got, want)
	}
	if len(res.stderr) != 0 {
		t.Errorf("got STDERR frames %q, want none in terminal mode", res.stderr)
	}
	if res.code != 0 {
		t.Errorf("got exit code %d, want 0", res.code)
	}
}

func TestExecPTYEOF(t *testing.T) {
	srv := newTestServer(t, Options{})
	conn := dial(t, srv, agentproto.PortExec)
	writeStart(t, conn, agentproto.StartRequest{Cmd: []string{"cat"}, TTY: true})
	writeRawFrame(t, conn, wireEOF, nil)

	res := collect(t, conn)
	if res.code != 0 {
		t.Errorf("got exit code %d, want 0 after EOF ends cat", res.code)
	}
}

// TestExecMalformedFrames checks that each malformed frame ends its
// session with a message and that the server then serves a new session.
func TestExecMalformedFrames(t *testing.T) {
	sleepStart := frameBytes(wireStart, []byte(`{"cmd":["sleep","100"]}`))
	tests := []struct {
		name       string
		send       []byte
		wantStderr string
	}{
		{"unknown type first", frameBytes(0x7f, nil), "first frame is 0x7f; want START or CLOCK_SYNC"},
		{"garbage START JSON", frameBytes(wireStart, []byte("{not json")), "invalid START payload"},
		{"START without cmd", frameBytes(wireStart, []byte(`{"cmd":[]}`)), "cmd is empty"},
		{"STDIN before START", frameBytes(wireStdin, []byte("hi")), "first frame is STDIN"},
		// 0x01000001 is 16 MiB + 1.
		{"oversized length header", []byte{wireStart, 0x01, 0x00, 0x00, 0x01}, "exceeds 16 MiB"},
		{"unknown type while running", join(sleepStart, frameBytes(0x7f, []byte("x"))), "unexpected 0x7f frame while a command runs"},
		{"second START", join(sleepStart, sleepStart), "unexpected START frame"},
		{"short RESIZE", join(sleepStart, frameBytes(wireResize, []byte{80, 0, 24})), "invalid RESIZE payload"},
		{"oversized length while running", join(sleepStart, []byte{wireStdin, 0xff, 0xff, 0xff, 0xff}), "exceeds 16 MiB"},
	}

	srv := newTestServer(t, Options{})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn := dial(t, srv, agentproto.PortExec)
			// The agent may close the connection before it has read
			// everything, so the write runs apart and its error is moot.
			go conn.Write(tc.send)

			res := collect(t, conn)
			if res.code != ExitProtocolError {
				t.Errorf("got exit code %d, want %d", res.code, ExitProtocolError)
			}
			if !strings.Contains(string(res.stderr), tc.wantStderr) {
				t.Errorf("got stderr %q, want it to contain %q", res.stderr, tc.wantStderr)
			}

			next := runCommand(t, srv, agentproto.StartRequest{Cmd: []string{"echo", "ok"}})
			if string(next.stdout) != "ok\n" || next.code != 0 {
				t.Errorf("next session: got stdout %q and exit code %d, want \"ok\\n\" and 0", next.stdout, next.code)
			}
		})
	}
}

func frameBytes(typ byte, payload []byte) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(b[1:], uint32(len(payload)))
	return append(b, payload...)
}

func join(parts ...[]byte) []byte {
	return bytes.Join(parts, nil)
}

func TestExecClockSync(t *testing.T) {
	when := time.Date(2031, 5, 6, 7, 8, 9, 123456789, time.UTC)
	payload := make([]byte, 12)
	binary.LittleEndian.PutUint64(payload, uint64(when.Unix()))
	binary.LittleEndian.PutUint32(payload[8:], uint32(when.Nanosecond()))

	tests := []struct {
		name       string
		allowSet   bool
		payload    []byte
		setErr     error
		wantCode   int32
		wantSet    bool
		wantStderr string
	}{
		{name: "serve-only mode skips", allowSet: false, payload: payload, wantCode: 0},
		{name: "guest init sets", allowSet: true, payload: payload, wantCode: 0, wantSet: true},
		{name: "set fails", allowSet: true, payload: payload, setErr: syscall.EPERM, wantCode: 1, wantSet: true, wantStderr: "set clock"},
		{name: "short payload", allowSet: true, payload: payload[:11], wantCode: ExitProtocolError, wantStderr: "invalid CLOCK_SYNC payload"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := newTestServer(t, Options{AllowClockSet: tc.allowSet})
			var got []time.Time
			srv.setClock = func(t time.Time) error {
				got = append(got, t)
				return tc.setErr
			}

			conn := dial(t, srv, agentproto.PortExec)
			writeRawFrame(t, conn, wireClockSync, tc.payload)
			res := collect(t, conn)
			if res.code != tc.wantCode {
				t.Errorf("got exit code %d, want %d", res.code, tc.wantCode)
			}
			if !strings.Contains(string(res.stderr), tc.wantStderr) {
				t.Errorf("got stderr %q, want it to contain %q", res.stderr, tc.wantStderr)
			}
			switch {
			case tc.wantSet && (len(got) != 1 || !got[0].Equal(when)):
				t.Errorf("got clock set to %v, want exactly one call with %v", got, when)
			case !tc.wantSet && len(got) != 0:
				t.Errorf("got clock set to %v, want it untouched", got)
			}
		})
	}
}

func TestExecManySmallWrites(t *testing.T) {
	srv := newTestServer(t, Options{})
	res := runCommand(t, srv, agentproto.StartRequest{
		Cmd: []string{"sh", "-c", "i=0; while [ $i -lt 500 ]; do echo $i; echo e$i >&2; i=$((i+1)); done"},
	})
	var wantOut, wantErr strings.Builder
	for i := range 500 {
		wantOut.WriteString(strconv.Itoa(i) + "\n")
		wantErr.WriteString("e" + strconv.Itoa(i) + "\n")
	}
	if got := string(res.stdout); got != wantOut.String() {
		t.Errorf("got %d bytes of stdout, want %d", len(got), wantOut.Len())
	}
	if got := string(res.stderr); got != wantErr.String() {
		t.Errorf("got %d bytes of stderr, want %d", len(got), wantErr.Len())
	}
}
