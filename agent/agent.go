// Package agent serves the guest side of the hearth agent protocol: the
// exec channel (port 52), the file channel (port 53) and the control
// channel (port 54), one session per connection. It runs commands, reaps
// processes when it is PID 1, transfers files, and carries out SHUTDOWN
// and NETCONFIG through hooks.
//
// The package does not accept connections (package agentlink does) and
// does not perform init duties such as mounts or reboots (package
// guestinit does). Its exec and file channels work on Linux only.
package agent

import (
	"context"
	"encoding/binary"
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
	// ExitSessionLimit is reported when Options.MaxSessions commands
	// already run; like docker run's 125, it is an error of the agent
	// rather than of the command.
	ExitSessionLimit = 125
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

// DefaultMaxSessions is the number of exec sessions that may run commands
// at the same time when Options.MaxSessions is 0.
const DefaultMaxSessions = 256

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

	// ConfigureNetwork carries out NETCONFIG: it gives a restored
	// clone its new address. The guest init installs ConfigureInterface.
	// Nil, as in serve-only mode, rejects NETCONFIG with "not a guest".
	ConfigureNetwork func(agentproto.NetConfig) error

	// MaxSessions bounds the exec sessions whose commands run at the
	// same time; a START past the bound gets EXIT 125 with a message on
	// STDERR. 0 means DefaultMaxSessions.
	MaxSessions int

	// FileRoot confines the file channel to this directory: request
	// paths are taken relative to it, and neither ".." nor symbolic
	// links lead out of it. Empty, as in a guest, serves the whole
	// filesystem. Tests and fuzzing set it.
	FileRoot string

	// Logger receives the agent's log records. Nil means slog.Default().
	Logger *slog.Logger
}

// Server runs the sessions of one agent. It is safe for concurrent use:
// each accepted connection is handled by its own HandleConn call.
type Server struct {
	allowClockSet bool
	shutdownHook  func()
	netConfigHook func(agentproto.NetConfig) error
	maxSessions   int
	fileRoot      string
	log           *slog.Logger

	// setClock sets the wall clock; tests replace it so that no test can
	// change the clock of the machine it runs on.
	setClock func(time.Time) error

	// rewriteStart, when set, changes each decoded START request before
	// it runs. Fuzz tests use it to replace the command with a harmless
	// one, so that random input never runs a random program.
	rewriteStart func(*agentproto.StartRequest)

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
	maxSessions := opts.MaxSessions
	if maxSessions <= 0 {
		maxSessions = DefaultMaxSessions
	}
	startReaper()
	return &Server{
		allowClockSet: opts.AllowClockSet,
		shutdownHook:  opts.Shutdown,
		netConfigHook: opts.ConfigureNetwork,
		maxSessions:   maxSessions,
		fileRoot:      opts.FileRoot,
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

// maxRetainedFrame is the largest encoding buffer a frameWriter keeps
// between frames: an output chunk and its header.
const maxRetainedFrame = 64 << 10

// frameWriter serialises frames written by concurrent goroutines of one
// session, so that frames never interleave on the connection. It encodes
// each frame into one reused buffer and writes it with one Write.
type frameWriter struct {
	mu   sync.Mutex
	conn io.Writer
	// exitDetail is set when START asked for EXIT_DETAIL before EXIT.
	exitDetail bool
	buf        []byte // guarded by mu
}

func (w *frameWriter) write(t agentproto.FrameType, payload []byte) error {
	if len(payload) > agentproto.MaxPayload {
		return agentproto.ErrPayloadTooLarge
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.flush(agentproto.AppendFrame(w.buf[:0], t, payload))
}

// flush writes b, the encoded frames, and keeps b for the next frames
// unless it has grown past maxRetainedFrame. The caller holds w.mu.
func (w *frameWriter) flush(b []byte) error {
	_, err := w.conn.Write(b)
	if cap(b) <= maxRetainedFrame {
		w.buf = b[:0]
	}
	return err
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
// message on STDERR, then EXIT with code. reason is one of the
// agentproto.Reason constants, for EXIT_DETAIL.
func (w *frameWriter) fail(code int32, reason, msg string) error {
	if err := w.write(agentproto.TypeStderr, []byte("hearth-agent: "+msg+"\n")); err != nil {
		return err
	}
	return w.exit(agentproto.ExitDetail{ExitCode: code, Reason: reason})
}

// exit ends an exec session: EXIT_DETAIL when START asked for it, then
// EXIT with the same code.
func (w *frameWriter) exit(detail agentproto.ExitDetail) error {
	var payload []byte
	if w.exitDetail {
		var err error
		if payload, err = json.Marshal(detail); err != nil {
			return fmt.Errorf("encode EXIT_DETAIL: %w", err)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	// Both frames go out in one write.
	b := w.buf[:0]
	if w.exitDetail {
		b = agentproto.AppendFrame(b, agentproto.TypeExitDetail, payload)
	}
	var code [4]byte
	binary.LittleEndian.PutUint32(code[:], uint32(detail.ExitCode))
	return w.flush(agentproto.AppendFrame(b, agentproto.TypeExit, code[:]))
}

// wantsExitDetail reports whether a START payload that failed validation
// still sets exit_detail.
func wantsExitDetail(payload []byte) bool {
	var probe struct {
		ExitDetail bool `json:"exit_detail"`
	}
	return json.Unmarshal(payload, &probe) == nil && probe.ExitDetail
}

// serveControl replies to PING with ACK and carries out NETCONFIG and
// SHUTDOWN. Several requests may share one connection; SHUTDOWN is always
// the last.
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
		case agentproto.TypeNetConfig:
			if !s.handleNetConfig(conn, f.Payload) {
				return
			}
		case agentproto.TypeShutdown:
			s.handleShutdown(conn, f.Payload)
			return
		default:
			s.replyControlError(conn, fmt.Sprintf("unknown control frame type %s; want PING, NETCONFIG or SHUTDOWN", f.Type))
			return
		}
	}
}

// handleNetConfig applies a NETCONFIG request through the hook and
// reports whether the connection may serve another request.
func (s *Server) handleNetConfig(conn net.Conn, payload []byte) bool {
	if s.netConfigHook == nil {
		s.replyControlError(conn, "not a guest: NETCONFIG is carried out only by the agent running as a guest's init")
		return false
	}
	cfg, err := agentproto.DecodeNetConfig(payload)
	if err != nil {
		s.replyControlError(conn, err.Error())
		return false
	}
	if err := s.netConfigHook(cfg); err != nil {
		s.replyControlError(conn, fmt.Sprintf("configure %s with %s: %v", cfg.Interface, cfg.Address, err))
		return false
	}
	s.log.Info("network reconfigured", "interface", cfg.Interface, "address", cfg.Address, "gateway", cfg.Gateway)
	return agentproto.WriteFrame(conn, agentproto.TypeAck, nil) == nil
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
