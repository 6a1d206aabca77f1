package fcdouble

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// relayPipeSize is the capacity of the pipe each relay direction splices
// through. It bounds the bytes moved per splice(2) pair, like the buffer
// of a read and write copy.
const relayPipeSize = 1 << 20

// relayCopyBuffer is the buffer of the read and write copy used where
// splice is not available.
const relayCopyBuffer = 256 << 10

// relay copies src to dst until src ends or either fails. Between two
// Unix sockets it moves the bytes with splice(2) through a pipe, so they
// are not copied through this process's memory. Firecracker moves them
// between the socket and the guest's virtio queues without a relay
// process of this kind, so the double keeps its own cost low.
func relay(dst, src net.Conn) {
	d, dok := dst.(*net.UnixConn)
	s, sok := src.(*net.UnixConn)
	if dok && sok {
		growSendBuffer(d)
		if err := spliceRelay(d, s); !errors.Is(err, errSpliceUnsupported) {
			return
		}
	}
	_, _ = io.CopyBuffer(dst, src, make([]byte, relayCopyBuffer))
}

var errSpliceUnsupported = errors.New("splice not supported between these sockets")

// spliceRelay moves bytes from src to dst through a pipe with splice(2)
// until src ends or either side fails. It returns errSpliceUnsupported
// when no byte has moved and the kernel refuses splice.
func spliceRelay(dst, src *net.UnixConn) error {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return errSpliceUnsupported
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	// A smaller pipe still works, with more splice calls.
	_, _ = unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, relayPipeSize)

	srcRaw, err := src.SyscallConn()
	if err != nil {
		return errSpliceUnsupported
	}
	dstRaw, err := dst.SyscallConn()
	if err != nil {
		return errSpliceUnsupported
	}
	moved := false
	for {
		n, err := spliceIn(srcRaw, p[1])
		if err != nil {
			if !moved && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS)) {
				return errSpliceUnsupported
			}
			return err
		}
		if n == 0 {
			return nil // src ended
		}
		moved = true
		if err := spliceOut(dstRaw, p[0], n); err != nil {
			return err
		}
	}
}

// spliceIn moves what src holds, up to the pipe's capacity, into the
// pipe, waiting until src is readable. It returns 0 when src has ended.
func spliceIn(src syscall.RawConn, pipeW int) (int, error) {
	var n int64
	var serr error
	err := src.Read(func(fd uintptr) bool {
		for {
			n, serr = unix.Splice(int(fd), nil, pipeW, nil, relayPipeSize, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			if !errors.Is(serr, unix.EINTR) {
				break
			}
		}
		return !errors.Is(serr, unix.EAGAIN)
	})
	if err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, fmt.Errorf("splice from socket: %w", serr)
	}
	return int(n), nil
}

// spliceOut moves n bytes from the pipe into dst, waiting whenever dst's
// buffer is full.
func spliceOut(dst syscall.RawConn, pipeR, n int) error {
	for n > 0 {
		var m int64
		var serr error
		err := dst.Write(func(fd uintptr) bool {
			for {
				m, serr = unix.Splice(pipeR, nil, int(fd), nil, n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
				if !errors.Is(serr, unix.EINTR) {
					break
				}
			}
			return !errors.Is(serr, unix.EAGAIN)
		})
		if err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("splice to socket: %w", serr)
		}
		n -= int(m)
	}
	return nil
}

// relaySendBuffer is the send buffer size the relay requests on the socket it
// writes to. On a Unix stream socket the sender's buffer bounds the bytes
// in flight; the default of about 208 KiB makes the relay and its peer
// wait for each other several times per megabyte. The kernel caps it at
// net.core.wmem_max.
const relaySendBuffer = 4 << 20

// growSendBuffer requests relaySendBuffer on c. Failure is harmless.
func growSendBuffer(c *net.UnixConn) {
	if raw, err := c.SyscallConn(); err == nil {
		_ = raw.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, relaySendBuffer)
		})
	}
}
