package firecracker

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hearthvm/hearth/agentproto"
)

// spareDialTimeout bounds the background dial of a spare exec stream.
const spareDialTimeout = 10 * time.Second

// execSpare keeps one stream to the agent's exec port open ahead of
// time: past the Unix connect and the CONNECT/OK exchange, with the agent
// waiting for START. DialAgent(PortExec) hands it out and dials the next
// one in the background, so an exec does not wait for the dial. The
// agent serves one session per stream and spends only a blocked
// goroutine on an idle one.
//
// Firecracker drops every vsock connection when the guest is paused,
// and a snapshot taken then holds none, so Pause and Kill discard the
// spare, and a spare is checked before it is handed out.
type execSpare struct {
	mu   sync.Mutex
	conn net.Conn // ready stream, nil when none
	// gen counts discards. A background dial started before a discard
	// is closed when it completes.
	gen     uint64
	dialing bool
	cancel  context.CancelFunc // ends the background dial, nil when none
	// stopped is set while the machine is paused, and dead once it is
	// killed or has exited. No spare is dialled while either is set.
	stopped bool
	dead    bool
}

// take returns the spare if there is one and it is still idle and open.
func (s *execSpare) take() net.Conn {
	s.mu.Lock()
	c := s.conn
	s.conn = nil
	s.mu.Unlock()
	if c == nil {
		return nil
	}
	if !streamIdle(c) {
		c.Close()
		return nil
	}
	return c
}

// refill dials a new spare in the background unless one is ready or on
// its way, or the machine is paused or gone.
func (s *execSpare) refill(dial func(context.Context) (net.Conn, error)) {
	s.mu.Lock()
	if s.stopped || s.dead || s.dialing || s.conn != nil {
		s.mu.Unlock()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), spareDialTimeout)
	s.dialing, s.cancel = true, cancel
	gen := s.gen
	s.mu.Unlock()

	go func() {
		defer cancel()
		c, err := dial(ctx)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.dialing, s.cancel = false, nil
		if err != nil {
			return
		}
		if s.gen != gen || s.stopped || s.dead || s.conn != nil {
			c.Close()
			return
		}
		s.conn = c
	}()
}

// discard closes the spare and ends a background dial. With dead set,
// no spare is dialled again, and otherwise none is until resume.
func (s *execSpare) discard(dead bool) {
	s.mu.Lock()
	s.gen++
	s.stopped = true
	s.dead = s.dead || dead
	c := s.conn
	s.conn = nil
	if s.cancel != nil {
		s.cancel()
	}
	s.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// resume allows spares again after a pause.
func (s *execSpare) resume() {
	s.mu.Lock()
	s.stopped = false
	s.mu.Unlock()
}

// streamIdle reports whether c is open with nothing to read, by a
// non-blocking peek. A stream the peer closed reads end of file, and an
// exec stream on which the agent already wrote is not fresh.
func streamIdle(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	idle := false
	err = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, rerr := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		idle = errors.Is(rerr, unix.EAGAIN)
		return true // never wait
	})
	return err == nil && idle
}

// dialExec returns the spare exec stream when one is ready, or dials
// one, and starts dialling the next spare either way.
func (m *Machine) dialExec(ctx context.Context) (net.Conn, error) {
	dial := func(ctx context.Context) (net.Conn, error) { return m.dialAgent(ctx, agentproto.PortExec) }
	if c := m.spare.take(); c != nil {
		m.spare.refill(dial)
		return c, nil
	}
	c, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	m.spare.refill(dial)
	return c, nil
}
