package agentlink

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Limits of a guest's virtio-serial port, measured with QEMU 7.2 and a
// Linux 6.1 guest.
const (
	guestMaxRead  = 4096
	guestMaxWrite = 32 << 10
)

// fakeSerial reproduces a QEMU virtio-serial port: the chardev Unix
// socket on the host side and the guest's character device.
//
//   - The socket accepts one host connection at a time. A second
//     connect() succeeds but waits in the backlog until the first
//     connection ends; what it wrote meanwhile is then delivered.
//   - Host bytes reach the guest only once the guest has opened the port.
//   - While no host is connected, a guest read returns EOF at once, after
//     the bytes still buffered.
//   - A guest write blocks while no host is connected and then goes to
//     the next host connection, even when it started on an earlier one.
type fakeSerial struct {
	t    *testing.T
	path string
	ln   *net.UnixListener

	mu              sync.Mutex
	cond            *sync.Cond
	opened          bool     // the guest has opened the port
	portClosed      bool     // the guest has closed the port
	host            net.Conn // current host connection, nil while none
	hosts           int      // host connections accepted so far
	in              []byte   // host bytes not read by the guest yet
	eofReads        int      // guest reads that returned EOF
	staleBytes      int      // guest bytes delivered to a later connection than the one current when the write began
	hideDisconnects bool     // guest reads never return EOF, as when the host reconnects faster than the guest kernel notices
	holdWrites      bool     // guest writes block, as if QEMU stopped draining the port
	heldWrites      int      // guest writes blocked by holdWrites so far
}

// newFakeSerial starts the fake's socket in a temporary directory.
func newFakeSerial(t *testing.T) *fakeSerial {
	t.Helper()
	f := &fakeSerial{t: t, path: filepath.Join(t.TempDir(), "agent.sock")}
	f.cond = sync.NewCond(&f.mu)
	f.listen()
	return f
}

// newFakeSerialAt returns a fake whose socket at path does not exist
// until listen is called.
func newFakeSerialAt(t *testing.T, path string) *fakeSerial {
	f := &fakeSerial{t: t, path: path}
	f.cond = sync.NewCond(&f.mu)
	return f
}

func (f *fakeSerial) listen() {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: f.path, Net: "unix"})
	if err != nil {
		f.t.Fatalf("listen on fake chardev socket: %v", err)
	}
	f.ln = ln
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.serveHosts()
	}()
	f.t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		if f.host != nil {
			f.host.Close()
		}
		f.portClosed = true
		f.cond.Broadcast()
		f.mu.Unlock()
		<-done
	})
}

// serveHosts accepts host connections one at a time, as QEMU's chardev
// socket does, and copies each one's bytes into in.
func (f *fakeSerial) serveHosts() {
	for {
		conn, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.host = conn
		f.hosts++
		f.cond.Broadcast()
		for !f.opened && !f.portClosed {
			f.cond.Wait()
		}
		f.mu.Unlock()

		buf := make([]byte, 8192)
		for {
			n, err := conn.Read(buf)
			f.mu.Lock()
			f.in = append(f.in, buf[:n]...)
			f.cond.Broadcast()
			f.mu.Unlock()
			if err != nil {
				break
			}
		}

		conn.Close()
		f.mu.Lock()
		f.host = nil
		f.cond.Broadcast()
		f.mu.Unlock()
	}
}

// open returns the guest end of the port.
func (f *fakeSerial) open() io.ReadWriteCloser {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.opened = true
	f.portClosed = false
	f.cond.Broadcast()
	return guestPort{f}
}

// guestPort is the guest's character device of a fakeSerial.
type guestPort struct{ f *fakeSerial }

func (g guestPort) Read(p []byte) (int, error) {
	f := g.f
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		if f.portClosed {
			return 0, os.ErrClosed
		}
		if len(f.in) > 0 {
			n := copy(p[:min(len(p), guestMaxRead)], f.in)
			f.in = f.in[n:]
			return n, nil
		}
		if f.host == nil && !f.hideDisconnects {
			f.eofReads++
			f.cond.Broadcast()
			return 0, io.EOF
		}
		f.cond.Wait()
	}
}

func (g guestPort) Write(p []byte) (int, error) {
	f := g.f
	p = p[:min(len(p), guestMaxWrite)]
	f.mu.Lock()
	startHost := f.hosts
	if f.host == nil {
		// The write goes to the next connection.
		startHost++
	}
	held := false
	written := 0
	for {
		for (f.host == nil || f.holdWrites) && !f.portClosed {
			if f.holdWrites && !held {
				held = true
				f.heldWrites++
				f.cond.Broadcast()
			}
			f.cond.Wait()
		}
		if f.portClosed {
			f.mu.Unlock()
			return written, os.ErrClosed
		}
		conn, hostNum := f.host, f.hosts
		f.mu.Unlock()

		n, err := conn.Write(p[written:])

		f.mu.Lock()
		if hostNum != startHost {
			f.staleBytes += n
		}
		written += n
		if err == nil {
			f.mu.Unlock()
			return written, nil
		}
		// The host went away in the middle of the write. The rest
		// waits for the next connection.
		for f.host == conn && !f.portClosed {
			f.cond.Wait()
		}
	}
}

func (g guestPort) Close() error {
	f := g.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.portClosed = true
	f.cond.Broadcast()
	return nil
}

// waitFor waits until cond holds for the fake's state, or fails the test
// after timeout.
func (f *fakeSerial) waitFor(what string, timeout time.Duration, cond func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	stop := time.AfterFunc(timeout, func() {
		f.mu.Lock()
		f.cond.Broadcast()
		f.mu.Unlock()
	})
	defer stop.Stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	for !cond() {
		if time.Now().After(deadline) {
			f.t.Fatalf("fake serial port: timed out after %v waiting for %s", timeout, what)
		}
		f.cond.Wait()
	}
}

// dropHost closes the current host connection from QEMU's side.
func (f *fakeSerial) dropHost() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.host != nil {
		f.host.Close()
	}
}

func (f *fakeSerial) set(update func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	update()
	f.cond.Broadcast()
}

func (f *fakeSerial) get(read func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	read()
}

// logRecorder is a slog.Handler that keeps every record, so tests can
// wait for a logged event.
type logRecorder struct {
	mu      sync.Mutex
	cond    *sync.Cond
	records []slog.Record
}

func newLogRecorder() *logRecorder {
	r := &logRecorder{}
	r.cond = sync.NewCond(&r.mu)
	return r
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec.Clone())
	r.cond.Broadcast()
	return nil
}

func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

// waitRecord waits until the nth record with message msg (counting from
// 1) has been logged and returns its attributes.
func (r *logRecorder) waitRecord(t *testing.T, msg string, nth int, timeout time.Duration) map[string]slog.Value {
	t.Helper()
	deadline := time.Now().Add(timeout)
	stop := time.AfterFunc(timeout, func() {
		r.mu.Lock()
		r.cond.Broadcast()
		r.mu.Unlock()
	})
	defer stop.Stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		seen := 0
		for _, rec := range r.records {
			if rec.Message != msg {
				continue
			}
			seen++
			if seen == nth {
				attrs := map[string]slog.Value{}
				rec.Attrs(func(a slog.Attr) bool {
					attrs[a.Key] = a.Value
					return true
				})
				return attrs
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for log record %d of %q", timeout, nth, msg)
		}
		r.cond.Wait()
	}
}
