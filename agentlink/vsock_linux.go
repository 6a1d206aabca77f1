package agentlink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ServeVsock serves the given AF_VSOCK ports until ctx ends, accepting
// connections from any CID. Each accepted connection is handed to h in its
// own goroutine. Unlike a hybrid socket connection, it carries no
// CONNECT/OK exchange, because the vsock device has already routed it to
// the port.
//
// It returns nil once ctx has ended and every handler has returned, or an
// error as soon as one port cannot be listened on or accepted on, after
// closing the other listeners and waiting for the handlers.
func ServeVsock(ctx context.Context, ports []uint32, h Handler) error {
	return serveVsock(ctx, unix.VMADDR_CID_ANY, ports, h)
}

// serveVsock is ServeVsock bound to cid, so that tests can bind to the
// loopback CID only.
func serveVsock(ctx context.Context, cid uint32, ports []uint32, h Handler) error {
	if len(ports) == 0 {
		return errors.New("serve vsock: no ports given")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var listeners []*vsockListener
	for _, port := range ports {
		ln, err := listenVsock(cid, port)
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return err
		}
		listeners = append(listeners, ln)
	}

	var wg sync.WaitGroup
	errs := make(chan error, len(listeners))
	for _, ln := range listeners {
		context.AfterFunc(ctx, func() { ln.Close() })
		wg.Go(func() {
			if err := ln.serve(ctx, h, &wg); err != nil {
				errs <- err
				cancel()
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// vsockListener is a listening AF_VSOCK socket. The descriptor is
// non-blocking and wrapped in an *os.File, so accept waits in Go's
// network poller and Close wakes it.
type vsockListener struct {
	f    *os.File
	port uint32
}

func listenVsock(cid, port uint32) (_ *vsockListener, err error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("listen on vsock port %d: create socket: %w", port, err)
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
		}
	}()
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: cid, Port: port}); err != nil {
		return nil, fmt.Errorf("listen on vsock port %d: bind to CID %d: %w", port, cid, err)
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		return nil, fmt.Errorf("listen on vsock port %d: %w", port, err)
	}
	return &vsockListener{f: os.NewFile(uintptr(fd), fmt.Sprintf("vsock:%d", port)), port: port}, nil
}

func (l *vsockListener) Close() error { return l.f.Close() }

// serve accepts connections until the listener is closed and hands each
// one to h in a goroutine tracked by wg. It returns nil when ctx ended.
func (l *vsockListener) serve(ctx context.Context, h Handler, wg *sync.WaitGroup) error {
	log := slog.Default().With("vsock_port", l.port)
	for {
		conn, err := l.accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ECONNABORTED) {
				log.Warn("accept on vsock port failed; retrying", "err", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return fmt.Errorf("accept on vsock port %d: %w", l.port, err)
		}
		wg.Go(func() { h(ctx, l.port, conn) })
	}
}

func (l *vsockListener) accept() (net.Conn, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nfd int
	var sa unix.Sockaddr
	var acceptErr error
	err = rc.Read(func(fd uintptr) bool {
		nfd, sa, acceptErr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		return acceptErr != unix.EAGAIN
	})
	if err != nil {
		return nil, err
	}
	if acceptErr != nil {
		return nil, acceptErr
	}
	remote := vsockAddr{}
	if vm, ok := sa.(*unix.SockaddrVM); ok {
		remote = vsockAddr{CID: vm.CID, Port: vm.Port}
	}
	local := vsockAddr{CID: unix.VMADDR_CID_ANY, Port: l.port}
	if lsa, err := unix.Getsockname(nfd); err == nil {
		if vm, ok := lsa.(*unix.SockaddrVM); ok {
			local = vsockAddr{CID: vm.CID, Port: vm.Port}
		}
	}
	f := os.NewFile(uintptr(nfd), fmt.Sprintf("vsock:%d<-%s", l.port, remote))
	return &vsockConn{f: f, local: local, remote: remote}, nil
}

// vsockAddr is the net.Addr of one end of a vsock connection.
type vsockAddr struct{ CID, Port uint32 }

func (vsockAddr) Network() string  { return "vsock" }
func (a vsockAddr) String() string { return fmt.Sprintf("%d:%d", a.CID, a.Port) }

// vsockConn is an accepted vsock connection. Its *os.File is pollable,
// so deadlines work as on a net.Conn.
type vsockConn struct {
	f             *os.File
	local, remote vsockAddr
}

func (c *vsockConn) Read(p []byte) (int, error)         { return c.f.Read(p) }
func (c *vsockConn) Write(p []byte) (int, error)        { return c.f.Write(p) }
func (c *vsockConn) Close() error                       { return c.f.Close() }
func (c *vsockConn) LocalAddr() net.Addr                { return c.local }
func (c *vsockConn) RemoteAddr() net.Addr               { return c.remote }
func (c *vsockConn) SetDeadline(t time.Time) error      { return c.f.SetDeadline(t) }
func (c *vsockConn) SetReadDeadline(t time.Time) error  { return c.f.SetReadDeadline(t) }
func (c *vsockConn) SetWriteDeadline(t time.Time) error { return c.f.SetWriteDeadline(t) }

// CloseWrite shuts down the writing side, so the peer reads EOF.
func (c *vsockConn) CloseWrite() error {
	rc, err := c.f.SyscallConn()
	if err != nil {
		return err
	}
	var shutdownErr error
	if err := rc.Control(func(fd uintptr) {
		shutdownErr = unix.Shutdown(int(fd), unix.SHUT_WR)
	}); err != nil {
		return err
	}
	return shutdownErr
}
