package agent

import (
	"errors"
	"os"
	"sync/atomic"
	"time"

	"github.com/hearthvm/hearth/agentproto"
	"golang.org/x/sys/unix"
)

// drainGrace bounds how long output is still forwarded, once the command
// has exited and everything it wrote has been read, while background
// descendants keep the pipe or terminal open. After it the session ends.
const drainGrace = 250 * time.Millisecond

// outputChunk is the read size, and so the largest STDOUT or STDERR
// payload the agent sends.
const outputChunk = 32 << 10

// outputPump forwards one output stream (a pipe, or a terminal master) as
// STDOUT or STDERR frames.
//
// While the command runs the pump reads until end of file. Once the
// command's own process has exited, stop makes the pump read exactly the
// bytes buffered at that moment (FIONREAD), which contain everything the
// process wrote, then forward further output for at most drainGrace. So
// no byte of the command is lost, and a background descendant that holds
// the stream open delays EXIT by no more than drainGrace.
type outputPump struct {
	file      *os.File
	frameType agentproto.FrameType
	out       *frameWriter

	exited atomic.Bool
	// hostFailed is set once a frame write fails. The pump then keeps
	// reading and discards the output, so the command does not block on
	// a full pipe.
	hostFailed atomic.Bool
	done       chan struct{}
}

func newOutputPump(file *os.File, t agentproto.FrameType, out *frameWriter) *outputPump {
	return &outputPump{file: file, frameType: t, out: out, done: make(chan struct{})}
}

func (p *outputPump) run() {
	defer close(p.done)

	buf := make([]byte, outputChunk)
	for {
		n, err := p.file.Read(buf)
		p.forward(buf[:n])
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && p.exited.Load() {
			p.drain(buf)
		}
		return
	}
}

// stop starts the drain. Call it once the command's process has exited.
func (p *outputPump) stop() {
	p.exited.Store(true)
	// A deadline in the past interrupts a Read that is blocked waiting
	// for output that may never come.
	if err := p.file.SetReadDeadline(time.Now()); err != nil {
		// Without deadlines the pump cannot be interrupted; closing the
		// file ends the blocked Read instead, losing unread output.
		p.file.Close()
	}
}

func (p *outputPump) drain(buf []byte) {
	if err := p.file.SetReadDeadline(time.Time{}); err != nil {
		return
	}
	pending, err := bytesReadable(p.file)
	if err != nil {
		pending = 0
	}
	for pending > 0 {
		n, err := p.file.Read(buf[:min(len(buf), pending)])
		p.forward(buf[:n])
		pending -= n
		if err != nil {
			return
		}
	}

	if err := p.file.SetReadDeadline(time.Now().Add(drainGrace)); err != nil {
		return
	}
	for {
		n, err := p.file.Read(buf)
		p.forward(buf[:n])
		if err != nil {
			return
		}
	}
}

func (p *outputPump) forward(data []byte) {
	if len(data) == 0 || p.hostFailed.Load() {
		return
	}
	if err := p.out.writeChunked(p.frameType, data); err != nil {
		p.hostFailed.Store(true)
	}
}

// bytesReadable returns how many bytes a pipe or terminal holds that a
// read would return without blocking (FIONREAD).
func bytesReadable(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var ioctlErr error
	err = rc.Control(func(fd uintptr) {
		// TIOCINQ is FIONREAD on Linux, for pipes as well as terminals.
		n, ioctlErr = unix.IoctlGetInt(int(fd), unix.TIOCINQ)
	})
	if err == nil {
		err = ioctlErr
	}
	return n, err
}
