package agentlink

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/hearthvm/hearth/agentproto"
)

// ErrMuxClosed is returned by DialAgent after Close.
var ErrMuxClosed = errors.New("serial mux is closed")

// Defaults for SerialMuxOptions.
const (
	DefaultHandshakeAttemptTimeout = 3 * time.Second
)

// SerialMuxOptions configures a SerialMux. Zero fields take their
// defaults.
type SerialMuxOptions struct {
	// HandshakeAttemptTimeout bounds one connection attempt: connecting
	// to QEMU's socket plus waiting for the agent's ack. After it the mux
	// drops the connection, pauses and tries again with a new nonce,
	// within the caller's context. Default 3 s.
	HandshakeAttemptTimeout time.Duration
	// RetryInterval is the first pause between connection attempts. Each
	// pause is 1.5 times the previous one, up to MaxRetryInterval.
	// Default 20 ms.
	RetryInterval time.Duration
	// MaxRetryInterval caps the pause between connection attempts.
	// Default 200 ms.
	MaxRetryInterval time.Duration
	// KeepAliveInterval is the interval of yamux keepalive pings. A
	// session whose agent misses a ping ends, and the next DialAgent
	// reconnects. Negative disables pings. Default 15 s.
	KeepAliveInterval time.Duration
	// Logger receives session events. Default slog.Default().
	Logger *slog.Logger
}

func (o SerialMuxOptions) withDefaults() SerialMuxOptions {
	if o.HandshakeAttemptTimeout <= 0 {
		o.HandshakeAttemptTimeout = DefaultHandshakeAttemptTimeout
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = DefaultRetryInterval
	}
	if o.MaxRetryInterval <= 0 {
		o.MaxRetryInterval = DefaultMaxRetryInterval
	}
	if o.MaxRetryInterval < o.RetryInterval {
		o.MaxRetryInterval = o.RetryInterval
	}
	if o.KeepAliveInterval == 0 {
		o.KeepAliveInterval = DefaultKeepAliveInterval
	}
	o.Logger = loggerOrDefault(o.Logger)
	return o
}

// SerialMux is the host end of the multiplexed virtio-serial transport.
// It owns at most one connection to QEMU's chardev socket at a time,
// because QEMU serves one connection per port and queues the others. It
// connects on the first DialAgent and again after a session ends. It is
// safe for concurrent use.
type SerialMux struct {
	path string
	opts SerialMuxOptions
	log  *slog.Logger

	checking atomic.Bool // a liveness ping of the session is running

	mu         sync.Mutex
	sess       *yamux.Session
	handshake  net.Conn      // connection whose handshake is running
	connecting chan struct{} // closed when the running connection attempt ends
	closed     bool
}

// NewSerialMux returns a SerialMux for the QEMU chardev socket at path,
// with default options. It does not connect yet.
func NewSerialMux(path string) *SerialMux {
	return NewSerialMuxWithOptions(path, SerialMuxOptions{})
}

// NewSerialMuxWithOptions returns a SerialMux for the QEMU chardev socket
// at path. It does not connect yet.
func NewSerialMuxWithOptions(path string, opts SerialMuxOptions) *SerialMux {
	opts = opts.withDefaults()
	return &SerialMux{path: path, opts: opts, log: opts.Logger.With("socket", path)}
}

// DialAgent opens a stream to the agent's port. It connects and runs the
// session handshake first when no session is up, which waits, within
// ctx, for QEMU's socket to appear and for the guest to open its port.
// The returned stream has passed the CONNECT/OK exchange.
func (m *SerialMux) DialAgent(ctx context.Context, port uint32) (net.Conn, error) {
	for {
		sess, err := m.session(ctx)
		if err != nil {
			return nil, fmt.Errorf("dial agent port %d over serial socket %q: %w", port, m.path, err)
		}

		conn, err := openAgentStream(ctx, sess, port)
		if err == nil {
			return conn, nil
		}
		if sess.IsClosed() && ctx.Err() == nil {
			// The session ended under us; the next round reconnects.
			continue
		}
		if ctx.Err() != nil {
			m.checkSession(sess)
		}
		return nil, fmt.Errorf("dial agent port %d over serial socket %q: %w", port, m.path, err)
	}
}

// Close ends the session and every stream on it, and makes later
// DialAgent calls fail with ErrMuxClosed. It is idempotent.
func (m *SerialMux) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	sess, conn := m.sess, m.handshake
	m.sess = nil
	m.mu.Unlock()

	if conn != nil {
		conn.Close()
	}
	if sess != nil {
		sess.Close()
	}
	return nil
}

// session returns the live session, connecting when there is none. Only
// one caller connects at a time; the others wait for it within their own
// ctx and then use its session or try themselves.
func (m *SerialMux) session(ctx context.Context) (*yamux.Session, error) {
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil, ErrMuxClosed
		}
		if m.sess != nil && !m.sess.IsClosed() {
			sess := m.sess
			m.mu.Unlock()
			return sess, nil
		}
		if m.sess != nil {
			m.log.Info("agent session ended; reconnecting")
			m.sess = nil
		}
		if wait := m.connecting; wait != nil {
			m.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		}
		done := make(chan struct{})
		m.connecting = done
		m.mu.Unlock()

		sess, err := m.connect(ctx)

		m.mu.Lock()
		m.connecting = nil
		close(done)
		if err == nil && m.closed {
			sess.Close()
			sess, err = nil, ErrMuxClosed
		}
		if err == nil {
			m.sess = sess
		}
		m.mu.Unlock()
		return sess, err
	}
}

// connect makes connection attempts until one completes the handshake,
// ctx ends or an attempt fails in a way that retrying cannot fix.
func (m *SerialMux) connect(ctx context.Context) (*yamux.Session, error) {
	pause := m.opts.RetryInterval
	for attempt := 1; ; attempt++ {
		sess, discarded, err := m.connectOnce(ctx)
		if err == nil {
			m.log.Info("agent session established", "attempts", attempt, "discarded_bytes", discarded)
			return sess, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connect: gave up after %d attempts: %w; last attempt: %w",
				attempt, context.Cause(ctx), err)
		}
		if errors.Is(err, ErrMuxClosed) || !retryableSerialError(err) {
			return nil, err
		}
		m.log.Debug("serial connection attempt failed; retrying", "attempt", attempt, "err", err)

		if errors.Is(err, errNoAck) {
			// Stay away long enough for the agent to read EOF, so it
			// drops whatever it was in the middle of.
			pause = m.opts.MaxRetryInterval
		}
		timer := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, fmt.Errorf("connect: gave up after %d attempts: %w; last attempt: %w",
				attempt, context.Cause(ctx), err)
		case <-timer.C:
		}
		pause = min(pause*3/2, m.opts.MaxRetryInterval)
	}
}

// errNoAck is the attempt error when the agent did not acknowledge the
// hello line in time.
var errNoAck = errors.New("no handshake ack from the agent (the guest may still be booting, or hearth-agent does not serve the port)")

// connectOnce connects to QEMU's socket, sends a hello line with a fresh
// nonce, discards everything up to the matching ack line and starts a
// yamux client session. It returns the number of bytes discarded.
func (m *SerialMux) connectOnce(ctx context.Context) (_ *yamux.Session, discarded int, err error) {
	deadline := time.Now().Add(m.opts.HandshakeAttemptTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	attemptCtx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()

	var dialer net.Dialer
	conn, err := dialer.DialContext(attemptCtx, "unix", m.path)
	if err != nil {
		return nil, 0, err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		conn.Close()
		return nil, 0, ErrMuxClosed
	}
	m.handshake = conn
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.handshake = nil
		closed := m.closed
		m.mu.Unlock()
		if err == nil && closed {
			err = ErrMuxClosed
		}
		if err != nil {
			conn.Close()
		}
	}()

	stop := context.AfterFunc(attemptCtx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, 0, err
	}
	nonce := newNonce()
	if _, err := conn.Write(helloLine(nonce)); err != nil {
		return nil, 0, fmt.Errorf("send hello: %w", err)
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	discarded, err = awaitAck(br, ackLine(nonce))
	if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
		return nil, discarded, fmt.Errorf("%w within %v", errNoAck, m.opts.HandshakeAttemptTimeout)
	}
	if err != nil {
		return nil, discarded, fmt.Errorf("wait for handshake ack: %w", err)
	}
	if !stop() {
		return nil, discarded, context.Cause(attemptCtx)
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, discarded, err
	}

	sess, err := yamux.Client(&readerConn{Conn: conn, r: br}, yamuxConfig(m.opts.KeepAliveInterval, m.log))
	if err != nil {
		return nil, discarded, fmt.Errorf("start yamux client: %w", err)
	}
	return sess, discarded, nil
}

// awaitAck reads from r until the last bytes read equal ack and returns
// how many bytes before the ack it discarded.
func awaitAck(r io.ByteReader, ack []byte) (discarded int, err error) {
	window := make([]byte, 0, len(ack))
	for {
		b, err := r.ReadByte()
		if err != nil {
			return discarded, err
		}
		if len(window) == len(ack) {
			window = append(window[:0], window[1:]...)
			discarded++
		}
		window = append(window, b)
		if bytes.Equal(window, ack) {
			return discarded, nil
		}
	}
}

// retryableSerialError reports whether a failed connection attempt may
// succeed later: QEMU's socket is not there yet or not accepting, the
// connection dropped, or the agent has not replied yet.
func retryableSerialError(err error) bool {
	return errors.Is(err, errNoAck) ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ENOENT) ||
		errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, context.DeadlineExceeded)
}

// checkSession pings sess in the background and closes it when the agent
// sends no reply, so that the next DialAgent reconnects. DialAgent calls
// it when a stream did not open in time, which happens when the agent
// restarted and now waits for a hello that this session will never send.
func (m *SerialMux) checkSession(sess *yamux.Session) {
	if !m.checking.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer m.checking.Store(false)
		if _, err := sess.Ping(); err != nil && !sess.IsClosed() {
			m.log.Warn("agent session does not reply to pings; closing it", "err", err)
			sess.Close()
		}
	}()
}

// openAgentStream opens a yamux stream and runs the CONNECT/OK exchange
// for port on it, within ctx.
func openAgentStream(ctx context.Context, sess *yamux.Session, port uint32) (_ net.Conn, err error) {
	stream, err := sess.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	defer func() {
		if err != nil {
			stream.Close()
		}
	}()

	stop := context.AfterFunc(ctx, func() { stream.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if d, ok := ctx.Deadline(); ok {
		stream.SetDeadline(d)
	}
	if _, err := stream.Write(agentproto.ConnectLine(port)); err != nil {
		return nil, fmt.Errorf("send CONNECT %d: %w", port, err)
	}
	// ReadLine reads one byte at a time, so no byte after the OK line is
	// taken from the stream.
	line, err := agentproto.ReadLine(stream)
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("agent closed the stream without replying to CONNECT %d (does it serve that port?)", port)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("wait for OK to CONNECT %d: %w", port, context.Cause(ctx))
		}
		return nil, fmt.Errorf("wait for OK to CONNECT %d: %w", port, err)
	}
	if _, err := agentproto.ParseOK(strings.TrimSpace(line)); err != nil {
		return nil, err
	}
	if !stop() {
		return nil, context.Cause(ctx)
	}
	if err := stream.SetDeadline(time.Time{}); err != nil {
		return nil, err
	}
	return stream, nil
}

// readerConn is a net.Conn that reads through r, a buffered reader over
// Conn that may already hold bytes received after the handshake.
type readerConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }
