package agentlink

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agentproto"
)

// fakeFirecracker is a hybrid vsock socket that behaves on attempt i as
// behaviour[i] sets, and replies OK on every later attempt.
type fakeFirecracker struct {
	path string

	mu        sync.Mutex
	attempts  int
	badFirsts []string // first reads that were not exactly the CONNECT line
}

type attemptBehaviour int

const (
	closeWithoutAnswer attemptBehaviour = iota
	hangWithoutAnswer
)

// afterOK is what the fake sends in the same write as its OK line.
const afterOK = "first bytes of the guest port"

func startFakeFirecracker(t *testing.T, port uint32, behaviour []attemptBehaviour) *fakeFirecracker {
	t.Helper()
	f := &fakeFirecracker{path: filepath.Join(t.TempDir(), "v.sock")}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		f.mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			i := f.attempts
			f.attempts++
			conns = append(conns, conn)
			f.mu.Unlock()
			wg.Go(func() { f.serve(conn, i, port, behaviour) })
		}
	})
	return f
}

func (f *fakeFirecracker) serve(conn net.Conn, attempt int, port uint32, behaviour []attemptBehaviour) {
	// Firecracker takes the CONNECT line from a single read.
	buf := make([]byte, 64)
	n, _ := conn.Read(buf)
	if want := string(agentproto.ConnectLine(port)); string(buf[:n]) != want {
		f.mu.Lock()
		f.badFirsts = append(f.badFirsts, string(buf[:n]))
		f.mu.Unlock()
	}
	if attempt < len(behaviour) {
		switch behaviour[attempt] {
		case closeWithoutAnswer:
			conn.Close()
		case hangWithoutAnswer:
			// Left open until the test ends.
		}
		return
	}
	conn.Write(append(agentproto.OKLine(firstHostPort), afterOK...))
}

func TestDialHybridRetries(t *testing.T) {
	behaviour := []attemptBehaviour{
		closeWithoutAnswer, closeWithoutAnswer, closeWithoutAnswer,
		closeWithoutAnswer, closeWithoutAnswer, hangWithoutAnswer,
	}
	tests := []struct {
		name         string
		timeout      time.Duration
		opts         HybridOptions
		wantErr      bool
		wantAttempts int
	}{
		{
			name:         "answer on seventh attempt",
			timeout:      10 * time.Second,
			opts:         HybridOptions{AttemptTimeout: 300 * time.Millisecond},
			wantAttempts: 7,
		},
		{
			name:         "deadline before the answer",
			timeout:      time.Second,
			opts:         HybridOptions{},
			wantErr:      true,
			wantAttempts: 6,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := startFakeFirecracker(t, 52, behaviour)
			ctx := testContext(t, tc.timeout)

			conn, err := DialHybrid(ctx, f.path, 52, tc.opts)
			if tc.wantErr {
				if err == nil {
					conn.Close()
					t.Fatal("DialHybrid: got nil error, want a deadline error")
				}
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("error %q: got no context.DeadlineExceeded in its chain", err)
				}
				for _, want := range []string{"port 52", f.path} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not contain %q", err, want)
					}
				}
			} else {
				if err != nil {
					t.Fatalf("DialHybrid: %v", err)
				}
				defer conn.Close()
				got := make([]byte, len(afterOK))
				if _, err := io.ReadFull(conn, got); err != nil {
					t.Fatalf("read bytes sent after OK: %v", err)
				}
				if string(got) != afterOK {
					t.Errorf("bytes after OK: got %q, want %q", got, afterOK)
				}
			}

			f.mu.Lock()
			defer f.mu.Unlock()
			if f.attempts != tc.wantAttempts {
				t.Errorf("attempts: got %d, want %d", f.attempts, tc.wantAttempts)
			}
			if len(f.badFirsts) > 0 {
				t.Errorf("first reads other than one whole CONNECT line: %q", f.badFirsts)
			}
		})
	}
}

func TestDialHybridFailsFast(t *testing.T) {
	tests := []struct {
		name   string
		answer string
	}{
		{name: "invalid answer", answer: "NOPE\n"},
		{name: "answer without newline", answer: strings.Repeat("x", 5000)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "v.sock")
			ln, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			accepted := make(chan int, 1)
			go func() {
				n := 0
				defer func() { accepted <- n }()
				for {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					n++
					agentproto.ReadLine(conn)
					conn.Write([]byte(tc.answer))
					defer conn.Close()
				}
			}()

			ctx := testContext(t, 10*time.Second)
			conn, err := DialHybrid(ctx, path, 53, HybridOptions{})
			if err == nil {
				conn.Close()
				t.Fatal("DialHybrid: got nil error, want an error")
			}
			if errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("error %q: got a deadline error, want an immediate failure", err)
			}
			if !strings.Contains(err.Error(), "port 53") {
				t.Errorf("error %q does not name port 53", err)
			}
			ln.Close()
			if n := <-accepted; n != 1 {
				t.Errorf("attempts: got %d, want 1", n)
			}
		})
	}
}

func TestDialHybridWaitsForSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	served := make(chan error, 1)
	go func() {
		time.Sleep(200 * time.Millisecond)
		served <- ServeHybrid(ctx, path, testHandler)
	}()

	conn, err := DialHybrid(ctx, path, portEcho, HybridOptions{})
	if err != nil {
		t.Fatalf("DialHybrid: %v", err)
	}
	if err := echoOn(conn, 1000); err != nil {
		t.Errorf("echo: %v", err)
	}
	conn.Close()
	cancel()
	if err := <-served; err != nil {
		t.Errorf("ServeHybrid: got %v, want nil after cancel", err)
	}
}

func TestServeHybridConcurrentStreams(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- ServeHybrid(ctx, path, testHandler) }()

	dialCtx := testContext(t, 30*time.Second)
	const streams = 16
	errs := make(chan error, streams)
	var wg sync.WaitGroup
	for i := range streams {
		wg.Go(func() {
			conn, err := DialHybrid(dialCtx, path, portEcho, HybridOptions{})
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			errs <- echoOn(conn, 256<<10+i)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}

	cancel()
	if err := <-served; err != nil {
		t.Errorf("ServeHybrid: got %v, want nil after cancel", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after ServeHybrid returned: got stat error %v, want not exist", err)
	}
}

func TestServeHybridRejectsInvalidLine(t *testing.T) {
	tests := []struct {
		name string
		line string
	}{
		{name: "unknown keyword", line: "HELLO 52\n"},
		{name: "port not a number", line: "CONNECT abc\n"},
		{name: "line too long", line: "CONNECT " + strings.Repeat("5", 40) + "\n"},
	}
	path := filepath.Join(t.TempDir(), "v.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	handled := make(chan uint32, len(tests))
	go func() {
		served <- ServeHybrid(ctx, path, func(ctx context.Context, port uint32, conn net.Conn) {
			handled <- port
			conn.Close()
		})
	}()
	dialCtx := testContext(t, 10*time.Second)
	if conn, err := DialHybrid(dialCtx, path, 54, HybridOptions{}); err != nil {
		t.Fatalf("DialHybrid to a valid port: %v", err)
	} else {
		conn.Close()
	}
	if got := <-handled; got != 54 {
		t.Errorf("port handed to the handler: got %d, want 54", got)
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.Write([]byte(tc.line))
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(conn)
			// A close with the long line still unread resets the
			// connection.
			if err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("read answer: %v", err)
			}
			if len(got) != 0 {
				t.Errorf("answer to %q: got %q, want the connection closed without one", tc.line, got)
			}
		})
	}
	cancel()
	<-served
	if len(handled) != 0 {
		t.Errorf("handler calls for invalid lines: got %d, want 0", len(handled))
	}
}

func TestPrefixConnRead(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	conn := &prefixConn{Conn: client, prefix: []byte("abc")}
	go server.Write([]byte("def"))

	var got bytes.Buffer
	buf := make([]byte, 2)
	for got.Len() < 6 {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		got.Write(buf[:n])
	}
	if got.String() != "abcdef" {
		t.Errorf("bytes read: got %q, want %q", got.String(), "abcdef")
	}
}
