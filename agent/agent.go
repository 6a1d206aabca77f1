// Package agent serves the guest side of the hearth agent protocol: the
// exec channel (port 52), the file channel (port 53) and the control
// channel (port 54), one session per connection. It runs commands, reaps
// processes when it is PID 1, and carries out SHUTDOWN through a hook.
//
// The package does not accept connections (package agentlink does) and
// does not perform init duties such as mounts or reboots (package
// guestinit does). Its exec and control channels work on Linux only.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"time"

	"github.com/hearthvm/hearth/agentproto"
)

// Exit codes the agent reports for sessions that did not end on their own,
// following the conventions of timeout(1), docker run and POSIX shells.
const (
	// ExitTimeout is reported when timeout_seconds expired and the agent
	// killed the command's process group.
	ExitTimeout = 124
	// ExitProtocolError is reported when the host sent a malformed frame.
	ExitProtocolError = 125
	// ExitCannotExecute is reported when the command was found but could
	// not be started (permission denied, not executable, bad user or
	// working directory).
	ExitCannotExecute = 126
	// ExitNotFound is reported when the command does not exist.
	ExitNotFound = 127
)

// DefaultShutdownGrace is how long workloads get between SIGTERM and
// SIGKILL when a SHUTDOWN request leaves grace_ms at zero.
const DefaultShutdownGrace = 2 * time.Second

// fileRequestTimeout bounds how long the placeholder file channel waits
// for the end of a request before it sends ERR.
const fileRequestTimeout = 10 * time.Second

// Options configures a Server. The zero value serves without touching the
// machine: no clock changes and no shutdown action.
type Options struct {
	// AllowClockSet lets CLOCK_SYNC set CLOCK_REALTIME. Set it only when
	// the agent is the init of a guest. Without it the agent replies to
	// CLOCK_SYNC with EXIT 0 and leaves the clock alone.
	AllowClockSet bool

	// Shutdown is called once, after a SHUTDOWN request has ended the
	// workloads and the ACK has been written. The guest init installs one
	// that syncs, unmounts and reboots; serve-only mode installs one that
	// ends the serve loop. Nil means no action.
	Shutdown func()

	// Logger receives the agent's log records. Nil means slog.Default().
	Logger *slog.Logger
}

// Server runs the sessions of one agent. It is safe for concurrent use:
// each accepted connection is handled by its own HandleConn call.
type Server struct {
	allowClockSet bool
	shutdownHook  func()
	log           *slog.Logger

	// setClock sets the wall clock; tests replace it so that no test can
	// change the clock of the machine it runs on.
	setClock func(time.Time) error

	shutdownOnce sync.Once

	mu sync.Mutex
	// sessions contains the exec sessions whose command is running.
	sessions map[*session]struct{}
	// shuttingDown is set once SHUTDOWN has started; new commands are
	// rejected from then on.
	shuttingDown bool
}

// NewServer returns a Server configured by opts.
func NewServer(opts Options) *Server {
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	startReaper()
	return &Server{
		allowClockSet: opts.AllowClockSet,
		shutdownHook:  opts.Shutdown,
		log:           logger,
		setClock:      setSystemClock,
		sessions:      make(map[*session]struct{}),
	}
}

// HandleConn serves one connection accepted on an agent port and closes
// it. Its signature matches agentlink.Handler. Cancelling ctx closes the
// connection, which ends the session and kills a command that is still
// running. A panic inside a session is logged and contained, so one bad
// session never takes the agent (PID 1 of a guest) down.
func (s *Server) HandleConn(ctx context.Context, port uint32, conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	defer func() {
		if r := recover(); r != nil {
			s.log.Error("agent session panicked", "port", port, "panic", r, "stack", string(debug.Stack()))
		}
	}()

	switch port {
	case agentproto.PortExec:
		s.serveExec(conn)
	case agentproto.PortFile:
		s.serveFile(conn)
	case agentproto.PortControl:
		s.serveControl(conn)
	default:
		s.log.Warn("connection on unknown agent port closed", "port", port)
	}
}

// frameWriter serialises frames written by concurrent goroutines of one
// session, so that frames never interleave on the connection.
type frameWriter struct {
	mu   sync.Mutex
	conn io.Writer
}

func (w *frameWriter) write(t agentproto.FrameType, payload []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return agentproto.WriteFrame(w.conn, t, payload)
}

// writeChunked writes data as frames of type t, splitting it so that no
// payload exceeds agentproto.MaxPayload.
func (w *frameWriter) writeChunked(t agentproto.FrameType, data []byte) error {
	for len(data) > 0 {
		n := min(len(data), agentproto.MaxPayload)
		if err := w.write(t, data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// fail ends an exec session that never ran a command: it writes the
// message on STDERR, then EXIT with code.
func (w *frameWriter) fail(code int32, msg string) error {
	if err := w.write(agentproto.TypeStderr, []byte("hearth-agent: "+msg+"\n")); err != nil {
		return err
	}
	return w.write(agentproto.TypeExit, agentproto.EncodeExit(code))
}

// serveFile rejects every file-channel request with ERR, because the file
// channel is not implemented yet. It first reads the request up to its
// end (READ_REQ, or WRITE_REQ through DONE), so the host reads the ERR
// frame at the point where the protocol places the reply.
func (s *Server) serveFile(conn net.Conn) {
	// TODO: implement WRITE_REQ and READ_REQ; until then every file
	// transfer fails with this message.
	const msg = "file channel not implemented yet"

	// A transport without deadlines leaves only the host to end the
	// request, which every well-behaved host does.
	_ = conn.SetReadDeadline(time.Now().Add(fileRequestTimeout))
	for {
		f, err := agentproto.ReadFrame(conn)
		if err != nil || (f.Type != agentproto.TypeWriteReq && f.Type != agentproto.TypeData) {
			break
		}
	}
	_ = conn.SetReadDeadline(time.Time{})

	if err := agentproto.WriteFrame(conn, agentproto.TypeErr, []byte(msg)); err != nil {
		s.log.Debug("write ERR on file channel", "err", err)
	}
}

// serveControl replies to PING with ACK and carries out SHUTDOWN. Several
// requests may share one connection; SHUTDOWN is always the last.
func (s *Server) serveControl(conn net.Conn) {
	for {
		f, err := agentproto.ReadFrame(conn)
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			s.replyControlError(conn, fmt.Sprintf("read control frame: %v", err))
			return
		}

		switch f.Type {
		case agentproto.TypePing:
			if err := agentproto.WriteFrame(conn, agentproto.TypeAck, nil); err != nil {
				return
			}
		case agentproto.TypeShutdown:
			s.handleShutdown(conn, f.Payload)
			return
		default:
			s.replyControlError(conn, fmt.Sprintf("unknown control frame type %s; want PING or SHUTDOWN", f.Type))
			return
		}
	}
}

func (s *Server) replyControlError(conn net.Conn, msg string) {
	s.log.Warn("control request rejected", "reason", msg)
	_ = agentproto.WriteFrame(conn, agentproto.TypeErr, []byte(msg))
}

// decodeShutdown parses a SHUTDOWN payload and returns the grace period
// between SIGTERM and SIGKILL. An empty payload selects the defaults.
func decodeShutdown(payload []byte) (time.Duration, error) {
	var req agentproto.ShutdownRequest
	if len(payload) > 0 {
		if err := json.Unmarshal(payload, &req); err != nil {
			return 0, fmt.Errorf("invalid SHUTDOWN payload: %w", err)
		}
	}
	if req.GraceMillis == 0 {
		return DefaultShutdownGrace, nil
	}
	return time.Duration(req.GraceMillis) * time.Millisecond, nil
}

func (s *Server) handleShutdown(conn net.Conn, payload []byte) {
	grace, err := decodeShutdown(payload)
	if err != nil {
		s.replyControlError(conn, err.Error())
		return
	}

	s.log.Info("shutdown requested", "grace", grace)
	s.stopWorkloads(grace)

	if err := agentproto.WriteFrame(conn, agentproto.TypeAck, nil); err != nil {
		s.log.Warn("write shutdown ACK", "err", err)
	}
	// Closing before the hook runs lets the transport flush the ACK
	// before a guest hook reboots the machine.
	conn.Close()

	s.shutdownOnce.Do(func() {
		if s.shutdownHook != nil {
			s.shutdownHook()
		}
	})
}
