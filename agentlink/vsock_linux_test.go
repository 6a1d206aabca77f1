package agentlink

import (
	"context"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestServeVsockNoPorts(t *testing.T) {
	if err := ServeVsock(context.Background(), nil, testHandler); err == nil {
		t.Error("ServeVsock without ports: got nil error, want an error")
	}
}

// TestServeVsockLoopback serves a port on the vsock loopback CID only, so
// nothing outside this host can reach it.
func TestServeVsockLoopback(t *testing.T) {
	const port = 52001
	ln, err := listenVsock(unix.VMADDR_CID_LOCAL, port)
	if err != nil {
		t.Skipf("no vsock loopback transport (%v); the test needs the vsock_loopback transport (CONFIG_VSOCKETS_LOOPBACK), for example in a guest with that module loaded", err)
	}
	ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- serveVsock(ctx, unix.VMADDR_CID_LOCAL, []uint32{port}, testHandler) }()

	var conn *vsockConn
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err = dialVsockLoopback(port)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("connect to vsock port %d on the loopback CID: %v", port, err)
	}
	if err := echoOn(conn, 200<<10); err != nil {
		t.Errorf("echo: %v", err)
	}
	conn.Close()

	cancel()
	if err := <-served; err != nil {
		t.Errorf("serveVsock: got %v, want nil after cancel", err)
	}
}

func dialVsockLoopback(port uint32) (*vsockConn, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_LOCAL, Port: port}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &vsockConn{f: os.NewFile(uintptr(fd), "vsock-client")}, nil
}
