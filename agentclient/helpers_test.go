package agentclient

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agent"
	"github.com/hearthvm/hearth/agentlink"
)

// testAgent is an in-process agent served on a hybrid vsock socket, the
// transport of Firecracker guests.
type testAgent struct {
	socket string
	root   string // the agent's file root
}

// startAgent serves an agent confined to a temporary file root until the
// test ends.
func startAgent(t *testing.T, opts agent.Options) *testAgent {
	t.Helper()
	return startAgentIn(t, opts, t.TempDir())
}

// startAgentIn is startAgent with the file root at root.
func startAgentIn(t *testing.T, opts agent.Options, root string) *testAgent {
	t.Helper()
	ta := &testAgent{socket: filepath.Join(t.TempDir(), "agent.sock"), root: root}
	opts.FileRoot = ta.root
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := agent.NewServer(opts)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agentlink.ServeHybrid(ctx, ta.socket, srv.HandleConn) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve agent: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the agent server did not stop 30 s after its context ended")
		}
	})
	return ta
}

// dial opens a stream to an agent port.
func (ta *testAgent) dial(t *testing.T, port uint32) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := agentlink.DialHybrid(ctx, ta.socket, port, agentlink.HybridOptions{})
	if err != nil {
		t.Fatalf("dial agent port %d: %v", port, err)
	}
	return conn
}

func (ta *testAgent) path(guest string) string {
	return filepath.Join(ta.root, filepath.FromSlash(guest))
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// memoryDir returns a directory on /dev/shm, removed when the test ends,
// or t.TempDir() where /dev/shm is missing. Large transfers go there so
// their writes and fsyncs do not load the disk that tests running in
// parallel use.
func memoryDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "hearth-agentclient-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
