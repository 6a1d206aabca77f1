package agentlink

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Agent ports served by testHandler.
const (
	portEcho   uint32 = 52 // copies the stream back
	portBig    uint32 = 60 // after one byte from the host, writes bigReplySize bytes
	portReject uint32 = 99 // closes the stream at once
)

const bigReplySize = 8 << 20

// testHandler serves the test ports. It closes its stream when ctx ends,
// as a handler must.
func testHandler(ctx context.Context, port uint32, conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	switch port {
	case portEcho:
		io.Copy(conn, conn)
	case portBig:
		var b [1]byte
		if _, err := io.ReadFull(conn, b[:]); err != nil {
			return
		}
		chunk := bytes.Repeat([]byte{'x'}, 64<<10)
		for written := 0; written < bigReplySize; written += len(chunk) {
			if _, err := conn.Write(chunk); err != nil {
				return
			}
		}
	}
}

// startAgent serves the fake's guest port until the test ends.
func startAgent(t *testing.T, f *fakeSerial, log *slog.Logger) {
	t.Helper()
	port := f.open()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- ServeSerialPort(ctx, port, testHandler, SerialServeOptions{Logger: log})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ServeSerialPort: got error %v, want nil after cancel", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("ServeSerialPort did not return within 10s of cancel")
		}
	})
}

func newTestMux(t *testing.T, path string, opts SerialMuxOptions) *SerialMux {
	t.Helper()
	m := NewSerialMuxWithOptions(path, opts)
	t.Cleanup(func() { m.Close() })
	return m
}

// checkEcho sends size random bytes on a new stream to portEcho and
// checks that exactly those bytes come back.
func checkEcho(ctx context.Context, m *SerialMux, size int) error {
	conn, err := m.DialAgent(ctx, portEcho)
	if err != nil {
		return err
	}
	defer conn.Close()
	return echoOn(conn, size)
}

func echoOn(conn net.Conn, size int) error {
	want := make([]byte, size)
	rand.Read(want)
	writeErr := make(chan error, 1)
	go func() {
		_, err := conn.Write(want)
		writeErr <- err
	}()
	got := make([]byte, size)
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(conn, got); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if err := <-writeErr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("echo of %d bytes differs from what was sent (first difference at byte %d)", size, firstDiff(got, want))
	}
	return nil
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func testContext(t *testing.T, timeout time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

func TestSerialStreamEcho(t *testing.T) {
	f := newFakeSerial(t)
	startAgent(t, f, nil)
	m := newTestMux(t, f.path, SerialMuxOptions{})
	ctx := testContext(t, 30*time.Second)

	for _, size := range []int{1, guestMaxRead + 1, guestMaxWrite*3 + 7, 3 << 20} {
		if err := checkEcho(ctx, m, size); err != nil {
			t.Errorf("echo of %d bytes: %v", size, err)
		}
	}
}

func TestSerialConcurrentStreams(t *testing.T) {
	f := newFakeSerial(t)
	startAgent(t, f, nil)
	m := newTestMux(t, f.path, SerialMuxOptions{})
	ctx := testContext(t, 60*time.Second)

	// The streams dial before any session exists, so they also race to
	// connect; only one connection may be made.
	const streams = 12
	errs := make(chan error, streams)
	var wg sync.WaitGroup
	for i := range streams {
		wg.Go(func() { errs <- checkEcho(ctx, m, 200<<10+i) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	var hosts int
	f.get(func() { hosts = f.hosts })
	if hosts != 1 {
		t.Errorf("host connections: got %d, want 1", hosts)
	}
}

func TestSerialRejectedStream(t *testing.T) {
	f := newFakeSerial(t)
	startAgent(t, f, nil)
	m := newTestMux(t, f.path, SerialMuxOptions{})
	ctx := testContext(t, 10*time.Second)

	// The agent replies OK for every port and leaves it to the handler
	// to close a stream it does not serve.
	conn, err := m.DialAgent(ctx, portReject)
	if err != nil {
		t.Fatalf("DialAgent: %v", err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("read on a rejected stream: got %d bytes and error %v, want io.EOF", n, err)
	}
	if err := checkEcho(ctx, m, 100); err != nil {
		t.Errorf("echo after a rejected stream: %v", err)
	}
}

func TestSerialDialWaits(t *testing.T) {
	tests := []struct {
		name string
		// start makes the socket and the agent appear after the first
		// DialAgent call has begun.
		start func(t *testing.T, path string)
	}{
		{
			name: "socket missing at first",
			start: func(t *testing.T, path string) {
				f := newFakeSerialAt(t, path)
				time.Sleep(200 * time.Millisecond)
				f.listen()
				startAgent(t, f, nil)
			},
		},
		{
			name: "guest port not open yet",
			start: func(t *testing.T, path string) {
				f := newFakeSerialAt(t, path)
				f.listen()
				f.waitFor("the host to connect", 10*time.Second, func() bool { return f.hosts == 1 })
				time.Sleep(200 * time.Millisecond)
				startAgent(t, f, nil)
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "agent.sock")
			m := newTestMux(t, path, SerialMuxOptions{})
			ctx := testContext(t, 20*time.Second)
			errs := make(chan error, 1)
			go func() { errs <- checkEcho(ctx, m, 1000) }()
			tc.start(t, path)
			if err := <-errs; err != nil {
				t.Errorf("echo: %v", err)
			}
		})
	}
}

func TestSerialDialDeadline(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T) string
	}{
		{
			name:  "no socket",
			setup: func(t *testing.T) string { return filepath.Join(t.TempDir(), "agent.sock") },
		},
		{
			name: "no agent",
			setup: func(t *testing.T) string {
				f := newFakeSerial(t)
				f.open()
				return f.path
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.setup(t)
			m := newTestMux(t, path, SerialMuxOptions{HandshakeAttemptTimeout: 100 * time.Millisecond})
			ctx := testContext(t, 500*time.Millisecond)

			_, err := m.DialAgent(ctx, portEcho)
			if err == nil {
				t.Fatal("DialAgent: got nil error, want a deadline error")
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("error %q: got no context.DeadlineExceeded in its chain", err)
			}
			for _, want := range []string{"port 52", path} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func TestSerialReconnectAfterDrop(t *testing.T) {
	f := newFakeSerial(t)
	rec := newLogRecorder()
	startAgent(t, f, slog.New(rec))
	m := newTestMux(t, f.path, SerialMuxOptions{})
	ctx := testContext(t, 30*time.Second)

	conn, err := m.DialAgent(ctx, portEcho)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := echoOn(conn, 1000); err != nil {
		t.Fatalf("echo before the drop: %v", err)
	}

	f.dropHost()
	rec.waitRecord(t, "serial session ended", 1, 10*time.Second)
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Errorf("read on a stream of the dropped session: got nil error, want an error")
	}
	if err := checkEcho(ctx, m, 100<<10); err != nil {
		t.Errorf("echo after the drop: %v", err)
	}
	var hosts int
	f.get(func() { hosts = f.hosts })
	if hosts != 2 {
		t.Errorf("host connections: got %d, want 2", hosts)
	}
}

// TestSerialStaleWriteDiscarded drops the host while the agent is in the
// middle of writing a large reply. The rest of that write reaches the
// next host connection, which must discard it.
func TestSerialStaleWriteDiscarded(t *testing.T) {
	f := newFakeSerial(t)
	rec := newLogRecorder()
	startAgent(t, f, slog.New(rec))
	ctx := testContext(t, 60*time.Second)

	hostRec := newLogRecorder()
	first := NewSerialMuxWithOptions(f.path, SerialMuxOptions{})
	defer first.Close()
	conn, err := first.DialAgent(ctx, portBig)
	if err != nil {
		t.Fatal(err)
	}
	f.set(func() { f.holdWrites = true })
	if _, err := conn.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	f.waitFor("a held guest write", 10*time.Second, func() bool { return f.heldWrites > 0 })

	first.Close()
	rec.waitRecord(t, "serial session ended", 1, 10*time.Second)
	f.set(func() { f.holdWrites = false })

	second := newTestMux(t, f.path, SerialMuxOptions{Logger: slog.New(hostRec)})
	if err := checkEcho(ctx, second, 300<<10); err != nil {
		t.Errorf("echo on the new session: %v", err)
	}

	var stale int
	f.get(func() { stale = f.staleBytes })
	if stale == 0 || stale > maxPortWrite {
		t.Errorf("stale bytes delivered to the new connection: got %d, want 1 to %d", stale, maxPortWrite)
	}
	attrs := hostRec.waitRecord(t, "agent session established", 1, time.Second)
	if got := attrs["discarded_bytes"].Int64(); got != int64(stale) {
		t.Errorf("bytes the host discarded before the ack: got %d, want %d (the stale bytes)", got, stale)
	}
}

func TestSerialSecondHostQueued(t *testing.T) {
	f := newFakeSerial(t)
	startAgent(t, f, nil)
	ctx := testContext(t, 60*time.Second)

	first := NewSerialMuxWithOptions(f.path, SerialMuxOptions{})
	defer first.Close()
	if err := checkEcho(ctx, first, 1000); err != nil {
		t.Fatalf("echo on the first host: %v", err)
	}

	second := newTestMux(t, f.path, SerialMuxOptions{HandshakeAttemptTimeout: 20 * time.Second})
	secondDone := make(chan error, 1)
	go func() { secondDone <- checkEcho(ctx, second, 1000) }()

	select {
	case err := <-secondDone:
		t.Fatalf("second host was served while the first one is connected (echo error: %v)", err)
	case <-time.After(500 * time.Millisecond):
	}
	if err := checkEcho(ctx, first, 1000); err != nil {
		t.Errorf("echo on the first host while the second one waits: %v", err)
	}

	first.Close()
	if err := <-secondDone; err != nil {
		t.Errorf("echo on the second host after the first left: %v", err)
	}
}

func TestSerialHiddenDisconnect(t *testing.T) {
	f := newFakeSerial(t)
	f.set(func() { f.hideDisconnects = true })
	rec := newLogRecorder()
	startAgent(t, f, slog.New(rec))
	ctx := testContext(t, 30*time.Second)

	first := NewSerialMuxWithOptions(f.path, SerialMuxOptions{})
	if err := checkEcho(ctx, first, 1000); err != nil {
		t.Fatalf("echo on the first host: %v", err)
	}
	first.Close()

	second := newTestMux(t, f.path, SerialMuxOptions{})
	if err := checkEcho(ctx, second, 1000); err != nil {
		t.Fatalf("echo on the second host: %v", err)
	}
	attrs := rec.waitRecord(t, "serial session ended", 1, time.Second)
	if got, want := attrs["reason"].String(), "new host connected"; got != want {
		t.Errorf("reason the first session ended: got %q, want %q", got, want)
	}
}

// TestSerialHalfFrameRecovery leaves the agent in the middle of a yamux
// frame when the host vanishes, so the next host's hello is read as frame
// body until the frame is complete.
func TestSerialHalfFrameRecovery(t *testing.T) {
	tests := []struct {
		name            string
		hideDisconnects bool
	}{
		{name: "disconnect visible", hideDisconnects: false},
		{name: "disconnect hidden", hideDisconnects: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeSerial(t)
			f.set(func() { f.hideDisconnects = tc.hideDisconnects })
			startAgent(t, f, nil)
			ctx := testContext(t, 60*time.Second)

			conn, err := net.Dial("unix", f.path)
			if err != nil {
				t.Fatal(err)
			}
			nonce := newNonce()
			conn.Write(helloLine(nonce))
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := awaitAck(byteReader{conn}, ackLine(nonce)); err != nil {
				t.Fatalf("wait for ack: %v", err)
			}
			// A data frame header announcing 300 bytes for stream 1,
			// followed by 10 of them.
			hdr := make([]byte, yamuxHeaderSize, yamuxHeaderSize+10)
			hdr[1] = yamuxTypeData
			binary.BigEndian.PutUint32(hdr[4:8], 1)
			binary.BigEndian.PutUint32(hdr[8:12], 300)
			conn.Write(append(hdr, make([]byte, 10)...))
			conn.Close()

			m := newTestMux(t, f.path, SerialMuxOptions{HandshakeAttemptTimeout: 200 * time.Millisecond})
			if err := checkEcho(ctx, m, 1000); err != nil {
				t.Errorf("echo after the half frame: %v", err)
			}
		})
	}
}

type byteReader struct{ r io.Reader }

func (b byteReader) ReadByte() (byte, error) {
	var p [1]byte
	_, err := io.ReadFull(b.r, p[:])
	return p[0], err
}

func TestSerialMuxClose(t *testing.T) {
	f := newFakeSerial(t)
	startAgent(t, f, nil)
	m := NewSerialMuxWithOptions(f.path, SerialMuxOptions{})
	ctx := testContext(t, 10*time.Second)

	conn, err := m.DialAgent(ctx, portEcho)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("Close: got %v, want nil", err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: got %v, want nil", err)
	}
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Errorf("read on a stream after Close: got nil error, want an error")
	}
	if _, err := m.DialAgent(ctx, portEcho); !errors.Is(err, ErrMuxClosed) {
		t.Errorf("DialAgent after Close: got %v, want ErrMuxClosed", err)
	}
}

func TestServeSerialMissingDevice(t *testing.T) {
	device := filepath.Join(t.TempDir(), "vport0p1")
	err := ServeSerial(context.Background(), device, testHandler)
	if err == nil {
		t.Fatal("ServeSerial on a missing device: got nil error, want an error")
	}
	if !strings.Contains(err.Error(), device) {
		t.Errorf("error %q does not name the device %q", err, device)
	}
}

func TestFindHello(t *testing.T) {
	nonceA := strings.Repeat("a", nonceLen)
	nonceB := strings.Repeat("0123456789abcdef", 2)
	helloA := string(helloLine(nonceA))
	helloB := string(helloLine(nonceB))
	tests := []struct {
		name        string
		buf         string
		wantNonce   string
		wantDiscard int
	}{
		{name: "empty", buf: "", wantNonce: "", wantDiscard: 0},
		{name: "hello alone", buf: helloA, wantNonce: nonceA, wantDiscard: helloLen},
		{name: "garbage before hello", buf: "\x00\x01junk\n" + helloA, wantNonce: nonceA, wantDiscard: 7 + helloLen},
		{name: "bytes after hello kept", buf: helloA + "\x00\x00", wantNonce: nonceA, wantDiscard: helloLen},
		{name: "last of two hellos", buf: helloA + helloB, wantNonce: nonceB, wantDiscard: 2 * helloLen},
		{name: "incomplete hello kept", buf: "junk" + helloA[:20], wantNonce: "", wantDiscard: 4},
		{name: "prefix start kept", buf: "junkjunkjunkjunk" + "HEART", wantNonce: "", wantDiscard: 16 + 5 - (len(helloPrefix) - 1)},
		{name: "upper-case nonce rejected", buf: helloPrefix + strings.Repeat("A", nonceLen) + "\n", wantNonce: "", wantDiscard: helloLen - (len(helloPrefix) - 1)},
		{name: "short nonce rejected before hello", buf: helloPrefix + "abc\n" + helloB, wantNonce: nonceB, wantDiscard: len(helloPrefix) + 4 + helloLen},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nonce, discard := findHello([]byte(tc.buf))
			if nonce != tc.wantNonce {
				t.Errorf("nonce: got %q, want %q", nonce, tc.wantNonce)
			}
			if discard != tc.wantDiscard {
				t.Errorf("discard: got %d, want %d", discard, tc.wantDiscard)
			}
		})
	}
}

func TestAwaitAck(t *testing.T) {
	nonce := newNonce()
	other := newNonce()
	tests := []struct {
		name          string
		input         string
		wantDiscarded int
		wantErr       error
	}{
		{name: "ack alone", input: string(ackLine(nonce)), wantDiscarded: 0},
		{name: "stale bytes before ack", input: "\x00\x00\x01stale" + string(ackLine(nonce)), wantDiscarded: 8},
		{name: "ack of another nonce skipped", input: string(ackLine(other)) + string(ackLine(nonce)), wantDiscarded: len(ackLine(other))},
		{name: "no ack", input: "nothing here\n", wantErr: io.EOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			discarded, err := awaitAck(strings.NewReader(tc.input), ackLine(nonce))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error: got %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == nil && discarded != tc.wantDiscarded {
				t.Errorf("discarded: got %d, want %d", discarded, tc.wantDiscarded)
			}
		})
	}
}
