// Package agentclient is the host side of hearth-agent's sessions: it runs
// a command over an exec stream (agent port 52) and sends control requests
// (port 54). It works on any net.Conn that already reached the agent port,
// so it is the same for every transport in package agentlink.
package agentclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hearthvm/hearth/agentproto"
)

// stdinChunk is the largest STDIN payload sent per frame.
const stdinChunk = 32 << 10

// ExecIO carries the streams of one command. Nil writers discard output; a
// nil Stdin sends EOF at once. Resize, when set, delivers terminal size
// changes for a TTY session.
type ExecIO struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Resize <-chan TerminalSize
}

// TerminalSize is a terminal's size in columns and rows.
type TerminalSize struct {
	Width, Height uint16
}

// Exec runs req on conn, an open stream to the agent's exec port, and
// returns the command's exit code. It closes conn before returning. When
// ctx ends first, conn is closed, which makes the agent kill the command,
// and ctx's error is returned.
func Exec(ctx context.Context, conn net.Conn, req agentproto.StartRequest, stdio ExecIO) (int32, error) {
	defer conn.Close()

	start, err := json.Marshal(req)
	if err != nil {
		return 0, fmt.Errorf("encode START: %w", err)
	}
	var wmu sync.Mutex
	send := func(t agentproto.FrameType, payload []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		return agentproto.WriteFrame(conn, t, payload)
	}
	if err := send(agentproto.TypeStart, start); err != nil {
		return 0, fmt.Errorf("send START: %w", err)
	}

	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	inputDone := make(chan struct{})
	defer close(inputDone)
	go forwardStdin(stdio.Stdin, send, inputDone)
	if stdio.Resize != nil {
		go forwardResize(stdio.Resize, send, inputDone)
	}

	code, err := readOutput(conn, stdio.Stdout, stdio.Stderr)
	if err != nil && ctx.Err() != nil {
		return 0, ctx.Err()
	}
	return code, err
}

// forwardStdin copies stdin as STDIN frames and sends EOF when it ends.
// Send errors end it quietly: the reader side reports the broken session.
func forwardStdin(stdin io.Reader, send func(agentproto.FrameType, []byte) error, done <-chan struct{}) {
	if stdin != nil {
		buf := make([]byte, stdinChunk)
		for {
			n, err := stdin.Read(buf)
			if n > 0 {
				select {
				case <-done:
					return
				default:
				}
				if send(agentproto.TypeStdin, buf[:n]) != nil {
					return
				}
			}
			if err != nil {
				break
			}
		}
	}
	select {
	case <-done:
	default:
		_ = send(agentproto.TypeEOF, nil)
	}
}

func forwardResize(sizes <-chan TerminalSize, send func(agentproto.FrameType, []byte) error, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case size, ok := <-sizes:
			if !ok {
				return
			}
			if send(agentproto.TypeResize, agentproto.EncodeResize(size.Width, size.Height)) != nil {
				return
			}
		}
	}
}

// readOutput copies STDOUT and STDERR frames until EXIT.
func readOutput(r io.Reader, stdout, stderr io.Writer) (int32, error) {
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	for {
		f, err := agentproto.ReadFrame(r)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0, errors.New("agent closed the exec session before EXIT")
			}
			return 0, fmt.Errorf("read exec output: %w", err)
		}
		switch f.Type {
		case agentproto.TypeStdout:
			if _, err := stdout.Write(f.Payload); err != nil {
				return 0, fmt.Errorf("write stdout: %w", err)
			}
		case agentproto.TypeStderr:
			if _, err := stderr.Write(f.Payload); err != nil {
				return 0, fmt.Errorf("write stderr: %w", err)
			}
		case agentproto.TypeExit:
			return agentproto.DecodeExit(f.Payload)
		default:
			return 0, fmt.Errorf("unexpected frame %s in exec session", f.Type)
		}
	}
}

// Ping sends PING on conn, an open stream to the control port, and waits
// for ACK. It closes conn.
func Ping(ctx context.Context, conn net.Conn) error {
	return control(ctx, conn, agentproto.TypePing, nil)
}

// Shutdown asks the agent to end its workloads, sync and unmount
// filesystems and end the VM. It returns once the agent has acknowledged;
// the VM exits shortly after. It closes conn.
func Shutdown(ctx context.Context, conn net.Conn, grace time.Duration) error {
	payload, err := json.Marshal(agentproto.ShutdownRequest{GraceMillis: uint32(grace.Milliseconds())})
	if err != nil {
		return err
	}
	return control(ctx, conn, agentproto.TypeShutdown, payload)
}

// ClockSync sets the guest's wall clock to t over an exec-port stream and
// closes conn.
func ClockSync(ctx context.Context, conn net.Conn, t time.Time) error {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := agentproto.WriteFrame(conn, agentproto.TypeClockSync, agentproto.EncodeClockSync(t)); err != nil {
		return fmt.Errorf("send CLOCK_SYNC: %w", err)
	}
	code, err := readOutput(conn, nil, nil)
	if err != nil {
		return fmt.Errorf("clock sync: %w", err)
	}
	if code != 0 {
		return fmt.Errorf("clock sync: agent answered exit code %d", code)
	}
	return nil
}

func control(ctx context.Context, conn net.Conn, t agentproto.FrameType, payload []byte) error {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := agentproto.WriteFrame(conn, t, payload); err != nil {
		return fmt.Errorf("send %s: %w", t, err)
	}
	f, err := agentproto.ReadFrame(conn)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("read %s answer: %w", t, err)
	}
	switch f.Type {
	case agentproto.TypeAck:
		return nil
	case agentproto.TypeErr:
		return fmt.Errorf("agent rejected %s: %s", t, f.Payload)
	default:
		return fmt.Errorf("unexpected frame %s in answer to %s", f.Type, t)
	}
}
