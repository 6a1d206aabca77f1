//go:build !linux

package agent

import (
	"errors"
	"net"
	"time"

	"github.com/hearthvm/hearth/agentproto"
)

// session is empty outside Linux, where no command ever runs.
type session struct{}

// serveExec rejects every exec session: running commands needs Linux.
func (s *Server) serveExec(conn net.Conn) {
	out := &frameWriter{conn: conn}
	_ = out.fail(ExitCannotExecute, agentproto.ReasonCannotStart, "the exec channel is supported on Linux only")
}

// serveFile rejects every file request: the file channel needs Linux.
func (s *Server) serveFile(conn net.Conn) {
	_ = agentproto.WriteFrame(conn, agentproto.TypeErr, []byte("the file channel is supported on Linux only"))
}

func startReaper() {}

func (s *Server) stopWorkloads(grace time.Duration) {}

func setSystemClock(t time.Time) error {
	return errors.New("setting the clock is supported on Linux only")
}

// ConfigureInterface fails outside Linux, where there is no guest network
// to configure.
func ConfigureInterface(cfg agentproto.NetConfig) error {
	return errors.New("network configuration is supported on Linux only")
}
