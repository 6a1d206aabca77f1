package agentlink

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// EOF back-off of the agent. A virtio-serial port returns EOF at once and
// again on every read while no host is connected, so the reader sleeps
// between such reads.
const (
	minEOFBackoff = 10 * time.Millisecond
	maxEOFBackoff = 50 * time.Millisecond
)

// maxBuffered bounds the bytes read from the port and not yet consumed.
const maxBuffered = 4 << 20

var (
	errSessionEnded = errors.New("serial session ended")
	errNewHello     = errors.New("a new host sent a hello line")
)

// SerialServeOptions configures ServeSerialPort. Zero fields take their
// defaults.
type SerialServeOptions struct {
	// KeepAliveInterval is the interval of yamux keepalive pings to the
	// host. They end a session whose host vanished without the port
	// reporting it. Negative disables pings. Default 15 s.
	KeepAliveInterval time.Duration
	// Logger receives session events. Default slog.Default().
	Logger *slog.Logger
}

// ServeSerial serves the agent side of the multiplexed transport on a
// virtio-serial port device until ctx ends. It returns nil once ctx has
// ended and every handler has returned.
func ServeSerial(ctx context.Context, device string, h Handler) error {
	// The *os.File stays referenced by ServeSerialPort until it returns,
	// and only its Read and Write methods are used, so no finalizer can
	// close the descriptor under a reader.
	f, err := os.OpenFile(device, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open virtio-serial port %q: %w", device, err)
	}
	log := slog.Default().With("device", device)
	if err := ServeSerialPort(ctx, f, h, SerialServeOptions{Logger: log}); err != nil {
		return fmt.Errorf("serve virtio-serial port %q: %w", device, err)
	}
	return nil
}

// ServeSerialPort serves the agent side of the multiplexed transport on
// port until ctx ends. port must behave as the guest end of a
// virtio-serial port: a read returns EOF (or zero bytes) while no host is
// connected and data again once one is, and a write may block while no
// host is connected.
//
// ServeSerialPort owns port and closes it when ctx ends, which must
// unblock its pending reads and writes. It returns nil once ctx has ended
// and every handler has returned, or an error when port fails.
func ServeSerialPort(ctx context.Context, port io.ReadWriteCloser, h Handler, opts SerialServeOptions) error {
	if opts.KeepAliveInterval == 0 {
		opts.KeepAliveInterval = DefaultKeepAliveInterval
	}
	s := &serialServer{port: port, h: h, log: loggerOrDefault(opts.Logger), keepAlive: opts.KeepAliveInterval}
	s.cond = sync.NewCond(&s.mu)
	s.nextHostPort.Store(firstHostPort)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	context.AfterFunc(ctx, func() {
		port.Close()
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { s.pump(ctx) })

	for {
		nonce, err := s.awaitHello(ctx)
		if err != nil {
			return s.result(ctx, err)
		}
		conn, err := s.startSession(nonce)
		if err != nil {
			return s.result(ctx, fmt.Errorf("send handshake ack: %w", err))
		}
		if err := s.runSession(ctx, conn, &wg); err != nil {
			return err
		}
	}
}

// serialServer is the state of one ServeSerialPort call.
//
// One goroutine (pump) reads the port into buf. The hello reader
// (awaitHello) and the session's yamux reader (sessionConn.Read) take
// bytes from buf in turn, so a read still pending in an ended session can
// never swallow the next host's hello.
type serialServer struct {
	port      io.ReadWriteCloser
	h         Handler
	log       *slog.Logger
	keepAlive time.Duration

	nextHostPort atomic.Uint32

	mu   sync.Mutex
	cond *sync.Cond // signalled when buf, eofs or err change, or a session ends
	buf  []byte     // bytes read from the port and not consumed yet
	off  int64      // stream offset of buf[0]
	eofs []int64    // stream offsets at which the port returned EOF, ascending
	err  error      // read error that ended pump

	// wmu serialises all writes to the port, so an ack is written only
	// after the write in progress completes. epoch is the number of the
	// current session. Writes of any other session are rejected.
	wmu   sync.Mutex
	epoch uint64
}

// result turns the error that ended serving into ServeSerialPort's result.
func (s *serialServer) result(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// pump reads the port into buf until the port fails or ctx ends. It
// records each EOF once, at the offset where it happened, and backs off
// while the port keeps returning EOF.
func (s *serialServer) pump(ctx context.Context) {
	chunk := make([]byte, 64<<10)
	backoff := minEOFBackoff
	for {
		s.mu.Lock()
		for len(s.buf) >= maxBuffered && ctx.Err() == nil {
			s.cond.Wait()
		}
		s.mu.Unlock()

		n, err := s.port.Read(chunk)
		eof := n == 0 && (err == nil || errors.Is(err, io.EOF))

		s.mu.Lock()
		s.buf = append(s.buf, chunk[:n]...)
		end := s.off + int64(len(s.buf))
		if eof && (len(s.eofs) == 0 || s.eofs[len(s.eofs)-1] != end) {
			s.eofs = append(s.eofs, end)
		}
		failed := err != nil && !errors.Is(err, io.EOF) || ctx.Err() != nil
		if failed {
			s.err = fmt.Errorf("read port: %w", err)
			if err == nil || errors.Is(err, io.EOF) {
				s.err = ctx.Err()
			}
		}
		s.cond.Broadcast()
		s.mu.Unlock()
		if failed {
			return
		}

		if !eof {
			backoff = minEOFBackoff
			continue
		}
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			timer.Stop()
		case <-timer.C:
		}
		backoff = min(backoff*2, maxEOFBackoff)
	}
}

// consumeLocked drops n bytes from the head of buf and the EOF marks
// before them.
func (s *serialServer) consumeLocked(n int) {
	s.buf = s.buf[n:]
	if len(s.buf) == 0 {
		s.buf = nil
	}
	s.off += int64(n)
	for len(s.eofs) > 0 && s.eofs[0] < s.off {
		s.eofs = s.eofs[1:]
	}
	s.cond.Broadcast()
}

// availableLocked returns how many bytes of buf come before the next EOF
// mark.
func (s *serialServer) availableLocked() int {
	if len(s.eofs) > 0 {
		return int(s.eofs[0] - s.off)
	}
	return len(s.buf)
}

// awaitHello discards bytes and EOFs until buf contains a complete hello
// line, consumes it and returns its nonce.
func (s *serialServer) awaitHello(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		nonce, discard := findHello(s.buf)
		s.consumeLocked(discard)
		for len(s.eofs) > 0 && s.eofs[0] <= s.off {
			s.eofs = s.eofs[1:]
		}
		if nonce != "" {
			return nonce, nil
		}
		if s.err != nil {
			return "", s.err
		}
		s.cond.Wait()
	}
}

// startSession starts a new epoch, so writes of earlier sessions fail
// from now on, and writes the ack line for nonce. Taking wmu waits for a
// write of an earlier session that is still in the port, so its bytes
// reach the host before the ack, where the host discards them.
func (s *serialServer) startSession(nonce string) (*sessionConn, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.epoch++
	conn := &sessionConn{s: s, epoch: s.epoch}
	if _, err := s.writeLocked(conn, ackLine(nonce)); err != nil {
		return nil, err
	}
	return conn, nil
}

// runSession serves one yamux session over conn until it ends, and hands
// each stream to serveConnect.
func (s *serialServer) runSession(ctx context.Context, conn *sessionConn, wg *sync.WaitGroup) error {
	log := s.log.With("session", conn.epoch)
	sess, err := yamux.Server(conn, yamuxConfig(s.keepAlive, log))
	if err != nil {
		return fmt.Errorf("start yamux server: %w", err)
	}
	log.Info("serial session started")
	stop := context.AfterFunc(ctx, func() { sess.Close() })

	for {
		stream, err := sess.AcceptStream()
		if err != nil {
			break
		}
		wg.Go(func() {
			serveConnect(ctx, stream, s.nextHostPort.Add(1)-1, s.h, log)
		})
	}

	stop()
	conn.Close()
	// Session.Close waits for the send loop, which may sit in a port
	// write until the next host connects, so it must not delay the
	// next handshake.
	wg.Go(func() { sess.Close() })
	log.Info("serial session ended", "reason", conn.endReason())
	return nil
}

// sessionConn is the byte stream of one yamux session over the port.
// Its Read follows yamux frame boundaries. A byte other than yamux's
// version at a frame boundary is the start of a new host's hello, so
// Read stops there and leaves the bytes to awaitHello.
type sessionConn struct {
	s      *serialServer
	epoch  uint64
	closed atomic.Bool

	// Guarded by s.mu.
	headerLeft int    // bytes of the current frame header not yet read
	bodyLeft   uint32 // bytes of the current data frame body not yet read
	readErr    error  // first error Read returned, which tells why the session ended
}

func (c *sessionConn) Read(p []byte) (int, error) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if c.closed.Load() {
			return 0, c.stopLocked(errSessionEnded)
		}
		avail := s.availableLocked()
		if avail == 0 && len(s.eofs) > 0 {
			s.eofs = s.eofs[1:]
			return 0, c.stopLocked(io.EOF)
		}
		if avail == 0 && s.err != nil {
			return 0, c.stopLocked(s.err)
		}
		if avail > 0 && c.headerLeft == 0 && c.bodyLeft == 0 {
			if s.buf[0] != yamuxVersion {
				return 0, c.stopLocked(errNewHello)
			}
			if avail >= yamuxHeaderSize {
				c.startFrameLocked()
			} else if len(s.eofs) > 0 {
				// The header is cut off by an EOF. awaitHello
				// discards the partial header.
				s.eofs = s.eofs[1:]
				return 0, c.stopLocked(io.EOF)
			} else if s.err != nil {
				return 0, c.stopLocked(s.err)
			}
		}
		if avail > 0 && (c.headerLeft > 0 || c.bodyLeft > 0) {
			return c.copyLocked(p, avail), nil
		}
		s.cond.Wait()
	}
}

// startFrameLocked starts a frame whose complete header is at the head
// of buf. Only data frames have a body; the length field of the other
// frame types carries a window delta, ping value or error code.
func (c *sessionConn) startFrameLocked() {
	hdr := c.s.buf[:yamuxHeaderSize]
	c.headerLeft = yamuxHeaderSize
	if hdr[1] == yamuxTypeData {
		c.bodyLeft = binary.BigEndian.Uint32(hdr[8:12])
	}
}

// copyLocked copies the rest of the current header, or as much of the
// current body as fits, from buf to p.
func (c *sessionConn) copyLocked(p []byte, avail int) int {
	var n int
	if c.headerLeft > 0 {
		n = min(len(p), c.headerLeft, avail)
		c.headerLeft -= n
	} else {
		n = int(min(uint64(len(p)), uint64(c.bodyLeft), uint64(avail)))
		c.bodyLeft -= uint32(n)
	}
	copy(p, c.s.buf[:n])
	c.s.consumeLocked(n)
	return n
}

func (c *sessionConn) stopLocked(err error) error {
	if c.readErr == nil {
		c.readErr = err
	}
	return err
}

func (c *sessionConn) endReason() string {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	switch {
	case errors.Is(c.readErr, io.EOF):
		return "host disconnected"
	case errors.Is(c.readErr, errNewHello):
		return "new host connected"
	case c.readErr == nil || errors.Is(c.readErr, errSessionEnded):
		return "session closed"
	default:
		return c.readErr.Error()
	}
}

// Write writes p to the port unless the session has ended. It stops
// between chunks once the session ends, so at most one chunk of an ended
// session can still reach the port.
func (c *sessionConn) Write(p []byte) (int, error) {
	c.s.wmu.Lock()
	defer c.s.wmu.Unlock()
	return c.s.writeLocked(c, p)
}

// writeLocked writes p to the port in chunks of at most maxPortWrite
// bytes, as long as conn's session is current. The caller holds wmu.
func (s *serialServer) writeLocked(conn *sessionConn, p []byte) (int, error) {
	written := 0
	for written < len(p) {
		if conn.closed.Load() || conn.epoch != s.epoch {
			return written, errSessionEnded
		}
		n, err := s.port.Write(p[written:min(len(p), written+maxPortWrite)])
		written += n
		if err != nil {
			return written, fmt.Errorf("write port: %w", err)
		}
	}
	return written, nil
}

// Close ends the session's use of the port: pending and later reads and
// writes fail. It is idempotent and never closes the port.
func (c *sessionConn) Close() error {
	c.closed.Store(true)
	c.s.mu.Lock()
	c.s.cond.Broadcast()
	c.s.mu.Unlock()
	return nil
}
