package fcdouble

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hearthvm/hearth/agentproto"
)

// hostPortBase is where Firecracker starts numbering host-side ports.
const hostPortBase = 1 << 30

// connectTimeout is how long Firecracker waits for a connection request.
const connectTimeout = 2 * time.Second

// vsockDevice serves the host end of the hybrid vsock: a Unix listener at
// uds_path that reads CONNECT lines and splices each stream to the agent.
type vsockDevice struct {
	guestCID uint32
	apiPath  string
	hostPath string
	ln       *net.UnixListener
	srv      *server

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	nextPort uint32
}

func (s *server) bindVsock(cid uint32, udsPath string) (*vsockDevice, error) {
	hp := s.cfg.hostPath(udsPath)
	if _, err := os.Lstat(hp); err == nil {
		return nil, errors.New("Address in use (os error 98)")
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: hp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	// Firecracker never unlinks the socket file.
	ln.SetUnlinkOnClose(false)
	if err := s.chownForJail(hp); err != nil {
		ln.Close()
		return nil, err
	}
	d := &vsockDevice{guestCID: cid, apiPath: udsPath, hostPath: hp, ln: ln, srv: s,
		conns: map[net.Conn]struct{}{}}
	go d.acceptLoop()
	return d, nil
}

func (d *vsockDevice) acceptLoop() {
	for {
		c, err := d.ln.Accept()
		if err != nil {
			return
		}
		d.mu.Lock()
		d.conns[c] = struct{}{}
		d.mu.Unlock()
		go d.serve(c)
	}
}

func (d *vsockDevice) forget(c net.Conn) {
	d.mu.Lock()
	delete(d.conns, c)
	d.mu.Unlock()
	c.Close()
}

// dropConnections closes every established stream, as a vsock transport
// reset does.
func (d *vsockDevice) dropConnections() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for c := range d.conns {
		c.Close()
		delete(d.conns, c)
	}
}

func (d *vsockDevice) close() {
	d.ln.Close()
	d.dropConnections()
}

// readConnect reads a CONNECT line the way Firecracker does: the first
// read must return at least 10 bytes, then one byte at a time up to '\n'
// in a 32-byte buffer. Anything else is dropped without an answer.
func readConnect(c net.Conn) (uint32, error) {
	c.SetReadDeadline(time.Now().Add(connectTimeout))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 0, 32)
	first := make([]byte, 10)
	n, err := c.Read(first)
	if err != nil {
		return 0, err
	}
	if n < 10 {
		return 0, fmt.Errorf("first read returned %d bytes, want at least 10", n)
	}
	buf = append(buf, first...)
	for !strings.Contains(string(buf), "\n") {
		if len(buf) == cap(buf) {
			return 0, errors.New("CONNECT line longer than 32 bytes")
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return 0, err
		}
		buf = append(buf, b[0])
	}
	line, rest, _ := strings.Cut(string(buf), "\n")
	if rest != "" {
		return 0, errors.New("bytes after the CONNECT line in the first read")
	}
	return agentproto.ParseConnect(line)
}

func (d *vsockDevice) serve(c net.Conn) {
	defer d.forget(c)
	port, err := readConnect(c)
	if err != nil {
		return
	}
	g := d.srv.runningGuest()
	if g == nil {
		return // no guest, or paused: the request times out silently
	}
	agent, err := g.dial(port)
	if err != nil {
		return // nobody listens on the port: closed with no message
	}
	defer agent.Close()

	d.mu.Lock()
	if _, ok := d.conns[c]; !ok {
		d.mu.Unlock()
		return // dropped by a pause while connecting
	}
	d.nextPort++
	hostPort := hostPortBase + d.nextPort - 1
	d.conns[agent] = struct{}{}
	d.mu.Unlock()
	defer d.forget(agent)

	if _, err := c.Write(agentproto.OKLine(hostPort)); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { relay(agent, c); closeWrite(agent); done <- struct{}{} }()
	go func() { relay(c, agent); closeWrite(c); done <- struct{}{} }()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if uc, ok := c.(interface{ CloseWrite() error }); ok {
		uc.CloseWrite()
	}
}

// runningGuest returns the guest if its vCPUs run. It takes no lock on
// the API mutex because a connection must not wait for an API call.
func (s *server) runningGuest() *guest {
	s.guestMu.Lock()
	defer s.guestMu.Unlock()
	if s.guestPaused {
		return nil
	}
	return s.guestRef
}

// dialAgent opens a stream to the agent's hybrid listener and performs
// the agent's CONNECT/OK exchange.
func dialAgent(sockPath string, port uint32) (net.Conn, error) {
	c, err := net.DialTimeout("unix", sockPath, connectTimeout)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(connectTimeout))
	if _, err := c.Write(agentproto.ConnectLine(port)); err != nil {
		c.Close()
		return nil, err
	}
	// ReadLine reads byte by byte, so no stream byte is consumed here.
	line, err := agentproto.ReadLine(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	if _, err := agentproto.ParseOK(line); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
