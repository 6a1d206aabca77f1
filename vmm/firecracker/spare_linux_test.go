package firecracker

import (
	"context"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// socketPair returns both ends of a connected Unix stream socket pair,
// closed when the test ends.
func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatalf("wrap socketpair end: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	return conns[0], conns[1]
}

func TestStreamIdle(t *testing.T) {
	tests := []struct {
		name string
		conn func(t *testing.T) net.Conn
		want bool
	}{
		{"open with nothing to read", func(t *testing.T) net.Conn {
			c, _ := socketPair(t)
			return c
		}, true},
		{"peer closed", func(t *testing.T) net.Conn {
			c, peer := socketPair(t)
			peer.Close()
			return c
		}, false},
		{"peer wrote", func(t *testing.T) net.Conn {
			c, peer := socketPair(t)
			if _, err := peer.Write([]byte{1}); err != nil {
				t.Fatal(err)
			}
			return c
		}, false},
		{"not a socket", func(t *testing.T) net.Conn {
			c, peer := net.Pipe()
			t.Cleanup(func() { c.Close(); peer.Close() })
			return c
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := streamIdle(tt.conn(t)); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// spareDialer hands out socket pair ends and keeps the peers, so a test
// can close a spare from the far side.
type spareDialer struct {
	t     *testing.T
	dials atomic.Int32
	peers chan net.Conn
}

func newSpareDialer(t *testing.T) *spareDialer {
	return &spareDialer{t: t, peers: make(chan net.Conn, 16)}
}

func (d *spareDialer) dial(context.Context) (net.Conn, error) {
	d.dials.Add(1)
	c, peer := socketPair(d.t)
	d.peers <- peer
	return c, nil
}

// waitSpare waits until s holds a spare.
func waitSpare(t *testing.T, s *execSpare) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		ready := s.conn != nil
		s.mu.Unlock()
		if ready {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("got no spare 10 s after refill, want one")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestExecSpare(t *testing.T) {
	t.Run("refill then take", func(t *testing.T) {
		var s execSpare
		d := newSpareDialer(t)
		s.refill(d.dial)
		waitSpare(t, &s)
		if c := s.take(); c == nil {
			t.Fatal("take: got nil, want the spare")
		}
		if c := s.take(); c != nil {
			t.Errorf("second take: got a stream, want nil (one spare at a time)")
		}
	})
	t.Run("spare closed by the far side is not handed out", func(t *testing.T) {
		var s execSpare
		d := newSpareDialer(t)
		s.refill(d.dial)
		waitSpare(t, &s)
		(<-d.peers).Close()
		if c := s.take(); c != nil {
			t.Errorf("take: got a stream whose peer closed, want nil")
		}
	})
	t.Run("pause discards and stops refills until resume", func(t *testing.T) {
		var s execSpare
		d := newSpareDialer(t)
		s.refill(d.dial)
		waitSpare(t, &s)
		s.discard(false)
		if c := s.take(); c != nil {
			t.Errorf("take after discard: got a stream, want nil")
		}
		s.refill(d.dial)
		if got := d.dials.Load(); got != 1 {
			t.Errorf("dials while paused: got %d in all, want 1 (none after the pause)", got)
		}
		s.resume()
		s.refill(d.dial)
		waitSpare(t, &s)
		if got := d.dials.Load(); got != 2 {
			t.Errorf("dials after resume: got %d in all, want 2", got)
		}
	})
	t.Run("no refill after kill", func(t *testing.T) {
		var s execSpare
		d := newSpareDialer(t)
		s.discard(true)
		s.resume()
		s.refill(d.dial)
		if got := d.dials.Load(); got != 0 {
			t.Errorf("dials after kill: got %d, want 0", got)
		}
	})
	t.Run("dial that ends after a discard is dropped", func(t *testing.T) {
		var s execSpare
		release := make(chan struct{})
		done := make(chan net.Conn, 1)
		s.refill(func(ctx context.Context) (net.Conn, error) {
			<-release
			c, _ := socketPair(t)
			done <- c
			return c, nil
		})
		s.discard(false)
		s.resume()
		close(release)
		c := <-done
		// The goroutine closes the stale stream; a read then fails.
		deadline := time.Now().Add(10 * time.Second)
		for {
			_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
			_, err := c.Read(make([]byte, 1))
			if errors.Is(err, net.ErrClosed) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("stale spare still open 10 s after its dial ended: last read %v", err)
			}
		}
		if got := s.take(); got != nil {
			t.Errorf("take: got the stale stream, want nil")
		}
	})
}
