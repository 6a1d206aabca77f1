package agent

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/hearthvm/hearth/agentproto"
	"golang.org/x/sys/unix"
)

// eofChar is VEOF (Ctrl-D). In terminal mode EOF is delivered by writing
// it, because closing the master would hang up the whole terminal.
const eofChar = 0x04

// session is one exec connection whose command is running.
//
// The command's own process decides the session's end. Once the reaper
// has its status, the output pumps drain, EXIT is sent and the connection
// is closed. Neither open stdin nor running background descendants delay
// this.
type session struct {
	srv  *Server
	conn net.Conn
	// in reads the host's frames after START.
	in    *agentproto.FrameReader
	out   *frameWriter
	req   agentproto.StartRequest
	child *child

	// stdin is the write end of the stdin pipe, or the terminal master.
	stdin *os.File
	// master is the terminal master in terminal mode, nil otherwise.
	master *os.File
	pumps  []*outputPump
	// closers are the parent's descriptors, closed when the session ends.
	closers []io.Closer

	timedOut      atomic.Bool
	protocolError atomic.Bool
	finished      atomic.Bool

	// done is closed once EXIT has been written, or could not be.
	done chan struct{}
}

func (s *Server) serveExec(conn net.Conn) {
	out := &frameWriter{conn: conn}
	in := agentproto.NewFrameReader(conn)

	f, err := in.Next()
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		return
	case err != nil:
		s.rejectExec(out, &startError{ExitProtocolError, agentproto.ReasonProtocolError, fmt.Sprintf("read first frame: %v", err)})
		return
	}

	switch f.Type {
	case agentproto.TypeStart:
		s.runStart(conn, in, out, f.Payload)
	case agentproto.TypeClockSync:
		s.syncClock(out, f.Payload)
	default:
		s.rejectExec(out, &startError{ExitProtocolError, agentproto.ReasonProtocolError, fmt.Sprintf("first frame is %s; want START or CLOCK_SYNC", f.Type)})
	}
}

// rejectExec ends an exec session that runs no command.
func (s *Server) rejectExec(out *frameWriter, serr *startError) {
	s.log.Warn("exec request rejected", "exit_code", serr.code, "reason", serr.msg)
	if err := out.fail(serr.code, serr.reason, serr.msg); err != nil {
		s.log.Debug("write exec rejection", "err", err)
	}
}

func (s *Server) syncClock(out *frameWriter, payload []byte) {
	t, err := agentproto.DecodeClockSync(payload)
	if err != nil {
		s.rejectExec(out, &startError{ExitProtocolError, agentproto.ReasonProtocolError, err.Error()})
		return
	}

	if !s.allowClockSet {
		s.log.Info("clock sync skipped: the agent is not a guest init", "time", t)
	} else if err := s.setClock(t); err != nil {
		s.rejectExec(out, &startError{1, agentproto.ReasonExited, fmt.Sprintf("set clock to %s: %v", t.UTC().Format(time.RFC3339Nano), err)})
		return
	} else {
		s.log.Info("clock set", "time", t)
	}
	_ = out.write(agentproto.TypeExit, agentproto.EncodeExit(0))
}

func (s *Server) runStart(conn net.Conn, in *agentproto.FrameReader, out *frameWriter, payload []byte) {
	req, err := agentproto.DecodeStart(payload)
	if err != nil {
		out.exitDetail = wantsExitDetail(payload)
		s.rejectExec(out, &startError{ExitProtocolError, agentproto.ReasonProtocolError, err.Error()})
		return
	}
	out.exitDetail = req.ExitDetail
	if s.rewriteStart != nil {
		s.rewriteStart(&req)
	}

	sess, serr := s.startSession(conn, in, out, req)
	if serr != nil {
		s.rejectExec(out, serr)
		return
	}
	sess.run()
}

// startSession starts req's command with pipes or a terminal as its stdio
// and registers the session with the server.
func (s *Server) startSession(conn net.Conn, in *agentproto.FrameReader, out *frameWriter, req agentproto.StartRequest) (_ *session, serr *startError) {
	cmd, serr := prepareCommand(req)
	if serr != nil {
		return nil, serr
	}

	sess := &session{srv: s, conn: conn, in: in, out: out, req: req, done: make(chan struct{})}
	stdio, err := sess.openStdio()
	if err != nil {
		return nil, &startError{ExitCannotExecute, agentproto.ReasonCannotStart, err.Error()}
	}
	// The child's ends are closed here on every path: the child has its
	// own copies once it runs.
	defer func() {
		for _, f := range stdio {
			f.Close()
		}
		if serr != nil {
			sess.closeParentEnds()
		}
	}()

	if req.TTY && cmd.cred != nil {
		// Give the user their terminal, as login(1) does, so that
		// programs that check the terminal's owner work.
		_ = stdio[0].Chown(int(cmd.cred.Uid), -1)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shuttingDown {
		return nil, &startError{ExitCannotExecute, agentproto.ReasonRejected, "the agent is shutting down; no new commands are started"}
	}
	if len(s.sessions) >= s.maxSessions {
		return nil, &startError{ExitSessionLimit, agentproto.ReasonRejected, fmt.Sprintf(
			"too many commands running: the agent runs at most %d at a time; retry when one has ended", s.maxSessions)}
	}
	sess.child, serr = forkExec(processReaper(), cmd, stdio, req.TTY)
	if serr != nil {
		return nil, serr
	}
	s.sessions[sess] = struct{}{}
	// Arguments are not logged because they may carry credentials.
	s.log.Info("command started", "pid", sess.child.pid, "program", req.Cmd[0], "tty", req.TTY)
	return sess, nil
}

// openStdio creates the pipes or terminal of the session. It returns the
// child's ends and keeps the parent's ends in the session.
func (sess *session) openStdio() (stdio [3]*os.File, err error) {
	if sess.req.TTY {
		master, slave, err := openPTY(sess.req.TTYWidth, sess.req.TTYHeight)
		if err != nil {
			return stdio, err
		}
		sess.master, sess.stdin = master, master
		sess.closers = append(sess.closers, master)
		sess.pumps = append(sess.pumps, newOutputPump(master, agentproto.TypeStdout, sess.out))
		// The slave is the child's stdin, stdout and stderr.
		return [3]*os.File{slave, slave, slave}, nil
	}

	var files []*os.File
	defer func() {
		if err != nil {
			for _, f := range files {
				f.Close()
			}
		}
	}()
	pipes := make([][2]*os.File, 3)
	for i := range pipes {
		r, w, perr := os.Pipe()
		if perr != nil {
			return stdio, fmt.Errorf("create stdio pipe: %w", perr)
		}
		files = append(files, r, w)
		pipes[i] = [2]*os.File{r, w}
	}

	sess.stdin = pipes[0][1]
	sess.closers = append(sess.closers, pipes[0][1], pipes[1][0], pipes[2][0])
	sess.pumps = append(sess.pumps,
		newOutputPump(pipes[1][0], agentproto.TypeStdout, sess.out),
		newOutputPump(pipes[2][0], agentproto.TypeStderr, sess.out))
	return [3]*os.File{pipes[0][0], pipes[1][1], pipes[2][1]}, nil
}

func (sess *session) closeParentEnds() {
	for _, c := range sess.closers {
		c.Close()
	}
}

// run serves the session until the command's process has exited and
// EXIT has been written.
func (sess *session) run() {
	for _, p := range sess.pumps {
		go p.run()
	}
	framesDone := make(chan struct{})
	go func() {
		defer close(framesDone)
		sess.readFrames()
	}()
	stopTimer := sess.startTimeout()

	<-sess.child.done
	stopTimer()
	for _, p := range sess.pumps {
		p.stop()
	}
	for _, p := range sess.pumps {
		<-p.done
	}

	detail := sess.exitDetail()
	code := detail.ExitCode
	if err := sess.out.exit(detail); err != nil {
		sess.srv.log.Debug("write EXIT", "pid", sess.child.pid, "err", err)
	}
	sess.srv.log.Info("command exited", "pid", sess.child.pid, "exit_code", code)

	sess.finished.Store(true)
	sess.srv.mu.Lock()
	delete(sess.srv.sessions, sess)
	sess.srv.mu.Unlock()
	close(sess.done)

	sess.closeParentEnds()
	sess.conn.Close()
	<-framesDone
}

// startTimeout arms the timeout of the START request and returns a
// function that disarms it. When the timer has already fired, the function
// waits until the kill is recorded, so that exitCode reports 124.
func (sess *session) startTimeout() (stop func()) {
	if sess.req.TimeoutSeconds == 0 {
		return func() {}
	}

	fired := make(chan struct{})
	d := time.Duration(sess.req.TimeoutSeconds) * time.Second
	timer := time.AfterFunc(d, func() {
		defer close(fired)
		if processReaper().signalGroup(sess.child, unix.SIGKILL) {
			sess.timedOut.Store(true)
			sess.srv.log.Info("command timed out; killed its process group", "pid", sess.child.pid, "timeout", d)
		}
	})
	return func() {
		if !timer.Stop() {
			<-fired
		}
	}
}

// exitDetail describes how the command ended. Its exit code is the one
// EXIT reports.
func (sess *session) exitDetail() agentproto.ExitDetail {
	ws := sess.child.status
	var signal string
	if sess.child.err == nil && ws.Signaled() {
		signal = unix.SignalName(ws.Signal())
	}
	switch {
	case sess.timedOut.Load():
		return agentproto.ExitDetail{ExitCode: ExitTimeout, Signal: signal, TimedOut: true, Reason: agentproto.ReasonTimedOut}
	case sess.protocolError.Load():
		return agentproto.ExitDetail{ExitCode: ExitProtocolError, Signal: signal, Reason: agentproto.ReasonProtocolError}
	case sess.child.err != nil:
		sess.srv.log.Error("exit status lost", "pid", sess.child.pid, "err", sess.child.err)
		return agentproto.ExitDetail{ExitCode: -1, Reason: agentproto.ReasonExited}
	case ws.Signaled():
		return agentproto.ExitDetail{ExitCode: exitCode(ws), Signal: signal, Reason: agentproto.ReasonSignaled}
	default:
		return agentproto.ExitDetail{ExitCode: exitCode(ws), Reason: agentproto.ReasonExited}
	}
}

// readFrames applies the host's STDIN, RESIZE and EOF frames until the
// connection closes or a malformed frame ends the session.
func (sess *session) readFrames() {
	stdinOpen := true
	for {
		f, err := sess.in.Next()
		if errors.Is(err, agentproto.ErrPayloadTooLarge) {
			sess.abort(err.Error())
			return
		}
		if err != nil {
			sess.hostGone(err)
			return
		}

		switch f.Type {
		case agentproto.TypeStdin:
			if stdinOpen {
				stdinOpen = sess.writeStdin(f.Payload)
			}
		case agentproto.TypeResize:
			if err := sess.resize(f.Payload); err != nil {
				sess.abort(err.Error())
				return
			}
		case agentproto.TypeEOF:
			if stdinOpen {
				sess.closeStdin()
				stdinOpen = sess.master != nil
			}
		case agentproto.TypeSignal:
			sig, err := agentproto.DecodeSignal(f.Payload)
			if err != nil {
				sess.abort(err.Error())
				return
			}
			sess.signal(unix.Signal(sig))
		default:
			sess.abort(fmt.Sprintf("unexpected %s frame while a command runs; want STDIN, RESIZE, EOF or SIGNAL", f.Type))
			return
		}
	}
}

// writeStdin writes data to the command's stdin and reports whether stdin
// still accepts input. A command that closed its stdin loses the rest.
func (sess *session) writeStdin(data []byte) bool {
	if _, err := sess.stdin.Write(data); err != nil {
		sess.srv.log.Debug("stdin closed by the command; discarding input", "pid", sess.child.pid, "err", err)
		return false
	}
	return true
}

func (sess *session) closeStdin() {
	if sess.master != nil {
		_, _ = sess.master.Write([]byte{eofChar})
		return
	}
	sess.stdin.Close()
}

func (sess *session) resize(payload []byte) error {
	cols, rows, err := agentproto.DecodeResize(payload)
	if err != nil {
		return err
	}
	if sess.master == nil {
		// A command without a terminal has no size to change.
		return nil
	}
	if err := setWinsize(sess.master, cols, rows); err != nil && !errors.Is(err, os.ErrClosed) {
		sess.srv.log.Warn("resize terminal", "pid", sess.child.pid, "err", err)
	}
	return nil
}

// signal delivers sig for the host: in terminal mode to the terminal's
// foreground process group, as a keyboard signal would be, otherwise to
// the command's process group.
func (sess *session) signal(sig unix.Signal) {
	pgid := sess.child.pid
	if sess.master != nil {
		if fg, err := foregroundGroup(sess.master); err == nil && fg > 0 {
			pgid = fg
		}
	}
	if processReaper().signalProcessGroup(sess.child, pgid, sig) {
		sess.srv.log.Info("signal delivered", "pid", sess.child.pid, "process_group", pgid, "signal", unix.SignalName(sig))
	}
}

// abort ends the session after a malformed frame. It writes the reason on
// STDERR and kills the command, whose EXIT then reports 125.
func (sess *session) abort(msg string) {
	if sess.finished.Load() {
		return
	}
	sess.protocolError.Store(true)
	sess.srv.log.Warn("malformed exec frame; killing the command", "pid", sess.child.pid, "reason", msg)
	_ = sess.out.write(agentproto.TypeStderr, []byte("hearth-agent: "+msg+"\n"))
	processReaper().signalGroup(sess.child, unix.SIGKILL)
}

// hostGone kills the command when the connection fails before the
// command has exited, because its output and exit code can no longer be
// delivered, and a host that cancels a request expects the command to
// stop.
func (sess *session) hostGone(err error) {
	if sess.finished.Load() {
		return
	}
	if processReaper().signalGroup(sess.child, unix.SIGKILL) {
		sess.srv.log.Info("exec connection lost; killed the command's process group", "pid", sess.child.pid, "err", err)
	}
}

// stopWorkloads ends every running command for SHUTDOWN: SIGTERM to each
// process group, SIGKILL to those still running after grace. As PID 1 it
// also signals every other process of the guest (or PID namespace), and
// waits until none is left.
func (s *Server) stopWorkloads(grace time.Duration) {
	s.mu.Lock()
	s.shuttingDown = true
	sessions := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()

	r := processReaper()
	ended := func() bool {
		for _, sess := range sessions {
			select {
			case <-sess.done:
			default:
				return false
			}
		}
		return !r.reapAll || !r.childrenRemain()
	}

	s.signalWorkloads(r, sessions, unix.SIGTERM)
	if waitUntil(time.Now().Add(grace), ended) {
		return
	}
	s.log.Warn("workloads still running after the grace period; sending SIGKILL", "grace", grace)
	s.signalWorkloads(r, sessions, unix.SIGKILL)
	if !waitUntil(time.Now().Add(killWait), ended) {
		s.log.Error("workloads still running after SIGKILL", "wait", killWait)
	}
}

// killWait bounds the wait for sessions to report EXIT after SIGKILL.
const killWait = 2 * time.Second

func (s *Server) signalWorkloads(r *reaper, sessions []*session, sig unix.Signal) {
	for _, sess := range sessions {
		r.signalGroup(sess.child, sig)
	}
	if r.reapAll {
		// As PID 1, kill(-1) reaches every process of this guest or PID
		// namespace except the agent itself, including background
		// processes of sessions that have ended.
		if err := unix.Kill(-1, sig); err != nil && !errors.Is(err, unix.ESRCH) {
			s.log.Warn("signal all processes", "signal", sig, "err", err)
		}
	}
}

// waitUntil polls cond until it holds or deadline passes, and reports
// whether it held.
func waitUntil(deadline time.Time, cond func() bool) bool {
	const interval = 20 * time.Millisecond
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}
