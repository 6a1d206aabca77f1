package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agentproto"
)

// panicRecorder is a log handler that remembers whether a session
// panicked, which HandleConn logs and contains.
type panicRecorder struct {
	mu       sync.Mutex
	panicked []string
}

func (r *panicRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *panicRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *panicRecorder) WithGroup(string) slog.Handler            { return r }
func (r *panicRecorder) Handle(_ context.Context, rec slog.Record) error {
	if strings.Contains(rec.Message, "panicked") {
		var b strings.Builder
		rec.Attrs(func(a slog.Attr) bool {
			b.WriteString(a.String() + "\n")
			return true
		})
		r.mu.Lock()
		r.panicked = append(r.panicked, b.String())
		r.mu.Unlock()
	}
	return nil
}

func (r *panicRecorder) check(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.panicked {
		t.Errorf("session panicked: %s", p)
	}
}

// socketPair returns both ends of a connected Unix stream socket pair.
// Unlike net.Pipe it buffers and supports CloseWrite, so the host end can
// send all its input and then signal end of input.
func socketPair(t *testing.T) (host *net.UnixConn, agentEnd net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0].(*net.UnixConn), conns[1]
}

// fuzzDeadline bounds one fuzzed session. Every session must end well
// within it once the host has sent its input and closed its side.
const fuzzDeadline = 10 * time.Second

// runFuzzSession feeds input to a session of srv on port, half-closes the
// host side, reads replies until the agent closes, and checks that the
// session ends in time.
func runFuzzSession(t *testing.T, srv *Server, port uint32, input []byte) {
	host, agentEnd := socketPair(t)
	defer host.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.HandleConn(context.Background(), port, agentEnd)
	}()

	_ = host.SetDeadline(time.Now().Add(fuzzDeadline))
	go func() {
		// The agent may stop reading early; the error is then moot.
		if _, err := host.Write(input); err == nil {
			_ = host.CloseWrite()
		}
	}()
	if _, err := io.Copy(io.Discard, host); err != nil && !isClosedError(err) {
		t.Errorf("session did not end within %s of the input: %v", fuzzDeadline, err)
	}
	host.Close()
	select {
	case <-done:
	case <-time.After(fuzzDeadline):
		t.Fatalf("HandleConn did not return %s after the host closed the connection", fuzzDeadline)
	}
}

func isClosedError(err error) bool {
	return strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe")
}

func fuzzFrame(typ agentproto.FrameType, payload string) []byte {
	return agentproto.AppendFrame(nil, typ, []byte(payload))
}

func FuzzExecSession(f *testing.F) {
	f.Add(fuzzFrame(agentproto.TypeStart, `{"cmd":["echo","hi"]}`))
	f.Add(bytes.Join([][]byte{
		fuzzFrame(agentproto.TypeStart, `{"cmd":["cat"],"exit_detail":true}`),
		fuzzFrame(agentproto.TypeStdin, "hello"),
		fuzzFrame(agentproto.TypeResize, "\x50\x00\x18\x00"),
		fuzzFrame(agentproto.TypeEOF, ""),
	}, nil))
	f.Add(bytes.Join([][]byte{
		fuzzFrame(agentproto.TypeStart, `{"cmd":["sh"],"tty":true,"tty_width":100}`),
		fuzzFrame(agentproto.TypeStdin, "\x03"),
		fuzzFrame(agentproto.TypeSignal, string(binary.LittleEndian.AppendUint32(nil, 15))),
	}, nil))
	f.Add(fuzzFrame(agentproto.TypeClockSync, "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))
	f.Add([]byte{0x01, 0xff, 0xff, 0xff, 0xff})

	rec := &panicRecorder{}
	srv := NewServer(Options{Logger: slog.New(rec)})
	srv.setClock = func(time.Time) error { return syscall.EPERM }
	// Random input must never run a random program: every command
	// becomes cat, which only copies its stdin.
	srv.rewriteStart = func(req *agentproto.StartRequest) {
		req.Cmd = []string{"cat"}
		req.User = ""
		req.TimeoutSeconds = min(req.TimeoutSeconds, 1)
	}

	f.Fuzz(func(t *testing.T, input []byte) {
		runFuzzSession(t, srv, agentproto.PortExec, input)
		rec.check(t)
	})
}

func FuzzFileSession(f *testing.F) {
	f.Add(bytes.Join([][]byte{
		fuzzFrame(agentproto.TypeWriteReq, `{"path":"/a/b","mode":420,"mkdirs":true,"size":5}`),
		fuzzFrame(agentproto.TypeData, "hello"),
		fuzzFrame(agentproto.TypeDigest, `{"size":5,"sha256":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}`),
		fuzzFrame(agentproto.TypeDone, ""),
	}, nil))
	f.Add(fuzzFrame(agentproto.TypeReadReq, `{"path":"/","digest":true}`))
	f.Add(fuzzFrame(agentproto.TypeStat, `{"path":"/"}`))
	f.Add(fuzzFrame(agentproto.TypeList, `{"path":"/"}`))
	f.Add(fuzzFrame(agentproto.TypeMkdir, `{"path":"/d/e","mode":1023,"parents":true}`))
	f.Add(fuzzFrame(agentproto.TypeRemove, `{"path":"/d","recursive":true}`))
	f.Add(fuzzFrame(agentproto.TypeRename, `{"from":"/d","to":"/e"}`))

	rec := &panicRecorder{}
	f.Fuzz(func(t *testing.T, input []byte) {
		root := t.TempDir()
		if err := os.WriteFile(root+"/file", []byte("content"), 0o600); err != nil {
			t.Fatal(err)
		}
		srv := NewServer(Options{FileRoot: root, Logger: slog.New(rec)})
		runFuzzSession(t, srv, agentproto.PortFile, input)
		rec.check(t)
	})
}
