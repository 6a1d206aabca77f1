package agentclient

import (
	"net"
	"syscall"
)

// transferSocketBuffer is the send and receive buffer size a transfer requests
// on a socket. On a Unix stream socket the sender's buffer bounds the
// bytes in flight, and the default (about 208 KiB) makes the two ends
// wait for each other several times per DATA chunk. The kernel caps it
// at net.core.wmem_max and net.core.rmem_max.
const transferSocketBuffer = 4 << 20

// growSocketBuffers requests transferSocketBuffer on conn when it is a
// socket. Failure is harmless: the transfer runs with the default
// buffers.
func growSocketBuffers(conn net.Conn) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, transferSocketBuffer)
		_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, transferSocketBuffer)
	})
}
