//go:build !linux

package agent

import (
	"errors"
	"net"
	"time"
)

// session is empty outside Linux, where no command ever runs.
type session struct{}

// serveExec rejects every exec session: running commands needs Linux.
func (s *Server) serveExec(conn net.Conn) {
	out := &frameWriter{conn: conn}
	_ = out.fail(ExitCannotExecute, "the exec channel is supported on Linux only")
}

func startReaper() {}

func (s *Server) stopWorkloads(grace time.Duration) {}

func setSystemClock(t time.Time) error {
	return errors.New("setting the clock is supported on Linux only")
}
