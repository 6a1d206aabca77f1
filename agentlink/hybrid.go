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

	"github.com/hearthvm/hearth/agentproto"
)

// Defaults for HybridOptions.
const (
	DefaultAttemptTimeout   = 2 * time.Second
	DefaultRetryInterval    = 20 * time.Millisecond
	DefaultMaxRetryInterval = 200 * time.Millisecond
)

// firstHostPort is the first port number put in OK lines. Firecracker
// numbers the host side of hybrid vsock connections from 2^30 upward.
const firstHostPort uint32 = 1 << 30

// connectLineTimeout bounds how long an accepted connection may take to
// send its CONNECT line before the serving side drops it.
const connectLineTimeout = 10 * time.Second

// errNoAnswer is the attempt error when the peer closed the connection
// before sending an OK line, which is what Firecracker does while nothing
// listens on the guest port yet.
var errNoAnswer = errors.New("connection closed without an OK reply (is the agent listening yet?)")

// HybridOptions bounds DialHybrid's retries. Zero fields take their
// defaults.
type HybridOptions struct {
	// AttemptTimeout bounds one connect plus CONNECT/OK exchange.
	// Default 2 s.
	AttemptTimeout time.Duration
	// RetryInterval is the first pause between attempts. Each pause is
	// 1.5 times the previous one, up to MaxRetryInterval. Default 20 ms.
	RetryInterval time.Duration
	// MaxRetryInterval caps the pause between attempts. Default 200 ms.
	MaxRetryInterval time.Duration
}

func (o HybridOptions) withDefaults() HybridOptions {
	if o.AttemptTimeout <= 0 {
		o.AttemptTimeout = DefaultAttemptTimeout
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
	return o
}

// DialHybrid connects to agent port through a hybrid vsock Unix socket,
// retrying until the agent replies or ctx ends. An attempt is retried
// when the socket does not exist yet, refuses the connection, closes it
// without an OK line, or sends no reply within opts.AttemptTimeout.
// Any other failure, such as an invalid OK line, ends the dial at once.
//
// The returned connection carries the guest port's bytes. Bytes that
// arrived in the same read as the OK line are returned by its first
// reads.
func DialHybrid(ctx context.Context, udsPath string, port uint32, opts HybridOptions) (net.Conn, error) {
	opts = opts.withDefaults()
	pause := opts.RetryInterval
	attempts := 0
	for {
		attempts++
		conn, err := dialHybridOnce(ctx, udsPath, port, opts.AttemptTimeout)
		if err == nil {
			return conn, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("dial agent port %d through hybrid vsock %q: gave up after %d attempts: %w; last attempt: %w",
				port, udsPath, attempts, context.Cause(ctx), err)
		}
		if !retryableHybridError(err) {
			return nil, fmt.Errorf("dial agent port %d through hybrid vsock %q: %w", port, udsPath, err)
		}

		timer := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, fmt.Errorf("dial agent port %d through hybrid vsock %q: gave up after %d attempts: %w; last attempt: %w",
				port, udsPath, attempts, context.Cause(ctx), err)
		case <-timer.C:
		}
		pause = min(pause*3/2, opts.MaxRetryInterval)
	}
}

// dialHybridOnce makes one connect plus CONNECT/OK exchange, bounded by
// timeout and by ctx.
func dialHybridOnce(ctx context.Context, udsPath string, port uint32, timeout time.Duration) (_ net.Conn, err error) {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	attemptCtx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()

	var dialer net.Dialer
	conn, err := dialer.DialContext(attemptCtx, "unix", udsPath)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			conn.Close()
		}
	}()

	// A cancelled ctx must also end a read that is already waiting.
	stop := context.AfterFunc(attemptCtx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, err
	}

	// Firecracker drops a connection whose first read is shorter than
	// the CONNECT line, so the line goes out in one write.
	if _, err := conn.Write(agentproto.ConnectLine(port)); err != nil {
		return nil, fmt.Errorf("send CONNECT %d: %w", port, err)
	}
	br := bufio.NewReader(conn)
	line, err := br.ReadSlice('\n')
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
		return nil, errNoAnswer
	case errors.Is(err, bufio.ErrBufferFull):
		return nil, fmt.Errorf("invalid reply to CONNECT %d: no newline in the first %d bytes", port, len(line))
	case err != nil:
		return nil, fmt.Errorf("read reply to CONNECT %d: %w", port, err)
	}
	if _, err := agentproto.ParseOK(strings.TrimSuffix(string(line), "\n")); err != nil {
		return nil, err
	}

	if !stop() {
		// ctx ended while the reply arrived. The deadline set by the
		// AfterFunc would break the returned connection.
		return nil, context.Cause(attemptCtx)
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, err
	}
	if br.Buffered() == 0 {
		return conn, nil
	}
	rest, _ := br.Peek(br.Buffered())
	return &prefixConn{Conn: conn, prefix: bytes.Clone(rest)}, nil
}

// retryableHybridError reports whether a failed attempt may succeed later:
// the socket is not there yet, no process accepts on it, or the guest
// side does not listen yet.
func retryableHybridError(err error) bool {
	return errors.Is(err, errNoAnswer) ||
		errors.Is(err, syscall.ENOENT) ||
		errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, context.DeadlineExceeded)
}

// prefixConn is a net.Conn whose first reads return prefix, bytes that
// were read from Conn together with the OK line.
type prefixConn struct {
	net.Conn
	mu     sync.Mutex
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	return c.Conn.Read(p)
}

// CloseWrite shuts down the writing side, as (*net.UnixConn).CloseWrite.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("close write side of %T: not supported", c.Conn)
}

// ServeHybrid serves the hybrid vsock protocol on a Unix socket at path
// until ctx ends, as Firecracker's vsock device does for connections from
// the host. Each connection must open with a CONNECT line. The server replies
// with an OK line and handed to h in its own goroutine. Any other first
// line closes the connection.
//
// ServeHybrid removes the socket file and returns nil once ctx ends and
// every handler has returned, so handlers must return when ctx ends.
// path must not exist yet.
func ServeHybrid(ctx context.Context, path string, h Handler) error {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen on hybrid vsock socket %q: %w", path, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer ln.Close()

	var wg sync.WaitGroup
	defer wg.Wait()
	var nextHostPort atomic.Uint32
	nextHostPort.Store(firstHostPort)
	log := slog.Default().With("socket", path)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				log.Warn("accept on hybrid vsock socket failed; retrying", "err", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return fmt.Errorf("accept on hybrid vsock socket %q: %w", path, err)
		}
		wg.Go(func() {
			serveConnect(ctx, conn, nextHostPort.Add(1)-1, h, log)
		})
	}
}

// serveConnect reads the CONNECT line from conn, replies OK with hostPort
// and hands conn to h. It closes conn when the line is missing or invalid.
func serveConnect(ctx context.Context, conn net.Conn, hostPort uint32, h Handler, log *slog.Logger) {
	conn.SetReadDeadline(time.Now().Add(connectLineTimeout))
	line, err := agentproto.ReadLine(conn)
	if err != nil {
		log.Debug("connection closed before a CONNECT line", "err", err)
		conn.Close()
		return
	}
	port, err := agentproto.ParseConnect(line)
	if err != nil {
		log.Debug("closing connection with an invalid first line", "err", err)
		conn.Close()
		return
	}
	if err := conn.SetReadDeadline(time.Time{}); err != nil {
		conn.Close()
		return
	}
	if _, err := conn.Write(agentproto.OKLine(hostPort)); err != nil {
		log.Debug("send OK line", "port", port, "err", err)
		conn.Close()
		return
	}
	h(ctx, port, conn)
}
