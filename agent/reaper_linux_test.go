package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agentproto"
)

// pid1SocketEnv makes the test binary serve the agent on the hybrid
// socket it names instead of running tests. TestReaperAsPID1 starts the
// test binary that way as PID 1 of a new PID namespace.
const pid1SocketEnv = "HEARTH_AGENT_TEST_PID1_SOCKET"

func TestMain(m *testing.M) {
	if path := os.Getenv(pid1SocketEnv); path != "" {
		os.Exit(serveHybridForTest(path))
	}
	os.Exit(m.Run())
}

// serveHybridForTest serves a Server on a minimal hybrid vsock listener
// of its own, so that the reaper can be tested as PID 1 without the
// hearth-agent binary.
func serveHybridForTest(path string) int {
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	// Like serve-only mode of hearth-agent, SHUTDOWN ends the process.
	srv := NewServer(Options{Logger: logger, Shutdown: func() { os.Exit(0) }})
	ln, err := net.Listen("unix", path)
	if err != nil {
		logger.Error("listen", "err", err)
		return 1
	}
	for {
		conn, err := ln.Accept()
		if err != nil {
			logger.Error("accept", "err", err)
			return 1
		}
		go func() {
			line, err := agentproto.ReadLine(conn)
			if err != nil {
				conn.Close()
				return
			}
			port, err := agentproto.ParseConnect(line)
			if err != nil {
				conn.Close()
				return
			}
			if _, err := conn.Write(agentproto.OKLine(1024)); err != nil {
				conn.Close()
				return
			}
			srv.HandleConn(context.Background(), port, conn)
		}()
	}
}

// TestReaperAsPID1 runs the agent as PID 1 of a new PID namespace and
// checks that it reaps orphans without stealing the exit status of the
// commands it waits for, and that SHUTDOWN then ends it.
func TestReaperAsPID1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating a PID namespace needs root; run the tests as root")
	}

	launchers := []struct {
		name  string
		start func(t *testing.T, socket string) *agentProcess
	}{
		{"hearth-agent binary", startAgentBinary},
		{"test binary", startTestBinary},
	}
	for _, l := range launchers {
		t.Run(l.name, func(t *testing.T) {
			socket := filepath.Join(t.TempDir(), "agent.sock")
			agent := l.start(t, socket)
			agent.waitReady(t, socket)
			checkReaping(t, agent, socket)
			checkShutdown(t, agent, socket)
		})
	}
}

func checkReaping(t *testing.T, agent *agentProcess, socket string) {
	res := runHybrid(t, socket, agentproto.StartRequest{Cmd: []string{"sh", "-c", "echo $PPID"}})
	if got := strings.TrimSpace(string(res.stdout)); got != "1" {
		t.Fatalf("got parent PID %q for a command, want 1 (the agent as PID 1 of its namespace); stderr %q", got, res.stderr)
	}

	const runs = 50
	for i := range runs {
		res := runHybrid(t, socket, agentproto.StartRequest{Cmd: []string{"sh", "-c", "sleep 0 & exit 3"}})
		if res.code != 3 {
			t.Errorf("run %d: got exit code %d, want 3 (stderr %q)", i, res.code, res.stderr)
		}
	}

	zombies := waitForNoProcs(t, 10*time.Second, func(p procEntry) bool {
		return p.ppid == agent.pid && p.state == 'Z'
	})
	if len(zombies) > 0 {
		t.Errorf("got %d zombie children of the agent (host PID %d) 10 s after the last command, want none: %+v",
			len(zombies), agent.pid, zombies)
	}
}

// checkShutdown leaves an orphan running, sends SHUTDOWN and checks that
// the agent replies ACK and exits.
func checkShutdown(t *testing.T, agent *agentProcess, socket string) {
	res := runHybrid(t, socket, agentproto.StartRequest{Cmd: []string{"sh", "-c", "sleep 100 >/dev/null 2>&1 &"}})
	if res.code != 0 {
		t.Fatalf("start a background sleep: got exit code %d, want 0 (stderr %q)", res.code, res.stderr)
	}

	conn, err := dialHybrid(socket, agentproto.PortControl)
	if err != nil {
		t.Fatalf("connect to the control port: %v", err)
	}
	defer conn.Close()
	writeRawFrame(t, conn, wireShutdown, []byte(`{"grace_ms":5000}`))
	f, err := readRawFrame(conn)
	if err != nil {
		t.Fatalf("read SHUTDOWN reply: %v", err)
	}
	if f.typ != wireAck {
		t.Errorf("got frame 0x%02x %q, want ACK (0x30)", f.typ, f.payload)
	}

	select {
	case <-agent.exited:
	case <-time.After(20 * time.Second):
		t.Error("the agent still runs 20 s after SHUTDOWN, want it to exit")
	}
}

// agentProcess is an agent running as PID 1 of its own PID namespace.
type agentProcess struct {
	pid    int // in the host's PID namespace
	exited chan struct{}
	stderr *lockedBuffer
}

// startInPIDNamespace starts path as PID 1 of a new PID and mount
// namespace and kills it when the test ends.
func startInPIDNamespace(t *testing.T, path string, args, env []string) *agentProcess {
	t.Helper()
	cmd := exec.Command(path, args...)
	// hearth_init=1 would make a PID 1 hearth-agent perform guest init
	// duties, which must never run on a host.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "hearth_init=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS,
		Pdeathsig:  syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s in a new PID namespace: %v", path, err)
	}

	agent := &agentProcess{pid: cmd.Process.Pid, exited: make(chan struct{}), stderr: stderr}
	go func() {
		cmd.Wait()
		close(agent.exited)
	}()
	t.Cleanup(func() {
		// Killing PID 1 of a namespace kills every process in it.
		cmd.Process.Kill()
		<-agent.exited
		if t.Failed() {
			t.Logf("agent stderr:\n%s", stderr.String())
		}
	})
	return agent
}

func startAgentBinary(t *testing.T, socket string) *agentProcess {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("building hearth-agent needs the go command in PATH")
	}
	bin := filepath.Join(t.TempDir(), "hearth-agent")
	build := exec.Command(goTool, "build", "-o", bin, "github.com/hearthvm/hearth/cmd/hearth-agent")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build hearth-agent: %v\n%s", err, out)
	}
	return startInPIDNamespace(t, bin, []string{"--listen-hybrid", socket}, nil)
}

func startTestBinary(t *testing.T, socket string) *agentProcess {
	return startInPIDNamespace(t, os.Args[0], []string{"-test.run=^$"}, []string{pid1SocketEnv + "=" + socket})
}

// waitReady waits until the agent accepts a CONNECT on socket.
func (a *agentProcess) waitReady(t *testing.T, socket string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := dialHybrid(socket, agentproto.PortControl)
		if err == nil {
			conn.Close()
			return
		}
		select {
		case <-a.exited:
			if strings.Contains(a.stderr.String(), "not implemented") {
				t.Skipf("the agent exited because agentlink.ServeHybrid is not implemented yet:\n%s", a.stderr.String())
			}
			t.Fatalf("the agent exited before serving %s:\n%s", socket, a.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not answer on %s within 30 s: %v", socket, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dialHybrid opens a stream to an agent port through a hybrid vsock
// socket: CONNECT <port>, then OK <host port>.
func dialHybrid(socket string, port uint32) (net.Conn, error) {
	conn, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		return nil, err
	}
	if err := conn.SetDeadline(time.Now().Add(sessionDeadline)); err != nil {
		conn.Close()
		return nil, err
	}
	if _, err := conn.Write(agentproto.ConnectLine(port)); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReader(conn)
	if _, err := agentproto.ReadConnectReply(br); err != nil {
		conn.Close()
		return nil, fmt.Errorf("read OK line: %w", err)
	}
	return &bufferedConn{Conn: conn, r: br}, nil
}

// bufferedConn reads through the bufio.Reader that read the OK line, so
// no byte after it is lost.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func runHybrid(t *testing.T, socket string, req agentproto.StartRequest) execResult {
	t.Helper()
	conn, err := dialHybrid(socket, agentproto.PortExec)
	if err != nil {
		t.Fatalf("connect to the exec port: %v", err)
	}
	defer conn.Close()
	writeStart(t, conn, req)
	return collect(t, conn)
}

// lockedBuffer is a bytes.Buffer safe for a writer and a reader in
// different goroutines.
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
